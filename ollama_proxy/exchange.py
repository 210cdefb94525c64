"""What the daemon knows about one request while it is handled: the one typed home of per-request state.

Each request carries one :class:`Exchange` (``ProxyRequest.exchange``), created when the request arrives.
The gate sets its API family from the path; handlers record the model and the backend; the relay records
token counts, timings and how a stream ended; the access log and the metrics read it when the request
ends.  Nothing else about a request is kept on the Twisted ``Request`` itself.
"""

from __future__ import annotations

import enum
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred


class Family(enum.Enum):
    """Which API a request speaks, decided once from its path: it fixes the shape of every answer,
    error and broken-stream ending the client gets (``wire/``)."""

    OLLAMA = "ollama"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"  # the Messages API, /v1/messages
    RESPONSES = "responses"  # OpenAI's Responses API, /v1/responses

    @classmethod
    def for_path(cls, path: bytes) -> Family:
        """``/api/*`` and the daemon's own paths (``/``, ``/health`` ...) are Ollama's; ``/v1/messages``
        Anthropic's and ``/v1/responses`` the Responses API's; the other OpenAI paths OpenAI's; each with
        or without ``/v1``."""
        path = path.split(b"?", 1)[0]
        under_v1 = path.startswith(b"/v1/") or path == b"/v1"
        first = _first_segment(path.removeprefix(b"/v1") if under_v1 else path)
        if first == b"messages":
            return cls.ANTHROPIC
        if first == b"responses":
            return cls.RESPONSES
        if under_v1 or first in _OPENAI_ROOTS:
            return cls.OPENAI
        return cls.OLLAMA


# The OpenAI paths some clients call without ``/v1`` (resources.py mounts them at the root).
_OPENAI_ROOTS = frozenset({b"chat", b"completions", b"embeddings", b"models"})


def _first_segment(path: bytes) -> bytes:
    return path.lstrip(b"/").split(b"/", 1)[0]


class Outcome(enum.Enum):
    """How a request ended, for the access log and the metrics."""

    COMPLETED = "completed"
    STREAM_ERROR = "stream_error"  # a stream that ended with an error line/event after output began
    CLIENT_GONE = "client_gone"
    # Cut off for slowness: a request head or body that did not arrive in time (408), or a client that
    # stopped reading its response (its connection aborted after --stall-timeout).
    CLIENT_TOO_SLOW = "client_too_slow"
    TOO_LARGE = "too_large"  # a body (413), request line (414) or head (431) over its limit
    REFUSED = "refused"  # a connection over --max-connections or --max-connections-per-client (503)


class Interruptible(Protocol):
    """A stream in flight that a shutdown can end with an error (the relay)."""

    def shutdown(self, message: str) -> None: ...


@attrs.define
class Exchange:
    """One request's state.  Mutable: it fills in as the request is handled, and is read once it ends."""

    family: Family = Family.OLLAMA
    request_id: str = "-"
    started: float = 0.0  # monotonic seconds
    # The model as the client named it, and the backend id and backend it was served by.
    model: str | None = None
    backend_model: str | None = None
    backend: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_seconds: float | None = None
    decode_seconds: float | None = None
    stream_failed: bool = False
    # The connection was aborted because the client stopped reading (--stall-timeout).
    cut_off: bool = False
    # The client authenticated with one of the daemon's client keys (its Authorization is not the
    # backend's business then).
    client_key: bool = False
    outcome: Outcome | None = None
    # The handler's work in flight and the stream being relayed, so a shutdown can end them.
    running: Deferred[None] | None = attrs.field(default=None, repr=False)
    relay: Interruptible | None = attrs.field(default=None, repr=False)

    def served(self, model: str, backend_model: str, backend: str | None = None) -> None:
        """Which model a request is for: the client's name and the backend id (and backend)."""
        self.model = model
        self.backend_model = backend_model
        if backend is not None:
            self.backend = backend

    def counted(self, prompt_tokens: object, completion_tokens: object) -> None:
        """The backend's token counts (anything that is not a count is ignored)."""
        if isinstance(prompt_tokens, int) and not isinstance(prompt_tokens, bool):
            self.prompt_tokens = prompt_tokens
        if isinstance(completion_tokens, int) and not isinstance(completion_tokens, bool):
            self.completion_tokens = completion_tokens

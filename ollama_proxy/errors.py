"""The one error hierarchy of the daemon, each kind carrying the HTTP status it maps to.

Every failure a client can see is one of these.  Which bytes the client gets for it (Ollama's
``{"error": "..."}``, OpenAI's ``{"error": {...}}`` ...) is the business of the request's API family
(``wire/``); the status and the words are decided here.  Messages are written for the client: they never
carry the backend key, a client token, or a traceback.

What a backend's HTTP error status means to the daemon's client is decided once, here, by
:meth:`BackendRejected.from_backend`.
"""

from __future__ import annotations

from collections.abc import Sequence


class ProxyError(Exception):
    """Anything the daemon answers with an error body.  Subclasses fix the status."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        """Response headers that belong to this error whatever the API family (``Allow``, ...)."""
        return ()


class BadRequest(ProxyError):
    status = 400


class Unauthorized(ProxyError):
    """No valid client token (``--client-keys-file``)."""

    status = 401

    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        return ((b"www-authenticate", b'Bearer realm="ollama-proxy"'),)


class NotSignedIn(ProxyError):
    """Ollama's answer to account calls (``/api/me``, ``/api/signout``) from a server not signed in to
    ollama.com, which this daemon never is.  Unlike :class:`Unauthorized`, no client credential would help."""

    status = 401


class Forbidden(ProxyError):
    """A browser origin the CORS policy refuses."""

    status = 403


class NotFound(ProxyError):
    status = 404


class ModelNotFound(NotFound):
    """Ollama's wording, which clients match on before offering to pull the model."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")
        self.name = name


class MethodNotAllowed(ProxyError):
    status = 405

    def __init__(self, method: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"method {method} not allowed")
        self.allowed = allowed

    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        return ((b"allow", ", ".join(self.allowed).encode()),)


class RequestTimeout(ProxyError):
    """A client that did not send its request's head, or its body, within the time allowed."""

    status = 408


class PayloadTooLarge(ProxyError):
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body too large: the limit is {limit} bytes")


class URITooLong(ProxyError):
    """A request line longer than the daemon reads."""

    status = 414

    def __init__(self, limit: int) -> None:
        super().__init__(f"request line too long: the limit is {limit} bytes")


class HeadersTooLarge(ProxyError):
    """A request head (request line and headers together) larger than the daemon reads."""

    status = 431

    def __init__(self, limit: int) -> None:
        super().__init__(f"request headers too large: the limit is {limit} bytes")


class ManagedByBackend(ProxyError):
    """Model management that this daemon cannot do: the backend owns its models."""

    status = 501


class BackendError(ProxyError):
    """The backend failed or could not be reached; 502 unless a subclass says otherwise.

    ``reason`` is a short fixed word for metrics (``refused``, ``timeout``, ``reset`` ...).
    """

    status = 502
    reason = "error"


class BackendUnreachable(BackendError):
    """``retryable``: the request cannot have reached the backend's model (refused, reset before a reply)."""

    status = 502

    def __init__(self, message: str, *, retryable: bool = False, reason: str = "unreachable") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.reason = reason


class BackendTimeout(BackendError):
    status = 504
    reason = "timeout"


class BackendRejected(BackendError):
    """The backend answered with an HTTP error; its status is kept where it means the same to the client."""

    reason = "rejected"

    def __init__(self, message: str, status: int, *, backend_status: int) -> None:
        super().__init__(message)
        self.status = status
        self.backend_status = backend_status

    @classmethod
    def from_backend(cls, message: str, backend_status: int) -> BackendRejected:
        """The error a client sees for a backend HTTP error status.

        The backend's own auth failures are the operator's problem, not the client's (a 401 would make
        Ollama clients think *they* need a key), so they become 502; server faults become 502 as a
        gateway reports them; the rest keep their meaning, 501 included (a server that does not do this
        kind of request at all, such as llama.cpp asked for embeddings, which says nothing about its
        health).
        """
        return cls(message, _client_status(backend_status), backend_status=backend_status)


def _client_status(status: int) -> int:
    if status in (401, 403, 407):
        return 502
    if status == 422:
        return 400
    if status == 408:
        return 504
    if status in (400, 404, 409, 413, 429, 501, 502, 503, 504):
        return status
    if status >= 500:
        return 502
    return 400 if 400 <= status < 500 else 502


class Overloaded(ProxyError):
    status = 503


class ConfigError(Exception):
    """A bad start-up setting; the message names the option and is printed as one line."""

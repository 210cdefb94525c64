"""The Anthropic Messages API's wire (``/v1/messages``, ``/v1/messages/count_tokens``): its event framing,
errors in Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``, with the statuses
Anthropic answers with (529 for a daemon that is full, which the SDKs retry as ``OverloadedError``), and
the ``error`` event that ends a stream that broke.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ollama_proxy.errors import ProxyError
from ollama_proxy.exchange import Exchange, Family
from ollama_proxy.json_codec import compact_json
from ollama_proxy.wire.answer import Answer, Wire, json_answer


def sse_event(kind: str, payload: Mapping[str, Any]) -> bytes:
    """One named event; the SDKs silently drop events without the ``event:`` line."""
    return b"event: " + kind.encode("ascii") + b"\ndata: " + compact_json(payload) + b"\n\n"


# The daemon's status -> what Anthropic answers for the same kind of failure.  Anthropic says "overloaded"
# with 529 (the SDKs raise OverloadedError and retry); 502 has no Anthropic counterpart and is kept, which
# the SDKs read as a retryable server error.
_STATUSES: Final[Mapping[int, tuple[int, str]]] = {
    400: (400, "invalid_request_error"),
    401: (401, "authentication_error"),
    403: (403, "permission_error"),
    404: (404, "not_found_error"),
    413: (413, "request_too_large"),
    429: (429, "rate_limit_error"),
    500: (500, "api_error"),
    502: (502, "api_error"),
    503: (529, "overloaded_error"),
    504: (504, "timeout_error"),
}


def anthropic_status(status: int) -> tuple[int, str]:
    """The HTTP status and ``error.type`` Anthropic would answer with for a daemon error ``status``."""
    known = _STATUSES.get(status)
    if known is not None:
        return known
    if 400 <= status < 500:
        return status, "invalid_request_error"
    return (status if 500 <= status < 600 else 500), "api_error"


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def error_reply(status: int, message: str) -> tuple[int, dict[str, Any]]:
    """The status and body to answer a daemon error with."""
    anthropic_code, error_type = anthropic_status(status)
    return anthropic_code, error_body(error_type, message)


def stream_error_event(message: str, error_type: str = "api_error") -> bytes:
    """The ``error`` event Anthropic ends a broken stream with; the SDKs raise on it."""
    return sse_event("error", error_body(error_type, message))


def error_answer(error: ProxyError, exchange: Exchange) -> Answer:
    status, body = error_reply(error.status, error.message)
    return json_answer(body, status, error.headers())


WIRE = Wire(Family.ANTHROPIC, error_answer, stream_error_event)

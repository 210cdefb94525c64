"""The OpenAI API's wire (``/v1/*`` and the un-prefixed OpenAI paths): what the daemon itself answers
there is in OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, which the OpenAI
SDKs turn into their typed exceptions.  The backend's own replies pass through untouched
(``translate/openai.py``).
"""

from __future__ import annotations

from typing import Any

from ollama_proxy.errors import ProxyError
from ollama_proxy.exchange import Exchange, Family
from ollama_proxy.json_codec import compact_json
from ollama_proxy.wire.answer import Answer, Wire, json_answer


def error_type(status: int) -> str:
    """OpenAI's ``error.type`` for a status, as its API and SDKs use them."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if 400 <= status < 500:
        return "invalid_request_error"
    return "api_error"


def error_code(status: int) -> str | None:
    """A machine-readable ``code`` for the errors the daemon itself answers with."""
    return {
        404: "model_not_found",
        502: "backend_unreachable",
        503: "backend_unavailable",
        504: "backend_timeout",
    }.get(status)


def error_body(message: str, status: int, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type(status), "param": None, "code": code}}


def error_answer(error: ProxyError, exchange: Exchange) -> Answer:
    return json_answer(
        error_body(error.message, error.status, error_code(error.status)), error.status, error.headers()
    )


def sse_error_event(message: str) -> bytes:
    """The last event of an event stream the backend broke off: the OpenAI SDKs raise on a ``data``
    event carrying ``error``, where a silently ended stream would look complete."""
    return b"data: " + compact_json(error_body(message, 502, "backend_error")) + b"\n\n"


def _nothing_to_add(message: str) -> bytes:
    """A relayed body cut short: whether it was an event stream is the relay's to know
    (``translate.openai.PassThrough``); a JSON body cut short is unreadable as it is."""
    return b""


WIRE = Wire(Family.OPENAI, error_answer, _nothing_to_add)

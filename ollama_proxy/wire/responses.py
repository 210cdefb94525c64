"""The Responses API's wire (``/v1/responses``): errors answered over HTTP take OpenAI's shape, as every
OpenAI SDK reads them (``wire/openai.py``).

A translated stream ends itself: its transform (``translate/responses.ResponsesStream``) closes a stream
that broke with ``response.failed`` and an ``error`` event under the response's own id.  The ending here
is for the rare stream that breaks outside that transform, where no response id is at hand: the ``error``
event alone, on which the SDKs raise.
"""

from __future__ import annotations

from typing import Any

from ollama_proxy.exchange import Family
from ollama_proxy.json_codec import compact_json
from ollama_proxy.wire.answer import Wire
from ollama_proxy.wire.openai import error_answer, error_body


def error_event_object(message: str) -> dict[str, Any]:
    """The Responses ``error`` event; the SDKs raise on its top-level OpenAI ``error`` object."""
    return {
        **error_body(message, 502, "server_error"),
        "type": "error",
        "code": "server_error",
        "message": message,
        "param": None,
    }


def error_event(message: str) -> bytes:
    """The ``error`` event alone: the ending of a stream that broke where no response is at hand."""
    return b"event: error\ndata: " + compact_json(error_event_object(message)) + b"\n\n"


WIRE = Wire(Family.RESPONSES, error_answer, error_event)

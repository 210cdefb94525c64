"""The Anthropic Messages API's wire (``/v1/messages``, ``/v1/messages/count_tokens``): errors in Anthropic's
shape, ``{"type": "error", "error": {"type", "message"}}``, with the statuses Anthropic answers with (529
for a daemon that is full, which the SDKs retry as ``OverloadedError``), and the ``error`` event that ends
a stream that broke.

The words and statuses are decided once, in ``translate/anthropic.py`` (``error_reply``,
``stream_error_event``); this module only makes them the family's answers.
"""

from __future__ import annotations

from ollama_proxy.errors import ProxyError
from ollama_proxy.exchange import Exchange, Family
from ollama_proxy.translate.anthropic import error_reply, stream_error_event
from ollama_proxy.wire.answer import Answer, Wire, json_answer


def error_answer(error: ProxyError, exchange: Exchange) -> Answer:
    status, body = error_reply(error.status, error.message)
    return json_answer(body, status, error.headers())


WIRE = Wire(Family.ANTHROPIC, error_answer, stream_error_event)

"""The Responses API's wire (``/v1/responses``): errors answered over HTTP take OpenAI's shape, as every
OpenAI SDK reads them (``wire/openai.py``).

A translated stream ends itself: its transform (``translate/responses.ResponsesStream``) closes a stream
that broke with ``response.failed`` and an ``error`` event under the response's own id.  The ending here
is for the rare stream that breaks outside that transform, where no response id is at hand: the ``error``
event alone, on which the SDKs raise.
"""

from __future__ import annotations

from ollama_proxy.exchange import Family
from ollama_proxy.translate.responses import error_event
from ollama_proxy.wire.answer import Wire
from ollama_proxy.wire.openai import error_answer

WIRE = Wire(Family.RESPONSES, error_answer, error_event)

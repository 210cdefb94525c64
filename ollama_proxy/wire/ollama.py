"""The Ollama API's wire (``/api/*`` and the daemon's own paths): JSON replies, NDJSON streams, and
``{"error": "<string>"}`` errors.

The error value is always a string (the ollama SDK raises ``TypeError`` on anything else), and a stream
that breaks after output began ends with one ``{"error": ...}`` line and no ``done`` line, as Ollama's own
server does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ollama_proxy.errors import BackendRejected, ModelNotFound, ProxyError
from ollama_proxy.exchange import Exchange, Family
from ollama_proxy.json_codec import compact_json, json_line
from ollama_proxy.translate.replies import Instant, Kind
from ollama_proxy.translate.timestamps import rfc3339_utc
from ollama_proxy.wire.answer import Answer, Wire, json_answer

NDJSON_TYPE = b"application/x-ndjson"


def ndjson_line(obj: Mapping[str, Any]) -> bytes:
    """One NDJSON line: compact JSON and a newline, never a blank line."""
    return json_line(obj)


class ContentLines:
    """The NDJSON line of a chunk that carries nothing but content, from a template: the bytes of
    ``ndjson_line(ollama_reply(model, kind, at, content=text))``, with only the text encoded per chunk
    and the rest once per clock reading (the chunks of one backend read share it)."""

    def __init__(self, model: str, kind: Kind) -> None:
        self._model = compact_json(model)
        self._chat = kind == "chat"
        self._tail = b'},"done":false}\n' if self._chat else b',"done":false}\n'
        self._at: Instant | None = None
        self._head = b""

    def line(self, text: str, at: Instant) -> bytes:
        if at is not self._at:
            self._at = at
            stamp = rfc3339_utc(at.wall).encode("ascii")
            field = b'","message":{"role":"assistant","content":' if self._chat else b'","response":'
            self._head = b'{"model":' + self._model + b',"created_at":"' + stamp + field
        return self._head + compact_json(text) + self._tail


def ndjson_answer(lines: Iterable[Mapping[str, Any]]) -> Answer:
    """A short, fully known NDJSON stream (pull progress), in one write."""
    return Answer(200, b"".join(ndjson_line(line) for line in lines), NDJSON_TYPE)


def error_line(message: str) -> bytes:
    """The last line of a stream that broke: the SDK raises ``ResponseError(message)`` on it."""
    return ndjson_line({"error": message})


def error_answer(error: ProxyError, exchange: Exchange) -> Answer:
    """The error's status and ``{"error": message}``.

    A backend's 404 for the model a request named is Ollama's ``model 'NAME' not found`` (NAME as the
    client sent it), the words clients match on before offering to pull it.
    """
    if isinstance(error, BackendRejected) and error.backend_status == 404 and exchange.model:
        error = ModelNotFound(exchange.model)
    return json_answer({"error": error.message}, error.status, error.headers())


WIRE = Wire(Family.OLLAMA, error_answer, error_line)

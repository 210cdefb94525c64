"""The family-independent part of what a client receives: an answer is a status, headers and a body."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ollama_proxy.errors import ProxyError
from ollama_proxy.exchange import Exchange, Family
from ollama_proxy.json_codec import compact_json

JSON_TYPE = b"application/json; charset=utf-8"
TEXT_TYPE = b"text/plain; charset=utf-8"


@attrs.frozen
class Answer:
    """A whole response, ready to be written (``content_type`` None: no body, no Content-Type)."""

    status: int
    body: bytes = b""
    content_type: bytes | None = None
    headers: Sequence[tuple[bytes, bytes]] = ()


def json_answer(body: Any, status: int = 200, headers: Sequence[tuple[bytes, bytes]] = ()) -> Answer:
    return Answer(status, compact_json(body), JSON_TYPE, headers)


def text_answer(text: str, status: int = 200) -> Answer:
    return Answer(status, text.encode(), TEXT_TYPE)


@attrs.frozen
class Wire:
    """One API family's words: how an error is answered, and the closing bytes of a stream that broke
    after its first bytes went out (the status line has gone by then)."""

    family: Family
    error: Callable[[ProxyError, Exchange], Answer]
    broken_stream: Callable[[str], bytes]


_REASONS = {
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Request Entity Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


def raw_response(answer: Answer) -> bytes:
    """The answer as HTTP/1.1 bytes, closing the connection: for what must be said before Twisted's
    request machinery runs (a body refused from its ``Content-Length``, a head or body too slow, a head
    too large, a connection over a limit)."""
    head = [b"HTTP/1.1 %d %s" % (answer.status, _REASONS.get(answer.status, b"Error"))]
    if answer.content_type is not None:
        head.append(b"Content-Type: " + answer.content_type)
    head += [name + b": " + value for name, value in answer.headers]
    head += [b"Content-Length: %d" % len(answer.body), b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + answer.body

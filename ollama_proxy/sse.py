"""Incremental decoder for the Server-Sent-Events streams OpenAI-compatible backends answer with.

The transport hands over chunks cut at arbitrary byte offsets: inside a ``\\r\\n`` pair, inside a multi-byte
UTF-8 character, inside a field name.  The decoder therefore only ever looks at *complete lines*, and it works
on bytes with C-level splitting because it runs once per generated token.

Field handling follows the WHATWG event-stream rules that matter here: ``:`` lines are comments (OpenRouter
keeps connections alive with ``: OPENROUTER PROCESSING``), one space after the colon is dropped, several
``data:`` lines are joined with ``\\n``, ``id``/``retry``/unknown fields are ignored, and a block without
any ``data`` line dispatches nothing.  ``[DONE]`` is an ordinary event here: ending the stream is the
caller's decision.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from ollama_proxy.errors import BackendError

_BOM: Final = b"\xef\xbb\xbf"
_EOL: Final = (b"\n", b"\r")

# Generous: a single event is one JSON chunk, normally well under a kilobyte.  The cap only exists so a
# backend that never sends a line break cannot make the daemon buffer without bound.
DEFAULT_MAX_EVENT_BYTES: Final = 16 * 1024 * 1024


class SSEEvent(NamedTuple):
    """One dispatched event.  A tuple, not an attrs class: one is made per generated token."""

    data: str
    event: str | None = None


class SSEDecoder:
    """Feed it chunks as they arrive; it returns the events those chunks completed and keeps the rest."""

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max_event_bytes = max_event_bytes
        # Pieces of the current unterminated line, joined only once a line break shows up, so a huge line
        # arriving in many small chunks costs linear time, not quadratic.
        self._partial: list[bytes] = []
        self._partial_size = 0
        # The previous chunk ended on "\r": if the next one starts with "\n", that byte finishes the same
        # line break and must not count as a blank line (which would dispatch an event early).
        self._skip_lf = False
        self._at_start = True
        self._data: list[str] = []
        self._data_size = 0
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return []
        if b"\n" not in chunk and b"\r" not in chunk:
            self._hold(chunk)
            return []
        if self._partial:
            self._partial.append(chunk)
            chunk = b"".join(self._partial)
            self._partial = []
            self._partial_size = 0
        # bytes.splitlines breaks on exactly \n, \r and \r\n (unlike str.splitlines), the SSE line ends.
        lines = chunk.splitlines()
        ending = chunk[-1:]
        if ending not in _EOL:
            self._hold(lines.pop())
        elif ending == b"\r":
            self._skip_lf = True
        events: list[SSEEvent] = []
        if self._at_start and lines:
            self._at_start = False
            lines[0] = lines[0].removeprefix(_BOM)
        # The lines of every event an OpenAI-compatible server sends are "data: ..." and "": handled here,
        # inline (this runs once per generated token); anything else (comments, event names) in _line.
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(SSEEvent("\n".join(data), self._event))
                    data.clear()
                    self._data_size = 0
                self._event = None
            elif line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
                data.append(value.decode("utf-8", "replace"))
                self._data_size += len(value) + 1
                if self._data_size > self._max_event_bytes:
                    raise BackendError(f"backend stream event exceeds {self._max_event_bytes} bytes")
            else:
                self._line(line, events)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a last line without a break, and an event without its blank line, still count."""
        events: list[SSEEvent] = []
        if self._partial:
            line = b"".join(self._partial)
            self._partial = []
            self._partial_size = 0
            self._line(line, events)
        self._skip_lf = False
        self._line(b"", events)
        return events

    def _hold(self, piece: bytes) -> None:
        self._partial.append(piece)
        self._partial_size += len(piece)
        if self._partial_size + self._data_size > self._max_event_bytes:
            raise BackendError(f"backend stream event exceeds {self._max_event_bytes} bytes")

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if self._at_start:
            self._at_start = False
            if line.startswith(_BOM):
                line = line[len(_BOM) :]
        if not line:
            if self._data:
                events.append(SSEEvent("\n".join(self._data), self._event))
            self._data = []
            self._data_size = 0
            self._event = None
            return
        if line[:1] == b":":
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
            self._data_size += len(value) + 1
            if self._data_size > self._max_event_bytes:
                raise BackendError(f"backend stream event exceeds {self._max_event_bytes} bytes")
        elif name == b"event":
            # An empty name means the default type, exactly as if the field were absent.
            self._event = value.decode("utf-8", "replace") or None

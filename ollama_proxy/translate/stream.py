"""A backend's OpenAI event stream (SSE bytes, cut wherever TCP cut them) translated into another API
family's stream: the relay's transform for every translated stream.

The framing is shared: SSE decoding, ``[DONE]``, events that are not JSON, a stream that ends before the
backend said it was complete.  What each event becomes is the :class:`EventTranslator`'s business, one
per API family (Ollama NDJSON here; others beside it).  Time is injected (``clock``), so the output is a
function of the input bytes and the clock readings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from ollama_proxy.errors import BackendError
from ollama_proxy.json_codec import parse_event
from ollama_proxy.sse import SSEDecoder, SSEEvent
from ollama_proxy.translate.replies import Instant, StreamTranslator
from ollama_proxy.wire.ollama import ContentLines, error_line, ndjson_line

# A backend stream event that is not JSON is skipped rather than ending the stream; this many in a row
# means the backend is not speaking OpenAI SSE at all.
MAX_BAD_EVENTS: Final = 8


class EventTranslator(Protocol):
    """One API family's stream: decoded backend events in, that family's bytes out.

    ``start`` is written as soon as the backend's stream begins; ``feed`` takes one decoded
    ``chat.completion.chunk`` (or ``text_completion``) event; ``finish`` closes a stream that ended
    normally; ``fail`` is the family's ending for a stream that broke after output began.  ``failed``
    turns true when the backend's stream itself carried an error (which ``feed`` has already written).
    """

    @property
    def failed(self) -> bool: ...

    @property
    def saw_finish(self) -> bool: ...

    @property
    def usage(self) -> tuple[int | None, int | None]: ...

    @property
    def first_token_at(self) -> Instant | None: ...

    def start(self, at: Instant) -> bytes: ...

    def feed(self, event: Mapping[str, Any], at: Instant) -> bytes: ...

    def finish(self, at: Instant) -> bytes: ...

    def fail(self, message: str) -> bytes: ...


class _OllamaEvents:
    """What Ollama's stream and whole-reply adapters share: the translator's state, read through."""

    def __init__(self, translator: StreamTranslator) -> None:
        self.translator = translator

    @property
    def failed(self) -> bool:
        return self.translator.failed

    @property
    def saw_finish(self) -> bool:
        return self.translator.saw_finish

    @property
    def usage(self) -> tuple[int | None, int | None]:
        return self.translator.usage

    @property
    def first_token_at(self) -> Instant | None:
        return self.translator.first_token_at

    def start(self, at: Instant) -> bytes:
        return b""


class OllamaStream(_OllamaEvents):
    """Ollama's stream translator (chunk objects) as an :class:`EventTranslator`: NDJSON lines."""

    def __init__(self, translator: StreamTranslator) -> None:
        super().__init__(translator)
        self._lines = ContentLines(translator.model, translator.kind)

    def feed(self, event: Mapping[str, Any], at: Instant) -> bytes:
        text = self.translator.plain_content(event, at)
        if text is not None:  # most events: a content delta, written from a template
            return self._lines.line(text, at)
        chunks = self.translator.feed(event, at)
        if len(chunks) == 1:  # the usual event: one content delta
            return ndjson_line(chunks[0])
        return b"".join([ndjson_line(chunk) for chunk in chunks])

    def finish(self, at: Instant) -> bytes:
        return b"".join(ndjson_line(chunk) for chunk in self.translator.finish(at))

    def fail(self, message: str) -> bytes:
        return error_line(message)


class OllamaWhole(_OllamaEvents):
    """Ollama's whole reply from a backend stream, as an :class:`EventTranslator` that writes nothing:
    the translator (made with ``whole=True``) folds the stream, and the handler answers with
    :attr:`reply`, or with :attr:`error` as a real status, since nothing has reached the client yet."""

    def __init__(self, translator: StreamTranslator) -> None:
        super().__init__(translator)
        self.reply: dict[str, Any] | None = None
        self.error: str | None = None

    @property
    def failed(self) -> bool:
        return self.translator.failed or self.error is not None

    def feed(self, event: Mapping[str, Any], at: Instant) -> bytes:
        if self.translator.plain_content(event, at) is None:  # else its text is kept
            self._keep(self.translator.feed(event, at))
        return b""

    def finish(self, at: Instant) -> bytes:
        self._keep(self.translator.finish(at))
        return b""

    def fail(self, message: str) -> bytes:
        self.error = self.error or message
        return b""

    def _keep(self, replies: list[dict[str, Any]]) -> None:
        for reply in replies:
            if "error" in reply:
                self.error = self.error or reply["error"]
            else:
                self.reply = reply


class EventStreamTransform:
    """Backend SSE bytes → the translator's bytes, one write per upstream read (``relay.StreamTransform``)."""

    def __init__(self, translator: EventTranslator, clock: Callable[[], Instant]) -> None:
        self._decoder = SSEDecoder()
        self.translator = translator
        self._clock = clock
        self._bad_events = 0
        self._broken: str | None = None
        self._saw_done = False

    @property
    def failed(self) -> bool:
        return self.translator.failed or self._broken is not None

    def start(self) -> bytes:
        return self.translator.start(self._clock())

    def feed(self, data: bytes) -> bytes:
        try:
            events = self._decoder.feed(data)
        except BackendError as error:  # an event beyond the decoder's size limit
            return self._break(error.message)
        return self._translate(events)

    def _translate(self, events: list[SSEEvent]) -> bytes:
        if not events:
            return b""
        out: list[bytes] = []
        at = self._clock()  # one reading per upstream read: its events arrived together
        translator = self.translator
        for data, _ in events:
            if data == "[DONE]":
                self._saw_done = True
                continue
            try:
                payload = parse_event(data)
            except ValueError:
                self._bad_events += 1
                if self._bad_events >= MAX_BAD_EVENTS:
                    out.append(self._break("the backend is not sending OpenAI stream events"))
                    break
                continue
            self._bad_events = 0
            if isinstance(payload, dict):
                out.append(translator.feed(payload, at))
                if translator.failed:
                    break
        return b"".join(out)

    def _break(self, message: str) -> bytes:
        self._broken = message
        return self.translator.fail(message)

    def end(self) -> bytes:
        if self.failed:
            return b""
        # A last event the backend did not terminate with a blank line still counts.
        tail = self._translate(self._decoder.close())
        if self.failed:
            return tail
        if not (self._saw_done or self.translator.saw_finish):
            return tail + self._break("the backend's stream ended before it was complete")
        return tail + self.translator.finish(self._clock())

    def fail(self, message: str) -> bytes:
        return self.translator.fail(message)

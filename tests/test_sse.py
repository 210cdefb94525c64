"""The SSE decoder: field rules, line endings, and invariance under any chunking of the byte stream."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_proxy.errors import BackendError
from ollama_proxy.sse import SSEDecoder, SSEEvent


def decode_whole(stream: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return decoder.feed(stream) + decoder.close()


def decode_pieces(pieces: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    return events + decoder.close()


def cut(stream: bytes, positions: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(positions)), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


CASES = [
    pytest.param(b"data: x\n\n", [SSEEvent("x")], id="lf"),
    pytest.param(b"data: x\r\n\r\n", [SSEEvent("x")], id="crlf"),
    pytest.param(b"data: x\r\r", [SSEEvent("x")], id="cr"),
    pytest.param(
        b"data: a\r\n\ndata: b\n\r\ndata: c\r\r\n", [SSEEvent("a"), SSEEvent("b"), SSEEvent("c")], id="mixed"
    ),
    pytest.param(b"data:x\n\n", [SSEEvent("x")], id="no-space"),
    pytest.param(b"data:  x\n\n", [SSEEvent(" x")], id="only-one-space-dropped"),
    pytest.param(b"data: a\ndata: b\ndata:\n\n", [SSEEvent("a\nb\n")], id="multi-line"),
    pytest.param(b"data\n\n", [SSEEvent("")], id="field-without-colon"),
    pytest.param(b": OPENROUTER PROCESSING\n\n", [], id="comment-only"),
    pytest.param(b": OPENROUTER PROCESSING\n\ndata: {}\n\n", [SSEEvent("{}")], id="comment-then-data"),
    pytest.param(b"data: a\n: inside\ndata: b\n\n", [SSEEvent("a\nb")], id="comment-inside-event"),
    pytest.param(b"event: error\ndata: {}\n\n", [SSEEvent("{}", "error")], id="event-name"),
    pytest.param(b"event: ping\n\n", [], id="event-without-data-skipped"),
    pytest.param(b"event: ping\n\ndata: x\n\n", [SSEEvent("x")], id="event-name-resets"),
    pytest.param(b"event:\ndata: x\n\n", [SSEEvent("x")], id="empty-event-name-is-default"),
    pytest.param(b"id: 7\nretry: 100\ndata: x\n\n", [SSEEvent("x")], id="id-retry-ignored"),
    pytest.param(b"datum: x\ndata : y\n\n", [], id="unknown-fields-ignored"),
    pytest.param(b"data: [DONE]\n\n", [SSEEvent("[DONE]")], id="done-is-data"),
    pytest.param(b"\n\n\ndata: x\n\n\n\n", [SSEEvent("x")], id="extra-blank-lines"),
    pytest.param(b"\xef\xbb\xbfdata: x\n\n", [SSEEvent("x")], id="bom"),
    pytest.param("data: héllo 🦙\n\n".encode(), [SSEEvent("héllo 🦙")], id="utf8"),
    pytest.param(b"data: \xff\n\n", [SSEEvent("\ufffd")], id="invalid-utf8-replaced"),
    pytest.param(b"data: a: b\n\n", [SSEEvent("a: b")], id="colon-in-value"),
]


@pytest.mark.parametrize(("stream", "expected"), CASES)
def test_decodes(stream: bytes, expected: list[SSEEvent]) -> None:
    assert decode_whole(stream) == expected


@pytest.mark.parametrize(("stream", "expected"), CASES)
def test_every_single_split_point(stream: bytes, expected: list[SSEEvent]) -> None:
    for position in range(len(stream) + 1):
        assert decode_pieces(cut(stream, [position])) == expected, position


@pytest.mark.parametrize(("stream", "expected"), CASES)
def test_byte_at_a_time(stream: bytes, expected: list[SSEEvent]) -> None:
    assert decode_pieces([stream[i : i + 1] for i in range(len(stream))]) == expected


def test_feed_returns_only_complete_events() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\n\ndata: tw") == [SSEEvent("one")]
    assert decoder.feed(b"o\n") == []
    assert decoder.feed(b"\n") == [SSEEvent("two")]


def test_cr_then_lf_in_next_chunk_is_one_line_break() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    # Were the "\n" a line of its own, the event would be dispatched here, before its second data line.
    assert decoder.feed(b"\ndata: y\r") == []
    assert decoder.feed(b"\n\r\n") == [SSEEvent("x\ny")]


def test_split_inside_multibyte_character() -> None:
    stream = "data: 🦙\n\n".encode()
    decoder = SSEDecoder()
    assert decoder.feed(stream[:8]) == []
    assert decoder.feed(stream[8:]) == [SSEEvent("🦙")]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: x", [SSEEvent("x")]),
        (b"data: x\n", [SSEEvent("x")]),
        (b"data: x\r", [SSEEvent("x")]),
        (b"event: e\ndata: x\ndata: y", [SSEEvent("x\ny", "e")]),
        (b": comment", []),
        (b"", []),
    ],
)
def test_close_flushes_unterminated_event(stream: bytes, expected: list[SSEEvent]) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(stream) == []
    assert decoder.close() == expected


def test_close_resets() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: x")
    assert decoder.close() == [SSEEvent("x")]
    assert decoder.close() == []


def test_oversized_line_is_a_backend_error() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    decoder.feed(b"data: " + b"x" * 40)
    with pytest.raises(BackendError, match="exceeds 64 bytes"):
        decoder.feed(b"x" * 40)


def test_oversized_event_of_many_lines_is_a_backend_error() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    with pytest.raises(BackendError):
        decoder.feed(b"data: 0123456789\n" * 10)


def test_long_line_in_many_chunks() -> None:
    payload = b"y" * 100_000
    pieces = [b"data: "] + [payload[i : i + 7] for i in range(0, len(payload), 7)] + [b"\n\n"]
    assert decode_pieces(pieces) == [SSEEvent(payload.decode())]


# --- property: any chunking yields the events of the whole stream ------------------------------------------

LINE_ENDINGS = st.sampled_from([b"\n", b"\r\n", b"\r"])
# Any text without line breaks: SSE cannot carry them inside a line.
LINE_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    max_size=12,
)


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent], bool]:
    """A stream of random events with random line endings, comments and ignored fields, and its events."""
    blocks = draw(
        st.lists(
            st.tuples(
                st.one_of(st.none(), LINE_TEXT),
                st.lists(LINE_TEXT, max_size=3),
                st.booleans(),
            ),
            max_size=5,
        )
    )
    out = bytearray(b"\xef\xbb\xbf" if draw(st.booleans()) else b"")
    expected: list[SSEEvent] = []
    for name, data_lines, with_extras in blocks:
        lines: list[bytes] = []
        if with_extras:
            lines.append(b": " + draw(LINE_TEXT).encode())
            lines.append(b"id: " + draw(LINE_TEXT).encode())
        if name is not None:
            lines.append(b"event: " + name.encode())
        for text in data_lines:
            # With the space the value may start with anything; without it, it must not start with a space.
            if draw(st.booleans()) or text.startswith(" "):
                lines.append(b"data: " + text.encode())
            else:
                lines.append(b"data:" + text.encode())
        lines.append(b"")
        for line in lines:
            ending = draw(LINE_ENDINGS)
            if not line and ending == b"\n" and out.endswith(b"\r"):
                # "\r" then "\n" would be one line break, swallowing this blank line.
                ending = b"\r\n"
            out += line + ending
        if data_lines:
            expected.append(SSEEvent("\n".join(data_lines), name or None))
    # Sometimes the final event is not closed by a blank line; close() must still deliver it.
    unterminated = bool(blocks) and draw(st.booleans())
    stream = bytes(out)
    if unterminated and stream:
        for ending in (b"\r\n", b"\n", b"\r"):
            if stream.endswith(ending):
                stream = stream[: -len(ending)]
                break
    return stream, expected, unterminated


@settings(max_examples=300)
@given(sse_streams())
def test_property_every_split_point(case: tuple[bytes, list[SSEEvent], bool]) -> None:
    stream, expected, _ = case
    assert decode_whole(stream) == expected
    for position in range(len(stream) + 1):
        assert decode_pieces(cut(stream, [position])) == expected


@settings(max_examples=300)
@given(sse_streams(), st.data())
def test_property_random_chunking(case: tuple[bytes, list[SSEEvent], bool], data: st.DataObject) -> None:
    stream, expected, _ = case
    positions = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert decode_pieces(cut(stream, positions)) == expected

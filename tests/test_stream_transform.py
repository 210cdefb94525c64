"""The whole streaming translation (SSE decoder + translator + NDJSON framing) on recorded backend streams,
split at arbitrary bytes: the NDJSON that leaves must not depend on how TCP cut the stream."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_proxy.translate.replies import Instant, Reasoning, StreamTranslator
from ollama_proxy.translate.stream import MAX_BAD_EVENTS, EventStreamTransform, OllamaStream, OllamaWhole
from ollama_proxy.wire.ollama import ndjson_line


def _sse(*events: Any, newline: str = "\n") -> bytes:
    out = []
    for event in events:
        text = event if isinstance(event, str) else "data: " + json.dumps(event, ensure_ascii=False)
        out.append(text + newline + newline)
    return "".join(out).encode()


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


USAGE = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}

RECORDED: dict[str, bytes] = {
    # vLLM: reasoning in `reasoning`, tool-call arguments in fragments, usage chunk, [DONE].
    "vllm": _sse(
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"reasoning": "Need the "}),
        _chunk({"reasoning": "weather."}),
        _chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "chatcmpl-tool-1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Zürich"}'}}]}),
        _chunk({}, "tool_calls"),
        USAGE,
        "data: [DONE]",
    ),
    # OpenAI: usage null on every chunk until the last, CRLF line endings.
    "openai": _sse(
        _chunk({"role": "assistant", "content": "", "refusal": None}, usage=None),
        _chunk({"content": "Grüß "}, usage=None),
        _chunk({"content": "dich 🙂"}, usage=None),
        _chunk({}, "stop", usage=None),
        USAGE,
        "data: [DONE]",
        newline="\r\n",
    ),
    # OpenRouter: processing comments, reasoning field, role on every delta.
    "openrouter": _sse(
        ": OPENROUTER PROCESSING",
        _chunk({"role": "assistant", "content": "", "reasoning": "Hmm."}),
        ": OPENROUTER PROCESSING",
        _chunk({"role": "assistant", "content": "Bonjour"}),
        _chunk({"role": "assistant", "content": ""}, "stop"),
        USAGE,
        "data: [DONE]",
    ),
    # llama.cpp: content null first, reasoning_content, timings, finish then usage.
    "llamacpp": _sse(
        _chunk({"role": "assistant", "content": None}),
        _chunk({"reasoning_content": "think"}),
        _chunk({"content": "Hi"}),
        _chunk({}, "length", timings={"prompt_ms": 3.5, "predicted_ms": 20.0}),
        USAGE,
        "data: [DONE]",
    ),
}


def _clock() -> Instant:
    return Instant(1748772000.5, 1_000_000)


def _run(data: bytes, cuts: list[int]) -> bytes:
    transform = EventStreamTransform(
        OllamaStream(StreamTranslator(model="m", kind="chat", started=Instant(1748772000.0, 0))), clock=_clock
    )
    out = b""
    previous = 0
    for cut in [*sorted(cuts), len(data)]:
        out += transform.feed(data[previous:cut])
        previous = cut
    return out + transform.end()


@pytest.mark.parametrize("flavour", sorted(RECORDED))
def test_recorded_streams_translate(flavour: str) -> None:
    lines = [json.loads(line) for line in _run(RECORDED[flavour], []).splitlines()]
    final = lines[-1]
    assert final["done"] is True
    assert (final["prompt_eval_count"], final["eval_count"]) == (9, 4)
    assert not any(line.get("done") for line in lines[:-1])
    content = "".join(line["message"]["content"] for line in lines)
    thinking = "".join(line["message"].get("thinking", "") for line in lines)
    expected = {
        "vllm": ("", "Need the weather."),
        "openai": ("Grüß dich 🙂", ""),
        "openrouter": ("Bonjour", "Hmm."),
        "llamacpp": ("Hi", "think"),
    }
    assert (content, thinking) == expected[flavour]
    if flavour == "vllm":
        calls = [call for line in lines for call in line["message"].get("tool_calls", [])]
        assert calls == [
            {
                "id": "chatcmpl-tool-1",
                "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Zürich"}},
            }
        ]
        assert final["done_reason"] == "stop"
    if flavour == "llamacpp":
        assert final["done_reason"] == "length"


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(RECORDED)), st.data())
def test_any_split_gives_the_same_ndjson(flavour: str, data: st.DataObject) -> None:
    stream = RECORDED[flavour]
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=40))
    assert _run(stream, cuts) == _run(stream, [])


@pytest.mark.parametrize("flavour", sorted(RECORDED))
def test_every_single_cut_gives_the_same_ndjson(flavour: str) -> None:
    stream = RECORDED[flavour]
    whole = _run(stream, [])
    for cut in range(len(stream) + 1):
        assert _run(stream, [cut]) == whole, cut
    assert _run(stream, list(range(len(stream)))) == whole  # one byte at a time


def test_a_last_event_without_its_blank_line_still_counts() -> None:
    stream = _sse(_chunk({"content": "x"}), _chunk({}, "stop")) + b"data: " + json.dumps(USAGE).encode()
    final = json.loads(_run(stream, []).splitlines()[-1])
    assert final["eval_count"] == 4


def test_a_backend_that_is_not_speaking_sse_ends_with_an_error() -> None:
    stream = b"".join(b"data: not json %d\n\n" % i for i in range(MAX_BAD_EVENTS))
    lines = _run(stream, []).splitlines()
    assert [json.loads(line) for line in lines] == [
        {"error": "the backend is not sending OpenAI stream events"}
    ]


def test_an_error_event_ends_the_stream_without_done() -> None:
    stream = _sse(
        _chunk({"content": "x"}), {"error": {"message": "overloaded", "code": 503}}, _chunk({"content": "y"})
    )
    lines = [json.loads(line) for line in _run(stream, []).splitlines()]
    assert lines[-1] == {"error": "overloaded"}
    assert [line["message"]["content"] for line in lines[:-1]] == ["x"]


# --- the template path for plain content deltas writes what the general path writes ------------------------


class _GeneralStream(OllamaStream):
    """OllamaStream without its template path: every event through ``StreamTranslator.feed``."""

    def feed(self, event: Mapping[str, Any], at: Instant) -> bytes:
        return b"".join(ndjson_line(chunk) for chunk in self.translator.feed(event, at))


class _GeneralWhole(OllamaWhole):
    def feed(self, event: Mapping[str, Any], at: Instant) -> bytes:
        self._keep(self.translator.feed(event, at))
        return b""


_LOGPROBS = {"content": [{"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}]}
_TEXT = st.one_of(
    st.text(max_size=8), st.sampled_from(["<think>", "<thi", "nk>why</think>", "</think>", " ", "\n"])
)
_EVENTS = st.one_of(
    st.builds(lambda text: _chunk({"content": text}), _TEXT),
    st.builds(lambda text: _chunk({"role": "assistant", "content": text}), _TEXT),
    st.builds(lambda text: _chunk({"content": text, "reasoning_content": None, "tool_calls": None}), _TEXT),
    st.builds(lambda text: _chunk({"content": text}, usage=None), _TEXT),
    st.builds(
        lambda text: _chunk({"content": text}, usage={"prompt_tokens": 3, "completion_tokens": 2}), _TEXT
    ),
    st.builds(lambda text: _chunk({"reasoning": text}), _TEXT),
    st.builds(lambda text: _chunk({"content": text, "reasoning": "r"}), _TEXT),
    st.builds(
        lambda text: {"choices": [{"index": 0, "delta": {"content": text}, "logprobs": _LOGPROBS}]}, _TEXT
    ),
    st.builds(lambda reason: _chunk({}, reason), st.sampled_from(["stop", "length"])),
    st.just(USAGE),
    st.just({"choices": "nonsense"}),
    st.just(_chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{}"}}]})),
)


@settings(max_examples=300)
@given(
    st.lists(_EVENTS, max_size=12),
    st.sampled_from(["chat", "generate"]),
    st.sampled_from(list(Reasoning)),
    st.sampled_from(["bench-model", 'qwen3:8b "quoted" é']),
)
def test_the_template_path_writes_what_the_general_path_writes(
    events: list[dict[str, Any]], kind: Any, think: Reasoning, model: str
) -> None:
    """``OllamaStream`` writes a plain content delta from a template (``StreamTranslator.plain_content``,
    ``ContentLines``); byte for byte, and in the state it leaves, that is what the general path makes of
    it, and the whole reply folded from the stream is the same too."""
    outputs = []
    for stream_type, whole_type in ((OllamaStream, OllamaWhole), (_GeneralStream, _GeneralWhole)):
        stream = stream_type(StreamTranslator(model=model, kind=kind, started=Instant(1.0, 0), think=think))
        whole = whole_type(
            StreamTranslator(model=model, kind=kind, started=Instant(1.0, 0), think=think, whole=True)
        )
        lines = []
        for number, event in enumerate(events):
            at = Instant(1748772000.0 + number / 3, (number + 1) * 1000)  # a new reading for each event
            lines.append(stream.feed(event, at))
            whole.feed(event, at)
        end = Instant(1748772009.0, 99_000)
        lines.append(stream.finish(end))
        whole.finish(end)
        translator = stream.translator
        outputs.append(
            (
                lines,
                whole.reply,
                whole.error,
                translator.usage,
                translator.first_token_at,
                translator.saw_reasoning,
                translator.failed,
            )
        )
    assert outputs[0] == outputs[1]


def test_plain_content_deltas_take_the_template_path() -> None:
    """The events a backend mostly sends do take it (else the test above would compare the general path
    with itself)."""
    translator = StreamTranslator(model="m", kind="chat", started=Instant(1.0, 0))
    at = Instant(1748772000.0, 1000)
    for delta in (
        {"role": "assistant", "content": "Hi"},
        {"content": " there"},
        {"content": "!", "tool_calls": None},
    ):
        assert translator.plain_content(_chunk(delta), at) == delta["content"]
    for event in (
        _chunk({"content": ""}),
        _chunk({"reasoning": "r"}),
        _chunk({"content": "x"}, "stop"),
        USAGE,
    ):
        assert translator.plain_content(event, at) is None

"""The whole streaming translation (SSE decoder + translator + NDJSON framing) on recorded backend streams,
split at arbitrary bytes: the NDJSON that leaves must not depend on how TCP cut the stream."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_proxy.translate.replies import Instant, StreamTranslator
from ollama_proxy.translate.stream import MAX_BAD_EVENTS, EventStreamTransform, OllamaStream


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

"""OpenAI replies and stream events -> Ollama replies and chunks, checked with the real ollama SDK models."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ollama._types import ChatResponse, GenerateResponse
from openai.types import Completion
from openai.types.chat import ChatCompletion

from ollama_proxy.errors import BackendError
from ollama_proxy.translate.replies import (
    Instant,
    Reasoning,
    StreamTranslator,
    ThinkTagSplitter,
    carries_reasoning,
    completion_to_reply,
)
from ollama_proxy.translate.timestamps import rfc3339_utc
from ollama_proxy.wire.ollama import ndjson_line
from tests.support import chat_chunk, token_usage

CALL_ID = re.compile(r"call_[a-z0-9]{8}")
CREATED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
BASE_WALL = 1_748_772_000.0  # 2025-06-01T10:00:00Z


def at(ms: int) -> Instant:
    return Instant(wall=BASE_WALL + ms / 1000, mono_ns=ms * 1_000_000)


def sdk_valid(chunk: dict[str, Any], kind: Literal["chat", "generate"]) -> dict[str, Any]:
    """What the ollama SDK does with each NDJSON line: json.loads, raise on error, build its model."""
    line = ndjson_line(chunk)
    assert line.endswith(b"\n")
    assert b"\n" not in line[:-1]
    obj = json.loads(line)
    assert obj == chunk
    if "error" in obj:
        assert isinstance(obj["error"], str)
        assert obj["error"]
        return obj
    assert CREATED_AT.fullmatch(obj["created_at"])
    assert isinstance(obj["done"], bool)
    if kind == "chat":
        parsed = ChatResponse.model_validate(obj)
        assert parsed.message.role == "assistant"
        assert isinstance(obj["message"]["content"], str)
        assert "response" not in obj
    else:
        GenerateResponse.model_validate(obj)
        assert isinstance(obj["response"], str)
        assert "message" not in obj
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        if key in obj:
            assert isinstance(obj[key], int)
            assert obj[key] >= 1
    return obj


def text_event(text: str, finish_reason: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1748772000,
        "model": "backend",
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
    }
    Completion.model_validate({**event, "choices": [{**event["choices"][0], "finish_reason": "stop"}]})
    return event


def run(
    events: list[dict[str, Any]],
    kind: Literal["chat", "generate"] = "chat",
    *,
    think: Reasoning = Reasoning.RELAY,
    whole: bool = False,
) -> tuple[list[dict[str, Any]], StreamTranslator]:
    """Feed one event per 100 ms starting at 100 ms, finish 100 ms after the last; check every chunk."""
    translator = StreamTranslator(model="qwen3:8b", kind=kind, started=at(0), think=think, whole=whole)
    out: list[dict[str, Any]] = []
    for i, event in enumerate(events, start=1):
        out.extend(translator.feed(event, at(100 * i)))
    out.extend(translator.finish(at(100 * (len(events) + 1))))
    for chunk in out:
        sdk_valid(chunk, kind)
    return out, translator


def contents(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["message"]["content"] for c in chunks if "message" in c)


def thoughts(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["message"].get("thinking", "") for c in chunks if "message" in c)


# --- time and framing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wall", "text"),
    [
        (0.0, "1970-01-01T00:00:00Z"),
        (BASE_WALL, "2025-06-01T10:00:00Z"),
        (BASE_WALL + 0.5, "2025-06-01T10:00:00.5Z"),
        (BASE_WALL + 0.1, "2025-06-01T10:00:00.1Z"),
        (BASE_WALL + 0.123456, "2025-06-01T10:00:00.123456Z"),
        (BASE_WALL + 0.0000004, "2025-06-01T10:00:00Z"),
        (BASE_WALL + 0.9999996, "2025-06-01T10:00:01Z"),
        (-0.5, "1969-12-31T23:59:59.5Z"),
        (951782400.25, "2000-02-29T00:00:00.25Z"),
    ],
)
def test_rfc3339_utc(wall: float, text: str) -> None:
    assert rfc3339_utc(wall) == text


def test_ndjson_line_is_compact_utf8() -> None:
    assert ndjson_line({"a": "Zürich 🦙", "b": [1, {"c": None}], "d": "x\ny"}) == (
        '{"a":"Zürich 🦙","b":[1,{"c":null}],"d":"x\\ny"}\n'.encode()
    )


def test_ndjson_line_survives_a_lone_surrogate() -> None:
    line = ndjson_line({"response": "\ud83d"})
    assert line == b'{"response":"\\ud83d"}\n'
    assert json.loads(line) == {"response": "\ud83d"}


@given(st.dictionaries(st.text(), st.one_of(st.text(), st.integers(), st.none(), st.booleans())))
def test_property_ndjson_is_one_line(obj: dict[str, Any]) -> None:
    line = ndjson_line(obj)
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")
    assert json.loads(line) == obj


# --- content and thinking -----------------------------------------------------------------------------------


def test_chat_stream() -> None:
    chunks, translator = run(
        [
            chat_chunk({"role": "assistant", "content": ""}),
            chat_chunk({"content": "Hel"}),
            chat_chunk({"content": "lo"}),
            chat_chunk({}, "stop"),
            chat_chunk(choices=False, usage=token_usage(14, 2)),
        ]
    )
    assert chunks == [
        {
            "model": "qwen3:8b",
            "created_at": "2025-06-01T10:00:00.2Z",
            "message": {"role": "assistant", "content": "Hel"},
            "done": False,
        },
        {
            "model": "qwen3:8b",
            "created_at": "2025-06-01T10:00:00.3Z",
            "message": {"role": "assistant", "content": "lo"},
            "done": False,
        },
        {
            "model": "qwen3:8b",
            "created_at": "2025-06-01T10:00:00.6Z",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "total_duration": 600_000_000,
            "prompt_eval_count": 14,
            "prompt_eval_duration": 200_000_000,
            "eval_count": 2,
            "eval_duration": 400_000_000,
        },
    ]
    assert translator.usage == (14, 2)
    assert translator.first_token_at == at(200)


def test_generate_stream() -> None:
    chunks, _ = run(
        [chat_chunk({"reasoning": "hm"}), chat_chunk({"content": "Blue."}, "length")],
        kind="generate",
    )
    assert chunks[0] == {
        "model": "qwen3:8b",
        "created_at": "2025-06-01T10:00:00.1Z",
        "response": "",
        "thinking": "hm",
        "done": False,
    }
    assert chunks[1] == {
        "model": "qwen3:8b",
        "created_at": "2025-06-01T10:00:00.2Z",
        "response": "Blue.",
        "done": False,
    }
    assert chunks[2]["response"] == ""
    assert chunks[2]["done_reason"] == "length"
    assert "message" not in chunks[2]


def test_raw_completion_stream() -> None:
    chunks, _ = run([text_event("def "), text_event(""), text_event("f():", "stop")], kind="generate")
    assert [c["response"] for c in chunks] == ["def ", "f():", ""]
    assert chunks[-1]["done"] is True


@pytest.mark.parametrize(
    ("delta", "thinking"),
    [
        ({"reasoning": "a"}, "a"),
        ({"reasoning_content": "a"}, "a"),
        # vLLM for a while sent both fields with the same text: it must not be doubled.
        ({"reasoning": "a", "reasoning_content": "a"}, "a"),
        ({"reasoning": None, "reasoning_content": "a"}, "a"),
        ({"reasoning": "", "reasoning_content": "a"}, "a"),
    ],
)
def test_reasoning_fields(delta: dict[str, Any], thinking: str) -> None:
    chunks, _ = run([chat_chunk(delta)])
    assert chunks[0]["message"] == {"role": "assistant", "content": "", "thinking": thinking}


def test_content_and_reasoning_in_one_delta() -> None:
    chunks, _ = run([chat_chunk({"reasoning_content": "t", "content": "c"})])
    assert chunks[0]["message"] == {"role": "assistant", "content": "c", "thinking": "t"}


@pytest.mark.parametrize(
    "delta",
    [{}, {"role": "assistant"}, {"role": "assistant", "content": ""}, {"content": None}, {"reasoning": ""}],
)
def test_empty_deltas_emit_nothing(delta: dict[str, Any]) -> None:
    chunks, translator = run([chat_chunk(delta)])
    assert len(chunks) == 1
    assert chunks[0]["done"] is True
    assert translator.first_token_at is None


@pytest.mark.parametrize(
    ("finish_reason", "done_reason"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "stop"),
        ("function_call", "stop"),
        ("content_filter", "stop"),
        ("something_new", "stop"),
        (None, "stop"),
    ],
)
def test_done_reason(finish_reason: str | None, done_reason: str) -> None:
    chunks, _ = run([chat_chunk({"content": "x"}), chat_chunk({}, finish_reason)])
    assert chunks[-1]["done_reason"] == done_reason


def test_done_reason_from_non_string_is_stop() -> None:
    event = chat_chunk({"content": "x"})
    event["choices"][0]["finish_reason"] = 3
    chunks, _ = run([event])
    assert chunks[-1]["done_reason"] == "stop"


# --- metrics ------------------------------------------------------------------------------------------------


def test_no_output_means_eval_duration_is_everything() -> None:
    chunks, _ = run([chat_chunk({}, "stop")])
    final = chunks[-1]
    assert final["total_duration"] == 200_000_000
    assert final["eval_duration"] == 200_000_000
    assert "prompt_eval_duration" not in final
    assert "prompt_eval_count" not in final
    assert "eval_count" not in final
    assert "load_duration" not in final


def test_zero_durations_become_one_nanosecond() -> None:
    translator = StreamTranslator(model="m", kind="chat", started=at(0))
    translator.feed(chat_chunk({"content": "x"}), at(0))
    final = translator.finish(at(0))[-1]
    assert final["total_duration"] == 1
    assert final["prompt_eval_duration"] == 1
    assert final["eval_duration"] == 1


def test_clock_going_backwards_never_gives_negative_durations() -> None:
    translator = StreamTranslator(model="m", kind="chat", started=Instant(BASE_WALL, 10_000))
    translator.feed(chat_chunk({"content": "x"}), Instant(BASE_WALL, 5_000))
    final = sdk_valid(translator.finish(Instant(BASE_WALL, 1_000))[-1], "chat")
    assert final["total_duration"] == final["prompt_eval_duration"] == final["eval_duration"] == 1


@pytest.mark.parametrize(
    ("raw", "counts"),
    [
        (token_usage(0, 0), {}),
        ({"prompt_tokens": 5}, {"prompt_eval_count": 5}),
        ({"prompt_tokens": 5, "completion_tokens": None}, {"prompt_eval_count": 5}),
        ({"prompt_tokens": True, "completion_tokens": "3"}, {}),
        (token_usage(5, 7), {"prompt_eval_count": 5, "eval_count": 7}),
    ],
)
def test_counts(raw: dict[str, Any], counts: dict[str, int]) -> None:
    event = chat_chunk({"content": "x"})
    event["usage"] = raw
    final = run([event])[0][-1]
    assert {k: v for k, v in final.items() if k.endswith("_count")} == counts


def test_later_usage_replaces_earlier() -> None:
    events = [
        chat_chunk({"content": "x"}, usage=token_usage(3, 1)),
        chat_chunk(choices=False, usage=token_usage(3, 9)),
    ]
    chunks, translator = run(events)
    assert chunks[-1]["eval_count"] == 9
    assert translator.usage == (3, 9)


# --- tool calls ---------------------------------------------------------------------------------------------


def fragment(
    index: int | None, *, id: str | None = None, name: str | None = None, args: Any = None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if index is not None:
        out["index"] = index
    if id is not None:
        out["id"] = id
        out["type"] = "function"
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if args is not None:
        function["arguments"] = args
    if function:
        out["function"] = function
    return out


def tool_chunks(chunks: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [c["message"]["tool_calls"] for c in chunks if "message" in c and "tool_calls" in c["message"]]


def test_openai_style_fragments() -> None:
    events = [
        chat_chunk({"role": "assistant", "content": None}),
        chat_chunk({"tool_calls": [fragment(0, id="call_abc", name="get_weather", args="")]}),
        chat_chunk({"tool_calls": [fragment(0, args='{"ci')]}),
        chat_chunk({"tool_calls": [fragment(0, args='ty": "Paris"}')]}),
        chat_chunk({"tool_calls": [fragment(1, id="call_def", name="get_time", args='{"tz":')]}),
        chat_chunk({"tool_calls": [fragment(1, args=' "CET"}')]}),
        chat_chunk({}, "tool_calls"),
        chat_chunk(choices=False, usage=token_usage(40, 20)),
    ]
    chunks, translator = run(events)
    assert chunks[0] == {
        "model": "qwen3:8b",
        "created_at": "2025-06-01T10:00:00.7Z",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_abc",
                    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
                },
                {"id": "call_def", "function": {"index": 1, "name": "get_time", "arguments": {"tz": "CET"}}},
            ],
        },
        "done": False,
    }
    assert chunks[1]["done"] is True
    assert chunks[1]["done_reason"] == "stop"
    assert len(chunks) == 2
    assert translator.first_token_at == at(200)
    parsed = ChatResponse.model_validate(chunks[0])
    assert parsed.message.tool_calls is not None
    assert parsed.message.tool_calls[0].function.arguments == {"city": "Paris"}


def test_whole_call_in_one_delta_with_repeated_name_and_no_finish_reason() -> None:
    events = [
        chat_chunk({"tool_calls": [fragment(0, id="call_1", name="f", args='{"a": 1}')]}),
        chat_chunk({"tool_calls": [fragment(0, name="f", args="")]}),
    ]
    chunks, _ = run(events)
    assert tool_chunks(chunks) == [
        [{"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}]
    ]
    assert chunks[-1]["done"] is True


def test_fragments_without_index() -> None:
    """Not OpenAI's shape (index is required there), but some servers leave it out."""
    events = [
        chat_chunk({"tool_calls": [fragment(None, id="call_1", name="f", args='{"a"')]}, standard=False),
        chat_chunk({"tool_calls": [fragment(None, args=": 1}")]}, standard=False),
        chat_chunk({"tool_calls": [fragment(None, id="call_2", name="g", args="{}")]}, standard=False),
        chat_chunk({"tool_calls": [fragment(None, id="call_1", args="")]}, standard=False),
    ]
    calls = tool_chunks(run(events)[0])[0]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("call_1", "f", {"a": 1}),
        ("call_2", "g", {}),
    ]


def test_arguments_sent_as_an_object() -> None:
    event = chat_chunk({})
    event["choices"][0]["delta"] = {"tool_calls": [fragment(0, id="call_1", name="f", args={"a": [1]})]}
    assert tool_chunks(run([event])[0])[0][0]["function"]["arguments"] == {"a": [1]}


@pytest.mark.parametrize("args", ["", "   ", "null", None])
def test_empty_arguments_are_an_empty_object(args: str | None) -> None:
    events = [chat_chunk({"tool_calls": [fragment(0, id="call_1", name="f", args=args)]}, "tool_calls")]
    assert tool_chunks(run(events)[0])[0][0]["function"]["arguments"] == {}


def test_missing_id_is_synthesized_deterministically() -> None:
    events = [chat_chunk({"tool_calls": [fragment(0, name="f", args="{}")]}, "tool_calls")]
    first = tool_chunks(run(events)[0])[0][0]["id"]
    again = tool_chunks(run(events)[0])[0][0]["id"]
    assert CALL_ID.fullmatch(first)
    assert first == again


def test_content_before_tool_calls_is_kept() -> None:
    events = [
        chat_chunk({"content": "Let me check."}),
        chat_chunk({"tool_calls": [fragment(0, id="call_1", name="f", args="{}")]}, "tool_calls"),
    ]
    chunks, _ = run(events)
    assert [c["message"]["content"] for c in chunks] == ["Let me check.", "", ""]
    assert len(tool_chunks(chunks)) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ('{"a": ', "backend returned invalid JSON arguments for tool call 'f'"),
        ("[1, 2]", "backend returned non-object arguments for tool call 'f'"),
        ('"text"', "backend returned non-object arguments for tool call 'f'"),
        ("{} {}", "backend returned invalid JSON arguments for tool call 'f'"),
    ],
)
def test_bad_arguments_end_the_stream_with_an_error(args: str, message: str) -> None:
    translator = StreamTranslator(model="m", kind="chat", started=at(0))
    assert translator.feed(chat_chunk({"content": "ok"}), at(1))[0]["message"]["content"] == "ok"
    out = translator.feed(
        chat_chunk({"tool_calls": [fragment(0, id="call_1", name="f", args=args)]}, "stop"), at(2)
    )
    assert out == [{"error": message}]
    assert translator.failed
    assert translator.finish(at(3)) == []
    assert translator.feed(chat_chunk({"content": "more"}), at(4)) == []


def test_bad_arguments_detected_at_finish() -> None:
    translator = StreamTranslator(model="m", kind="chat", started=at(0))
    assert translator.feed(chat_chunk({"tool_calls": [fragment(0, id="c", name="f", args="{")]}), at(1)) == []
    assert translator.finish(at(2)) == [
        {"error": "backend returned invalid JSON arguments for tool call 'f'"}
    ]
    assert translator.finish(at(3)) == []


def test_nameless_tool_call_is_an_error() -> None:
    out, _ = run([chat_chunk({"tool_calls": [fragment(0, id="c", args="{}")]})])
    assert out == [{"error": "backend returned a tool call without a function name"}]


def test_generate_relays_tool_calls_as_ollama_does() -> None:
    events = [chat_chunk({"tool_calls": [fragment(0, id="c", name="f", args='{"x": 1}')]}, "tool_calls")]
    chunks, _ = run(events, "generate")
    call = {"id": "c", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}
    assert chunks[0]["tool_calls"] == [call]
    assert chunks[0]["done"] is False
    assert chunks[-1]["done"] is True
    (whole,), _ = run(events, "generate", whole=True)
    assert whole["tool_calls"] == [call]
    # Ollama's GenerateResponse order: the metrics, then tool_calls.
    assert list(whole)[-2:] == ["eval_duration", "tool_calls"]


# --- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "text"),
    [
        ({"message": "out of memory", "type": "server_error"}, "out of memory"),
        ({"code": 502, "message": "Provider returned error"}, "Provider returned error"),
        ("rate limited", "rate limited"),
        ({"code": 500}, 'backend error: {"code": 500}'),
        (["x"], 'backend error: ["x"]'),
    ],
)
def test_error_event(error: Any, text: str) -> None:
    translator = StreamTranslator(model="m", kind="chat", started=at(0))
    translator.feed(chat_chunk({"content": "partial"}), at(1))
    assert translator.feed({"error": error}, at(2)) == [{"error": text}]
    assert translator.finish(at(3)) == []
    sdk_valid({"error": text}, "chat")


def test_openrouter_mid_stream_error_with_choices() -> None:
    event = chat_chunk({"content": ""}, "error")
    event["error"] = {"code": 502, "message": "upstream died"}
    out, translator = run([chat_chunk({"content": "a"}), event])
    assert out[-1] == {"error": "upstream died"}
    assert translator.failed


@pytest.mark.parametrize("error", [None, "", {}])
def test_falsy_error_fields_are_not_errors(error: Any) -> None:
    event = chat_chunk({"content": "a"})
    event["error"] = error
    chunks, translator = run([event])
    assert not translator.failed
    assert chunks[-1]["done"] is True


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"choices": None},
        {"choices": [None]},
        {"choices": "x"},
        {"choices": [{"delta": "x"}]},
        {"choices": [{"delta": {"content": 5, "reasoning": ["x"]}}]},
        {"choices": [{"delta": {"tool_calls": "x"}}]},
        {"choices": [{"delta": {"tool_calls": [None, 1]}}]},
        {"usage": "x"},
    ],
)
def test_odd_events_are_ignored(event: dict[str, Any]) -> None:
    chunks, translator = run([event])
    assert len(chunks) == 1
    assert chunks[0]["done"] is True
    assert not translator.failed


def test_finish_twice_gives_one_done() -> None:
    translator = StreamTranslator(model="m", kind="chat", started=at(0))
    assert len(translator.finish(at(1))) == 1
    assert translator.finish(at(2)) == []
    assert translator.feed(chat_chunk({"content": "late"}), at(3)) == []


# --- logprobs -----------------------------------------------------------------------------------------------

CHAT_LOGPROBS = {
    "content": [
        {
            "token": "Hi",
            "logprob": -0.25,
            "bytes": [72, 105],
            "top_logprobs": [
                {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
                {"token": "Hey", "logprob": -1.5, "bytes": None},
            ],
        },
        {"token": "!", "logprob": float("-inf"), "bytes": None, "top_logprobs": []},
    ]
}
OLLAMA_LOGPROBS = [
    {
        "token": "Hi",
        "logprob": -0.25,
        "bytes": [72, 105],
        "top_logprobs": [
            {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
            {"token": "Hey", "logprob": -1.5},
        ],
    },
    {"token": "!", "logprob": -9999.0},
]


def test_logprobs_on_chunks() -> None:
    chunks, _ = run([chat_chunk({"content": "Hi!"}, logprobs=CHAT_LOGPROBS)])
    assert chunks[0]["logprobs"] == OLLAMA_LOGPROBS
    assert "logprobs" not in chunks[1]
    parsed = ChatResponse.model_validate(chunks[0])
    assert parsed.logprobs is not None
    assert parsed.logprobs[0].top_logprobs is not None


def test_logprobs_of_a_silent_delta_ride_on_the_next_chunk() -> None:
    events = [
        chat_chunk(
            {"content": ""},
            logprobs={"content": [{"token": "<s>", "logprob": -0.1, "bytes": None, "top_logprobs": []}]},
        ),
        chat_chunk(
            {"content": "a"},
            logprobs={"content": [{"token": "a", "logprob": -0.2, "bytes": None, "top_logprobs": []}]},
        ),
        chat_chunk(
            {},
            "stop",
            logprobs={"content": [{"token": "</s>", "logprob": -0.3, "bytes": None, "top_logprobs": []}]},
        ),
    ]
    chunks, _ = run(events)
    assert [lp["token"] for lp in chunks[0]["logprobs"]] == ["<s>", "a"]
    assert [lp["token"] for lp in chunks[1]["logprobs"]] == ["</s>"]
    assert chunks[1]["done"] is True


def test_legacy_completion_logprobs() -> None:
    event = text_event("Hi")
    event["choices"][0]["logprobs"] = {
        "tokens": ["H", "i"],
        "token_logprobs": [-0.5, None],
        "top_logprobs": [{"H": -0.5, "J": -2.0}, None],
        "text_offset": [0, 1],
    }
    chunks, _ = run([event], "generate")
    assert chunks[0]["logprobs"] == [
        {
            "token": "H",
            "logprob": -0.5,
            "top_logprobs": [{"token": "H", "logprob": -0.5}, {"token": "J", "logprob": -2.0}],
        }
    ]
    GenerateResponse.model_validate(chunks[0])


# --- inline <think> tags ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deltas", "thinking", "content"),
    [
        (["<think>\nhm\n</think>\n\nAnswer"], "hm", "Answer"),
        (["<thi", "nk>h", "m</th", "ink>", "\n", "Ans", "wer"], "hm", "Answer"),
        (["  <think>a b</think>c"], "a b", "c"),
        (["No tags <think>x</think>"], "", "No tags <think>x</think>"),
        (["<thinking>x"], "", "<thinking>x"),
        (["<think>never closed"], "never closed", ""),
        (["<thi"], "", "<thi"),
        (["\n\n"], "", "\n\n"),
        (["<think></think>"], "", ""),
        (["<think>a</thinkX</think>b"], "a</thinkX", "b"),
        (["<think>a <", "/b> c</think>d"], "a </b> c", "d"),
    ],
)
def test_think_tags(deltas: list[str], thinking: str, content: str) -> None:
    chunks, _ = run([chat_chunk({"content": d}) for d in deltas], think=Reasoning.SPLIT)
    assert thoughts(chunks) == thinking
    assert contents(chunks) == content


def test_think_tags_off_by_default() -> None:
    chunks, _ = run([chat_chunk({"content": "<think>x</think>y"})])
    assert contents(chunks) == "<think>x</think>y"


@pytest.mark.parametrize(
    "events",
    [
        [chat_chunk({"reasoning_content": "secret"}), chat_chunk({"content": "Answer"}, "stop")],
        [chat_chunk({"reasoning": "secret", "content": "Answer"}, "stop")],
        [chat_chunk({"content": "<think>se"}), chat_chunk({"content": "cret</think>Answer"}, "stop")],
        [chat_chunk({"content": "<think></think>\n\nAnswer"}, "stop")],
    ],
)
@pytest.mark.parametrize("whole", [False, True])
def test_think_false_lets_no_reasoning_through(events: list[dict[str, Any]], whole: bool) -> None:
    chunks, translator = run(events, think=Reasoning.DROP, whole=whole)
    assert thoughts(chunks) == ""
    assert all("thinking" not in chunk.get("message", {}) for chunk in chunks)
    assert contents(chunks) == "Answer"
    # The model reasoned all the same (an empty block too: Qwen3 told not to think writes one).
    assert translator.saw_reasoning


@pytest.mark.parametrize(
    ("events", "reasoned"),
    [
        ([chat_chunk({"reasoning": "r"})], True),
        ([chat_chunk({"content": "  <thi"}), chat_chunk({"content": "nk>x</think>y"})], True),
        ([chat_chunk({"content": "no <think> here"})], False),
        ([chat_chunk({"content": "plain"}), chat_chunk({"content": "<think>late"})], False),
        ([chat_chunk({"reasoning": ""}), chat_chunk({"content": "x"})], False),
    ],
)
@pytest.mark.parametrize("think", list(Reasoning))
def test_the_translator_notes_whether_the_model_reasoned(
    events: list[dict[str, Any]], reasoned: bool, think: Reasoning
) -> None:
    _, translator = run(events, think=think)
    assert translator.saw_reasoning is reasoned


def test_a_whole_reply_is_the_stream_folded() -> None:
    events = [
        chat_chunk({"reasoning": "Rayleigh "}),
        chat_chunk({"reasoning": "scattering"}),
        chat_chunk({"content": "Blue", "logprobs": None}, logprobs=CHAT_LOGPROBS),
        chat_chunk({"content": "."}),
        chat_chunk({"tool_calls": [fragment(0, id="c", name="f", args='{"x": ')]}),
        chat_chunk({"tool_calls": [fragment(0, args="1}")]}, "tool_calls"),
        chat_chunk(choices=False, usage=token_usage(9, 4)),
    ]
    streamed, _ = run(events, "generate")
    (whole,), _ = run(events, "generate", whole=True)
    assert whole == {
        "model": "qwen3:8b",
        "created_at": "2025-06-01T10:00:00.8Z",
        "response": "Blue.",
        "thinking": "Rayleigh scattering",
        "done": True,
        "done_reason": "stop",
        "total_duration": 800_000_000,
        "prompt_eval_count": 9,
        "prompt_eval_duration": 100_000_000,
        "eval_count": 4,
        "eval_duration": 700_000_000,
        "tool_calls": [{"id": "c", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}],
        "logprobs": OLLAMA_LOGPROBS,
    }
    # What a streaming client would have put together from its chunks.
    assert "".join(c["response"] for c in streamed) == whole["response"]
    assert "".join(c.get("thinking", "") for c in streamed) == whole["thinking"]
    assert [call for c in streamed for call in c.get("tool_calls", [])] == whole["tool_calls"]
    assert [lp for c in streamed for lp in c.get("logprobs", [])] == whole["logprobs"]
    assert {k: v for k, v in streamed[-1].items() if k.endswith(("_count", "_duration"))} == {
        k: v for k, v in whole.items() if k.endswith(("_count", "_duration"))
    }


@pytest.mark.parametrize("whole", [False, True])
def test_a_whole_reply_that_fails_is_an_error(whole: bool) -> None:
    chunks, translator = run(
        [chat_chunk({"content": "partial"}), {"error": {"message": "out of memory"}}], whole=whole
    )
    assert chunks[-1] == {"error": "out of memory"}
    assert translator.failed


@pytest.mark.parametrize("whole", [False, True])
def test_the_final_generate_reply_carries_the_context_of_the_whole_answer(whole: bool) -> None:
    answers: list[str] = []

    def context_for(answer: str) -> list[int]:
        answers.append(answer)
        return [7, 8, 9]

    translator = StreamTranslator(
        model="m", kind="generate", started=at(0), context_for=context_for, whole=whole
    )
    out = translator.feed(chat_chunk({"content": "<think>x</think>"}), at(1))
    out += translator.feed(chat_chunk({"content": "Hello"}), at(2))
    out += translator.feed(chat_chunk({"content": " you"}, "stop"), at(3))
    out += translator.finish(at(4))
    assert answers == ["<think>x</think>Hello you"]
    assert out[-1]["context"] == [7, 8, 9]
    assert list(out[-1])[:7] == [
        "model",
        "created_at",
        "response",
        "done",
        "done_reason",
        "context",
        "total_duration",
    ]
    assert all("context" not in chunk for chunk in out[:-1])


def test_load_duration_is_the_wait_before_the_backend_call() -> None:
    translator = StreamTranslator(model="m", kind="chat", started=at(300), arrived=at(100))
    translator.feed(chat_chunk({"content": "x"}), at(400))
    final = translator.finish(at(1000))[-1]
    assert final["total_duration"] == 900_000_000
    assert final["load_duration"] == 200_000_000
    assert final["prompt_eval_duration"] == 100_000_000
    assert final["eval_duration"] == 600_000_000
    assert list(final)[-4:] == ["total_duration", "load_duration", "prompt_eval_duration", "eval_duration"]


def test_think_tags_flushed_at_finish_reason() -> None:
    chunks, _ = run(
        [chat_chunk({"content": "<think>abc  "}), chat_chunk({}, "length")], think=Reasoning.SPLIT
    )
    assert thoughts(chunks) == "abc"
    assert chunks[-1]["done_reason"] == "length"


TAGGY = st.text(alphabet="<>/thinkab \n", max_size=40)


def split_feed(text: str, cuts: list[int]) -> tuple[str, str]:
    splitter = ThinkTagSplitter()
    bounds = [0, *sorted(set(cuts)), len(text)]
    thinking, content = "", ""
    for a, b in itertools.pairwise(bounds):
        t, c = splitter.feed(text[a:b])
        thinking, content = thinking + t, content + c
    t, c = splitter.flush()
    return thinking + t, content + c


@settings(max_examples=500, deadline=None)
@given(TAGGY, st.data())
def test_property_think_tags_split_invariant(text: str, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=10))
    assert split_feed(text, cuts) == split_feed(text, [])


@given(
    st.text(alphabet="ab \n", max_size=20),
    st.text(alphabet="ab<> \n", max_size=20),
    st.text(alphabet="ab<> \n", max_size=20).filter(lambda s: "<think>" not in s),
    st.data(),
)
def test_property_think_block_extracted(lead: str, inner: str, rest: str, data: st.DataObject) -> None:
    lead = lead.replace("a", "").replace("b", "")  # only whitespace may precede the block
    text = f"{lead}<think>{inner}</think>{rest}"
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=10))
    assert split_feed(text, cuts) == (inner.strip(), rest.lstrip())


# --- the stream property ------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
ARGUMENTS = st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4)
TEXT = st.text(max_size=6)


@st.composite
def streams(
    draw: st.DrawFn,
) -> tuple[list[dict[str, Any]], list[str], list[str], list[tuple[str, dict[str, Any]]]]:
    """Random content/reasoning deltas, then tool calls whose argument strings are cut at random places."""
    events: list[dict[str, Any]] = [chat_chunk({"role": "assistant", "content": ""})]
    content_parts: list[str] = []
    thinking_parts: list[str] = []
    for field, text in draw(
        st.lists(st.tuples(st.sampled_from(["content", "reasoning", "reasoning_content"]), TEXT))
    ):
        events.append(chat_chunk({field: text}))
        (content_parts if field == "content" else thinking_parts).append(text)
    calls = draw(st.lists(st.tuples(st.sampled_from(["f", "get_weather", "g2"]), ARGUMENTS), max_size=3))
    fragments: list[list[dict[str, Any]]] = []
    for index, (name, arguments) in enumerate(calls):
        encoded = json.dumps(arguments, ensure_ascii=draw(st.booleans()))
        cuts = sorted(set(draw(st.lists(st.integers(0, len(encoded)), max_size=5))))
        pieces = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)], strict=False)]
        own = [fragment(index, id=f"call_{index}", name=name, args="")]
        own += [fragment(index, args=piece) for piece in pieces]
        fragments.append(own)
    # Parallel calls may interleave; each call's own fragments stay in order.
    while any(fragments):
        queue = draw(st.sampled_from([q for q in fragments if q]))
        events.append(chat_chunk({"tool_calls": [queue.pop(0)]}))
    if draw(st.booleans()):
        events.append(chat_chunk({}, draw(st.sampled_from(["stop", "length", "tool_calls"]))))
    if draw(st.booleans()):
        events.append(
            chat_chunk(choices=False, usage=token_usage(draw(st.integers(0, 99)), draw(st.integers(0, 99))))
        )
    return events, content_parts, thinking_parts, calls


@settings(max_examples=300, deadline=None)
@given(streams())
def test_property_stream(
    case: tuple[list[dict[str, Any]], list[str], list[str], list[tuple[str, dict[str, Any]]]],
) -> None:
    events, content_parts, thinking_parts, calls = case
    chunks, _ = run(events)  # validates every chunk with the SDK
    assert all("error" not in c for c in chunks)
    assert contents(chunks) == "".join(content_parts)
    assert thoughts(chunks) == "".join(thinking_parts)
    assert [c["done"] for c in chunks].count(True) == 1
    assert chunks[-1]["done"] is True
    gathered = tool_chunks(chunks)
    if calls:
        assert len(gathered) == 1
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in gathered[0]] == calls
        assert [c["function"]["index"] for c in gathered[0]] == list(range(len(calls)))
        assert [c["id"] for c in gathered[0]] == [f"call_{i}" for i in range(len(calls))]
    else:
        assert gathered == []
    for chunk in chunks[:-1]:
        message = chunk["message"]
        assert message["content"] or message.get("thinking") or message.get("tool_calls")


# --- non-stream ---------------------------------------------------------------------------------------------


def chat_completion(message: dict[str, Any], finish_reason: str = "stop", **extra: Any) -> dict[str, Any]:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1748772000,
        "model": "backend",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        **extra,
    }
    ChatCompletion.model_validate(body)
    return body


def reply(body: dict[str, Any], kind: Literal["chat", "generate"] = "chat", **kw: Any) -> dict[str, Any]:
    out = completion_to_reply(body, model="qwen3:8b", kind=kind, started=at(0), ended=at(1500), **kw)
    return sdk_valid(out, kind)


def test_chat_completion_reply() -> None:
    body = chat_completion(
        {"role": "assistant", "content": "Paris.", "reasoning_content": "Capital of France."},
        usage=token_usage(20, 3),
    )
    assert reply(body) == {
        "model": "qwen3:8b",
        "created_at": "2025-06-01T10:00:01.5Z",
        "message": {"role": "assistant", "content": "Paris.", "thinking": "Capital of France."},
        "done": True,
        "done_reason": "stop",
        "total_duration": 1_500_000_000,
        "prompt_eval_count": 20,
        "eval_count": 3,
        "eval_duration": 1_500_000_000,
    }


def test_chat_completion_reply_with_tool_calls() -> None:
    body = chat_completion(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": ""}},
            ],
        },
        "tool_calls",
    )
    out = reply(body)
    assert out["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}},
            {"id": "call_2", "function": {"index": 1, "name": "g", "arguments": {}}},
        ],
    }
    assert out["done_reason"] == "stop"


def test_chat_completion_reply_with_bad_tool_arguments() -> None:
    body = chat_completion(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
            ],
        },
        "tool_calls",
    )
    with pytest.raises(BackendError, match="invalid JSON arguments for tool call 'f'"):
        reply(body)


def test_generate_reply_from_chat_completion() -> None:
    body = chat_completion({"role": "assistant", "content": "Blue.", "reasoning": "Rayleigh"}, "length")
    out = reply(body, "generate")
    assert out["response"] == "Blue."
    assert out["thinking"] == "Rayleigh"
    assert out["done_reason"] == "length"


def test_generate_reply_from_text_completion() -> None:
    body = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1748772000,
        "model": "backend",
        "choices": [{"index": 0, "text": "return a + b", "finish_reason": "stop", "logprobs": None}],
        "usage": token_usage(10, 4),
    }
    Completion.model_validate(body)
    out = reply(body, "generate")
    assert out["response"] == "return a + b"
    assert out["eval_count"] == 4


def test_llamacpp_timings() -> None:
    body = chat_completion(
        {"role": "assistant", "content": "x"},
        timings={"prompt_n": 12, "prompt_ms": 35.5, "predicted_n": 9, "predicted_ms": 410.25},
    )
    out = reply(body)
    assert out["prompt_eval_duration"] == 35_500_000
    assert out["eval_duration"] == 410_250_000
    assert out["total_duration"] == 1_500_000_000
    # No usage block: the counts come from the timings too.
    assert out["prompt_eval_count"] == 12
    assert out["eval_count"] == 9


@pytest.mark.parametrize(
    ("message", "reasoned"),
    [
        ({"role": "assistant", "content": "x", "reasoning_content": "r"}, True),
        ({"role": "assistant", "content": "x", "reasoning": "r"}, True),
        ({"role": "assistant", "content": "\n<think>r</think>x"}, True),
        ({"role": "assistant", "content": "x", "reasoning_content": None}, False),
        ({"role": "assistant", "content": None, "tool_calls": []}, False),
    ],
)
def test_a_whole_backend_reply_shows_whether_the_model_reasoned(
    message: dict[str, Any], reasoned: bool
) -> None:
    assert carries_reasoning(chat_completion(message)) is reasoned


def test_think_false_drops_reasoning_from_a_whole_reply() -> None:
    body = chat_completion({"role": "assistant", "content": "<think>a</think>OK", "reasoning_content": "b"})
    assert reply(body, think=Reasoning.DROP)["message"] == {"role": "assistant", "content": "OK"}


def test_whole_generate_reply_has_context_and_load_duration() -> None:
    body = chat_completion({"role": "assistant", "content": "Hi"})
    out = completion_to_reply(
        body,
        model="m",
        kind="generate",
        started=at(100),
        ended=at(1000),
        arrived=at(0),
        context_for=lambda answer: [len(answer)],
    )
    assert out["context"] == [2]
    assert (out["total_duration"], out["load_duration"]) == (1_000_000_000, 100_000_000)


def test_think_tags_in_non_stream_reply() -> None:
    body = chat_completion({"role": "assistant", "content": "<think>\nhm\n</think>\n\nOK"})
    assert reply(body, think=Reasoning.SPLIT)["message"] == {
        "role": "assistant",
        "content": "OK",
        "thinking": "hm",
    }
    assert reply(body)["message"]["content"] == "<think>\nhm\n</think>\n\nOK"


def test_non_stream_logprobs() -> None:
    body = chat_completion({"role": "assistant", "content": "Hi!"})
    body["choices"][0]["logprobs"] = CHAT_LOGPROBS
    assert reply(body)["logprobs"] == OLLAMA_LOGPROBS


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"object": "chat.completion"}, "backend reply has no choices"),
        ({"choices": []}, "backend reply has no choices"),
        ({"choices": [{"index": 0}]}, "backend reply has neither a message nor text"),
        ({"error": {"message": "model overloaded"}}, "model overloaded"),
        ({"error": "nope"}, "nope"),
    ],
)
def test_malformed_bodies(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BackendError) as caught:
        reply(body)
    assert caught.value.message == message

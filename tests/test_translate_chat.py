"""Ollama chat/generate requests -> OpenAI request bodies, row by row of the mapping, for every dialect."""

from __future__ import annotations

import base64
import re
from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionMessageParam

from ollama_proxy.errors import BadRequest
from ollama_proxy.schemas import ChatRequest, GenerateRequest, Message, ToolCall, ToolCallFunction
from ollama_proxy.translate.chat import (
    FALLBACK_IMAGE_MIME,
    chat_to_openai,
    effective_think,
    generate_to_openai,
    image_data_url,
    synthesize_call_id,
)
from ollama_proxy.translate.dialect import Dialect
from ollama_proxy.translate.families import (
    CODELLAMA_FIM,
    CODESTRAL_FIM,
    DEEPSEEK_FIM,
    QWEN_FIM,
    STARCODER_FIM,
    FillInTheMiddle,
)

VLLM, OPENAI, OPENROUTER, LLAMACPP = Dialect.VLLM, Dialect.OPENAI, Dialect.OPENROUTER, Dialect.LLAMACPP
ALL_DIALECTS = list(Dialect)


def every(expected: dict[str, Any]) -> dict[Dialect, dict[str, Any]]:
    """The same expected extras for every backend."""
    return dict.fromkeys(ALL_DIALECTS, expected)


CALL_ID = re.compile(r"call_[a-z0-9]{8}")
OPENAI_MESSAGE = pydantic.TypeAdapter(ChatCompletionMessageParam)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 40
GIF = b"GIF89a" + b"\x00" * 40
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 40
UNKNOWN = b"\x00\x01\x02\x03" * 10
TINY_PNG = b"\x89PNG!"
TINY_JPEG = b"\xff\xd8\xff"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def user(content: str | None = "hi", **kw: Any) -> Message:
    return Message(role="user", content=content, **kw)


def call(name: str, arguments: dict[str, Any] | None = None, id: str | None = None) -> ToolCall:
    return ToolCall(function=ToolCallFunction(name=name, arguments=arguments or {}), id=id)


def chat(dialect: Dialect = VLLM, messages: list[Message] | None = None, **kw: Any) -> dict[str, Any]:
    request = ChatRequest(model="client-name", messages=messages if messages is not None else [user()], **kw)
    body = chat_to_openai(request, "org/backend-model", dialect)
    for message in body["messages"]:
        OPENAI_MESSAGE.validate_python(message)
    return body


def generate(
    dialect: Dialect = VLLM, *, fim: FillInTheMiddle | None = None, **kw: Any
) -> tuple[str, dict[str, Any]]:
    kw.setdefault("prompt", "Why is the sky blue?")
    request = GenerateRequest(model="client-name", **kw)
    return generate_to_openai(request, "org/backend-model", dialect, fim=fim)


# --- the envelope -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_minimal_request_adds_nothing(dialect: Dialect) -> None:
    assert chat(dialect) == {
        "model": "org/backend-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_non_stream_has_no_stream_options(dialect: Dialect) -> None:
    body = chat(dialect, stream=False)
    assert body["stream"] is False
    assert "stream_options" not in body


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_ignored_request_fields_are_not_forwarded(dialect: Dialect) -> None:
    body = chat(dialect, keep_alive="5m", options={"num_ctx": 8192, "num_gpu": 1, "use_mmap": True, "x": [1]})
    assert set(body) == {"model", "messages", "stream", "stream_options"}


# --- messages -----------------------------------------------------------------------------------------------


def test_roles_are_lower_cased_and_absent_content_is_empty() -> None:
    body = chat(messages=[Message(role="SYSTEM", content="be brief"), Message(role="User")])
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": ""}]


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, None), ("", ""), ("Let me check.", "Let me check.")],
)
def test_assistant_content_with_tool_calls(content: str | None, expected: str | None) -> None:
    messages = [
        user(),
        Message(role="assistant", content=content, tool_calls=[call("f", {"a": 1}, "call_1")]),
    ]
    assert chat(messages=messages)["messages"][1] == {
        "role": "assistant",
        "content": expected,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
        ],
    }


def test_assistant_without_tool_calls_and_content_gets_empty_string() -> None:
    assert chat(messages=[user(), Message(role="assistant")])["messages"][1] == {
        "role": "assistant",
        "content": "",
    }


@pytest.mark.parametrize(
    ("dialect", "field"),
    [(VLLM, "reasoning_content"), (LLAMACPP, "reasoning_content"), (OPENROUTER, "reasoning"), (OPENAI, None)],
)
def test_assistant_thinking(dialect: Dialect, field: str | None) -> None:
    messages = [user(), Message(role="assistant", content="4", thinking="2+2")]
    expected: dict[str, Any] = {"role": "assistant", "content": "4"}
    if field:
        expected[field] = "2+2"
    assert chat(dialect, messages=messages)["messages"][1] == expected


def test_empty_thinking_is_not_forwarded() -> None:
    assert chat(messages=[Message(role="assistant", content="x", thinking="")])["messages"][0] == {
        "role": "assistant",
        "content": "x",
    }


def test_tool_call_arguments_are_a_json_string_keeping_unicode() -> None:
    messages = [Message(role="assistant", tool_calls=[call("weather", {"city": "Zürich", "days": [1, 2]})])]
    function = chat(messages=messages)["messages"][0]["tool_calls"][0]["function"]
    assert function == {"name": "weather", "arguments": '{"city": "Zürich", "days": [1, 2]}'}


def test_synthesized_call_ids_are_deterministic_and_distinct() -> None:
    messages = [user(), Message(role="assistant", tool_calls=[call("a"), call("a"), call("b")])]
    first = [c["id"] for c in chat(messages=messages)["messages"][1]["tool_calls"]]
    again = [c["id"] for c in chat(messages=messages)["messages"][1]["tool_calls"]]
    assert first == again
    assert len(set(first)) == 3
    assert all(CALL_ID.fullmatch(i) for i in first)


@given(st.integers(), st.integers(), st.text())
def test_synthesized_id_shape(i: int, j: int, name: str) -> None:
    assert CALL_ID.fullmatch(synthesize_call_id(i, j, name))


TWO_CALLS = Message(
    role="assistant",
    tool_calls=[call("get_weather", {"city": "Paris"}), call("get_time", {"tz": "CET"})],
)


def turn_ids(dialect: Dialect = VLLM, *answers: Message) -> tuple[list[str], list[str]]:
    body = chat(dialect, messages=[user(), TWO_CALLS, *answers])
    call_ids = [c["id"] for c in body["messages"][1]["tool_calls"]]
    answer_ids = [m["tool_call_id"] for m in body["messages"][2:]]
    return call_ids, answer_ids


def tool(name: str | None = None, content: str | None = "ok", id: str | None = None) -> Message:
    return Message(role="tool", content=content, tool_name=name, tool_call_id=id)


def test_tool_results_answered_in_order() -> None:
    calls, answers = turn_ids(VLLM, tool("get_weather"), tool("get_time"))
    assert answers == calls


def test_tool_results_answered_out_of_order_match_by_name() -> None:
    calls, answers = turn_ids(VLLM, tool("get_time"), tool("get_weather"))
    assert answers == [calls[1], calls[0]]


def test_tool_results_without_names_take_the_next_unanswered_call() -> None:
    calls, answers = turn_ids(VLLM, tool(), tool())
    assert answers == calls


def test_tool_result_with_unknown_name_takes_the_next_unanswered_call() -> None:
    calls, answers = turn_ids(VLLM, tool("get_time"), tool("renamed_tool"))
    assert answers == [calls[1], calls[0]]


def test_given_tool_call_id_wins_and_counts_as_answered() -> None:
    messages = [
        user(),
        Message(role="assistant", tool_calls=[call("f", id="call_a"), call("f", id="call_b")]),
        tool("f", id="call_b"),
        tool("f"),
    ]
    body = chat(messages=messages)
    assert [m["tool_call_id"] for m in body["messages"][2:]] == ["call_b", "call_a"]


def test_tool_result_message_shape() -> None:
    messages = [
        user(),
        Message(role="assistant", tool_calls=[call("f", id="call_x")]),
        tool("f", content=None),
    ]
    assert chat(messages=messages)["messages"][2] == {"role": "tool", "tool_call_id": "call_x", "content": ""}


def test_tool_results_only_match_the_most_recent_assistant_turn() -> None:
    messages = [
        user(),
        Message(role="assistant", tool_calls=[call("f", id="call_old")]),
        tool("f"),
        Message(role="assistant", tool_calls=[call("f", id="call_new")]),
        tool("f"),
    ]
    assert [m.get("tool_call_id") for m in chat(messages=messages)["messages"]] == [
        None,
        None,
        "call_old",
        None,
        "call_new",
    ]


def test_tool_result_without_any_call_gets_a_synthesized_id() -> None:
    body = chat(messages=[user(), tool("f"), tool("f")])
    ids = [m["tool_call_id"] for m in body["messages"][1:]]
    assert all(CALL_ID.fullmatch(i) for i in ids)
    assert ids[0] != ids[1]


@given(st.permutations(range(4)), st.lists(st.sampled_from(["a", "b", "c"]), min_size=4, max_size=4))
def test_property_every_call_answered_once_by_a_same_named_result(order: list[int], names: list[str]) -> None:
    """Whatever order the results come in, each call gets exactly one result and names always match."""
    assistant = Message(role="assistant", tool_calls=[call(n) for n in names])
    answers = [tool(names[k]) for k in order]
    body = chat(messages=[user(), assistant, *answers])
    calls = {c["id"]: c["function"]["name"] for c in body["messages"][1]["tool_calls"]}
    answered = [m["tool_call_id"] for m in body["messages"][2:]]
    assert sorted(answered) == sorted(calls)
    assert [calls[i] for i in answered] == [names[k] for k in order]


# --- images -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (GIF, "image/gif"),
        (WEBP, "image/webp"),
        (UNKNOWN, FALLBACK_IMAGE_MIME),
    ],
)
def test_image_mime_is_sniffed(data: bytes, mime: str) -> None:
    assert image_data_url(b64(data), "images[0]") == f"data:{mime};base64,{b64(data)}"


def test_images_become_parts_before_the_text() -> None:
    body = chat(messages=[user("what is this?", images=[b64(PNG), b64(JPEG)])])
    assert body["messages"][0] == {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(PNG)}"}},
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64(JPEG)}"}},
            {"type": "text", "text": "what is this?"},
        ],
    }


def test_image_without_text_has_no_empty_text_part() -> None:
    content = chat(messages=[user(None, images=[b64(GIF)])])["messages"][0]["content"]
    assert content == [{"type": "image_url", "image_url": {"url": f"data:image/gif;base64,{b64(GIF)}"}}]


@pytest.mark.parametrize(
    ("image", "url"),
    [
        (f"data:image/png;base64,{b64(PNG)}", f"data:image/png;base64,{b64(PNG)}"),
        # The bytes win over a wrong label.
        (f"data:image/jpeg;base64,{b64(PNG)}", f"data:image/png;base64,{b64(PNG)}"),
        # A declared image type is kept for bytes nobody can sniff.
        (f"data:image/avif;base64,{b64(UNKNOWN)}", f"data:image/avif;base64,{b64(UNKNOWN)}"),
        (f"data:text/plain;base64,{b64(UNKNOWN)}", f"data:{FALLBACK_IMAGE_MIME};base64,{b64(UNKNOWN)}"),
        (b64(PNG)[:20] + "\n" + b64(PNG)[20:] + "\r\n", f"data:image/png;base64,{b64(PNG)}"),
        (b64(TINY_PNG).rstrip("="), f"data:image/png;base64,{b64(TINY_PNG)}"),
        (b64(TINY_JPEG), f"data:image/jpeg;base64,{b64(TINY_JPEG)}"),
    ],
)
def test_lenient_image_forms(image: str, url: str) -> None:
    assert image_data_url(image, "images[0]") == url


@pytest.mark.parametrize(
    "image",
    ["", "not base64!", "QUJD=" + "QUJD", "QUJDR", "QUJDRA=", "data:image/png,rawbytes", "data:", "@@@@"],
)
def test_invalid_images_name_the_field(image: str) -> None:
    messages = [user(), user("look", images=[b64(PNG), image])]
    with pytest.raises(BadRequest, match=re.escape("messages[1].images[1]")):
        chat(messages=messages)


def test_only_the_head_of_a_large_image_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    import binascii

    seen: list[int] = []
    real = binascii.a2b_base64

    def spy(data: str | bytes, **kw: Any) -> bytes:
        seen.append(len(data))
        return real(data, **kw)

    monkeypatch.setattr(binascii, "a2b_base64", spy)
    big = b64(PNG + b"\x00" * 3_000_000)
    assert image_data_url(big, "images[0]").startswith("data:image/png;base64,")
    assert seen
    assert max(seen) <= 16


# --- tools and format ---------------------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_tools_forwarded_as_is(dialect: Dialect) -> None:
    assert chat(dialect, tools=[WEATHER_TOOL])["tools"] == [WEATHER_TOOL]


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_empty_tools_omitted(dialect: Dialect) -> None:
    assert "tools" not in chat(dialect, tools=[])


SCHEMA = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}


@pytest.mark.parametrize(
    ("format", "expected"),
    [
        (None, None),
        ("", None),
        ("json", {"type": "json_object"}),
        (
            SCHEMA,
            {"type": "json_schema", "json_schema": {"name": "response", "schema": SCHEMA, "strict": False}},
        ),
    ],
)
@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_format(dialect: Dialect, format: Any, expected: dict[str, Any] | None) -> None:
    assert chat(dialect, format=format).get("response_format") == expected


@pytest.mark.parametrize("format", ["xml", "JSON", " json"])
def test_bad_format_string(format: str) -> None:
    with pytest.raises(
        BadRequest, match=r'^invalid format: .*; expected "json" or a valid JSON Schema object$'
    ):
        chat(format=format)


# --- options ------------------------------------------------------------------------------------------------

OPTION_ROWS = [
    # (options, {dialect: expected extra body keys})
    (
        {"temperature": 0.2, "top_p": 0.9, "presence_penalty": 0.5, "frequency_penalty": -0.5},
        every(
            {"temperature": 0.2, "top_p": 0.9, "presence_penalty": 0.5, "frequency_penalty": -0.5},
        ),
    ),
    ({"temperature": 0}, every({"temperature": 0})),
    ({"seed": 42}, every({"seed": 42})),
    ({"seed": 42.0}, every({"seed": 42})),
    ({"seed": -1}, every({})),
    ({"stop": ["a", "b"]}, every({"stop": ["a", "b"]})),
    ({"stop": "END"}, every({"stop": ["END"]})),
    ({"stop": []}, every({})),
    ({"stop": ["", "x"]}, every({"stop": ["x"]})),
    (
        {"stop": ["1", "2", "3", "4", "5", "6"]},
        {
            VLLM: {"stop": ["1", "2", "3", "4", "5", "6"]},
            OPENROUTER: {"stop": ["1", "2", "3", "4", "5", "6"]},
            LLAMACPP: {"stop": ["1", "2", "3", "4", "5", "6"]},
            OPENAI: {"stop": ["1", "2", "3", "4"]},
        },
    ),
    (
        {"num_predict": 128},
        {
            VLLM: {"max_tokens": 128},
            OPENROUTER: {"max_tokens": 128},
            LLAMACPP: {"max_tokens": 128},
            OPENAI: {"max_completion_tokens": 128},
        },
    ),
    ({"num_predict": -1}, every({})),
    ({"num_predict": -2}, every({})),
    ({"num_predict": 0}, every({})),
    (
        {"top_k": 40, "min_p": 0.05},
        {
            VLLM: {"top_k": 40, "min_p": 0.05},
            OPENROUTER: {"top_k": 40, "min_p": 0.05},
            LLAMACPP: {"top_k": 40, "min_p": 0.05},
            OPENAI: {},
        },
    ),
    ({"top_k": 0}, {VLLM: {"top_k": -1}, OPENROUTER: {"top_k": 0}, LLAMACPP: {"top_k": 0}, OPENAI: {}}),
    (
        {"repeat_penalty": 1.1},
        {
            VLLM: {"repetition_penalty": 1.1},
            OPENROUTER: {"repetition_penalty": 1.1},
            LLAMACPP: {"repeat_penalty": 1.1},
            OPENAI: {},
        },
    ),
    (
        {
            "typical_p": 0.9,
            "repeat_last_n": 64,
            "num_keep": 4,
            "mirostat": 2,
            "mirostat_tau": 5.0,
            "mirostat_eta": 0.1,
        },
        {
            VLLM: {},
            OPENROUTER: {},
            OPENAI: {},
            LLAMACPP: {
                "typical_p": 0.9,
                "repeat_last_n": 64,
                "n_keep": 4,
                "mirostat": 2,
                "mirostat_tau": 5.0,
                "mirostat_eta": 0.1,
            },
        },
    ),
    (
        {"num_ctx": 4096, "num_batch": 512, "num_thread": 8, "use_mmap": False, "low_vram": True, "tfs_z": 1},
        every({}),
    ),
    ({"temperature": None, "stop": None}, every({})),
]


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
@pytest.mark.parametrize(("options", "expected"), OPTION_ROWS)
def test_options(options: dict[str, Any], expected: dict[Dialect, dict[str, Any]], dialect: Dialect) -> None:
    body = chat(dialect, options=options, stream=False)
    extra = {k: v for k, v in body.items() if k not in {"model", "messages", "stream"}}
    assert extra == expected[dialect]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": "hot"}, "invalid value for option 'temperature': expected a number, got a string"),
        ({"temperature": True}, "invalid value for option 'temperature': expected a number, got a boolean"),
        ({"top_p": [0.9]}, "invalid value for option 'top_p': expected a number, got an array"),
        ({"seed": 1.5}, "invalid value for option 'seed': expected an integer, got 1.5"),
        ({"num_predict": "10"}, "invalid value for option 'num_predict': expected an integer, got a string"),
        ({"top_k": False}, "invalid value for option 'top_k': expected an integer, got a boolean"),
        ({"stop": 5}, "invalid value for option 'stop': expected a string or an array of strings, got 5"),
        ({"stop": ["a", 1]}, "invalid value for option 'stop': expected an array of strings, got an array"),
        (
            {"repeat_penalty": {}},
            "invalid value for option 'repeat_penalty': expected a number, got an object",
        ),
        ({"temperature": float("nan")}, "invalid value for option 'temperature': expected a number, got nan"),
    ],
)
@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_option_of_wrong_type_is_rejected_on_every_backend(
    dialect: Dialect, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        chat(dialect, options=options)
    assert caught.value.message == message


@given(
    st.dictionaries(
        st.sampled_from(
            ["num_ctx", "num_gpu", "num_thread", "main_gpu", "use_mmap", "numa", "f16_kv", "unknown"]
        ),
        st.one_of(st.integers(), st.booleans(), st.text(), st.none(), st.floats(allow_nan=False)),
    ),
    st.sampled_from(ALL_DIALECTS),
)
def test_property_unmapped_options_never_reach_the_backend_nor_fail(
    options: dict[str, Any], dialect: Dialect
) -> None:
    assert set(chat(dialect, options=options, stream=False)) == {"model", "messages", "stream"}


# --- think --------------------------------------------------------------------------------------------------

THINK_ROWS: list[tuple[bool | str | None, dict[Dialect, dict[str, Any]]]] = [
    (None, every({})),
    (
        False,
        {
            VLLM: {"chat_template_kwargs": {"enable_thinking": False}},
            LLAMACPP: {"chat_template_kwargs": {"enable_thinking": False}},
            OPENROUTER: {"reasoning": {"enabled": False}},
            OPENAI: {},  # no effort means off on every OpenAI model; non-reasoning ones refuse the field
        },
    ),
]
_LEVELS: list[tuple[bool | str, str]] = [
    (True, "medium"),
    ("low", "low"),
    ("medium", "medium"),
    ("high", "high"),
    ("max", "high"),
]
for _think, _effort in _LEVELS:
    THINK_ROWS.append(
        (
            _think,
            {
                VLLM: {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": _effort},
                LLAMACPP: {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": _effort},
                OPENROUTER: {"reasoning": {"effort": _effort}},
                OPENAI: {"reasoning_effort": _effort},
            },
        )
    )


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
@pytest.mark.parametrize(("think", "expected"), THINK_ROWS)
def test_think(think: bool | str | None, expected: dict[Dialect, dict[str, Any]], dialect: Dialect) -> None:
    body = chat(dialect, think=think, stream=False)
    extra = {k: v for k, v in body.items() if k not in {"model", "messages", "stream"}}
    assert extra == expected[dialect]


@pytest.mark.parametrize("think", ["x", "High", "true", "", "none", "minimal"])
@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_bad_think_value(think: str, dialect: Dialect) -> None:
    with pytest.raises(BadRequest) as caught:
        chat(dialect, think=think)
    assert caught.value.message == (
        f'invalid think value: "{think}" (must be "high", "medium", "low", "max", true, or false)'
    )


# --- logprobs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("logprobs", "top_logprobs", "expected"),
    [
        (None, None, {}),
        (False, 5, {}),
        (True, None, {"logprobs": True}),
        (True, 0, {"logprobs": True, "top_logprobs": 0}),
        (True, 20, {"logprobs": True, "top_logprobs": 20}),
    ],
)
def test_logprobs(logprobs: bool | None, top_logprobs: int | None, expected: dict[str, Any]) -> None:
    body = chat(logprobs=logprobs, top_logprobs=top_logprobs, stream=False)
    assert {k: v for k, v in body.items() if k in {"logprobs", "top_logprobs"}} == expected


@pytest.mark.parametrize("top_logprobs", [-1, 21, 100])
def test_top_logprobs_out_of_range(top_logprobs: int) -> None:
    with pytest.raises(BadRequest, match=r"^top_logprobs must be between 0 and 20$"):
        chat(logprobs=True, top_logprobs=top_logprobs)


# --- generate -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_generate_is_a_one_turn_chat(dialect: Dialect) -> None:
    assert generate(dialect) == (
        "chat/completions",
        {
            "model": "org/backend-model",
            "messages": [{"role": "user", "content": "Why is the sky blue?"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )


def test_generate_with_system_images_and_options() -> None:
    endpoint, body = generate(
        system="Answer in French.",
        images=[b64(PNG)],
        options={"temperature": 0.1, "num_predict": 5},
        format="json",
        think=False,
        stream=False,
        template="{{ .Prompt }}",
    )
    assert endpoint == "chat/completions"
    assert body == {
        "model": "org/backend-model",
        "messages": [
            {"role": "system", "content": "Answer in French."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(PNG)}"}},
                    {"type": "text", "text": "Why is the sky blue?"},
                ],
            },
        ],
        "response_format": {"type": "json_object"},
        "temperature": 0.1,
        "max_tokens": 5,
        "chat_template_kwargs": {"enable_thinking": False},
        "stream": False,
    }


def test_generate_bad_image_names_the_field() -> None:
    with pytest.raises(BadRequest, match=re.escape("images[0]")):
        generate(images=["%%%"])


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
def test_generate_raw_uses_completions_verbatim(dialect: Dialect) -> None:
    endpoint, body = generate(dialect, prompt="<|im_start|>user\nhi", raw=True, think=True, stream=False)
    assert endpoint == "completions"
    assert body == {"model": "org/backend-model", "prompt": "<|im_start|>user\nhi", "stream": False}


@pytest.mark.parametrize(
    ("dialect", "max_key"),
    [(VLLM, "max_tokens"), (OPENAI, "max_tokens"), (OPENROUTER, "max_tokens"), (LLAMACPP, "max_tokens")],
)
def test_generate_suffix_uses_completions(dialect: Dialect, max_key: str) -> None:
    endpoint, body = generate(
        dialect,
        prompt="def add(a, b):\n",
        suffix="\n    return c\n",
        options={"num_predict": 32, "temperature": 0},
        format="json",
        logprobs=True,
        top_logprobs=3,
    )
    assert endpoint == "completions"
    assert body == {
        "model": "org/backend-model",
        "prompt": "def add(a, b):\n",
        "suffix": "\n    return c\n",
        "response_format": {"type": "json_object"},
        "temperature": 0,
        max_key: 32,
        "logprobs": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize("dialect", [VLLM, LLAMACPP])
def test_generate_suffix_is_written_as_the_models_own_prompt_for_vllm_and_llamacpp(dialect: Dialect) -> None:
    """vLLM answers ``suffix`` with 400 "suffix is not currently supported" and llama.cpp's server drops it
    without a word, so the daemon writes the fill-in-the-middle prompt with the family's tokens."""
    endpoint, body = generate(
        dialect, prompt="def add(a, b):\n", suffix="\n    return c\n", stream=False, fim=QWEN_FIM
    )
    assert endpoint == "completions"
    assert body == {
        "model": "org/backend-model",
        "prompt": "<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\n    return c\n<|fim_middle|>",
        "stream": False,
    }


@pytest.mark.parametrize("dialect", [OPENAI, OPENROUTER])
def test_generate_suffix_goes_as_suffix_where_the_api_takes_it(dialect: Dialect) -> None:
    _, body = generate(dialect, prompt="a", suffix="b", stream=False, fim=QWEN_FIM)
    assert (body["prompt"], body["suffix"]) == ("a", "b")


def test_generate_suffix_of_a_model_of_unknown_tokens_goes_as_suffix() -> None:
    _, body = generate(VLLM, prompt="a", suffix="b", stream=False, fim=None)
    assert (body["prompt"], body["suffix"]) == ("a", "b")


def test_raw_mode_ignores_a_suffix_as_ollama_does() -> None:
    _, body = generate(VLLM, prompt="a", suffix="b", raw=True, stream=False, fim=QWEN_FIM)
    assert body == {"model": "org/backend-model", "prompt": "a", "stream": False}


@pytest.mark.parametrize(
    ("fim", "prompt"),
    [
        (QWEN_FIM, "<|fim_prefix|>BEFORE<|fim_suffix|>AFTER<|fim_middle|>"),
        (STARCODER_FIM, "<fim_prefix>BEFORE<fim_suffix>AFTER<fim_middle>"),
        (CODELLAMA_FIM, "<PRE> BEFORE <SUF>AFTER <MID>"),
        (
            DEEPSEEK_FIM,
            "<\uff5cfim\u2581begin\uff5c>BEFORE<\uff5cfim\u2581hole\uff5c>AFTER<\uff5cfim\u2581end\uff5c>",
        ),
        (CODESTRAL_FIM, "[SUFFIX]AFTER[PREFIX]BEFORE"),
    ],
)
def test_fill_in_the_middle_prompts(fim: FillInTheMiddle, prompt: str) -> None:
    assert fim.prompt("BEFORE", "AFTER") == prompt


@pytest.mark.parametrize(
    ("think", "capabilities", "effective"),
    [
        (None, ("completion", "thinking"), True),
        (None, ("completion", "tools"), None),
        (False, ("completion", "thinking"), False),
        ("low", ("completion", "thinking"), "low"),
        (True, ("completion",), True),
    ],
)
def test_a_thinking_model_asked_nothing_thinks(
    think: bool | str | None, capabilities: tuple[str, ...], effective: bool | str | None
) -> None:
    assert effective_think(think, capabilities) == effective


def test_generate_empty_suffix_is_no_suffix() -> None:
    assert generate(suffix="")[0] == "chat/completions"


def test_generate_completions_logprobs_default_to_zero_alternatives() -> None:
    assert generate(raw=True, logprobs=True)[1]["logprobs"] == 0


@pytest.mark.parametrize("extra", [{"system": "s"}, {"template": "t"}, {"context": [1]}])
def test_generate_raw_refuses_template_system_context(extra: dict[str, Any]) -> None:
    with pytest.raises(BadRequest, match=r"^raw mode does not support template, system, or context$"):
        generate(raw=True, **extra)


def test_generate_raw_refuses_images() -> None:
    with pytest.raises(BadRequest, match="images"):
        generate(raw=True, images=[b64(PNG)])


def test_generate_raw_still_validates_think() -> None:
    with pytest.raises(BadRequest, match="invalid think value"):
        generate(raw=True, think="extreme")


@pytest.mark.parametrize("dialect", ALL_DIALECTS)
@pytest.mark.parametrize(("think", "expected"), THINK_ROWS)
def test_generate_think(
    think: bool | str | None, expected: dict[Dialect, dict[str, Any]], dialect: Dialect
) -> None:
    _, body = generate(dialect, think=think, stream=False)
    extra = {k: v for k, v in body.items() if k not in {"model", "messages", "stream"}}
    assert extra == expected[dialect]

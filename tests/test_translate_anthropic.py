"""The Anthropic Messages API over OpenAI chat completions, checked with the real anthropic SDK.

Requests are built by the SDK itself where it can build them, replies and streams are read back by the SDK
(its HTTP client over a mock transport: SSE parsing, event filtering, accumulation and strict response
validation all run exactly as against Anthropic).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types import BetaErrorResponse, Message, MessageParam, ToolParam
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion

from ollama_proxy.errors import BackendError, BadRequest
from ollama_proxy.sse import SSEDecoder
from ollama_proxy.translate.anthropic import (
    AnthropicStream,
    TranslatedRequest,
    budget_effort,
    completion_to_message,
    counted_input_tokens,
    estimate_input_tokens,
    fit_context,
    messages_to_openai,
    tokenize_text,
    tokenizer_count,
)
from ollama_proxy.translate.dialect import Dialect
from ollama_proxy.translate.replies import Instant
from ollama_proxy.wire.anthropic import anthropic_status, error_body, error_reply, stream_error_event
from tests.support import chat_chunk, token_usage

MODEL = "claude-sonnet-4-5"
MESSAGE_ID = "msg_0123456789abcdef"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PNG_URL = "data:image/png;base64," + PNG
USER: MessageParam = {"role": "user", "content": "Hi"}


def at(ms: int) -> Instant:
    return Instant(wall=1_748_772_000.0 + ms / 1000, mono_ns=ms * 1_000_000)


# --- the SDK as a client ------------------------------------------------------------------------------------


def sdk_client(handler: Callable[[httpx2.Request], httpx2.Response]) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="test",
        base_url="http://proxy.test",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
        max_retries=0,
        _strict_response_validation=True,
    )


def sse_reply(body: bytes) -> Callable[[httpx2.Request], httpx2.Response]:
    return lambda _request: httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})


def sdk_final_message(body: bytes) -> anthropic.types.ParsedMessage[None]:
    """What ``client.messages.stream(...).get_final_message()`` makes of a stream body."""
    with sdk_client(sse_reply(body)).messages.stream(model=MODEL, max_tokens=100, messages=[USER]) as stream:
        return stream.get_final_message()


def sdk_sent(**create: Any) -> dict[str, Any]:
    """The JSON body the SDK sends for ``messages.create(**create)``."""
    sent: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(json.loads(request.content))
        reply = completion_to_message(completion("ok"), model=MODEL, message_id=MESSAGE_ID)
        return httpx2.Response(200, json=reply)

    create.setdefault("model", MODEL)
    create.setdefault("max_tokens", 1024)
    sdk_client(handler).messages.create(**create)
    return sent[0]


# --- OpenAI-side inputs, checked against the openai SDK so they look like real backends ---------------------


def completion(
    content: str | None = None,
    finish_reason: str = "stop",
    *,
    usage: dict[str, Any] | None = None,
    standard: bool = True,
    **message: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1748772000,
        "model": "backend",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": finish_reason,
            }
        ],
    }
    if usage is not None:
        body["usage"] = usage
    # Backends invent finish reasons and leave out ids; everything else must be OpenAI's shape.
    if standard and finish_reason in ("stop", "length", "tool_calls", "content_filter", "function_call"):
        ChatCompletion.model_validate(body)
    return body


def call(
    index: int, call_id: str | None = None, name: str | None = None, arguments: Any = None
) -> dict[str, Any]:
    fragment: dict[str, Any] = {"index": index}
    if call_id is not None:
        fragment["id"] = call_id
        fragment["type"] = "function"
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    if function:
        fragment["function"] = function
    return fragment


# --- requests -----------------------------------------------------------------------------------------------


def translate(dialect: Dialect = Dialect.VLLM, **body: Any) -> dict[str, Any]:
    body.setdefault("model", MODEL)
    body.setdefault("max_tokens", 1024)
    body.setdefault("messages", [USER])
    result = messages_to_openai(body, "backend-model", dialect)
    assert isinstance(result, TranslatedRequest)
    return result.body


def messages_of(dialect: Dialect = Dialect.VLLM, **body: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = translate(dialect, **body)["messages"]
    return out


def test_minimal_request_from_the_sdk() -> None:
    sent = sdk_sent(messages=[{"role": "user", "content": "Hello"}])
    assert messages_to_openai(sent, "backend-model", Dialect.VLLM) == TranslatedRequest(
        {
            "model": "backend-model",
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 1024,
            "stream": False,
        }
    )


def test_claude_code_shaped_request() -> None:
    """The body Claude Code sends (clients-traffic.md), cut down: everything maps, nothing is refused."""
    body = {
        "model": "llama3",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {
                "type": "text",
                "text": "x-anthropic-billing-header: cc_version=2.1.332.0b8; cc_entrypoint=sdk-cli;",
            },
            {"type": "text", "text": "You are a Claude agent.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Long prompt.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                    {"type": "text", "text": "Say hi"},
                ],
            },
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": "# Environment", "cache_control": {"type": "ephemeral"}}
                ],
            },
        ],
        "tools": [
            {"name": "Bash", "description": "Run a command", "input_schema": {"type": "object"}},
            {
                "name": "DeferredToolPlaceholder",
                "description": "d",
                "input_schema": {"type": "object"},
                "defer_loading": True,
            },
        ],
        "thinking": {"type": "adaptive", "display": "omitted"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": '{"device_id": "d"}'},
    }
    result = messages_to_openai(body, "llama3-backend", Dialect.LLAMACPP)
    assert result.dropped_tools == ()
    assert result.body == {
        "model": "llama3-backend",
        "messages": [
            {"role": "system", "content": "You are a Claude agent.\n\nLong prompt.\n\n# Environment"},
            {"role": "user", "content": "<system-reminder>ctx</system-reminder>\n\nSay hi"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "Bash",
                    "description": "Run a command",
                    "parameters": {"type": "object"},
                },
            },
            {
                "type": "function",
                "function": {
                    "name": "DeferredToolPlaceholder",
                    "description": "d",
                    "parameters": {"type": "object"},
                },
            },
        ],
        "max_tokens": 32000,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ("Be brief.", "Be brief."),
        ([{"type": "text", "text": "A"}, {"type": "text", "text": "B"}], "A\n\nB"),
        ([{"type": "text", "text": "A"}, {"type": "text", "text": ""}], "A"),
        ("x-anthropic-billing-header: cc_version=1; cch=ab12c;\nBe brief.", "Be brief."),
        (
            [{"type": "text", "text": "x-anthropic-billing-header: cch=1;"}, {"type": "text", "text": "B"}],
            "B",
        ),
        # Only a leading header is Claude Code's; the same words later are the user's text.
        ("Be brief. x-anthropic-billing-header: x", "Be brief. x-anthropic-billing-header: x"),
    ],
)
def test_system_prompt(system: Any, expected: str) -> None:
    assert messages_of(system=system)[0] == {"role": "system", "content": expected}


@pytest.mark.parametrize(
    "system", [None, "", [], [{"type": "text", "text": "x-anthropic-billing-header: a"}]]
)
def test_no_system_prompt(system: Any) -> None:
    assert messages_of(system=system) == [{"role": "user", "content": "Hi"}]


def test_system_messages_inside_messages_join_the_leading_system_prompt() -> None:
    messages = [
        {"role": "system", "content": "first"},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": [{"type": "text", "text": "env"}]},
        {"role": "assistant", "content": "Hello"},
        {"role": "system", "content": "late"},
    ]
    assert messages_of(system="top", messages=messages) == [
        {"role": "system", "content": "top\n\nfirst\n\nenv\n\nlate"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_same_role_turns_are_merged_as_anthropic_does() -> None:
    """Removing a system message between two user turns must not leave two user messages in a row."""
    messages = [
        {"role": "user", "content": "A"},
        {"role": "system", "content": "env"},
        {"role": "user", "content": [{"type": "text", "text": "B"}]},
    ]
    assert messages_of(messages=messages)[1:] == [{"role": "user", "content": "A\n\nB"}]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("plain", "plain"),
        ([{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}], "a"),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b", "citations": None}], "a\n\nb"),
        ([], ""),
        (
            [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}],
            [{"type": "image_url", "image_url": {"url": PNG_URL}}],
        ),
        (
            # The declared type loses to the bytes: OpenAI checks that they agree.
            [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}},
            ],
            [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": PNG_URL}}],
        ),
        (
            [{"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "AAAAAAAA"}}],
            [{"type": "image_url", "image_url": {"url": "data:image/webp;base64,AAAAAAAA"}}],
        ),
        (
            [{"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}],
            [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
        ),
        (
            [{"type": "image", "source": {"type": "file", "file_id": "file_1"}}],
            "[image omitted: files uploaded to Anthropic's Files API cannot be read here]",
        ),
        (
            [
                {
                    "type": "document",
                    "title": "Notes",
                    "source": {"type": "text", "media_type": "text/plain", "data": "The text."},
                }
            ],
            "Notes\n\nThe text.",
        ),
        (
            [{"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "c"}]}}],
            "c",
        ),
        (
            [{"type": "document", "title": "T", "source": {"type": "content", "content": "as a string"}}],
            "T\n\nas a string",
        ),
        (
            [
                {
                    "type": "document",
                    "source": {
                        "type": "content",
                        "content": [
                            {"type": "text", "text": "see"},
                            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                        ],
                    },
                }
            ],
            [
                {"type": "text", "text": "see"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        ),
        (
            [{"type": "document", "title": "Paper", "source": {"type": "base64", "data": "JVBERi0="}}],
            "[document 'Paper' omitted: PDF and file documents cannot be read here]",
        ),
        (
            [
                {
                    "type": "search_result",
                    "title": "Result",
                    "source": "https://example.com",
                    "content": [{"type": "text", "text": "found"}],
                }
            ],
            "Result (https://example.com)\n\nfound",
        ),
        # Blocks only Anthropic's own servers produce are not the backend's business.
        (
            [
                {"type": "text", "text": "a"},
                {"type": "web_search_tool_result", "tool_use_id": "s", "content": []},
            ],
            "a",
        ),
    ],
)
def test_user_content(content: Any, expected: Any) -> None:
    assert messages_of(messages=[{"role": "user", "content": content}]) == [
        {"role": "user", "content": expected}
    ]


TOOL_TURN = {
    "role": "assistant",
    "content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_a", "name": "Read", "input": {"path": "/srv/ü"}},
        {"type": "tool_use", "id": "toolu_b", "name": "Bash", "input": {}},
    ],
}
OPENAI_TOOL_CALLS = [
    {"id": "toolu_a", "type": "function", "function": {"name": "Read", "arguments": '{"path": "/srv/ü"}'}},
    {"id": "toolu_b", "type": "function", "function": {"name": "Bash", "arguments": "{}"}},
]


def test_tool_round_trip() -> None:
    messages = [
        USER,
        TOOL_TURN,
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Also this."},
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "file text"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_b",
                    "content": [{"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}],
                    "cache_control": {"type": "ephemeral"},
                },
            ],
        },
    ]
    assert messages_of(messages=messages)[1:] == [
        {"role": "assistant", "content": "Let me look.", "tool_calls": OPENAI_TOOL_CALLS},
        # Tool messages directly follow the calls; the user's own text comes after them.
        {"role": "tool", "tool_call_id": "toolu_a", "content": "file text"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "line 1\n\nline 2"},
        {"role": "user", "content": "Also this."},
    ]


def test_tool_calls_without_text_have_null_content() -> None:
    turn = {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]}
    # An empty text block next to the result makes no empty user message.
    result = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t"}, {"type": "text", "text": ""}],
    }
    assert messages_of(messages=[USER, turn, result])[1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "t", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "t", "content": ""},
    ]


@pytest.mark.parametrize(
    ("result", "content"),
    [
        ({"content": "No such file.", "is_error": True}, "Error: No such file."),
        ({"content": [], "is_error": True}, "Error"),
        ({"content": "fine", "is_error": False}, "fine"),
        ({"content": [{"type": "tool_reference", "tool_name": "WebFetch"}]}, "Tool available: WebFetch"),
        (
            {
                "content": [
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}}
                ]
            },
            "d",
        ),
    ],
)
def test_tool_result_content(result: dict[str, Any], content: str) -> None:
    block = {"type": "tool_result", "tool_use_id": "toolu_a", **result}
    assert messages_of(messages=[USER, TOOL_TURN, {"role": "user", "content": [block]}])[2] == {
        "role": "tool",
        "tool_call_id": "toolu_a",
        "content": content,
    }


def test_images_in_tool_results_move_to_the_next_user_message() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    results = {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "toolu_a",
                "content": [{"type": "text", "text": "shot"}, image],
            },
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": "ok"},
            {"type": "text", "text": "What do you see?"},
        ],
    }
    assert messages_of(messages=[USER, TOOL_TURN, results])[2:] == [
        {"role": "tool", "tool_call_id": "toolu_a", "content": "shot"},
        {"role": "tool", "tool_call_id": "toolu_b", "content": "ok"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Images returned by tool call toolu_a:"},
                {"type": "image_url", "image_url": {"url": PNG_URL}},
                {"type": "text", "text": "What do you see?"},
            ],
        },
    ]


HISTORY_WITH_THINKING = [
    USER,
    {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "Plan.", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Done."},
        ],
    },
    {"role": "user", "content": "Thanks"},
]


@pytest.mark.parametrize(
    ("dialect", "assistant"),
    [
        (Dialect.VLLM, {"role": "assistant", "content": "Done.", "reasoning_content": "Plan."}),
        (Dialect.LLAMACPP, {"role": "assistant", "content": "Done.", "reasoning_content": "Plan."}),
        (Dialect.OPENROUTER, {"role": "assistant", "content": "Done.", "reasoning": "Plan."}),
        (Dialect.OPENAI, {"role": "assistant", "content": "Done."}),
    ],
)
def test_thinking_in_history(dialect: Dialect, assistant: dict[str, Any]) -> None:
    assert messages_of(dialect, messages=HISTORY_WITH_THINKING)[1] == assistant


@pytest.mark.parametrize(
    ("dialect", "extra"),
    [
        (Dialect.VLLM, {"continue_final_message": True, "add_generation_prompt": False}),
        (Dialect.LLAMACPP, {}),
        (Dialect.OPENROUTER, {}),
        (Dialect.OPENAI, {}),
    ],
)
def test_prefill(dialect: Dialect, extra: dict[str, Any]) -> None:
    body = translate(dialect, messages=[USER, {"role": "assistant", "content": "The answer is ("}])
    assert body["messages"][-1] == {"role": "assistant", "content": "The answer is ("}
    assert {k: body[k] for k in ("continue_final_message", "add_generation_prompt") if k in body} == extra


def test_empty_final_assistant_turn_is_dropped() -> None:
    body = translate(messages=[USER, {"role": "assistant", "content": ""}])
    assert body["messages"] == [USER]
    assert "continue_final_message" not in body


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        (
            Dialect.VLLM,
            {"max_tokens": 200, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "stop": ["a", "b"]},
        ),
        (
            Dialect.LLAMACPP,
            {"max_tokens": 200, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "stop": ["a", "b"]},
        ),
        (
            Dialect.OPENROUTER,
            {"max_tokens": 200, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "stop": ["a", "b"]},
        ),
        (
            Dialect.OPENAI,
            {"max_completion_tokens": 200, "temperature": 0.5, "top_p": 0.9, "stop": ["a", "b"]},
        ),
    ],
)
def test_sampling(dialect: Dialect, expected: dict[str, Any]) -> None:
    body = translate(
        dialect, max_tokens=200, temperature=0.5, top_p=0.9, top_k=40, stop_sequences=["a", "", "b"]
    )
    assert {k: v for k, v in body.items() if k not in ("model", "messages", "stream")} == expected


def test_sampling_from_the_sdk() -> None:
    sent = sdk_sent(
        messages=[USER],
        max_tokens=300,
        stop_sequences=["END"],
        # This SDK version no longer takes the sampling knobs as arguments; clients still send them.
        extra_body={"temperature": 0.2, "top_p": 0.5, "top_k": 5},
    )
    body = messages_to_openai(sent, "m", Dialect.VLLM).body
    assert (body["max_tokens"], body["stop"], body["top_k"], body["temperature"], body["top_p"]) == (
        300,
        ["END"],
        5,
        0.2,
        0.5,
    )


def test_vllm_spells_top_k_off_as_minus_one() -> None:
    assert translate(Dialect.VLLM, top_k=0)["top_k"] == -1
    assert translate(Dialect.LLAMACPP, top_k=0)["top_k"] == 0


def test_openai_takes_at_most_four_stop_sequences() -> None:
    stops = ["1", "2", "3", "4", "5"]
    assert translate(Dialect.OPENAI, stop_sequences=stops)["stop"] == ["1", "2", "3", "4"]
    assert translate(Dialect.VLLM, stop_sequences=stops)["stop"] == stops


def test_integral_floats_are_integers() -> None:
    assert translate(max_tokens=1024.0)["max_tokens"] == 1024


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (True, {"stream": True, "stream_options": {"include_usage": True}}),
        (False, {"stream": False}),
        (None, {"stream": False}),
    ],
)
def test_stream_flag(stream: bool | None, expected: dict[str, Any]) -> None:
    body = translate(stream=stream)
    assert {k: body[k] for k in ("stream", "stream_options") if k in body} == expected


WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
OPENAI_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tools_from_the_sdk() -> None:
    sent = sdk_sent(
        messages=[USER],
        tools=[
            WEATHER,
            {
                "name": "no_description",
                "input_schema": {"type": "object"},
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "custom", "name": "strict_one", "input_schema": {"type": "object"}, "strict": True},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
            {"type": "bash_20250124", "name": "bash"},
        ],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    result = messages_to_openai(sent, "m", Dialect.VLLM)
    assert result.dropped_tools == ("web_search", "bash")
    assert result.body["tools"] == [
        OPENAI_WEATHER,
        {"type": "function", "function": {"name": "no_description", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "strict_one", "parameters": {"type": "object"}}},
    ]
    assert result.body["tool_choice"] == "required"
    assert result.body["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "get_weather"},
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
        ({"type": "auto", "disable_parallel_tool_use": False}, {"tool_choice": "auto"}),
        # A forced hosted tool cannot be forced on the backend: the model chooses.
        ({"type": "tool", "name": "web_search"}, {}),
    ],
)
def test_tool_choice(tool_choice: dict[str, Any], expected: dict[str, Any]) -> None:
    tools = [WEATHER, {"type": "web_search_20250305", "name": "web_search"}]
    body = translate(tools=tools, tool_choice=tool_choice)
    assert {k: body[k] for k in ("tool_choice", "parallel_tool_calls") if k in body} == expected


@pytest.mark.parametrize("tools", [None, [], [{"type": "web_search_20250305", "name": "web_search"}]])
def test_tool_choice_without_forwarded_tools_is_left_out(tools: Any) -> None:
    """OpenAI rejects tool_choice and parallel_tool_calls without tools."""
    body = translate(tools=tools, tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert "tools" not in body
    assert "tool_choice" not in body
    assert "parallel_tool_calls" not in body


@pytest.mark.parametrize(
    ("budget", "effort"),
    [(None, "medium"), (1024, "low"), (4095, "low"), (4096, "medium"), (16383, "medium"), (16384, "high")],
)
def test_budget_effort(budget: int | None, effort: str) -> None:
    assert budget_effort(budget) == effort


@pytest.mark.parametrize(
    ("dialect", "thinking", "expected"),
    [
        (
            Dialect.VLLM,
            {"type": "enabled", "budget_tokens": 2048},
            {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "low"},
        ),
        (
            Dialect.LLAMACPP,
            {"type": "enabled", "budget_tokens": 20000},
            {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "high"},
        ),
        (Dialect.OPENROUTER, {"type": "enabled", "budget_tokens": 8000}, {"reasoning": {"effort": "medium"}}),
        (Dialect.OPENAI, {"type": "enabled", "budget_tokens": 8000}, {"reasoning_effort": "medium"}),
        (Dialect.VLLM, {"type": "disabled"}, {"chat_template_kwargs": {"enable_thinking": False}}),
        (Dialect.LLAMACPP, {"type": "disabled"}, {"chat_template_kwargs": {"enable_thinking": False}}),
        (Dialect.OPENROUTER, {"type": "disabled"}, {"reasoning": {"enabled": False}}),
        (Dialect.OPENAI, {"type": "disabled"}, {}),
        (Dialect.VLLM, {"type": "adaptive"}, {}),
        (Dialect.OPENROUTER, {"type": "adaptive", "display": "summarized"}, {}),
        (Dialect.VLLM, {"type": "between_tools"}, {}),
        (Dialect.VLLM, {"type": "from_the_future"}, {}),
    ],
)
def test_thinking_switch(dialect: Dialect, thinking: dict[str, Any], expected: dict[str, Any]) -> None:
    body = translate(dialect, thinking=thinking, max_tokens=32000)
    switch_keys = ("chat_template_kwargs", "reasoning_effort", "reasoning")
    assert {k: body[k] for k in switch_keys if k in body} == expected


def test_thinking_from_the_sdk() -> None:
    sent = sdk_sent(messages=[USER], max_tokens=8000, thinking={"type": "enabled", "budget_tokens": 5000})
    assert messages_to_openai(sent, "m", Dialect.OPENAI).body["reasoning_effort"] == "medium"


def test_effort_alone_leaves_reasoning_to_the_model() -> None:
    body = translate(Dialect.OPENAI, output_config={"effort": "low"})
    assert "reasoning_effort" not in body


def test_output_format_becomes_response_format() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    body = translate(output_config={"format": {"type": "json_schema", "schema": schema}, "effort": "high"})
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": False},
    }


@pytest.mark.parametrize(
    "extra",
    [
        {"metadata": {"user_id": "u"}},
        {"context_management": {"edits": []}},
        {"service_tier": "auto"},
        {"container": "container_1"},
        {"mcp_servers": [{"type": "url", "url": "https://example.com", "name": "x"}]},
        {"cache_control": {"type": "ephemeral"}},
        {"output_config": {"format": {"type": "something_else"}}},
        {"output_config": None},
        {"speed": "fast", "inference_geo": "us", "some_future_field": {"a": 1}},
    ],
)
def test_fields_a_backend_cannot_use_are_ignored(extra: dict[str, Any]) -> None:
    assert translate(**extra) == translate()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "request body must be a JSON object"),
        ({"max_tokens": 10}, "messages: field required"),
        ({"max_tokens": 10, "messages": "Hi"}, "messages: expected an array, got a string"),
        ({"max_tokens": 10, "messages": []}, "messages: at least one message is required"),
        ({"max_tokens": 10, "messages": ["Hi"]}, "messages.0: expected an object, got a string"),
        ({"max_tokens": 10, "messages": [{"role": "user"}]}, "messages.0.content: field required"),
        (
            {"max_tokens": 10, "messages": [{"role": "tool", "content": "x"}]},
            'messages.0.role: expected "user", "assistant" or "system", got \'tool\'',
        ),
        (
            {"max_tokens": 10, "messages": [{"role": "user", "content": 3}]},
            "messages.0.content: expected a string or an array of content blocks, got 3",
        ),
        (
            {"max_tokens": 10, "messages": [{"role": "user", "content": ["x"]}]},
            "messages.0.content.0: expected an object, got a string",
        ),
        (
            {"max_tokens": 10, "messages": [{"role": "user", "content": [{"text": "x"}]}]},
            "messages.0.content.0.type: expected a string, got null",
        ),
        (
            {"max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages.0.content.0.type: unexpected content block type 'video'",
        ),
        (
            {"max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
            "messages.0.content.0.text: expected a string, got 1",
        ),
        (
            {"max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t"}]}]},
            "messages.0.content.0: a tool_use block belongs in an assistant turn",
        ),
        (
            {"max_tokens": 10, "messages": [{"role": "assistant", "content": [{"type": "tool_result"}]}]},
            "messages.0.content.0: a tool_result block belongs in a user turn",
        ),
        (
            {
                "max_tokens": 10,
                "messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]}],
            },
            "messages.0.content.0.id: expected a string, got null",
        ),
        (
            {
                "max_tokens": 10,
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": []}],
                    }
                ],
            },
            "messages.0.content.0.input: expected an object, got an array",
        ),
        (
            {
                "max_tokens": 10,
                "messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}],
            },
            "messages.0.content.0.tool_use_id: expected a string, got null",
        ),
        (
            {"max_tokens": 10, "messages": [{"role": "assistant", "content": [{"type": "hologram"}]}]},
            "messages.0.content.0.type: unexpected content block type 'hologram'",
        ),
        (
            {
                "max_tokens": 10,
                "messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "x"}}]}],
            },
            "messages.0.content.0.source.type: unknown document source 'x'",
        ),
        (
            {"max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
            "messages.0.content.0.source: expected an object, got null",
        ),
        (
            {
                "max_tokens": 10,
                "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "s3"}}]}],
            },
            'messages.0.content.0.source.type: expected "base64", "url" or "file", got \'s3\'',
        ),
        (
            {
                "max_tokens": 10,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "base64", "data": "!!"}}],
                    }
                ],
            },
            "invalid image in messages.0.content.0.source.data: not valid base64",
        ),
        (
            {"max_tokens": 10, "messages": [USER], "system": 5},
            "system: expected a string or an array of text blocks",
        ),
        (
            {"max_tokens": 10, "messages": [USER], "system": [{"type": "image"}]},
            "system.0: a system prompt takes only text blocks",
        ),
        ({"messages": [USER]}, "max_tokens: field required"),
        ({"messages": [USER], "max_tokens": 0}, "max_tokens: must be a positive integer, got 0"),
        ({"messages": [USER], "max_tokens": -5}, "max_tokens: must be a positive integer, got -5"),
        ({"messages": [USER], "max_tokens": "1024"}, "max_tokens: expected an integer, got a string"),
        ({"messages": [USER], "max_tokens": 10.5}, "max_tokens: expected an integer"),
        ({"messages": [USER], "max_tokens": True}, "max_tokens: expected an integer, got a boolean"),
        ({"messages": [USER], "max_tokens": 10, "temperature": "hot"}, "temperature: expected a number"),
        ({"messages": [USER], "max_tokens": 10, "top_k": 2.5}, "top_k: expected an integer"),
        (
            {"messages": [USER], "max_tokens": 10, "stop_sequences": "END"},
            "stop_sequences: expected an array",
        ),
        (
            {"messages": [USER], "max_tokens": 10, "stop_sequences": [1]},
            "stop_sequences.0: expected a string",
        ),
        ({"messages": [USER], "max_tokens": 10, "stream": "yes"}, "stream: expected a boolean, got a string"),
        ({"messages": [USER], "max_tokens": 10, "tools": {}}, "tools: expected an array, got an object"),
        (
            {"messages": [USER], "max_tokens": 10, "tools": [{"input_schema": {}}]},
            "tools.0.name: expected a string",
        ),
        (
            {"messages": [USER], "max_tokens": 10, "tools": [{"name": "f"}]},
            "tools.0.input_schema: expected an object",
        ),
        (
            {"messages": [USER], "max_tokens": 10, "tools": [{"name": "", "input_schema": {}}]},
            "tools.0.name: must not",
        ),
        (
            {
                "messages": [USER],
                "max_tokens": 10,
                "tools": [WEATHER],
                "tool_choice": {"type": "tool", "name": "x"},
            },
            "tool_choice.name: no tool named 'x' in tools",
        ),
        (
            {"messages": [USER], "max_tokens": 10, "tools": [WEATHER], "tool_choice": {"type": "sometimes"}},
            "tool_choice.type: expected",
        ),
        ({"messages": [USER], "max_tokens": 10, "tool_choice": "auto"}, "tool_choice: expected an object"),
        ({"messages": [USER], "max_tokens": 10, "thinking": True}, "thinking: expected an object"),
        (
            {"messages": [USER], "max_tokens": 10, "thinking": {"type": "enabled", "budget_tokens": "lots"}},
            "thinking.budget_tokens: expected an integer",
        ),
    ],
)
def test_invalid_requests(body: Any, message: str) -> None:
    with pytest.raises(BadRequest) as raised:
        messages_to_openai(body, "m", Dialect.VLLM)
    assert raised.value.message.startswith(message)


# --- whole replies ------------------------------------------------------------------------------------------


def to_message(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    message = completion_to_message(body, model=MODEL, message_id=MESSAGE_ID, **kwargs)
    Message.model_validate(message)
    assert json.loads(json.dumps(message)) == message
    return message


def sdk_created(body: dict[str, Any]) -> anthropic.types.Message:
    """What ``client.messages.create`` returns for the translated reply, with strict validation."""
    reply = completion_to_message(body, model=MODEL, message_id=MESSAGE_ID)
    client = sdk_client(lambda _request: httpx2.Response(200, json=reply))
    return client.messages.create(model=MODEL, max_tokens=100, messages=[USER])


def test_text_reply() -> None:
    assert to_message(completion("Hello!", usage=token_usage(12, 3))) == {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 3},
    }


def test_thinking_text_and_tool_calls_read_by_the_sdk() -> None:
    body = completion(
        "I will check.",
        "tool_calls",
        usage=token_usage(100, 20, cached=64),
        reasoning_content="The user wants weather.",
        tool_calls=[
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'},
            },
            {"id": "", "type": "function", "function": {"name": "get_time", "arguments": ""}},
        ],
    )
    message = sdk_created(body)
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    thinking, text, weather, clock = message.content
    assert thinking.type == "thinking"
    assert (thinking.thinking, thinking.signature) == ("The user wants weather.", "")
    assert text.type == "text"
    assert text.text == "I will check."
    assert weather.type == "tool_use"
    assert (weather.id, weather.name, weather.input) == ("call_1", "get_weather", {"city": "Zürich"})
    assert clock.type == "tool_use"
    assert clock.name == "get_time"
    assert clock.input == {}
    assert clock.id.startswith("toolu_")
    assert len(clock.id) == len("toolu_") + 24
    assert message.stop_reason == "tool_use"
    assert (
        message.usage.input_tokens,
        message.usage.cache_read_input_tokens,
        message.usage.output_tokens,
    ) == (
        36,
        64,
        20,
    )


def test_synthesized_tool_ids_are_stable_and_distinct() -> None:
    calls = [{"type": "function", "function": {"name": "f", "arguments": "{}"}} for _ in range(2)]
    first = to_message(completion(None, "tool_calls", standard=False, tool_calls=calls))
    again = to_message(completion(None, "tool_calls", standard=False, tool_calls=calls))
    ids = [block["id"] for block in first["content"]]
    assert ids == [block["id"] for block in again["content"]]
    assert len(set(ids)) == 2
    other = completion_to_message(
        completion(None, "tool_calls", standard=False, tool_calls=calls), model=MODEL, message_id="msg_2"
    )
    assert [block["id"] for block in other["content"]] != ids


def test_arguments_as_an_object() -> None:
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    body = completion(None, "tool_calls", tool_calls=calls)
    body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = {"a": [1, 2]}
    assert to_message(body)["content"] == [
        {"type": "tool_use", "id": "c", "name": "f", "input": {"a": [1, 2]}}
    ]


@pytest.mark.parametrize(
    ("tool_call", "message"),
    [
        (
            {"id": "c", "function": {"name": "f", "arguments": "{not json"}},
            "invalid JSON arguments for tool call 'f'",
        ),
        (
            {"id": "c", "function": {"name": "f", "arguments": "[1]"}},
            "non-object arguments for tool call 'f'",
        ),
        ({"id": "c", "function": {"name": "f", "arguments": 3}}, "non-object arguments for tool call 'f'"),
        ({"id": "c", "function": {"name": "", "arguments": "{}"}}, "tool call without a function name"),
        ({"id": "c"}, "malformed tool call"),
        ("call", "malformed tool call"),
    ],
)
def test_bad_tool_calls_are_backend_errors(tool_call: Any, message: str) -> None:
    body = completion(None, "tool_calls")
    body["choices"][0]["message"]["tool_calls"] = [tool_call]
    with pytest.raises(BackendError, match=message):
        completion_to_message(body, model=MODEL, message_id=MESSAGE_ID)


@pytest.mark.parametrize(
    ("finish_reason", "extra", "stop_reason", "stop_sequence"),
    [
        ("stop", {}, "end_turn", None),
        ("length", {}, "max_tokens", None),
        ("tool_calls", {}, "tool_use", None),
        ("function_call", {}, "tool_use", None),
        ("content_filter", {}, "refusal", None),
        ("eos", {}, "end_turn", None),
        # vLLM names the stop string that ended the reply; a token id is no stop sequence.
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),
        ("stop", {"stop_reason": 128009}, "end_turn", None),
        ("stop", {"stop_reason": None}, "end_turn", None),
    ],
)
def test_stop_reasons(
    finish_reason: str, extra: dict[str, Any], stop_reason: str, stop_sequence: str | None
) -> None:
    body = completion("x", finish_reason)
    body["choices"][0].update(extra)
    message = to_message(body)
    assert (message["stop_reason"], message["stop_sequence"]) == (stop_reason, stop_sequence)


def test_tool_calls_after_stop_still_say_tool_use() -> None:
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert to_message(completion(None, "stop", tool_calls=calls))["stop_reason"] == "tool_use"


def test_refusal() -> None:
    message = to_message(completion(None, "stop", refusal="I can't help with that."))
    assert message["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert message["stop_reason"] == "refusal"


@pytest.mark.parametrize(
    ("message", "content"),
    [
        ({"content": ""}, []),
        ({"content": "\n\n"}, []),
        ({"content": None, "reasoning": "\n"}, []),
        ({"content": "a", "reasoning": "t", "reasoning_content": "t"}, ["t", "a"]),
    ],
)
def test_empty_and_doubled_parts(message: dict[str, Any], content: list[str]) -> None:
    body = completion()
    body["choices"][0]["message"] = {"role": "assistant", **message}
    blocks = to_message(body)["content"]
    assert [block.get("text", block.get("thinking")) for block in blocks] == content


def test_think_tags_split_when_asked() -> None:
    body = completion("<think>\nPondering.\n</think>\n\nAnswer.")
    assert to_message(body, split_think_tags=True)["content"] == [
        {"type": "thinking", "thinking": "Pondering.", "signature": ""},
        {"type": "text", "text": "Answer."},
    ]
    assert to_message(body)["content"] == [
        {"type": "text", "text": "<think>\nPondering.\n</think>\n\nAnswer."}
    ]


def test_llamacpp_timings_stand_in_for_missing_usage() -> None:
    body = completion("x")
    body["timings"] = {"prompt_n": 7, "predicted_n": 2}
    assert to_message(body)["usage"] == {"input_tokens": 7, "output_tokens": 2}


def test_missing_usage_counts_zero() -> None:
    assert to_message(completion("x"))["usage"] == {"input_tokens": 0, "output_tokens": 0}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "backend reply is not a JSON object"),
        ({"error": {"message": "model overloaded"}}, "model overloaded"),
        ({"error": "boom"}, "boom"),
        ({"choices": []}, "backend reply has no choices"),
        ({"choices": [{"index": 0, "text": "legacy"}]}, "backend reply has no message"),
    ],
)
def test_bad_replies(body: Any, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        completion_to_message(body, model=MODEL, message_id=MESSAGE_ID)


# --- streams ------------------------------------------------------------------------------------------------


def run(events: list[dict[str, Any]], **kwargs: Any) -> tuple[bytes, AnthropicStream]:
    """start at 0 ms, one event per 100 ms, finish 100 ms after the last."""
    stream = AnthropicStream(model=MODEL, message_id=MESSAGE_ID, **kwargs)
    out = stream.start(at(0))
    for i, event in enumerate(events, start=1):
        out += stream.feed(event, at(100 * i))
    out += stream.finish(at(100 * (len(events) + 1)))
    return out, stream


def parse_events(body: bytes) -> list[dict[str, Any]]:
    """Every event must be ``event: <type>`` then ``data: <json of that type>`` and a blank line."""
    assert body.endswith(b"\n\n")
    events = []
    for raw in body[:-2].split(b"\n\n"):
        event_line, data_line = raw.split(b"\n")
        assert event_line.startswith(b"event: ")
        assert data_line.startswith(b"data: ")
        data = json.loads(data_line[len(b"data: ") :])
        assert data["type"] == event_line[len(b"event: ") :].decode()
        events.append(data)
    return events


def check_sequence(events: list[dict[str, Any]]) -> None:
    """Anthropic's order: message_start, blocks opened, filled and closed one at a time with indexes that are
    positions in content, then message_delta (with usage) and message_stop."""
    assert events[0]["type"] == "message_start"
    assert events[0]["message"]["content"] == []
    open_index: int | None = None
    next_index = 0
    ended = False
    for event in events[1:]:
        kind = event["type"]
        assert not ended
        if kind == "content_block_start":
            assert open_index is None
            assert event["index"] == next_index
            open_index, next_index = next_index, next_index + 1
        elif kind == "content_block_delta":
            assert event["index"] == open_index
        elif kind == "content_block_stop":
            assert event["index"] == open_index
            open_index = None
        elif kind == "message_delta":
            assert open_index is None
            assert isinstance(event["usage"]["output_tokens"], int)
        elif kind == "message_stop":
            ended = True
        else:
            assert kind in ("ping", "error")
            ended = kind == "error"
    assert ended


def streamed(events: list[dict[str, Any]], **kwargs: Any) -> tuple[list[dict[str, Any]], AnthropicStream]:
    body, stream = run(events, **kwargs)
    parsed = parse_events(body)
    check_sequence(parsed)
    return parsed, stream


def test_text_stream() -> None:
    events, stream = streamed(
        [
            chat_chunk({"role": "assistant", "content": ""}),
            chat_chunk({"content": "Hel"}),
            chat_chunk({"content": "lo"}),
            chat_chunk({}, "stop"),
            chat_chunk(choices=False, usage=token_usage(14, 2)),
        ]
    )
    assert events == [
        {
            "type": "message_start",
            "message": {
                "id": MESSAGE_ID,
                "type": "message",
                "role": "assistant",
                "model": MODEL,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        },
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"input_tokens": 14, "output_tokens": 2},
        },
        {"type": "message_stop"},
    ]
    assert stream.usage == (14, 2)
    assert stream.first_token_at == at(200)
    assert stream.saw_finish
    assert not stream.failed


def test_thinking_then_text_read_by_the_sdk() -> None:
    body, _ = run(
        [
            chat_chunk({"role": "assistant", "content": None}),
            chat_chunk({"reasoning_content": "Let me "}),
            chat_chunk({"reasoning_content": "think."}),
            chat_chunk({"content": "Paris."}),
            chat_chunk({}, "stop", usage=token_usage(20, 9, cached=16)),
        ]
    )
    check_sequence(parse_events(body))
    message = sdk_final_message(body)
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking, text = message.content
    assert thinking.type == "thinking"
    assert thinking.thinking == "Let me think."
    assert thinking.signature == ""
    assert text.type == "text"
    assert text.text == "Paris."
    assert message.stop_reason == "end_turn"
    assert (
        message.usage.input_tokens,
        message.usage.cache_read_input_tokens,
        message.usage.output_tokens,
    ) == (
        4,
        16,
        9,
    )
    Message.model_validate(message.to_dict())


TOOL_CHUNKS = [
    chat_chunk({"role": "assistant", "content": "Checking both."}),
    chat_chunk({"tool_calls": [call(0, "call_a", "get_weather", "")]}),
    chat_chunk({"tool_calls": [call(0, arguments='{"ci')]}),
    chat_chunk({"tool_calls": [call(0, arguments='ty": "Zü')]}),
    chat_chunk({"tool_calls": [call(0, arguments='rich"}')]}),
    chat_chunk({"tool_calls": [call(1, "call_b", "get_time", '{"tz": ')]}),
    chat_chunk({"tool_calls": [call(1, arguments='"CET"}')]}),
    chat_chunk({}, "tool_calls"),
    chat_chunk(choices=False, usage=token_usage(50, 30)),
]


def test_tool_calls_stream_fragment_by_fragment() -> None:
    events, stream = streamed(TOOL_CHUNKS)
    kinds = [(e["type"], e.get("index")) for e in events]
    assert kinds == [
        ("message_start", None),
        ("ping", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert events[5]["content_block"] == {
        "type": "tool_use",
        "id": "call_a",
        "name": "get_weather",
        "input": {},
    }
    assert [e["delta"]["partial_json"] for e in events[6:9]] == ['{"ci', 'ty": "Zü', 'rich"}']
    assert events[10]["content_block"] == {
        "type": "tool_use",
        "id": "call_b",
        "name": "get_time",
        "input": {},
    }
    assert events[14]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert stream.first_token_at == at(100)

    message = sdk_final_message(run(TOOL_CHUNKS)[0])
    assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
        ("text", None),
        ("tool_use", {"city": "Zürich"}),
        ("tool_use", {"tz": "CET"}),
    ]
    assert message.stop_reason == "tool_use"


@pytest.mark.parametrize(
    "fragments",
    [
        # A whole call in one fragment, arguments as text.
        [[call(0, "call_w", "f", '{"a": 1}')]],
        # Arguments already decoded, as a few backends send them.
        [[call(0, "call_w", "f", {"a": 1})]],
        # The name repeated on every fragment.
        [[call(0, "call_w", "f", '{"a"')], [call(0, None, "f", ": 1}")]],
        # No index at all: a new id starts a call, the rest continues it.
        [
            [{"id": "call_w", "function": {"name": "f", "arguments": '{"a":'}}],
            [{"function": {"arguments": " 1}"}}],
        ],
        # No index, the id repeated on every fragment.
        [
            [{"id": "call_w", "function": {"name": "f", "arguments": '{"a"'}}],
            [{"id": "call_w", "function": {"arguments": ": 1}"}}],
        ],
        # Streamed text, then the same arguments decoded: the streamed text stands.
        [[call(0, "call_w", "f", '{"a": 1}')], [call(0, arguments={"a": 2})]],
        # The id and name only after some arguments.
        [[call(0, None, None, '{"a": ')], [call(0, "call_w", "f", "1}")]],
    ],
)
def test_tool_call_shapes(fragments: list[list[dict[str, Any]]]) -> None:
    body, _ = run(
        [*(chat_chunk({"tool_calls": f}, standard=False) for f in fragments), chat_chunk({}, "tool_calls")]
    )
    check_sequence(parse_events(body))
    message = sdk_final_message(body)
    assert len(message.content) == 1
    block = message.content[0]
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == ("call_w", "f", {"a": 1})


@pytest.mark.parametrize("arguments", ["", "null", " null ", "{}"])
def test_no_arguments_is_an_empty_input(arguments: str) -> None:
    body, stream = run(
        [chat_chunk({"tool_calls": [call(0, "c", "f", arguments)]}), chat_chunk({}, "tool_calls")]
    )
    assert not stream.failed
    block = sdk_final_message(body).content[0]
    assert block.type == "tool_use"
    assert block.input == {}


def test_tool_call_without_id_gets_one() -> None:
    events, _ = streamed(
        [chat_chunk({"tool_calls": [call(0, None, "f", "{}")]}), chat_chunk({}, "tool_calls")]
    )
    tool_id = events[2]["content_block"]["id"]
    assert tool_id.startswith("toolu_")
    assert (
        tool_id
        == streamed([chat_chunk({"tool_calls": [call(0, None, "f", "{}")]})])[0][2]["content_block"]["id"]
    )


def test_tool_calls_after_stop_say_tool_use() -> None:
    events, _ = streamed([chat_chunk({"tool_calls": [call(0, "c", "f", "{}")]}), chat_chunk({}, "stop")])
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_closing_fragments_that_add_nothing_are_ignored() -> None:
    events, stream = streamed(
        [
            chat_chunk({"tool_calls": [call(0, "a", "f", "{}")]}),
            chat_chunk({"tool_calls": [call(1, "b", "g", "{}")]}),
            chat_chunk({"tool_calls": [call(0, arguments="")]}, "tool_calls"),
        ]
    )
    assert not stream.failed
    assert [e["type"] for e in events].count("content_block_start") == 2


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (
            [chat_chunk({"tool_calls": [call(0, "c", "f", '{"a": ')]}), chat_chunk({}, "tool_calls")],
            "backend returned invalid JSON arguments for tool call 'f'",
        ),
        (
            [chat_chunk({"tool_calls": [call(0, "c", "f", "[1, 2]")]}), chat_chunk({}, "tool_calls")],
            "backend returned non-object arguments for tool call 'f'",
        ),
        (
            [chat_chunk({"tool_calls": [call(0, "c", None, "{}")]}), chat_chunk({}, "tool_calls")],
            "backend returned a tool call without a function name",
        ),
        (
            [
                chat_chunk({"tool_calls": [call(0, "a", "f", '{"x": 1')]}),
                chat_chunk({"tool_calls": [call(1, "b", "g", "{}")]}),
            ],
            "backend returned invalid JSON arguments for tool call 'f'",
        ),
        (
            [
                chat_chunk({"tool_calls": [call(0, "a", "f", "{")]}),
                chat_chunk({"tool_calls": [call(1, "b", "g", "{}")]}),
                chat_chunk({"tool_calls": [call(0, arguments="}")]}),
            ],
            # The first call's block closed when the second began: "{" alone was already invalid.
            "backend returned invalid JSON arguments for tool call 'f'",
        ),
        (
            [
                chat_chunk({"tool_calls": [call(0, "a", "f", "{}")]}),
                chat_chunk({"content": "text"}),
                chat_chunk({"tool_calls": [call(0, arguments=" ")]}),
            ],
            "backend continued a tool call after the next content block began",
        ),
    ],
)
def test_broken_tool_calls_end_the_stream_with_an_error(events: list[dict[str, Any]], message: str) -> None:
    body, stream = run(events)
    parsed = parse_events(body)
    check_sequence(parsed)
    assert parsed[-1] == {"type": "error", "error": {"type": "api_error", "message": message}}
    assert stream.failed
    with pytest.raises(anthropic.APIStatusError, match=message):
        sdk_final_message(body)


def test_backend_error_mid_stream() -> None:
    stream = AnthropicStream(model=MODEL, message_id=MESSAGE_ID)
    body = stream.start(at(0)) + stream.feed(chat_chunk({"content": "partial"}), at(1))
    error = stream.feed({"error": {"message": "CUDA out of memory", "type": "internal_error"}}, at(2))
    assert error == stream_error_event("CUDA out of memory")
    assert stream.failed
    assert stream.feed(chat_chunk({"content": "more"}), at(3)) == b""
    assert stream.finish(at(4)) == b""
    assert stream.fail("late") == b""
    parsed = parse_events(body + error)
    check_sequence(parsed)
    with pytest.raises(anthropic.APIStatusError, match="CUDA out of memory"):
        sdk_final_message(body + error)


def test_fail_after_output_started() -> None:
    stream = AnthropicStream(model=MODEL, message_id=MESSAGE_ID)
    body = stream.start(at(0)) + stream.feed(chat_chunk({"content": "partial"}), at(1))
    broken = stream.fail("backend connection lost")
    assert parse_events(broken) == [
        {"type": "error", "error": {"type": "api_error", "message": "backend connection lost"}}
    ]
    assert stream.failed
    assert stream.finish(at(2)) == b""
    check_sequence(parse_events(body + broken))


def test_usage_may_come_before_or_after_the_finish_chunk() -> None:
    before, _ = streamed([chat_chunk({"content": "x"}, usage=token_usage(3, 1)), chat_chunk({}, "length")])
    after, _ = streamed(
        [
            chat_chunk({"content": "x"}),
            chat_chunk({}, "length"),
            chat_chunk(choices=False, usage=token_usage(3, 1)),
        ]
    )
    assert before[-2] == after[-2]
    assert after[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }


def test_message_delta_carries_usage_even_when_the_backend_sent_none() -> None:
    events, stream = streamed([chat_chunk({"content": "x"}), chat_chunk({}, "stop")])
    assert events[-2]["usage"] == {"output_tokens": 0}
    assert stream.usage == (None, None)
    assert sdk_final_message(run([chat_chunk({"content": "x"})])[0]).usage.output_tokens == 0


def test_refusal_stream() -> None:
    events, _ = streamed(
        [chat_chunk({"role": "assistant", "refusal": "I can't"}), chat_chunk({"refusal": " help."}, "stop")]
    )
    assert [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"] == ["I can't", " help."]
    assert events[-2]["delta"]["stop_reason"] == "refusal"


def test_stream_without_finish_reason() -> None:
    events, stream = streamed([chat_chunk({"content": "cut"})])
    assert not stream.saw_finish
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


def test_vllm_stop_string_in_a_stream() -> None:
    event = chat_chunk({}, "stop")
    event["choices"][0]["stop_reason"] = "###"
    events, _ = streamed([chat_chunk({"content": "x"}), event])
    assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "###"}


@pytest.mark.parametrize(
    "delta",
    [{}, {"role": "assistant"}, {"role": "assistant", "content": None}, {"content": ""}, {"reasoning": ""}],
)
def test_empty_deltas_open_no_block(delta: dict[str, Any]) -> None:
    events, stream = streamed([chat_chunk(delta), chat_chunk({}, "stop")])
    assert [e["type"] for e in events] == ["message_start", "ping", "message_delta", "message_stop"]
    assert stream.first_token_at is None
    assert sdk_final_message(run([chat_chunk(delta)])[0]).content == []


def test_whitespace_before_a_tool_call_opens_no_text_block() -> None:
    """Models often write "\\n\\n" before a call; an empty-looking text block would be shown to the user."""
    events, _ = streamed(
        [
            chat_chunk({"reasoning_content": "plan"}),
            chat_chunk({"reasoning_content": "\n"}),
            chat_chunk({"content": "\n\n"}),
            chat_chunk({"tool_calls": [call(0, "c", "f", "{}")]}),
            chat_chunk({"content": "\n"}),
        ]
    )
    starts = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    assert starts == ["thinking", "tool_use"]


def test_whitespace_then_text_keeps_the_whitespace() -> None:
    events, _ = streamed(
        [chat_chunk({"content": "\n"}), chat_chunk({"content": " "}), chat_chunk({"content": "Hi"})]
    )
    assert [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"] == ["\n Hi"]


def test_interleaved_kinds_open_new_blocks() -> None:
    message = sdk_final_message(
        run(
            [
                chat_chunk({"content": "A"}),
                chat_chunk({"reasoning_content": "B"}),
                chat_chunk({"reasoning_content": "C", "content": "D"}),
                chat_chunk({"tool_calls": [call(0, "c", "f", "{}")]}),
                chat_chunk({"content": "E"}),
            ]
        )[0]
    )
    assert [(b.type, getattr(b, "text", getattr(b, "thinking", None))) for b in message.content] == [
        ("text", "A"),
        ("thinking", "BC"),
        ("text", "D"),
        ("tool_use", None),
        ("text", "E"),
    ]


def test_inline_think_tags_split_when_asked() -> None:
    pieces = ["<thi", "nk>\nPon", "dering.</th", "ink>\n\nAns", "wer."]
    message = sdk_final_message(run([chat_chunk({"content": p}) for p in pieces], split_think_tags=True)[0])
    assert [(b.type, getattr(b, "text", getattr(b, "thinking", None))) for b in message.content] == [
        ("thinking", "Pondering."),
        ("text", "Answer."),
    ]


def test_start_is_written_once() -> None:
    stream = AnthropicStream(model=MODEL, message_id=MESSAGE_ID)
    first = stream.start(at(0))
    assert first.startswith(b"event: message_start\n")
    assert stream.start(at(1)) == b""
    assert not stream.feed(chat_chunk({"content": "x"}), at(2)).startswith(b"event: message_start")


def test_feed_without_start_still_starts_the_message() -> None:
    stream = AnthropicStream(model=MODEL, message_id=MESSAGE_ID)
    body = stream.feed(chat_chunk({"content": "x"}), at(1)) + stream.finish(at(2))
    check_sequence(parse_events(body))


def test_nothing_after_finish() -> None:
    stream = AnthropicStream(model=MODEL, message_id=MESSAGE_ID)
    stream.start(at(0))
    stream.finish(at(1))
    assert stream.feed(chat_chunk({"content": "x"}), at(2)) == b""
    assert stream.finish(at(3)) == b""
    assert stream.fail("late") == b""


# --- streams: any split of the backend's bytes, any chunking of its text ------------------------------------


def backend_sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + json.dumps(e, ensure_ascii=False).encode() + b"\n\n" for e in events) + (
        b"data: [DONE]\n\n"
    )


def translate_bytes(pieces: Iterator[bytes] | list[bytes], **kwargs: Any) -> bytes:
    """What the daemon's stream plumbing does: decode SSE, skip [DONE], feed, finish."""
    decoder = SSEDecoder()
    stream = AnthropicStream(model=MODEL, message_id=MESSAGE_ID, **kwargs)
    out = [stream.start(at(0))]
    for piece in pieces:
        for event in decoder.feed(piece):
            if event.data != "[DONE]":
                out.append(stream.feed(json.loads(event.data), at(1)))
    for event in decoder.close():
        if event.data != "[DONE]":
            out.append(stream.feed(json.loads(event.data), at(1)))
    out.append(stream.finish(at(2)))
    return b"".join(out)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({min(cut, len(data)) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]


SCENARIOS = {
    "text": [
        chat_chunk({"role": "assistant", "content": None}),
        chat_chunk({"content": "Grüße 🦙"}),
        chat_chunk({}, "stop"),
    ],
    "thinking": [
        chat_chunk({"reasoning_content": "思考"}),
        chat_chunk({"content": "答え"}),
        chat_chunk({}, "stop", usage=token_usage(5, 2)),
    ],
    "tools": TOOL_CHUNKS,
    "think_tags": [
        chat_chunk({"content": "<think>hm</think>"}),
        chat_chunk({"content": "ok"}),
        chat_chunk({}, "stop"),
    ],
}


def test_every_single_byte_split_gives_the_same_output() -> None:
    data = backend_sse(TOOL_CHUNKS)
    whole = translate_bytes([data])
    check_sequence(parse_events(whole))
    for cut in range(len(data) + 1):
        assert translate_bytes(split_at(data, [cut])) == whole


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(SCENARIOS)), st.data())
def test_property_any_split_gives_the_same_output(name: str, data: st.DataObject) -> None:
    raw = backend_sse(SCENARIOS[name])
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=40))
    split_think_tags = name == "think_tags"
    assert translate_bytes(split_at(raw, cuts), split_think_tags=split_think_tags) == translate_bytes(
        [raw], split_think_tags=split_think_tags
    )


def chunked(text: str, cuts: list[int]) -> list[str]:
    bounds = sorted({min(cut, len(text)) for cut in cuts})
    return [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)], strict=True) if a != b]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(
    thinking=st.text(max_size=30),
    text=st.text(max_size=30),
    arguments=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4),
    data=st.data(),
)
def test_property_any_chunking_gives_the_same_message(
    thinking: str, text: str, arguments: dict[str, Any], data: st.DataObject
) -> None:
    """However the backend cuts its deltas, the SDK ends up with the same message."""
    cuts = st.lists(st.integers(0, 60), max_size=6)
    encoded = json.dumps(arguments, ensure_ascii=False)
    events = [chat_chunk({"reasoning_content": piece}) for piece in chunked(thinking, data.draw(cuts))]
    events += [chat_chunk({"content": piece}) for piece in chunked(text, data.draw(cuts))]
    pieces = chunked(encoded, data.draw(cuts))
    events.append(chat_chunk({"tool_calls": [call(0, "call_x", "tool", pieces[0])]}))
    events += [chat_chunk({"tool_calls": [call(0, arguments=piece)]}) for piece in pieces[1:]]
    events.append(chat_chunk({}, "tool_calls", usage=token_usage(10, 5)))
    body, stream = run(events)
    check_sequence(parse_events(body))
    assert not stream.failed
    message = sdk_final_message(body)
    expected: list[tuple[str, Any]] = []
    if thinking.strip():
        expected.append(("thinking", thinking))
    if text.strip():
        expected.append(("text", text))
    expected.append(("tool_use", arguments))
    got = [
        (b.type, getattr(b, "thinking", getattr(b, "text", getattr(b, "input", None))))
        for b in message.content
    ]
    assert got == expected
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 5)


# --- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "anthropic_code", "error_type", "exception"),
    [
        (400, 400, "invalid_request_error", anthropic.BadRequestError),
        (401, 401, "authentication_error", anthropic.AuthenticationError),
        (403, 403, "permission_error", anthropic.PermissionDeniedError),
        (404, 404, "not_found_error", anthropic.NotFoundError),
        (405, 405, "invalid_request_error", anthropic.APIStatusError),
        (413, 413, "request_too_large", anthropic.RequestTooLargeError),
        (429, 429, "rate_limit_error", anthropic.RateLimitError),
        (500, 500, "api_error", anthropic.InternalServerError),
        (501, 501, "api_error", anthropic.InternalServerError),
        (502, 502, "api_error", anthropic.InternalServerError),
        (503, 529, "overloaded_error", anthropic.OverloadedError),
        (504, 504, "timeout_error", anthropic.GatewayTimeoutError),
        (200, 500, "api_error", anthropic.InternalServerError),
    ],
)
def test_error_statuses_as_the_sdk_sees_them(
    status: int, anthropic_code: int, error_type: str, exception: type[anthropic.APIStatusError]
) -> None:
    assert anthropic_status(status) == (anthropic_code, error_type)
    code, body = error_reply(status, "it broke")
    assert body == error_body(error_type, "it broke")
    assert body == {"type": "error", "error": {"type": error_type, "message": "it broke"}}
    if error_type != "request_too_large":
        # The SDK's own error-body model lacks Anthropic's documented 413 type.
        BetaErrorResponse.model_validate(body)
    client = sdk_client(lambda _request: httpx2.Response(code, json=body))
    with pytest.raises(exception) as raised:
        client.messages.create(model=MODEL, max_tokens=10, messages=[USER])
    assert raised.value.status_code == code
    assert raised.value.body == body


def test_stream_error_event() -> None:
    assert (
        stream_error_event("gone")
        == b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"gone"}}\n\n'
    )
    assert parse_events(stream_error_event("busy", "overloaded_error")) == [
        {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    ]


# --- count_tokens -------------------------------------------------------------------------------------------


COUNTED = {
    "model": MODEL,
    "system": [
        {"type": "text", "text": "x-anthropic-billing-header: cch=1;"},
        {"type": "text", "text": "System."},
    ],
    "messages": [
        {"role": "user", "content": "Hello"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Hm.", "signature": ""},
                {"type": "tool_use", "id": "t", "name": "Read", "input": {"p": 1}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "Result."}]},
                {"type": "tool_result", "tool_use_id": "t2", "content": "Plain."},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Doc."}},
                {
                    "type": "document",
                    "source": {"type": "content", "content": [{"type": "text", "text": "Part."}]},
                },
                {
                    "type": "search_result",
                    "title": "R",
                    "source": "s",
                    "content": [{"type": "text", "text": "Found."}],
                },
            ],
        },
    ],
    "tools": [
        {
            "name": "Read",
            "description": "Read a file",
            "input_schema": {"type": "object"},
            "cache_control": {},
        }
    ],
}


def test_tokenize_text() -> None:
    assert tokenize_text(COUNTED) == "\n\n".join(
        [
            "System.",
            "Hello",
            "Hm.",
            "Read",
            '{"p":1}',
            "Result.",
            "Plain.",
            "Doc.",
            "Part.",
            "Found.",
            '{"name":"Read","description":"Read a file","input_schema":{"type":"object"}}',
        ]
    )


def test_estimate_input_tokens() -> None:
    characters = len(tokenize_text(COUNTED))
    assert estimate_input_tokens(COUNTED) == -(-characters // 4) + 1600
    assert estimate_input_tokens({"messages": [{"role": "user", "content": "abcdefgh"}]}) == 2
    assert estimate_input_tokens({"messages": [{"role": "user", "content": "abcdefghi"}]}) == 3
    assert estimate_input_tokens({"messages": []}) == 1


def test_estimate_from_an_sdk_count_tokens_body() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(json.loads(request.content))
        return httpx2.Response(200, json={"input_tokens": estimate_input_tokens(sent[-1])})

    counted = sdk_client(handler).messages.count_tokens(
        model=MODEL,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello there"}],
        tools=[WEATHER],
    )
    assert counted.input_tokens == estimate_input_tokens(sent[0])
    assert counted.input_tokens > len("Be brief.Hello there") // 4


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "request body must be a JSON object"),
        ({}, "messages: field required"),
        ({"messages": {}}, "messages: expected"),
    ],
)
def test_count_tokens_of_invalid_bodies(body: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        estimate_input_tokens(body)


@pytest.mark.parametrize(
    ("reply", "count"),
    [
        ({"tokens": [1, 2, 3]}, 3),  # llama.cpp
        ({"tokens": [{"id": 1, "piece": "a"}]}, 1),  # llama.cpp with_pieces
        ({"count": 7, "max_model_len": 8192, "tokens": [1]}, 7),  # vLLM
        ({"count": -1, "tokens": [1, 2]}, 2),
        ({"error": "nope"}, None),
        ([1, 2], None),
    ],
)
def test_tokenizer_count(reply: Any, count: int | None) -> None:
    assert tokenizer_count(reply) == count


def test_counted_input_tokens_adds_the_images_the_tokenizer_never_saw() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    body = {"messages": [{"role": "user", "content": [image, {"type": "text", "text": "Hi"}]}]}
    assert counted_input_tokens(body, 5) == 5 + 1600
    assert counted_input_tokens({"messages": []}, 0) == 1


@pytest.mark.parametrize(
    ("body", "context", "prompt", "kept"),
    [
        ({"max_tokens": 32000}, 8192, 100, False),  # Claude Code on a small model
        ({"max_tokens": 1000}, 8192, 100, True),
        ({"max_tokens": 8092}, 8192, 100, True),  # exactly fits
        ({"max_tokens": 8093}, 8192, 100, False),
        ({"max_completion_tokens": 32000}, 8192, 100, False),  # the OpenAI dialect's field
        ({"max_tokens": 32000}, None, 100, True),  # the window is unknown: as asked
    ],
)
def test_fit_context(body: dict[str, Any], context: int | None, prompt: int, kept: bool) -> None:
    fitted = fit_context({"model": "m", **body}, context, prompt)
    assert fitted == ({"model": "m", **body} if kept else {"model": "m"})

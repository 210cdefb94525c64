"""The Responses API over chat completions: requests, whole replies and streams, checked with the openai SDK.

Stream output is read back the way clients read it: decoded as SSE, every event validated against the SDK's
event models, and whole streams run through the SDK's own ``responses.stream()`` over a mock transport.
"""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from ollama_proxy.errors import BackendError, BadRequest
from ollama_proxy.sse import SSEDecoder
from ollama_proxy.translate.dialect import Dialect
from ollama_proxy.translate.replies import Instant
from ollama_proxy.translate.responses import (
    ResponsesStream,
    Translated,
    completion_to_response,
    responses_to_openai,
    stream_error_events,
)
from tests.support import chat_chunk

RESPONSE_ID = "resp_0123abcd"
CREATED = 1_748_772_000.75  # reported as whole seconds
EVENTS = TypeAdapter[Any](ResponseStreamEvent)
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(16)).decode()


def at(ms: int) -> Instant:
    return Instant(wall=CREATED + ms / 1000, mono_ns=ms * 1_000_000)


def translate(body: dict[str, Any], dialect: Dialect = Dialect.VLLM) -> Translated:
    return responses_to_openai(body, "backend-model", dialect)


def messages(body: dict[str, Any], dialect: Dialect = Dialect.VLLM) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = translate(body, dialect).body["messages"]
    return result


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def developer(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": text}]}


def assistant(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "assistant",
        "id": "msg_old",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def function_call(call_id: str, name: str, arguments: str = "{}", **extra: Any) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments, **extra}


def function_tool(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "function",
        "name": name,
        "description": f"{name} does things",
        "strict": False,
        "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        **extra,
    }


CODEX_FUNCTIONS = [
    "exec_command",
    "write_stdin",
    "request_user_input",
    "view_image",
    "get_goal",
    "create_goal",
    "update_goal",
]
NAMESPACE_MEMBERS = ["spawn_agent", "send_input", "wait_agent", "close_agent"]


def codex_request() -> dict[str, Any]:
    """The body Codex CLI 0.171 sends with ``exec --oss`` (see shared/clients-traffic.md)."""
    return {
        "model": "llama3",
        "stream": True,
        "input": [
            developer("You are Codex, a coding agent."),
            developer("<permissions instructions>sandbox: workspace-write</permissions instructions>"),
            user("<environment_context><cwd>/tmp/x</cwd></environment_context>"),
            user("Say hi"),
        ],
        "tools": [
            *(function_tool(name) for name in CODEX_FUNCTIONS),
            {
                "type": "namespace",
                "name": "multi_agent_v1",
                "description": "Sub-agents",
                "tools": [function_tool(name) for name in NAMESPACE_MEMBERS],
            },
            {"type": "web_search", "external_web_access": False},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199a1b2-session",
        "client_metadata": {"session_id": "0199a1b2-session", "x-codex-installation-id": "abc"},
    }


# --- requests: Codex's real shape ---------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", list(Dialect))
def test_codex_request(dialect: Dialect) -> None:
    translated = translate(codex_request(), dialect)
    body = translated.body
    assert body["model"] == "backend-model"
    assert body["messages"] == [
        {
            "role": "system",
            "content": "You are Codex, a coding agent.\n\n"
            "<permissions instructions>sandbox: workspace-write</permissions instructions>",
        },
        {"role": "user", "content": "<environment_context><cwd>/tmp/x</cwd></environment_context>"},
        {"role": "user", "content": "Say hi"},
    ]
    names = [tool["function"]["name"] for tool in body["tools"]]
    assert names == CODEX_FUNCTIONS + [f"multi_agent_v1__{name}" for name in NAMESPACE_MEMBERS]
    assert body["tools"][0] == {
        "type": "function",
        "function": {
            "name": "exec_command",
            "description": "exec_command does things",
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        },
    }
    assert body["tool_choice"] == "auto"
    assert body["parallel_tool_calls"] is True
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert translated.dropped_tools == ("web_search",)
    assert translated.dropped_input == ()
    # reasoning.summary alone asks for nothing; store, include, prompt_cache_key and client_metadata vanish.
    assert set(body) == {
        "model",
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "stream",
        "stream_options",
    }


def test_string_input_is_one_user_message() -> None:
    assert translate({"input": "Hello", "instructions": "Be brief."}).body == {
        "model": "backend-model",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        "stream": False,
    }


def test_items_without_type_are_messages() -> None:
    body = {"input": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    assert messages(body) == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]


def test_all_system_text_goes_into_one_leading_system_message() -> None:
    body = {
        "instructions": "Instructions.",
        "input": [
            developer("Dev one."),
            {"role": "system", "content": "Sys."},
            user("Q1"),
            assistant("A1"),
            developer("Late developer note."),
            user("Q2"),
        ],
    }
    assert messages(body) == [
        {"role": "system", "content": "Instructions.\n\nDev one.\n\nSys.\n\nLate developer note."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]


def test_text_parts_are_joined() -> None:
    body = {
        "input": [
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
            },
            {
                "role": "assistant",
                "content": [{"type": "output_text", "text": "c"}, {"type": "refusal", "refusal": "d"}],
            },
            {"role": "user", "content": []},
            {"role": "user", "content": None},
        ]
    }
    assert messages(body) == [
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "c\nd"},
        {"role": "user", "content": ""},
        {"role": "user", "content": ""},
    ]


def test_images_in_user_messages() -> None:
    body = {
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": f"data:image/jpeg;base64,{PNG}", "detail": "auto"},
                    {"type": "input_image", "image_url": "https://example.com/cat.jpg", "detail": "low"},
                ],
            }
        ]
    }
    assert messages(body) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                # the bytes are a PNG whatever the client declared, as in the Ollama translation
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
            ],
        }
    ]


@pytest.mark.parametrize(
    ("part", "role", "message"),
    [
        ({"type": "input_image", "file_id": "file-1"}, "user", "file_id are not supported"),
        ({"type": "input_image"}, "user", "missing required parameter: 'input[0].content[0].image_url'"),
        ({"type": "input_image", "image_url": "ftp://x/y.png"}, "user", "expected a data URL or an http"),
        ({"type": "input_image", "image_url": "data:image/png,rawbytes"}, "user", "only base64 data"),
        (
            {"type": "input_image", "image_url": "https://x/y.png"},
            "developer",
            "only supported in user messages",
        ),
        (
            {"type": "input_image", "image_url": "https://x/y.png"},
            "assistant",
            "only supported in user messages",
        ),
        ({"type": "input_file", "file_id": "file-1"}, "user", "input_file content is not supported"),
        ({"type": "input_audio", "input_audio": {}}, "user", "input_audio content is not supported"),
        ({"text": "no type"}, "user", "missing or invalid 'type' in 'input[0].content[0]'"),
        ("just a string", "user", "invalid type for 'input[0].content[0]': expected an object"),
    ],
)
def test_bad_content_parts(part: Any, role: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("(", r"\(").replace("[", r"\[")):
        translate({"input": [{"role": role, "content": [part]}]})


def test_unknown_items_and_parts_are_dropped_and_reported() -> None:
    body = {
        "input": [
            user("Q"),
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            {"type": "custom_tool_call", "call_id": "c", "name": "apply_patch", "input": "*** Begin"},
            {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "new_part_kind"}]},
            {"type": "compaction", "encrypted_content": "opaque"},
        ]
    }
    translated = translate(body)
    assert translated.body["messages"] == [{"role": "user", "content": "Q"}, {"role": "user", "content": "a"}]
    assert translated.dropped_input == ("web_search_call", "custom_tool_call", "new_part_kind", "compaction")


# --- requests: tool calls and results -----------------------------------------------------------------------


def test_function_calls_join_the_assistant_message_before_them() -> None:
    body = {
        "input": [
            user("Weather in Paris and Rome?"),
            assistant("Checking."),
            function_call("call_a", "weather", '{"city":"Paris"}'),
            function_call("call_b", "weather", '{"city":"Rome"}', id="fc_1", status="completed"),
            {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "call_b",
                "output": [{"type": "input_text", "text": "rain"}],
            },
            function_call("call_c", "spawn_agent", "", namespace="multi_agent_v1"),
            {"type": "function_call_output", "call_id": "call_c", "output": None},
        ]
    }
    assert messages(body) == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "rain"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_c",
                    "type": "function",
                    "function": {"name": "multi_agent_v1__spawn_agent", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_c", "content": ""},
    ]


def test_images_in_tool_output_follow_the_tool_results() -> None:
    image = {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"}
    body = {
        "input": [
            user("Look at both"),
            function_call("call_a", "view_image"),
            function_call("call_b", "view_image"),
            {"type": "function_call_output", "call_id": "call_a", "output": [image]},
            {
                "type": "function_call_output",
                "call_id": "call_b",
                "output": [{"type": "input_text", "text": "ok"}, image],
            },
            assistant("Two PNGs."),
        ]
    }
    chat_image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    assert messages(body)[2:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": ""},
        {"role": "tool", "tool_call_id": "call_b", "content": "ok"},
        {"role": "user", "content": [chat_image, chat_image]},
        {"role": "assistant", "content": "Two PNGs."},
    ]


def test_images_in_the_last_tool_output_still_reach_the_model() -> None:
    body = {
        "input": [
            user("Look"),
            function_call("call_a", "view_image"),
            {
                "type": "function_call_output",
                "call_id": "call_a",
                "output": [{"type": "input_image", "image_url": "https://x/a.png"}],
            },
        ]
    }
    assert messages(body)[-1] == {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}],
    }


REASONING_ITEM = {
    "type": "reasoning",
    "id": "rs_1",
    "summary": [{"type": "summary_text", "text": "Summary."}],
    "content": [{"type": "reasoning_text", "text": "Raw thoughts."}],
    "encrypted_content": "gAAAA-opaque",
}


@pytest.mark.parametrize(
    ("dialect", "field"),
    [
        (Dialect.VLLM, "reasoning_content"),
        (Dialect.LLAMACPP, "reasoning_content"),
        (Dialect.OPENROUTER, "reasoning"),
        (Dialect.OPENAI, None),
    ],
)
def test_reasoning_history_goes_to_the_next_assistant_message(dialect: Dialect, field: str | None) -> None:
    body = {"input": [user("Q"), REASONING_ITEM, function_call("call_a", "f"), assistant("after")]}
    first = messages(body, dialect)[1]
    if field is None:
        assert set(first) == {"role", "content", "tool_calls"}
    else:
        assert first[field] == "Raw thoughts."
    assert all(len(set(m) & {"reasoning", "reasoning_content"}) == 0 for m in messages(body, dialect)[2:])


def test_reasoning_summary_is_used_without_content_and_joined() -> None:
    item = {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "One."}, {"type": "summary_text", "text": "Two."}],
        "content": None,
    }
    assert messages({"input": [user("Q"), item, assistant("A")]})[1] == {
        "role": "assistant",
        "content": "A",
        "reasoning_content": "One.\n\nTwo.",
    }


@pytest.mark.parametrize(
    "items",
    [
        [REASONING_ITEM, user("Q")],  # a user message comes first: it answers nothing
        [user("Q"), REASONING_ITEM],  # nothing follows it
        [
            user("Q"),
            {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAA"},
            assistant("A"),
        ],
    ],
)
def test_reasoning_without_an_assistant_turn_or_text_is_dropped(items: list[dict[str, Any]]) -> None:
    assert all("reasoning_content" not in m for m in messages({"input": items}))


# --- requests: tools and options ----------------------------------------------------------------------------


def test_strict_is_forwarded_only_when_true() -> None:
    tools = [
        function_tool("a", strict=True),
        function_tool("b", strict=False),
        function_tool("c", strict=None),
    ]
    body = translate({"input": "x", "tools": tools}).body
    assert [t["function"].get("strict") for t in body["tools"]] == [True, None, None]


def test_function_without_parameters_or_description() -> None:
    body = translate({"input": "x", "tools": [{"type": "function", "name": "now", "parameters": None}]}).body
    assert body["tools"] == [{"type": "function", "function": {"name": "now"}}]


def test_hosted_and_custom_tools_are_dropped_and_reported() -> None:
    tools = [
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "computer_use_preview", "display_width": 1, "display_height": 1, "environment": "linux"},
        {"type": "image_generation"},
        {"type": "mcp", "server_label": "x", "server_url": "https://x"},
        {"type": "local_shell"},
        {"type": "custom", "name": "apply_patch", "format": {"type": "text"}},
        {"type": "namespace", "name": "ns", "description": "", "tools": [{"type": "custom", "name": "free"}]},
    ]
    translated = translate(
        {"input": "x", "tools": tools, "tool_choice": "required", "parallel_tool_calls": False}
    )
    assert translated.dropped_tools == (
        "file_search",
        "code_interpreter",
        "computer_use_preview",
        "image_generation",
        "mcp",
        "local_shell",
        "custom",
        "custom",
    )
    # OpenAI refuses tool_choice and parallel_tool_calls without tools.
    assert set(translated.body) == {"model", "messages", "stream"}


def test_namespace_member_already_qualified_keeps_its_name() -> None:
    tools = [
        {
            "type": "namespace",
            "name": "ns",
            "description": "",
            "tools": [function_tool("ns__x"), function_tool("y")],
        }
    ]
    body = translate({"input": "x", "tools": tools}).body
    assert [t["function"]["name"] for t in body["tools"]] == ["ns__x", "ns__y"]


CHOICE_TOOLS = [
    function_tool("exec_command"),
    {
        "type": "namespace",
        "name": "multi_agent_v1",
        "description": "",
        "tools": [function_tool("spawn_agent")],
    },
    {"type": "web_search"},
]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        (
            {"type": "function", "name": "exec_command"},
            {"type": "function", "function": {"name": "exec_command"}},
        ),
        (
            {"type": "function", "name": "spawn_agent"},
            {"type": "function", "function": {"name": "multi_agent_v1__spawn_agent"}},
        ),
        (
            {"type": "function", "name": "spawn_agent", "namespace": "multi_agent_v1"},
            {"type": "function", "function": {"name": "multi_agent_v1__spawn_agent"}},
        ),
        ({"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "x"}]}, "auto"),
        ({"type": "web_search_preview"}, "auto"),
        ({"type": "custom", "name": "apply_patch"}, "auto"),
        ({"type": "mcp", "server_label": "x"}, "auto"),
    ],
)
def test_tool_choice(choice: Any, expected: Any) -> None:
    assert (
        translate({"input": "x", "tools": CHOICE_TOOLS, "tool_choice": choice}).body["tool_choice"]
        == expected
    )


@pytest.mark.parametrize(
    ("dialect", "key"),
    [
        (Dialect.VLLM, "max_tokens"),
        (Dialect.LLAMACPP, "max_tokens"),
        (Dialect.OPENROUTER, "max_tokens"),
        (Dialect.OPENAI, "max_completion_tokens"),
    ],
)
def test_max_output_tokens(dialect: Dialect, key: str) -> None:
    body = translate({"input": "x", "max_output_tokens": 256.0}, dialect).body
    assert body[key] == 256
    assert isinstance(body[key], int)
    assert {"max_tokens", "max_completion_tokens"} & set(body) == {key}


def test_sampling() -> None:
    body = translate({"input": "x", "temperature": 0.2, "top_p": 1, "stream": False}).body
    assert (body["temperature"], body["top_p"], body["stream"]) == (0.2, 1, False)
    assert "stream_options" not in body


EFFORTS = ["none", "minimal", "low", "medium", "high", "xhigh", "max"]
OPEN_SWITCH: dict[str, dict[str, Any]] = {
    "none": {"chat_template_kwargs": {"enable_thinking": False}},
    "minimal": {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "low"},
    "low": {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "low"},
    "medium": {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "medium"},
    "high": {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "high"},
    "xhigh": {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "high"},
    "max": {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "high"},
}
OPENROUTER_SWITCH: dict[str, dict[str, Any]] = {
    "none": {"reasoning": {"enabled": False}},
    "minimal": {"reasoning": {"effort": "low"}},
    "low": {"reasoning": {"effort": "low"}},
    "medium": {"reasoning": {"effort": "medium"}},
    "high": {"reasoning": {"effort": "high"}},
    "xhigh": {"reasoning": {"effort": "high"}},
    "max": {"reasoning": {"effort": "high"}},
}
SWITCHES: dict[Dialect, dict[str, dict[str, Any]]] = {
    Dialect.VLLM: OPEN_SWITCH,
    Dialect.LLAMACPP: OPEN_SWITCH,
    Dialect.OPENROUTER: OPENROUTER_SWITCH,
    # OpenAI's own vocabulary goes to OpenAI as it is.
    Dialect.OPENAI: {effort: {"reasoning_effort": effort} for effort in EFFORTS},
}


@pytest.mark.parametrize("dialect", list(Dialect))
@pytest.mark.parametrize("effort", EFFORTS)
def test_reasoning_effort(dialect: Dialect, effort: str) -> None:
    body = translate({"input": "x", "reasoning": {"effort": effort, "summary": "detailed"}}, dialect).body
    extra = {key: value for key, value in body.items() if key not in ("model", "messages", "stream")}
    assert extra == SWITCHES[dialect][effort]


@pytest.mark.parametrize("reasoning", [None, {}, {"effort": None}, {"summary": "auto"}])
def test_no_effort_asks_for_nothing(reasoning: Any) -> None:
    assert set(translate({"input": "x", "reasoning": reasoning}).body) == {"model", "messages", "stream"}


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize(
    ("text", "dialect", "expected"),
    [
        (
            {"format": {"type": "json_schema", "name": "thing", "schema": SCHEMA, "strict": True}},
            Dialect.VLLM,
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True},
                }
            },
        ),
        (
            {"format": {"type": "json_schema", "schema": SCHEMA, "description": "A thing"}},
            Dialect.LLAMACPP,
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "response", "description": "A thing", "schema": SCHEMA},
                }
            },
        ),
        (
            {"format": {"type": "json_object"}},
            Dialect.OPENROUTER,
            {"response_format": {"type": "json_object"}},
        ),
        ({"format": {"type": "text"}}, Dialect.VLLM, {}),
        ({"format": {"type": "text"}, "verbosity": "low"}, Dialect.OPENAI, {"verbosity": "low"}),
        ({"verbosity": "low"}, Dialect.VLLM, {}),
    ],
)
def test_text_format(text: dict[str, Any], dialect: Dialect, expected: dict[str, Any]) -> None:
    body = translate({"input": "x", "text": text}, dialect).body
    assert {
        key: value for key, value in body.items() if key not in ("model", "messages", "stream")
    } == expected


@pytest.mark.parametrize(
    "ignored",
    [
        {"store": True},
        {"store": False},
        {"background": False},
        {"previous_response_id": None},
        {"user": "u-1", "metadata": {"k": "v"}, "include": ["message.output_text.logprobs"]},
        {"truncation": "auto", "service_tier": "flex", "prompt_cache_key": "k", "safety_identifier": "s"},
        {"client_metadata": {"a": "b"}, "top_logprobs": 3, "max_tool_calls": 2, "stream_options": {}},
    ],
)
def test_fields_without_a_chat_counterpart_are_ignored(ignored: dict[str, Any]) -> None:
    assert translate({"input": "x", **ignored}).body == translate({"input": "x"}).body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"input": "x", "previous_response_id": "resp_1"},
            "previous_response_id is not supported: this server keeps no state",
        ),
        (
            {"input": "x", "conversation": "conv_1"},
            "conversation is not supported: this server keeps no state",
        ),
        ({"input": "x", "background": True}, "background responses are not supported"),
        ({"input": "x", "prompt": {"id": "pmpt_1"}}, "stored prompts"),
        (
            {"input": [{"type": "item_reference", "id": "msg_1"}]},
            "item references are not supported: this server keeps no state",
        ),
        ({}, "missing required parameter: 'input'"),
        (
            {"input": 3},
            "invalid type for 'input': expected a string or an array of input items, got 3",
        ),
        ({"input": []}, "'input' holds no user, assistant or tool content"),
        ({"input": [developer("only instructions")]}, "holds no user"),
        ({"input": ["hi"]}, "invalid type for 'input[0]': expected an object, got a string"),
        ({"input": [{"content": "no role or type"}]}, "missing or invalid 'type' in 'input[0]'"),
        ({"input": [{"role": "tool", "content": "x"}]}, "invalid value for 'input[0].role'"),
        ({"input": [{"role": "user", "content": 5}]}, "invalid type for 'input[0].content'"),
        (
            {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "missing required parameter: 'input[0].call_id'",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
            "missing required parameter: 'input[0].name'",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": [1]}]},
            "invalid type for 'input[0].arguments': expected a string",
        ),
        (
            {"input": [{"type": "function_call_output", "output": "x"}]},
            "missing required parameter: 'input[0].call_id'",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": 1}]},
            "invalid type for 'input[0].output'",
        ),
        ({"input": "x", "instructions": ["a"]}, "invalid type for 'instructions': expected a string"),
        ({"input": "x", "tools": {"type": "function"}}, "invalid type for 'tools': expected an array"),
        ({"input": "x", "tools": ["f"]}, "invalid type for 'tools[0]': expected an object"),
        ({"input": "x", "tools": [{"name": "f"}]}, "missing required parameter: 'tools[0].type'"),
        ({"input": "x", "tools": [{"type": "function"}]}, "missing required parameter: 'tools[0].name'"),
        ({"input": "x", "tools": [function_tool("f"), function_tool("f")]}, "duplicate tool name 'f'"),
        (
            {"input": "x", "tools": [function_tool("f", parameters="{}")]},
            "invalid type for 'tools[0].parameters'",
        ),
        ({"input": "x", "tools": [{"type": "namespace", "name": "ns"}]}, "invalid type for 'tools[0].tools'"),
        (
            {"input": "x", "tools": [function_tool("f")], "tool_choice": {"type": "function", "name": "g"}},
            "names the function 'g'",
        ),
        ({"input": "x", "tool_choice": {"type": "function", "name": "g"}}, "names the function 'g'"),
        ({"input": "x", "tool_choice": "any"}, "invalid value for 'tool_choice'"),
        (
            {"input": "x", "parallel_tool_calls": "yes"},
            "invalid type for 'parallel_tool_calls': expected a boolean",
        ),
        (
            {"input": "x", "temperature": "hot"},
            "invalid type for 'temperature': expected a number, got a string",
        ),
        ({"input": "x", "top_p": True}, "invalid type for 'top_p': expected a number, got a boolean"),
        ({"input": "x", "max_output_tokens": 0}, "'max_output_tokens': expected at least 1"),
        (
            {"input": "x", "max_output_tokens": 2.5},
            "invalid type for 'max_output_tokens': expected an integer",
        ),
        ({"input": "x", "stream": "true"}, "invalid type for 'stream': expected a boolean"),
        ({"input": "x", "reasoning": "high"}, "invalid type for 'reasoning': expected an object"),
        ({"input": "x", "reasoning": {"effort": "extreme"}}, "invalid value for 'reasoning.effort'"),
        ({"input": "x", "text": {"format": {"type": "yaml"}}}, "invalid value for 'text.format.type'"),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
            "invalid type for 'text.format.schema'",
        ),
        ({"input": "x", "text": "json"}, "invalid type for 'text': expected an object"),
    ],
)
def test_bad_requests(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        translate(body)
    assert message in caught.value.message


def test_a_body_that_is_not_an_object() -> None:
    with pytest.raises(BadRequest, match="JSON object"):
        responses_to_openai([], "m", Dialect.VLLM)  # type: ignore[arg-type]


# --- whole replies ------------------------------------------------------------------------------------------


def completion(
    message: dict[str, Any], finish_reason: str = "stop", *, standard: bool = True, **extra: Any
) -> dict[str, Any]:
    """A chat.completion, checked against the openai SDK so inputs look like real backends (``standard``)
    or deliberately not."""
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1748772000,
        "model": "backend",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}
        ],
        **extra,
    }
    if standard:
        ChatCompletion.model_validate(body)
    return body


USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 5,
    "total_tokens": 17,
    "prompt_tokens_details": {"cached_tokens": 8},
    "completion_tokens_details": {"reasoning_tokens": 3},
}


def reply(body: dict[str, Any], request: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    response = completion_to_response(
        body,
        model="llama3",
        response_id=RESPONSE_ID,
        created_at=CREATED,
        request=request if request is not None else {"input": "x"},
        **options,
    )
    parsed = Response.model_validate(response)
    assert parsed.id == RESPONSE_ID
    assert response["created_at"] == 1_748_772_000
    assert json.loads(json.dumps(response)) == response
    return response


def test_text_reply() -> None:
    response = reply(completion({"content": "Hi there."}, usage=USAGE), completed_at=CREATED + 2)
    assert Response.model_validate(response).output_text == "Hi there."
    assert response["status"] == "completed"
    assert response["completed_at"] == 1_748_772_002
    assert response["error"] is None
    assert response["incomplete_details"] is None
    assert response["model"] == "llama3"
    assert response["object"] == "response"
    assert response["output"] == [
        {
            "id": "msg_0123abcd_0",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi there.", "annotations": [], "logprobs": []}],
        }
    ]
    assert response["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 17,
    }


def test_reasoning_reply() -> None:
    response = reply(completion({"content": "42", "reasoning_content": "Let me think."}))
    assert response["output"][0] == {
        "id": "rs_0123abcd_0",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "Let me think."}],
    }
    assert response["output"][1]["id"] == "msg_0123abcd_1"
    assert Response.model_validate(response).output_text == "42"


def test_tool_call_reply() -> None:
    request = {"input": "x", "tools": CHOICE_TOOLS}
    body = completion(
        {
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "exec_command", "arguments": '{"cmd":"ls"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "multi_agent_v1__spawn_agent", "arguments": ""},
                },
                {"type": "function", "function": {"name": "spawn_agent", "arguments": {"task": "x"}}},
            ],
        },
        "tool_calls",
        standard=False,
    )
    response = reply(body, request)
    calls = response["output"]
    assert calls[0] == {
        "id": "fc_0123abcd_0",
        "type": "function_call",
        "status": "completed",
        "arguments": '{"cmd":"ls"}',
        "call_id": "call_1",
        "name": "exec_command",
    }
    assert calls[1]["name"] == "spawn_agent"
    assert calls[1]["namespace"] == "multi_agent_v1"
    assert calls[1]["arguments"] == "{}"
    # a model calling the bare member name (some backends send arguments as an object)
    assert (calls[2]["name"], calls[2]["namespace"], calls[2]["arguments"]) == (
        "spawn_agent",
        "multi_agent_v1",
        '{"task":"x"}',
    )
    assert calls[2]["call_id"].startswith("call_")
    assert calls[2]["call_id"] == reply(body, request)["output"][2]["call_id"]  # synthesized, but stable
    assert len({call["call_id"] for call in calls}) == 3


def test_text_and_tool_call_reply() -> None:
    body = completion(
        {
            "content": "Running it.",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        }
    )
    assert [item["type"] for item in reply(body)["output"]] == ["message", "function_call"]


@pytest.mark.parametrize(
    "message", [{"content": ""}, {"content": None}, {"content": None, "reasoning": "hm"}]
)
def test_empty_reply_still_has_an_answer_item(message: dict[str, Any]) -> None:
    output = reply(completion(message))["output"]
    assert output[-1]["type"] == "message"
    assert output[-1]["content"] == [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]


def test_refusal_reply() -> None:
    output = reply(completion({"content": None, "refusal": "I can't help with that."}))["output"]
    assert output[0]["content"] == [{"type": "refusal", "refusal": "I can't help with that."}]


@pytest.mark.parametrize(
    ("finish_reason", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_incomplete_reply(finish_reason: str, reason: str) -> None:
    response = reply(completion({"content": "Once upon a", "reasoning": "story"}, finish_reason))
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": reason}
    assert response["completed_at"] is None
    assert response["output"][-1]["status"] == "incomplete"


def test_think_tags_in_reply() -> None:
    body = completion({"content": "<think>\nPonder.\n</think>\n\nAnswer."})
    assert reply(body)["output"][0]["type"] == "message"
    response = reply(body, split_think_tags=True)
    assert response["output"][0]["summary"] == [{"type": "summary_text", "text": "Ponder."}]
    assert Response.model_validate(response).output_text == "Answer."


def test_usage_fallbacks() -> None:
    assert reply(completion({"content": "x"}))["usage"] is None
    timings = {"prompt_n": 7, "predicted_n": 2, "prompt_ms": 1.0, "predicted_ms": 2.0}
    assert reply(completion({"content": "x"}, timings=timings))["usage"]["total_tokens"] == 9


def test_reply_echoes_the_request() -> None:
    request = {
        **codex_request(),
        "instructions": "Be brief.",
        "temperature": 0.5,
        "top_p": 0.9,
        "max_output_tokens": 100,
        "text": {"format": {"type": "json_schema", "name": "n", "schema": SCHEMA, "strict": False}},
        "reasoning": {"effort": "low", "summary": "auto"},
        "metadata": {"k": "v"},
        "parallel_tool_calls": False,
        "tool_choice": {"type": "function", "name": "exec_command"},
        "truncation": "auto",
    }
    response = reply(completion({"content": "{}"}), request)
    assert response["instructions"] == "Be brief."
    assert (response["temperature"], response["top_p"], response["max_output_tokens"]) == (0.5, 0.9, 100)
    assert response["text"] == request["text"]
    assert response["reasoning"] == {"effort": "low", "summary": "auto"}
    assert response["metadata"] == {"k": "v"}
    assert response["parallel_tool_calls"] is False
    assert response["tool_choice"] == {"type": "function", "name": "exec_command"}
    assert response["tools"] == request["tools"]  # the client's own tools, hosted ones included
    assert response["truncation"] == "auto"
    assert response["store"] is False


def test_reply_defaults_without_settings() -> None:
    response = reply(completion({"content": "x"}), {"input": "x", "temperature": True, "tools": "nonsense"})
    assert response["instructions"] is None
    assert response["temperature"] is None
    assert response["tools"] == []
    assert response["tool_choice"] == "auto"
    assert response["parallel_tool_calls"] is True
    assert response["text"] == {"format": {"type": "text"}}
    assert response["metadata"] == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "model is loading", "code": 503}}, "model is loading"),
        ({"error": "overloaded"}, "overloaded"),
        ({"choices": []}, "no choices"),
        ({"choices": [{"index": 0, "text": "legacy"}]}, "no message"),
        (
            {
                "choices": [
                    {"index": 0, "message": {"tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}}
                ]
            },
            "without a function name",
        ),
    ],
)
def test_bad_replies(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BackendError, match=message):
        completion_to_response(body, model="m", response_id=RESPONSE_ID, created_at=CREATED, request={})


def test_reply_that_is_not_an_object() -> None:
    with pytest.raises(BackendError, match="not a JSON object"):
        completion_to_response([], model="m", response_id=RESPONSE_ID, created_at=CREATED, request={})  # type: ignore[arg-type]


# --- streams: reading them back -----------------------------------------------------------------------------


def call_fragment(
    index: int, *, id: str | None = None, name: str | None = None, args: str | None = None
) -> dict[str, Any]:
    fragment: dict[str, Any] = {"index": index}
    if id is not None:
        fragment["id"] = id
        fragment["type"] = "function"
    function = {k: v for k, v in (("name", name), ("arguments", args)) if v is not None}
    if function:
        fragment["function"] = function
    return fragment


def calls(
    *fragments: dict[str, Any], finish_reason: str | None = None, standard: bool = True
) -> dict[str, Any]:
    return chat_chunk({"tool_calls": list(fragments)}, finish_reason, standard=standard)


def usage_chunk(prompt: int = 11, completion_tokens: int = 4) -> dict[str, Any]:
    return chat_chunk(
        usage={
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        },
        choices=False,
    )


def decode(data: bytes) -> list[dict[str, Any]]:
    """The events as a client sees them: SSE decoded, each checked for framing and against the SDK models."""
    events = []
    for sse in SSEDecoder().feed(data):
        event = json.loads(sse.data)
        assert sse.event == event["type"]
        EVENTS.validate_python(event)
        events.append(event)
    assert data.endswith(b"\n\n")
    return events


def check_stream(events: list[dict[str, Any]]) -> None:
    """What every Responses stream owes its client, whatever the backend did."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    responses = [e["response"] for e in events if "response" in e]
    assert {(r["id"], r["created_at"]) for r in responses} == {(RESPONSE_ID, 1_748_772_000)}
    terminal = [e["type"] for e in events if e["type"] in TERMINAL]
    assert terminal == [events[-1]["type"]] or (
        terminal == ["response.failed"] and events[-1]["type"] == "error"
    )
    added = {e["output_index"]: e["item"] for e in events if e["type"] == "response.output_item.added"}
    done = {e["output_index"]: e["item"] for e in events if e["type"] == "response.output_item.done"}
    assert sorted(added) == list(range(len(added)))
    final = responses[-1]
    if final["status"] != "failed":
        assert sorted(done) == sorted(added)
        assert final["output"] == [done[i] for i in sorted(done)]
    for index, item in done.items():
        assert (item["type"], item["id"]) == (added[index]["type"], added[index]["id"])
    for event in events:
        if "item_id" in event:
            assert event["item_id"] == added[event["output_index"]]["id"]


TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def run(
    chunks: list[dict[str, Any]],
    request: dict[str, Any] | None = None,
    *,
    split_think_tags: bool = False,
    end: str | None = "finish",
) -> tuple[list[dict[str, Any]], ResponsesStream, list[bytes]]:
    """Start at 0 ms, one chunk per 100 ms, then finish (or fail); the events, the stream, each write."""
    stream = ResponsesStream(
        model="llama3",
        response_id=RESPONSE_ID,
        created_at=CREATED,
        request=request if request is not None else {"input": "x", "stream": True},
        split_think_tags=split_think_tags,
    )
    writes = [stream.start(at(0))]
    writes += [stream.feed(event, at(100 * i)) for i, event in enumerate(chunks, start=1)]
    if end == "finish":
        writes.append(stream.finish(at(100 * (len(chunks) + 1))))
    elif end == "fail":
        writes.append(stream.fail("backend connection lost"))
    events = decode(b"".join(writes))
    check_stream(events)
    return events, stream, writes


def sdk_stream(data: bytes, request: dict[str, Any] | None = None) -> Any:
    """The stream through the openai SDK's own ``responses.stream()``: its final accumulated response."""

    def answer(http_request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=data)

    client = openai.OpenAI(
        api_key="test",
        base_url="http://daemon/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
    )
    kwargs = request if request is not None else {"input": "x"}
    with client.responses.stream(model="llama3", **kwargs) as stream:
        for _ in stream:
            pass
        return stream.get_final_response()


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"].removeprefix("response.") for e in events]


# --- streams ------------------------------------------------------------------------------------------------


def test_text_stream() -> None:
    events, stream, writes = run(
        [
            chat_chunk({"role": "assistant", "content": None}),  # llama.cpp's first delta
            chat_chunk({"content": "Hel"}),
            chat_chunk({"content": "lo"}),
            chat_chunk({}, "stop"),
            usage_chunk(),
        ]
    )
    assert types(events) == [
        "created",
        "in_progress",
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        "completed",
    ]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    assert writes[1] == b""  # the role-only delta says nothing
    assert events[2]["item"] == {
        "id": "msg_0123abcd_0",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    assert events[4] == {
        "type": "response.output_text.delta",
        "item_id": "msg_0123abcd_0",
        "output_index": 0,
        "content_index": 0,
        "delta": "Hel",
        "logprobs": [],
        "sequence_number": 4,
    }
    assert events[6]["text"] == "Hello"
    assert events[8]["item"]["content"][0]["text"] == "Hello"
    completed = events[-1]["response"]
    assert completed["status"] == "completed"
    assert completed["completed_at"] == 1_748_772_001  # finished at 600 ms, rounded down
    assert completed["usage"]["input_tokens"] == 11
    assert stream.usage == (11, 4)
    assert stream.first_token_at == at(200)
    assert stream.saw_finish
    final = sdk_stream(b"".join(writes))
    assert final.output_text == "Hello"
    assert final.usage.total_tokens == 15


def test_completed_only_at_finish_even_when_usage_comes_after_the_finish_reason() -> None:
    _, stream, writes = run([chat_chunk({"content": "x"}, "stop"), usage_chunk(3, 1)])
    assert b"response.completed" not in b"".join(writes[:-1])
    assert b"response.completed" in writes[-1]
    assert stream.usage == (3, 1)


def test_reasoning_then_text() -> None:
    events, _, writes = run(
        [
            chat_chunk({"reasoning_content": "Think"}),
            chat_chunk({"reasoning": "ing."}),
            chat_chunk({"content": "Done."}, "stop"),
        ]
    )
    assert types(events)[2:] == [
        "output_item.added",
        "reasoning_summary_part.added",
        "reasoning_summary_text.delta",
        "reasoning_summary_text.delta",
        "reasoning_summary_text.done",
        "reasoning_summary_part.done",
        "output_item.done",
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        "completed",
    ]
    assert events[2]["item"] == {"id": "rs_0123abcd_0", "type": "reasoning", "summary": []}
    assert events[8]["item"]["summary"] == [{"type": "summary_text", "text": "Thinking."}]
    assert events[9]["output_index"] == 1
    final = sdk_stream(b"".join(writes))
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].summary[0].text == "Thinking."
    assert final.output_text == "Done."


def test_tool_call_arguments_stream_unbuffered() -> None:
    pieces = ['{"cm', 'd": "l', "s -la", '"}']
    events, _, writes = run(
        [
            calls(call_fragment(0, id="call_x", name="exec_command", args="")),
            *(calls(call_fragment(0, args=piece)) for piece in pieces),
            chat_chunk({}, "tool_calls"),
            usage_chunk(),
        ],
        {"input": "x", "tools": [function_tool("exec_command")]},
    )
    # every fragment is written the moment it arrives
    for write, piece in zip(writes[2:6], pieces, strict=True):
        assert [
            json.loads(line[6:])["delta"] for line in write.split(b"\n") if line.startswith(b"data: ")
        ] == [piece]
    assert events[2]["item"] == {
        "id": "fc_0123abcd_0",
        "type": "function_call",
        "status": "in_progress",
        "arguments": "",
        "call_id": "call_x",
        "name": "exec_command",
    }
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [e["arguments"] for e in done] == ['{"cmd": "ls -la"}']
    final = sdk_stream(b"".join(writes))
    assert [(c.name, c.call_id, c.arguments) for c in final.output] == [
        ("exec_command", "call_x", '{"cmd": "ls -la"}')
    ]


def test_two_tool_calls_after_text() -> None:
    events, _, writes = run(
        [
            chat_chunk({"content": "Checking both."}),
            calls(call_fragment(0, id="call_a", name="weather", args='{"city":')),
            calls(call_fragment(0, args='"Paris"}')),
            calls(call_fragment(1, id="call_b", name="weather", args='{"city":"Rome"}')),
            chat_chunk({}, "tool_calls"),
        ]
    )
    added = [
        (e["output_index"], e["item"]["type"]) for e in events if e["type"] == "response.output_item.added"
    ]
    assert added == [(0, "message"), (1, "function_call"), (2, "function_call")]
    # the message is finished before the first call is announced
    first_call = next(
        i
        for i, e in enumerate(events)
        if e["type"] == "response.output_item.added" and e["output_index"] == 1
    )
    message_done = next(
        i for i, e in enumerate(events) if e["type"] == "response.output_item.done" and e["output_index"] == 0
    )
    assert message_done < first_call
    final = sdk_stream(b"".join(writes))
    assert final.output_text == "Checking both."
    assert [(c.call_id, c.arguments) for c in final.output[1:]] == [
        ("call_a", '{"city":"Paris"}'),
        ("call_b", '{"city":"Rome"}'),
    ]


def test_interleaved_tool_calls() -> None:
    events, _, _ = run(
        [
            calls(
                call_fragment(0, id="call_a", name="f", args='{"a":'),
                call_fragment(1, id="call_b", name="g", args='{"b":'),
            ),
            calls(call_fragment(1, args="2}")),
            calls(call_fragment(0, args="1}")),
        ]
    )
    done = {
        e["item"]["call_id"]: e["item"]["arguments"]
        for e in events
        if e["type"] == "response.output_item.done"
    }
    assert done == {"call_a": '{"a":1}', "call_b": '{"b":2}'}


def test_whole_tool_call_at_once_and_arguments_as_object() -> None:
    events, _, _ = run(
        [
            calls(
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}},
                finish_reason="tool_calls",
                standard=False,
            ),
        ]
    )
    assert [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"] == [
        '{"x":1}'
    ]


def test_tool_call_name_arriving_after_its_id() -> None:
    events, _, writes = run(
        [
            calls(call_fragment(0, id="call_1")),
            calls(call_fragment(0, name="f", args='{"q":1}')),
            chat_chunk({}, "tool_calls"),
        ]
    )
    assert writes[1] == b""  # nothing can be announced without a name
    assert events[2]["item"]["name"] == "f"
    assert events[3]["delta"] == '{"q":1}'


def test_fragments_without_index_and_without_ids() -> None:
    fragment = {"type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    events, _, _ = run([calls(fragment, standard=False), chat_chunk({}, "tool_calls")])
    item = events[-1]["response"]["output"][0]
    assert item["call_id"].startswith("call_")
    assert item["arguments"] == '{"a":1}'


def test_tool_call_without_arguments_gets_an_empty_object() -> None:
    events, _, _ = run([calls(call_fragment(0, id="c", name="now")), chat_chunk({}, "tool_calls")])
    assert [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"] == ["{}"]
    assert events[-1]["response"]["output"][0]["arguments"] == "{}"


def test_namespace_calls_come_back_with_their_namespace() -> None:
    request = codex_request()
    events, _, writes = run(
        [
            calls(call_fragment(0, id="call_1", name="multi_agent_v1__spawn_agent", args='{"task":"t"}')),
            chat_chunk({}, "tool_calls"),
        ],
        request,
    )
    assert events[2]["item"]["name"] == "spawn_agent"
    assert events[2]["item"]["namespace"] == "multi_agent_v1"
    final = sdk_stream(b"".join(writes), {"input": "x"})
    assert (final.output[0].name, final.output[0].namespace) == ("spawn_agent", "multi_agent_v1")


def test_text_after_a_tool_call_opens_a_new_message() -> None:
    events, _, writes = run(
        [
            calls(call_fragment(0, id="c", name="f", args="{}")),
            chat_chunk({"content": "\n"}),
            chat_chunk({}, "stop"),
        ]
    )
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["function_call", "message"]
    assert sdk_stream(b"".join(writes)).output_text == "\n"


def test_refusal_stream() -> None:
    events, _, writes = run(
        [chat_chunk({"refusal": "No"}), chat_chunk({"refusal": "pe."}), chat_chunk({}, "stop")]
    )
    assert "refusal.delta" in types(events)
    assert events[-1]["response"]["output"][0]["content"] == [{"type": "refusal", "refusal": "Nope."}]
    sdk_stream(b"".join(writes))


def test_length_ends_with_response_incomplete() -> None:
    events, _, writes = run([chat_chunk({"content": "Once upon a"}), chat_chunk({}, "length"), usage_chunk()])
    assert types(events)[-1] == "incomplete"
    response = events[-1]["response"]
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"
    assert [e["item"]["status"] for e in events if e["type"] == "response.output_item.done"] == ["incomplete"]
    # as with OpenAI itself, the SDK's stream helper has no final response for an incomplete one
    with pytest.raises(RuntimeError, match=r"response\.completed"):
        sdk_stream(b"".join(writes))


def test_empty_stream_still_answers() -> None:
    events, stream, writes = run([chat_chunk({"role": "assistant", "content": ""}), chat_chunk({}, "stop")])
    assert events[-1]["response"]["output"][0]["content"] == [
        {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    ]
    assert stream.first_token_at is None
    assert sdk_stream(b"".join(writes)).output_text == ""


def test_error_chunk_mid_stream() -> None:
    events, stream, writes = run(
        [
            chat_chunk({"content": "Par"}),
            {"error": {"message": "upstream provider died", "code": 502}},
            chat_chunk({"content": "is"}),
        ]
    )
    assert stream.failed
    assert writes[-2:] == [b"", b""]  # after a failure, nothing more, not even at finish
    assert types(events)[-2:] == ["failed", "error"]
    failed = events[-2]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "upstream provider died"}
    assert failed["output"][0]["status"] == "incomplete"
    assert failed["output"][0]["content"][0]["text"] == "Par"
    assert events[-1]["message"] == "upstream provider died"
    assert events[-1]["error"]["message"] == "upstream provider died"
    with pytest.raises(openai.APIError, match="upstream provider died"):
        sdk_stream(b"".join(writes))


def test_fail_after_output_started() -> None:
    events, stream, _ = run(
        [chat_chunk({"reasoning": "hm"}), calls(call_fragment(0, id="c", name="f", args='{"a'))], end="fail"
    )
    assert stream.failed
    assert types(events)[-2:] == ["failed", "error"]
    output = events[-2]["response"]["output"]
    assert output[0]["summary"] == [{"type": "summary_text", "text": "hm"}]
    assert (output[1]["status"], output[1]["arguments"]) == ("incomplete", '{"a')
    assert stream.finish(at(900)) == b""
    assert stream.fail("again") == b""


def test_nameless_tool_call_fails_the_stream() -> None:
    events, stream, _ = run([calls(call_fragment(0, id="c", args="{}")), chat_chunk({}, "tool_calls")])
    assert stream.failed
    assert events[-1]["message"] == "backend returned a tool call without a function name"


def test_stream_error_events_before_any_output() -> None:
    data = stream_error_events(
        "backend refused", model="llama3", response_id=RESPONSE_ID, created_at=CREATED, request={}
    )
    events = decode(data)
    check_stream(events)
    assert types(events) == ["created", "in_progress", "failed", "error"]


def test_feed_before_start_still_begins_with_response_created() -> None:
    stream = ResponsesStream(model="llama3", response_id=RESPONSE_ID, created_at=CREATED, request={})
    data = stream.feed(chat_chunk({"content": "x"}), at(1)) + stream.start(at(2)) + stream.finish(at(3))
    events = decode(data)
    check_stream(events)
    assert types(events).count("created") == 1


def test_think_tags_in_stream() -> None:
    deltas = ["<thi", "nk>\nPon", "der.</th", "ink>\n\nAns", "wer."]
    events, _, writes = run(
        [chat_chunk({"content": d}) for d in deltas] + [chat_chunk({}, "stop")], split_think_tags=True
    )
    output = events[-1]["response"]["output"]
    assert output[0]["summary"] == [{"type": "summary_text", "text": "Ponder."}]
    assert sdk_stream(b"".join(writes)).output_text == "Answer."
    plain, _, _ = run([chat_chunk({"content": d}) for d in deltas])
    assert plain[-1]["response"]["output"][0]["content"][0]["text"] == "".join(deltas)


def test_think_block_never_closed_is_flushed_at_the_finish_reason() -> None:
    events, _, _ = run(
        [chat_chunk({"content": "<think>abc  "}), chat_chunk({}, "length")], split_think_tags=True
    )
    assert events[-1]["response"]["output"][0]["summary"] == [{"type": "summary_text", "text": "abc"}]


def test_stream_echoes_the_request() -> None:
    request = {**codex_request(), "instructions": "Be brief.", "max_output_tokens": 50}
    events, _, _ = run([chat_chunk({"content": "x"})], request)
    for event in events:
        if "response" in event:
            assert event["response"]["instructions"] == "Be brief."
            assert event["response"]["tools"] == request["tools"]
            assert event["response"]["max_output_tokens"] == 50


# --- the split property -----------------------------------------------------------------------------------

TEXT = st.text(max_size=6)
DELTAS = st.one_of(
    st.builds(lambda t: {"content": t}, TEXT),
    st.builds(lambda t: {"reasoning_content": t}, TEXT),
    st.builds(lambda t: {"refusal": t}, TEXT),
    st.just({"role": "assistant", "content": None}),
    st.builds(
        lambda i, name, args: {
            "tool_calls": [call_fragment(i, id=f"call_{i}" if name else None, name=name, args=args)]
        },
        st.integers(0, 2),
        st.sampled_from([None, "f", "multi_agent_v1__spawn_agent"]),
        st.text(alphabet='{}":ab1 ', max_size=5),
    ),
)


@st.composite
def backend_streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    events = [chat_chunk(delta) for delta in draw(st.lists(DELTAS, max_size=12))]
    if draw(st.booleans()):
        events.append(
            chat_chunk({}, draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"])))
        )
    if draw(st.booleans()):
        events.append(usage_chunk(draw(st.integers(0, 99)), draw(st.integers(0, 99))))
    if draw(st.booleans()):
        events.insert(draw(st.integers(0, len(events))), {"error": {"message": "boom"}})
    return events


def sse_bytes(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def translate_stream(data: bytes, cuts: list[int], split_think_tags: bool) -> bytes:
    """The daemon's path: backend bytes in arbitrary pieces, SSE-decoded, each event fed as it completes."""
    stream = ResponsesStream(
        model="llama3",
        response_id=RESPONSE_ID,
        created_at=CREATED,
        request=codex_request(),
        split_think_tags=split_think_tags,
    )
    decoder = SSEDecoder()
    out = [stream.start(at(0))]
    bounds = [0, *sorted(set(cuts)), len(data)]
    count = 0
    for a, b in itertools.pairwise(bounds):
        for sse in decoder.feed(data[a:b]):
            if sse.data == "[DONE]":
                continue
            count += 1
            out.append(stream.feed(json.loads(sse.data), at(count)))
    out.append(stream.finish(at(count + 1)))
    return b"".join(out)


@settings(max_examples=200, deadline=None)
@given(backend_streams(), st.data(), st.booleans())
def test_property_any_split_gives_the_same_stream(
    events: list[dict[str, Any]], data: st.DataObject, split_think_tags: bool
) -> None:
    raw = sse_bytes(events)
    whole = translate_stream(raw, [], split_think_tags)
    decoded = decode(whole)
    check_stream(decoded)
    assert decoded[-1]["type"] in ("response.completed", "response.incomplete", "error")
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=20))
    assert translate_stream(raw, cuts, split_think_tags) == whole


@settings(max_examples=20, deadline=None)
@given(backend_streams())
def test_property_byte_by_byte(events: list[dict[str, Any]]) -> None:
    raw = sse_bytes(events)
    assert translate_stream(raw, list(range(len(raw))), False) == translate_stream(raw, [], False)


# --- the next turn ------------------------------------------------------------------------------------------


def test_a_response_sent_back_as_history_is_the_same_conversation() -> None:
    """Codex (store: false) sends the output items of each turn back in the next turn's input."""
    request = codex_request()
    body = completion(
        {
            "content": "Spawning.",
            "reasoning_content": "A helper would do.",
            "tool_calls": [
                {
                    "id": "call_7",
                    "type": "function",
                    "function": {"name": "multi_agent_v1__spawn_agent", "arguments": '{"task":"t"}'},
                }
            ],
        },
        "tool_calls",
    )
    output = reply(body, request)["output"]
    follow_up = {
        **request,
        "input": [
            *request["input"],
            *output,
            {"type": "function_call_output", "call_id": "call_7", "output": "spawned"},
        ],
    }
    assert messages(follow_up)[3:] == [
        {
            "role": "assistant",
            "content": "Spawning.",
            "reasoning_content": "A helper would do.",
            "tool_calls": [
                {
                    "id": "call_7",
                    "type": "function",
                    "function": {"name": "multi_agent_v1__spawn_agent", "arguments": '{"task":"t"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_7", "content": "spawned"},
    ]

"""``/v1/messages`` end to end: the official anthropic SDK → the daemon on a socket → the fake backend, which
answers only OpenAI chat completions here (its own ``/v1/messages`` is used by the native pass-through
tests alone).  Create, stream, tools with a ``tool_result`` round trip, an image, thinking,
``count_tokens``, errors in Anthropic's shape and statuses, client keys, and a client that leaves."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import pytest_twisted
from anthropic.types import MessageParam, ToolParam
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent
from twisted.web.http_headers import Headers

from ollama_proxy.exchange import Family
from tests.fake_backend import ChatScript, FakeBackend
from tests.support import (
    RunningProxy,
    StreamingClient,
    chat_posts,
    connect_client,
    eventually,
    in_thread,
    logged,
    read_json,
    start_proxy,
)

ALIAS = "qwen"  # an alias of Qwen/Qwen2.5-7B-Instruct in the proxy fixture
BACKEND_ID = "Qwen/Qwen2.5-7B-Instruct"
KEY = "sk-test-secret"
USER: list[MessageParam] = [{"role": "user", "content": "Hi"}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def sdk(url: str, **options: Any) -> anthropic.Anthropic:
    options.setdefault("api_key", "unused")
    return anthropic.Anthropic(base_url=url, max_retries=0, **options)


# -- create and stream ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sdk_create(proxy: RunningProxy) -> None:
    message = await in_thread(
        lambda: sdk(proxy.url).messages.create(
            model=ALIAS, max_tokens=64, system="Be brief.", messages=USER, stop_sequences=["END"]
        )
    )
    assert message.id.startswith("msg_")
    assert message.model == ALIAS
    assert [(block.type, getattr(block, "text", None)) for block in message.content] == [("text", "Hello!")]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 3)
    (sent,) = chat_posts(proxy.backend)
    assert sent["model"] == BACKEND_ID
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (sent["max_tokens"], sent["stop"], sent["stream"]) == (64, ["END"], False)


def _stream_text(url: str, **kwargs: Any) -> tuple[list[str], anthropic.types.Message]:
    with sdk(url).messages.stream(model=ALIAS, max_tokens=64, messages=USER, **kwargs) as stream:
        kinds: list[str] = [event.type for event in stream]
        return kinds, stream.get_final_message()


@pytest_twisted.ensureDeferred
async def test_sdk_stream(proxy: RunningProxy) -> None:
    kinds, final = await in_thread(_stream_text, proxy.url)
    assert final.content[0].type == "text"
    assert final.content[0].text == "Hello!"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 3
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert kinds.count("text") == 3  # one per backend delta: nothing held back or merged
    (sent,) = chat_posts(proxy.backend)
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


@pytest_twisted.ensureDeferred
async def test_every_stream_event_is_named(proxy: RunningProxy, http: HTTPClient) -> None:
    body = {"model": ALIAS, "max_tokens": 64, "messages": USER, "stream": True}
    response = await http.post(proxy.url + "/v1/messages?beta=true", json=body)
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    events = [block for block in (await response.text()).split("\n\n") if block.strip()]
    names = [event.split("\n", 1)[0] for event in events]
    assert names[:3] == ["event: message_start", "event: ping", "event: content_block_start"]
    assert names[-2:] == ["event: message_delta", "event: message_stop"]
    assert all(name.startswith("event: ") for name in names)


# -- tools, images, thinking -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tool_use_and_its_result_round_trip(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(
        content=[],
        tool_calls=[{"id": "call_7", "name": "get_weather", "arguments": {"city": "Paris"}}],
        finish_reason="tool_calls",
    )
    asked: list[MessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
    client = sdk(proxy.url)
    message = await in_thread(
        lambda: client.messages.create(model=ALIAS, max_tokens=64, messages=asked, tools=[WEATHER])
    )
    assert message.stop_reason == "tool_use"
    (call,) = message.content
    assert call.type == "tool_use"
    assert (call.id, call.name, call.input) == ("call_7", "get_weather", {"city": "Paris"})
    # The same call streamed: its arguments arrive as input_json_delta fragments, parsed at the end.
    _, streamed = await in_thread(_stream_text, proxy.url, tools=[WEATHER])
    assert [(b.type, getattr(b, "input", None)) for b in streamed.content] == [
        ("tool_use", {"city": "Paris"})
    ]

    proxy.backend.script = ChatScript(content=["It is 18°C."])
    history: list[Any] = [
        *asked,
        {"role": "assistant", "content": [block.model_dump() for block in message.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_7", "content": "18°C, sunny"}],
        },
    ]
    answer = await in_thread(
        lambda: client.messages.create(model=ALIAS, max_tokens=64, messages=history, tools=[WEATHER])
    )
    assert answer.content[0].type == "text"
    assert answer.content[0].text == "It is 18°C."
    sent = chat_posts(proxy.backend)[-1]
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    assistant, tool = sent["messages"][1:]
    (call_sent,) = assistant["tool_calls"]
    assert (call_sent["id"], call_sent["function"]["name"]) == ("call_7", "get_weather")
    assert json.loads(call_sent["function"]["arguments"]) == {"city": "Paris"}
    assert tool == {"role": "tool", "tool_call_id": "call_7", "content": "18°C, sunny"}


@pytest_twisted.ensureDeferred
async def test_an_image_reaches_the_backend_as_a_data_url(proxy: RunningProxy) -> None:
    content: list[Any] = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "What is this?"},
    ]
    message = await in_thread(
        lambda: sdk(proxy.url).messages.create(
            model=ALIAS, max_tokens=64, messages=[{"role": "user", "content": content}]
        )
    )
    assert message.content[0].type == "text"
    (sent,) = chat_posts(proxy.backend)
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]


@pytest_twisted.ensureDeferred
async def test_thinking_whole_and_streamed(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(reasoning=["Let me ", "think."], content=["Hi"])
    thinking: Any = {"type": "enabled", "budget_tokens": 2048}
    message = await in_thread(
        lambda: sdk(proxy.url).messages.create(model=ALIAS, max_tokens=4096, messages=USER, thinking=thinking)
    )
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Let me think."  # type: ignore[union-attr]
    _, streamed = await in_thread(_stream_text, proxy.url, thinking=thinking)
    assert streamed.content[0].thinking == "Let me think."  # type: ignore[union-attr]
    assert streamed.content[1].text == "Hi"  # type: ignore[union-attr]
    for sent in chat_posts(proxy.backend):
        # budget_tokens below 4096 is a low effort, in vLLM's words.
        assert sent["chat_template_kwargs"] == {"enable_thinking": True}
        assert sent["reasoning_effort"] == "low"


@pytest_twisted.ensureDeferred
async def test_a_think_tag_in_the_content_becomes_a_thinking_block(proxy: RunningProxy) -> None:
    """Backends that leave a model's <think> in the content (no reasoning parser) still give Claude Code
    a thinking block when it asked for thinking, as it always does (``adaptive``)."""
    proxy.backend.script = ChatScript(content=["<think>hm", "m</think>", "Hello"])
    _, streamed = await in_thread(_stream_text, proxy.url, thinking={"type": "adaptive"})
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in streamed.content] == [
        ("thinking", "hmm"),
        ("text", "Hello"),
    ]


# -- what Claude Code sends ------------------------------------------------------------------------------


def claude_code_body(max_tokens: int = 32000) -> dict[str, Any]:
    """The shape of Claude Code's request (shared/clients-traffic.md), cut down."""
    return {
        "model": ALIAS,
        "max_tokens": max_tokens,
        "stream": True,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.0b8;"},
            {"type": "text", "text": "You are a Claude agent.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Say hi"}]},
            {"role": "system", "content": [{"type": "text", "text": "# Environment", "cache_control": {}}]},
        ],
        "tools": [
            {**WEATHER, "defer_loading": True},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        ],
        "thinking": {"type": "adaptive", "display": "omitted"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": '{"session_id": "x"}'},
    }


@pytest_twisted.ensureDeferred
async def test_claude_codes_request_is_accepted(proxy: RunningProxy, http: HTTPClient) -> None:
    with logged("ollama_proxy.anthropic") as events:
        response = await http.post(
            proxy.url + "/v1/messages?beta=true",
            json=claude_code_body(),
            headers=Headers(
                {
                    "anthropic-version": ["2023-06-01"],
                    "anthropic-beta": ["claude-code-20250219,interleaved-thinking-2025-05-14"],
                    "x-app": ["cli"],
                }
            ),
        )
        assert response.code == 200
        assert "event: message_stop" in await response.text()
    (sent,) = chat_posts(proxy.backend)
    # One leading system message, the billing header gone; the tool Anthropic alone runs left out, once.
    assert sent["messages"] == [
        {"role": "system", "content": "You are a Claude agent.\n\n# Environment"},
        {"role": "user", "content": "Say hi"},
    ]
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["get_weather"]
    (event,) = events
    assert "web_search" in formatEvent(event)
    assert "Say hi" not in formatEvent(event)
    # 32000 tokens do not fit the model's 8192 with any prompt: the backend decides how many fit.
    assert "max_tokens" not in sent


@pytest_twisted.ensureDeferred
async def test_a_max_tokens_that_fits_the_context_is_kept(proxy: RunningProxy, http: HTTPClient) -> None:
    response = await http.post(proxy.url + "/messages", json={**claude_code_body(1000), "stream": False})
    assert response.code == 200
    assert (await read_json(response))["content"][0]["text"] == "Hello!"
    (sent,) = chat_posts(proxy.backend)
    assert sent["max_tokens"] == 1000


# -- count_tokens ----------------------------------------------------------------------------------------


def _count(url: str, messages: list[MessageParam]) -> int:
    return sdk(url).messages.count_tokens(model=ALIAS, system="Be brief.", messages=messages).input_tokens


@pytest_twisted.ensureDeferred
async def test_count_tokens_asks_the_backends_tokenizer(proxy: RunningProxy) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "one two three four"}]
    assert await in_thread(_count, proxy.url, messages) == 6  # the fake counts words: "Be brief." too
    (asked,) = [r for r in proxy.backend.requests if r.path == "/tokenize"]
    assert asked.json["model"] == BACKEND_ID
    assert asked.json["prompt"] == "Be brief.\n\none two three four"
    assert asked.headers["authorization"] == f"Bearer {KEY}"
    # An image is not text to tokenize; it counts as what Anthropic charges for a large one.
    image: list[MessageParam] = [
        {
            "role": "user",
            "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
            ],
        }
    ]
    assert await in_thread(_count, proxy.url, image) == 2 + 1600


@pytest_twisted.ensureDeferred
async def test_count_tokens_without_a_tokenizer_is_the_estimate(proxy: RunningProxy) -> None:
    proxy.backend.tokenizer = False
    messages: list[MessageParam] = [{"role": "user", "content": "x" * 400}]
    # (9 + 2 + 400 characters) / 4, rounded up.
    assert await in_thread(_count, proxy.url, messages) == 103
    assert await in_thread(_count, proxy.url, messages) == 103
    # The missing endpoint was asked for once, then remembered.
    assert [r.path for r in proxy.backend.requests if r.path == "/tokenize"] == ["/tokenize"]


# -- errors ----------------------------------------------------------------------------------------------


def _error_of(call: Callable[[], object]) -> anthropic.APIStatusError:
    try:
        call()
    except anthropic.APIStatusError as error:
        return error
    raise AssertionError("no error")


@pytest_twisted.ensureDeferred
async def test_unknown_model_is_not_found_error(proxy: RunningProxy) -> None:
    error = await in_thread(
        _error_of, lambda: sdk(proxy.url).messages.create(model="no-such", max_tokens=8, messages=USER)
    )
    assert isinstance(error, anthropic.NotFoundError)
    assert error.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'no-such' not found"},
    }


@pytest_twisted.ensureDeferred
async def test_a_bad_request_is_invalid_request_error(proxy: RunningProxy, http: HTTPClient) -> None:
    response = await http.post(proxy.url + "/v1/messages", json={"model": ALIAS, "messages": USER})
    assert response.code == 400
    assert await read_json(response) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: field required"},
    }
    assert chat_posts(proxy.backend) == []


@pytest_twisted.async_yield_fixture
async def keyed_proxy(fake_backend: FakeBackend) -> AsyncIterator[RunningProxy]:
    running = await start_proxy(
        fake_backend,
        fake_backend.base_url,
        api_key=KEY,
        model_map={ALIAS: BACKEND_ID},
        client_keys=frozenset({"daemon-token"}),
    )
    yield running
    await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_client_keys_as_api_key_auth_token_or_x_api_key(
    keyed_proxy: RunningProxy, http: HTTPClient
) -> None:
    url = keyed_proxy.url
    create: Any = {"model": ALIAS, "max_tokens": 8, "messages": USER}
    for options in ({"api_key": "daemon-token"}, {"auth_token": "daemon-token", "api_key": None}):
        message = await in_thread(lambda o=options: sdk(url, **o).messages.create(**create))
        assert message.content[0].text == "Hello!"
    # The header the Anthropic SDKs named ANTHROPIC_API_KEY after.
    response = await http.post(
        url + "/v1/messages", json=create, headers=Headers({"x-api-key": ["daemon-token"]})
    )
    assert response.code == 200
    await response.content()
    error = await in_thread(_error_of, lambda: sdk(url, api_key="wrong").messages.create(**create))
    assert isinstance(error, anthropic.AuthenticationError)
    assert error.status_code == 401
    assert error.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert len(chat_posts(keyed_proxy.backend)) == 3


@pytest_twisted.ensureDeferred
async def test_overloaded_is_529(fake_backend: FakeBackend, http: HTTPClient) -> None:
    running = await start_proxy(
        fake_backend, fake_backend.base_url, api_key=KEY, max_concurrent=1, max_queue=0, drain_timeout=0.2
    )
    try:
        fake_backend.script = ChatScript(endless=True, event_delay=0.05)
        body = {"model": BACKEND_ID, "max_tokens": 8, "messages": USER, "stream": True}
        holding: Deferred[Any] = http.post(running.url + "/v1/messages", json=body)
        assert (await holding).code == 200
        error = await in_thread(
            _error_of,
            lambda: sdk(running.url).messages.create(model=BACKEND_ID, max_tokens=8, messages=USER),
        )
        assert isinstance(error, anthropic.OverloadedError)
        assert error.status_code == 529
        assert error.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_body_too_large_is_request_too_large(fake_backend: FakeBackend) -> None:
    running = await start_proxy(fake_backend, fake_backend.base_url, api_key=KEY, max_body=1024)
    try:
        messages: list[MessageParam] = [{"role": "user", "content": "x" * 4096}]
        error = await in_thread(
            _error_of,
            lambda: sdk(running.url).messages.create(model=BACKEND_ID, max_tokens=8, messages=messages),
        )
        assert isinstance(error, anthropic.RequestTooLargeError)
        assert error.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_stream_that_breaks_ends_with_an_error_event(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(content=["a", "b", "c"], drop_after=2)

    def stream_until_error() -> tuple[str, anthropic.APIStatusError]:
        text = ""
        try:
            with sdk(proxy.url).messages.stream(model=ALIAS, max_tokens=8, messages=USER) as stream:
                for chunk in stream.text_stream:
                    text += chunk
        except anthropic.APIStatusError as error:
            return text, error
        raise AssertionError("the stream ended without an error")

    text, error = await in_thread(stream_until_error)
    assert text == "ab"
    assert "the backend connection broke mid-stream" in str(error)


@pytest_twisted.ensureDeferred
async def test_other_paths_below_messages_are_not_found(proxy: RunningProxy, http: HTTPClient) -> None:
    response = await http.get(proxy.url + "/v1/messages/batches")
    assert response.code == 404
    assert (await read_json(response))["error"]["type"] == "not_found_error"
    response = await http.get(proxy.url + "/v1/messages")
    assert response.code == 405
    assert response.headers.getRawHeaders("allow") == ["POST"]
    assert proxy.backend.requests == []


# -- a client that leaves --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_client_leaving_mid_stream_stops_the_backend(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(content=["tok "], endless=True, event_delay=0.005)
    body = json.dumps({"model": ALIAS, "max_tokens": 8, "messages": USER, "stream": True}).encode()
    client = await connect_client(proxy.url, StreamingClient(body, read=True, path=b"/v1/messages"))
    await client.first_data
    await eventually(lambda: proxy.backend.bytes_streamed > 0)
    assert proxy.backend.open_streams == 1
    assert client.transport is not None
    client.transport.loseConnection()
    await eventually(lambda: proxy.backend.disconnects == 1 and proxy.backend.open_streams == 0, timeout=1.0)


# -- a backend that serves the Messages API itself -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_native_messages_are_passed_through(fake_backend: FakeBackend) -> None:
    running = await start_proxy(
        fake_backend,
        fake_backend.base_url,
        api_key=KEY,
        model_map={ALIAS: BACKEND_ID},
        native_apis=frozenset({Family.ANTHROPIC}),
    )
    try:
        message = await in_thread(
            lambda: sdk(running.url).messages.create(model=ALIAS, max_tokens=8, messages=USER)
        )
        assert message.content[0].text == "Hello!"  # type: ignore[union-attr]
        assert message.id.startswith("msg-fake")  # the backend's own
        _, streamed = await in_thread(_stream_text, running.url)
        assert streamed.content[0].text == "Hello!"  # type: ignore[union-attr]
        posts = [r for r in fake_backend.requests if r.method == "POST"]
        assert [r.path for r in posts] == ["/v1/messages", "/v1/messages"]
        assert {r.json["model"] for r in posts} == {BACKEND_ID}  # the alias still rewritten
        assert posts[0].json["messages"] == USER
    finally:
        await running.service.stopService()

"""``/v1/responses`` end to end: the openai SDK's Responses API → the daemon on a socket → the fake backend's
chat completions (its own ``/v1/responses`` is used by the native pass-through tests alone).  Create,
stream, function tools with a ``function_call_output`` round trip, instructions, JSON schema output, what
Codex sends, errors in OpenAI's shape, and a client that leaves."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest_twisted
from treq.client import HTTPClient
from twisted.logger import formatEvent

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
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


def sdk(url: str, *, prefix: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + prefix, api_key="unused", max_retries=0)


# -- create and stream ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sdk_create_with_instructions(proxy: RunningProxy) -> None:
    response = await in_thread(
        lambda: sdk(proxy.url).responses.create(model=ALIAS, instructions="Be brief.", input="Hi")
    )
    assert response.id.startswith("resp_")
    assert response.model == ALIAS
    assert response.status == "completed"
    assert response.output_text == "Hello!"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 3)
    (sent,) = chat_posts(proxy.backend)
    assert sent["model"] == BACKEND_ID
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert sent["stream"] is False


def _stream(url: str, **kwargs: Any) -> tuple[list[str], Any]:
    with sdk(url).responses.stream(model=ALIAS, input="Hi", **kwargs) as stream:
        kinds: list[str] = [event.type for event in stream]
        return kinds, stream.get_final_response()


@pytest_twisted.ensureDeferred
async def test_sdk_stream(proxy: RunningProxy) -> None:
    kinds, final = await in_thread(_stream, proxy.url)
    assert final.output_text == "Hello!"
    assert final.status == "completed"
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    (sent,) = chat_posts(proxy.backend)
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


@pytest_twisted.ensureDeferred
async def test_the_paths_without_v1(proxy: RunningProxy) -> None:
    response = await in_thread(lambda: sdk(proxy.url, prefix="").responses.create(model=ALIAS, input="Hi"))
    assert response.output_text == "Hello!"
    assert len(chat_posts(proxy.backend)) == 1


# -- tools and structured output -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_function_call_and_its_output_round_trip(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(
        content=[],
        tool_calls=[{"id": "call_7", "name": "get_weather", "arguments": {"city": "Paris"}}],
        finish_reason="tool_calls",
    )
    client = sdk(proxy.url)
    response = await in_thread(
        lambda: client.responses.create(model=ALIAS, input="Weather in Paris?", tools=[WEATHER])
    )
    (call,) = response.output
    assert call.type == "function_call"
    assert (call.call_id, call.name, json.loads(call.arguments)) == (
        "call_7",
        "get_weather",
        {"city": "Paris"},
    )
    # Streamed: the arguments arrive as function_call_arguments deltas, the whole item at the end.
    kinds, streamed = await in_thread(_stream, proxy.url, tools=[WEATHER])
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    assert [item.type for item in streamed.output] == ["function_call"]

    proxy.backend.script = ChatScript(content=["It is 18°C."])
    history: Any = [
        {"role": "user", "content": "Weather in Paris?"},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": "call_7", "output": "18°C, sunny"},
    ]
    answer = await in_thread(lambda: client.responses.create(model=ALIAS, input=history, tools=[WEATHER]))
    assert answer.output_text == "It is 18°C."
    sent = chat_posts(proxy.backend)[-1]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": WEATHER["parameters"],
            },
        }
    ]
    user, assistant, tool = sent["messages"]
    assert user == {"role": "user", "content": "Weather in Paris?"}
    (call_sent,) = assistant["tool_calls"]
    assert (call_sent["id"], call_sent["function"]["name"]) == ("call_7", "get_weather")
    assert json.loads(call_sent["function"]["arguments"]) == {"city": "Paris"}
    assert tool == {"role": "tool", "tool_call_id": "call_7", "content": "18°C, sunny"}


@pytest_twisted.ensureDeferred
async def test_json_schema_output(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(content=['{"ok": true}'])
    text: Any = {"format": {"type": "json_schema", "name": "verdict", "schema": SCHEMA, "strict": True}}
    response = await in_thread(lambda: sdk(proxy.url).responses.create(model=ALIAS, input="Ok?", text=text))
    assert json.loads(response.output_text) == {"ok": True}
    (sent,) = chat_posts(proxy.backend)
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["name"] == "verdict"
    assert sent["response_format"]["json_schema"]["schema"] == SCHEMA


@pytest_twisted.ensureDeferred
async def test_codexs_request_is_accepted(proxy: RunningProxy, http: HTTPClient) -> None:
    """Developer messages, a namespace of tools, a hosted tool, and the fields only OpenAI's servers use
    (shared/clients-traffic.md)."""
    body = {
        "model": ALIAS,
        "stream": True,
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "You code."}],
            },
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hi"}]},
        ],
        "tools": [
            {**WEATHER, "strict": False},
            {"type": "namespace", "name": "multi_agent_v1", "tools": [{**WEATHER, "name": "spawn"}]},
            {"type": "web_search", "external_web_access": False},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "session",
        "client_metadata": {"session_id": "x"},
    }
    with logged("ollama_proxy.responses") as events:
        response = await http.post(proxy.url + "/v1/responses", json=body)
        assert response.code == 200
        assert "event: response.completed" in await response.text()
    (sent,) = chat_posts(proxy.backend)
    assert sent["messages"] == [
        {"role": "system", "content": "You code."},
        {"role": "user", "content": "Say hi"},
    ]
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["get_weather", "multi_agent_v1__spawn"]
    (event,) = events
    assert "web_search" in formatEvent(event)
    assert "Say hi" not in formatEvent(event)


# -- errors ----------------------------------------------------------------------------------------------


def _error_of(call: Any) -> openai.APIStatusError:
    try:
        call()
    except openai.APIStatusError as error:
        return error
    raise AssertionError("no error")


@pytest_twisted.ensureDeferred
async def test_errors_in_openais_shape(proxy: RunningProxy) -> None:
    client = sdk(proxy.url)
    error = await in_thread(_error_of, lambda: client.responses.create(model="no-such", input="Hi"))
    assert isinstance(error, openai.NotFoundError)
    assert error.body == {
        "message": "model 'no-such' not found",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
    error = await in_thread(
        _error_of, lambda: client.responses.create(model=ALIAS, input="Hi", previous_response_id="resp_1")
    )
    assert isinstance(error, openai.BadRequestError)
    assert "keeps no state" in error.message
    error = await in_thread(_error_of, lambda: client.responses.retrieve("resp_1"))
    assert isinstance(error, openai.NotFoundError)
    assert "keeps no state" in error.message
    assert chat_posts(proxy.backend) == []


@pytest_twisted.ensureDeferred
async def test_a_stream_that_breaks_ends_failed(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(content=["a", "b", "c"], drop_after=2)

    def stream_until_error() -> tuple[list[str], openai.APIError]:
        kinds: list[str] = []
        try:
            with sdk(proxy.url).responses.stream(model=ALIAS, input="Hi") as stream:
                for event in stream:
                    kinds.append(event.type)
        except openai.APIError as error:
            return kinds, error
        raise AssertionError("the stream ended without an error")

    kinds, error = await in_thread(stream_until_error)
    assert kinds.count("response.output_text.delta") == 2
    assert "response.failed" in kinds
    assert "the backend connection broke mid-stream" in error.message


# -- a client that leaves --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_client_leaving_mid_stream_stops_the_backend(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(content=["tok "], endless=True, event_delay=0.005)
    body = json.dumps({"model": ALIAS, "input": "Hi", "stream": True}).encode()
    client = await connect_client(proxy.url, StreamingClient(body, read=True, path=b"/v1/responses"))
    await client.first_data
    await eventually(lambda: proxy.backend.bytes_streamed > 0)
    assert proxy.backend.open_streams == 1
    assert client.transport is not None
    client.transport.loseConnection()
    await eventually(lambda: proxy.backend.disconnects == 1 and proxy.backend.open_streams == 0, timeout=1.0)


# -- a backend that serves the Responses API itself -------------------------------------------------------


def _native(url: str) -> tuple[Any, list[Any]]:
    client = sdk(url)
    return client.responses.create(model=ALIAS, input="Hi"), list(
        client.responses.create(model=ALIAS, input="Hi", stream=True)
    )


@pytest_twisted.ensureDeferred
async def test_native_responses_are_passed_through(fake_backend: FakeBackend, http: HTTPClient) -> None:
    running = await start_proxy(
        fake_backend,
        fake_backend.base_url,
        api_key=KEY,
        model_map={ALIAS: BACKEND_ID},
        native_apis=frozenset({Family.RESPONSES}),
    )
    try:
        reply, events = await in_thread(_native, running.url)
        assert reply.output_text == "Hello!"
        # The backend's own events, byte for byte: no in_progress or output_item events of the daemon's.
        assert [e.type for e in events] == [
            "response.created",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.completed",
        ]
        posts = [r for r in fake_backend.requests if r.method == "POST"]
        assert [r.path for r in posts] == ["/v1/responses", "/v1/responses"]
        assert {r.json["model"] for r in posts} == {BACKEND_ID}  # the alias still rewritten
        # What lies below /v1/responses is the backend's too (it keeps the responses).
        response = await http.get(running.url + "/v1/responses/resp_1")
        assert response.code == 404
        assert (await read_json(response))["error"]["message"] == "Not Found: /v1/responses/resp_1"
        assert fake_backend.requests[-1].path == "/v1/responses/resp_1"
    finally:
        await running.service.stopService()

"""/api/chat and /api/generate end to end: real SDKs → the daemon on a socket → the fake backend."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import ollama
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import defer, task
from twisted.internet.protocol import ClientFactory, Protocol

from ollama_proxy.translate.dialect import Dialect
from tests.fake_backend import ChatScript, FakeBackend
from tests.support import (
    STREAM_BODY,
    RunningProxy,
    StreamingClient,
    connect_client,
    eventually,
    in_thread,
    reactor,
    read_json,
    serves_next_request,
    start_proxy,
)

MODEL = "qwen"  # an alias of Qwen/Qwen2.5-7B-Instruct in the proxy fixture
BACKEND_ID = "Qwen/Qwen2.5-7B-Instruct"


def chat_requests(backend: FakeBackend) -> list[dict[str, Any]]:
    return [r.json for r in backend.requests if r.path.endswith(("/chat/completions", "/completions"))]


async def ndjson_lines(http: HTTPClient, url: str, body: dict[str, Any]) -> tuple[int, list[Any], str]:
    response = await http.post(url, json=body)
    raw = (await response.content()).decode()
    assert "\n\n" not in raw  # never a blank line: the SDK json.loads every line
    lines = [json.loads(line) for line in raw.splitlines()]
    content_type = (response.headers.getRawHeaders("content-type") or [""])[0]
    return response.code, lines, content_type


def _sdk_chat(url: str, stream: bool, **kwargs: Any) -> Any:
    client = ollama.Client(host=url)
    messages = kwargs.pop("messages", [{"role": "user", "content": "Hi"}])
    if stream:
        return list(client.chat(model=MODEL, messages=messages, stream=True, **kwargs))
    return client.chat(model=MODEL, messages=messages, **kwargs)


@pytest_twisted.ensureDeferred
async def test_sdk_chat_non_stream(proxy: RunningProxy) -> None:
    reply = await in_thread(_sdk_chat, proxy.url, False)
    assert reply.message.role == "assistant"
    assert reply.message.content == "Hello!"
    assert reply.model == MODEL
    assert reply.done is True
    assert reply.done_reason == "stop"
    assert (reply.prompt_eval_count, reply.eval_count) == (12, 3)
    assert reply.total_duration
    assert reply.eval_duration
    (sent,) = chat_requests(proxy.backend)
    assert sent["model"] == BACKEND_ID
    # A whole reply from vLLM is assembled from its stream, where the daemon sees the first token come.
    assert sent["stream"] is True
    assert sent["messages"] == [{"role": "user", "content": "Hi"}]
    assert "tools" not in sent  # the SDK always sends tools: [], which OpenAI rejects


@pytest_twisted.ensureDeferred
async def test_sdk_chat_stream(proxy: RunningProxy) -> None:
    parts = await in_thread(_sdk_chat, proxy.url, True, options={"temperature": 0, "num_predict": 64})
    assert "".join(p.message.content or "" for p in parts) == "Hello!"
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    final = parts[-1]
    assert (final.prompt_eval_count, final.eval_count) == (12, 3)
    assert final.done_reason == "stop"
    assert final.prompt_eval_duration
    assert final.eval_duration
    (sent,) = chat_requests(proxy.backend)
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["temperature"] == 0
    assert sent["max_tokens"] == 64


@pytest_twisted.ensureDeferred
async def test_stream_is_ndjson_chunk_by_chunk(proxy: RunningProxy, http: HTTPClient) -> None:
    proxy.backend.script = ChatScript(content=["a", "é", "🙂"], split_writes=True, comments=True)
    code, lines, content_type = await ndjson_lines(
        http, proxy.url + "/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    )
    assert (code, content_type) == (200, "application/x-ndjson")
    assert [line["message"]["content"] for line in lines] == ["a", "é", "🙂", ""]
    assert lines[-1]["done"] is True
    assert {line["model"] for line in lines} == {MODEL}
    assert all(line["created_at"].endswith("Z") for line in lines)


@pytest_twisted.ensureDeferred
async def test_reasoning_becomes_thinking(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(
        reasoning=["Let me ", "think."], content=["42"], reasoning_field="reasoning"
    )
    parts = await in_thread(_sdk_chat, proxy.url, True, think=True)
    assert "".join(p.message.thinking or "" for p in parts) == "Let me think."
    assert "".join(p.message.content or "" for p in parts) == "42"
    reply = await in_thread(_sdk_chat, proxy.url, False, think=True)
    assert (reply.message.thinking, reply.message.content) == ("Let me think.", "42")


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.mark.parametrize("stream", [True, False])
@pytest_twisted.ensureDeferred
async def test_tool_call_round_trip(proxy: RunningProxy, stream: bool) -> None:
    proxy.backend.script = ChatScript(
        content=[],
        tool_calls=[
            {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"id": "call_2", "name": "get_weather", "arguments": '{"city": "Tokyo"}'},
        ],
        finish_reason="tool_calls",
    )
    result = await in_thread(_sdk_chat, proxy.url, stream, tools=TOOLS)
    calls = (
        [c for part in result for c in (part.message.tool_calls or [])]
        if stream
        else result.message.tool_calls
    )
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Tokyo"}),
    ]
    final = result[-1] if stream else result
    assert final.done_reason == "stop"  # Ollama says stop even after tool calls

    # The second turn, as the SDK sends it: no ids on the calls, tool results matched by name and order.
    proxy.backend.script = ChatScript(content=["Sunny."])
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [c.model_dump(exclude_none=True) for c in calls]},
        {"role": "tool", "content": "20C", "tool_name": "get_weather"},
        {"role": "tool", "content": "25C", "tool_name": "get_weather"},
    ]
    reply = await in_thread(_sdk_chat, proxy.url, False, messages=messages, tools=TOOLS)
    assert reply.message.content == "Sunny."
    sent = chat_requests(proxy.backend)[-1]
    assistant = sent["messages"][1]
    ids = [call["id"] for call in assistant["tool_calls"]]
    assert len(set(ids)) == 2
    assert [json.loads(call["function"]["arguments"]) for call in assistant["tool_calls"]] == [
        {"city": "Paris"},
        {"city": "Tokyo"},
    ]
    assert [m["tool_call_id"] for m in sent["messages"][2:]] == ids
    assert sent["tools"] == TOOLS


def _sdk_generate(url: str, stream: bool, **kwargs: Any) -> Any:
    client = ollama.Client(host=url)
    if stream:
        return list(client.generate(model=MODEL, stream=True, **kwargs))
    return client.generate(model=MODEL, **kwargs)


@pytest_twisted.ensureDeferred
async def test_sdk_generate(proxy: RunningProxy) -> None:
    reply = await in_thread(_sdk_generate, proxy.url, False, prompt="Say hi", system="Be brief")
    assert reply.response == "Hello!"
    assert reply.done_reason == "stop"
    assert reply.context
    assert all(isinstance(token, int) for token in reply.context)
    parts = await in_thread(_sdk_generate, proxy.url, True, prompt="Say hi")
    assert "".join(p.response or "" for p in parts) == "Hello!"
    assert parts[-1].eval_count == 3
    first, second = chat_requests(proxy.backend)
    assert first["messages"] == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Say hi"},
    ]
    assert second["stream"] is True


@pytest_twisted.ensureDeferred
async def test_generate_raw_and_suffix_use_completions(proxy: RunningProxy) -> None:
    reply = await in_thread(_sdk_generate, proxy.url, False, prompt="def f(", suffix="return 1", raw=False)
    assert reply.response == "Hello!"
    parts = await in_thread(_sdk_generate, proxy.url, True, prompt="<|im_start|>", raw=True)
    assert "".join(p.response or "" for p in parts) == "Hello!"
    paths = [r.path for r in proxy.backend.requests if r.method == "POST"]
    assert paths == ["/v1/completions", "/v1/completions"]
    first, second = chat_requests(proxy.backend)
    assert (first["prompt"], first["suffix"]) == ("def f(", "return 1")
    assert second["prompt"] == "<|im_start|>"


@pytest_twisted.ensureDeferred
async def test_load_and_unload_requests_are_answered_locally(proxy: RunningProxy, http: HTTPClient) -> None:
    response = await http.post(proxy.url + "/api/chat", json={"model": MODEL, "messages": []})
    body = await read_json(response)
    assert (body["done"], body["done_reason"], body["message"]) == (
        True,
        "load",
        {"role": "assistant", "content": ""},
    )
    ps = await read_json(await http.get(proxy.url + "/api/ps"))
    assert [m["name"] for m in ps["models"]] == ["qwen:latest"]
    response = await http.post(proxy.url + "/api/generate", json={"model": "qwen:latest", "keep_alive": 0})
    body = await read_json(response)
    assert (body["response"], body["done_reason"]) == ("", "unload")
    assert (await read_json(await http.get(proxy.url + "/api/ps")))["models"] == []
    assert chat_requests(proxy.backend) == []


@pytest_twisted.ensureDeferred
async def test_keep_alive_sets_expiry_in_ps(proxy: RunningProxy) -> None:
    await in_thread(_sdk_chat, proxy.url, False, keep_alive="1h")
    models = (await in_thread(lambda: ollama.Client(host=proxy.url).ps())).models
    assert [m.model for m in models] == ["qwen:latest"]
    assert models[0].expires_at is not None
    left = models[0].expires_at - datetime.now(timezone.utc)
    assert timedelta(minutes=59) < left <= timedelta(hours=1)


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        (
            "/api/chat",
            {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
            404,
            "model 'nope' not found",
        ),
        ("/api/chat", {"messages": []}, 400, "model is required"),
        ("/api/generate", {"prompt": "x"}, 404, "model '' not found"),
        ("/api/chat", {"model": MODEL, "messages": "x"}, 400, None),
        ("/api/chat", {"model": MODEL, "messages": [{"content": "x"}]}, 400, "messages[0].role is required"),
        (
            "/api/chat",
            {"model": MODEL, "messages": [], "keep_alive": "10"},
            400,
            'time: missing unit in duration "10"',
        ),
        (
            "/api/chat",
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "think": "deep"},
            400,
            'invalid think value: "deep" (must be "high", "medium", "low", "max", true, or false)',
        ),
        (
            "/api/chat",
            {"model": "BAAI/bge-small-en-v1.5", "messages": [{"role": "user", "content": "x"}]},
            400,
            '"BAAI/bge-small-en-v1.5" does not support chat',
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests(
    proxy: RunningProxy, http: HTTPClient, path: str, body: dict[str, Any], status: int, error: str | None
) -> None:
    response = await http.post(proxy.url + path, json=body)
    reply = await read_json(response)
    assert response.code == status
    assert isinstance(reply["error"], str)
    if error is not None:
        assert reply["error"] == error


@pytest_twisted.ensureDeferred
async def test_backend_error_before_output_keeps_its_status(proxy: RunningProxy, http: HTTPClient) -> None:
    await http.get(proxy.url + "/api/tags")  # warm the model list so the failure hits the chat call
    proxy.backend.fail_next(400, {"error": {"message": "prompt is too long", "type": "BadRequestError"}})
    response = await http.post(proxy.url + "/api/chat", json={"model": MODEL, "messages": [{"role": "user"}]})
    assert (response.code, await read_json(response)) == (400, {"error": "prompt is too long"})


@pytest.mark.parametrize("failure", ["error_after", "drop_after"])
@pytest_twisted.ensureDeferred
async def test_failure_mid_stream_ends_with_an_error_line(
    proxy: RunningProxy, http: HTTPClient, failure: str
) -> None:
    script = ChatScript(content=["one ", "two ", "three"])
    setattr(script, failure, 2)
    proxy.backend.script = script
    code, lines, _ = await ndjson_lines(
        http, proxy.url + "/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    )
    assert code == 200
    assert [line["message"]["content"] for line in lines[:-1]] == ["one ", "two "]
    assert set(lines[-1]) == {"error"}
    assert isinstance(lines[-1]["error"], str)
    assert not any(line.get("done") for line in lines)


def _sdk_stream_until_error(url: str) -> tuple[str, ollama.ResponseError]:
    text = ""
    try:
        for part in ollama.Client(host=url).chat(
            model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        ):
            text += part.message.content or ""
    except ollama.ResponseError as error:
        return text, error
    raise AssertionError("the stream ended without an error")


@pytest_twisted.ensureDeferred
async def test_sdk_sees_a_mid_stream_error(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(content=["partial"], error_after=1)
    text, error = await in_thread(_sdk_stream_until_error, proxy.url)
    assert text == "partial"
    assert error.status_code == -1


@pytest_twisted.ensureDeferred
async def test_client_leaving_mid_stream_stops_the_backend(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(content=["tok "], endless=True, event_delay=0.005)
    client = await connect_client(proxy.url, StreamingClient(STREAM_BODY, read=True))
    await client.first_data
    assert proxy.backend.open_streams == 1
    assert client.transport is not None
    client.transport.loseConnection()
    # Within a second (the bar), the backend has seen its connection close.
    await eventually(lambda: proxy.backend.disconnects == 1 and proxy.backend.open_streams == 0, timeout=1.0)


@pytest_twisted.ensureDeferred
async def test_client_leaving_before_headers_stops_the_backend(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(header_delay=5.0)
    client = await connect_client(proxy.url, StreamingClient(STREAM_BODY, read=True))
    await eventually(lambda: proxy.backend.open_streams == 1)
    assert client.transport is not None
    client.transport.loseConnection()
    await eventually(lambda: proxy.backend.disconnects == 1)


@pytest_twisted.async_yield_fixture
async def stalling_proxy(fake_backend: FakeBackend) -> AsyncIterator[RunningProxy]:
    running = await start_proxy(
        fake_backend,
        fake_backend.base_url,
        api_key="sk-test-secret",
        model_map={MODEL: BACKEND_ID},
        stall_timeout=0.5,
    )
    yield running
    await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_client_that_stops_reading_pauses_the_backend(proxy: RunningProxy) -> None:
    backend = proxy.backend
    backend.script = ChatScript(content=["x" * 4096], endless=True)
    client = await connect_client(proxy.url, StreamingClient(STREAM_BODY, read=False))
    await eventually(lambda: backend.pauses >= 1)
    # Flow control reached the backend: once the socket buffers are full its output levels off, instead
    # of piling up in the daemon's memory.
    samples = [backend.bytes_streamed]
    for _ in range(40):
        await task.deferLater(reactor(), 0.25, lambda: None)
        samples.append(backend.bytes_streamed)
        if samples[-1] == samples[-2]:
            break
    assert samples[-1] == samples[-2], samples
    assert samples[-1] < 64 * 1024 * 1024
    assert client.transport is not None
    client.transport.loseConnection()
    await eventually(lambda: backend.disconnects == 1)


@pytest_twisted.ensureDeferred
async def test_client_stalled_past_the_timeout_is_cut(stalling_proxy: RunningProxy) -> None:
    backend = stalling_proxy.backend
    backend.script = ChatScript(content=["x" * 4096], endless=True)
    client = await connect_client(stalling_proxy.url, StreamingClient(STREAM_BODY, read=False))
    await eventually(lambda: backend.disconnects == 1)  # the stall timeout dropped the backend request ...
    assert client.transport is not None
    client.transport.resumeProducing()  # type: ignore[attr-defined]
    await client.closed  # ... and cut the client off


@pytest_twisted.ensureDeferred
async def test_backend_silence_ends_the_stream(fake_backend: FakeBackend, http: HTTPClient) -> None:
    running = await start_proxy(
        fake_backend, fake_backend.base_url, api_key="sk-test-secret", model_map={}, idle_timeout=0.3
    )
    try:
        fake_backend.script = ChatScript(content=["a", "b"], event_delay=1.0)
        code, lines, _ = await ndjson_lines(
            http,
            running.url + "/api/chat",
            {"model": BACKEND_ID, "messages": [{"role": "user", "content": "x"}]},
        )
        # The first event is the role-only delta, so nothing was written before the silence: a real status.
        assert code == 504
        assert lines == [{"error": "the backend sent nothing for 0.3 seconds"}]
        await eventually(lambda: fake_backend.disconnects == 1)
    finally:
        await running.service.stopService()


def _langchain(url: str) -> tuple[str, Any, str]:
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model=MODEL, base_url=url, temperature=0)
    message = llm.invoke("Hi")
    streamed = "".join(str(chunk.content) for chunk in llm.stream("Hi"))
    return str(message.content), message.usage_metadata, streamed


@pytest_twisted.ensureDeferred
async def test_langchain_chat_ollama(proxy: RunningProxy) -> None:
    content, usage, streamed = await in_thread(_langchain, proxy.url)
    assert content == "Hello!"
    assert streamed == "Hello!"
    assert usage is not None
    assert (usage["input_tokens"], usage["output_tokens"]) == (12, 3)


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cfc0f01f0005000201a5b1e4c60000000049454e44ae426082"
)


@pytest_twisted.ensureDeferred
async def test_images_format_and_options_reach_the_backend(proxy: RunningProxy) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    messages = [{"role": "user", "content": "What is this?", "images": [PNG]}]
    options = {
        "temperature": 0.2,
        "top_k": 20,
        "repeat_penalty": 1.1,
        "num_ctx": 8192,
        "stop": ["END"],
        "seed": 7,
    }
    await in_thread(
        _sdk_chat, proxy.url, False, messages=messages, format=schema, options=options, think=False
    )
    sent = chat_requests(proxy.backend)[-1]
    parts = sent["messages"][0]["content"]
    assert {"type": "text", "text": "What is this?"} in parts
    (image,) = [p for p in parts if p["type"] == "image_url"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": False},
    }
    assert (sent["temperature"], sent["top_k"], sent["repetition_penalty"], sent["stop"], sent["seed"]) == (
        0.2,
        20,
        1.1,
        ["END"],
        7,
    )
    assert "num_ctx" not in sent
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}  # vLLM's switch for think=false
    await in_thread(_sdk_generate, proxy.url, False, prompt="x", format="json")
    assert chat_requests(proxy.backend)[-1]["response_format"] == {"type": "json_object"}


@pytest_twisted.ensureDeferred
async def test_inline_think_tags_become_thinking_when_asked(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(content=["<think>", "pondering", "</think>", "Answer"])
    parts = await in_thread(_sdk_chat, proxy.url, True, think=True)
    assert "".join(p.message.thinking or "" for p in parts) == "pondering"
    assert "".join(p.message.content or "" for p in parts) == "Answer"
    # That answer showed the model reasoning: it thinks from now on, so a request that says nothing
    # thinks too (Ollama 0.12.4+), and think=false keeps the reasoning from the client.
    parts = await in_thread(_sdk_chat, proxy.url, True)
    assert "".join(p.message.thinking or "" for p in parts) == "pondering"
    parts = await in_thread(_sdk_chat, proxy.url, True, think=False)
    assert "".join(p.message.thinking or "" for p in parts) == ""
    assert "".join(p.message.content or "" for p in parts) == "Answer"


@pytest_twisted.ensureDeferred
async def test_inline_think_tags_stay_content_on_a_model_not_known_to_think(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(content=["<think>", "pondering", "</think>", "Answer"])
    parts = await in_thread(_sdk_chat, proxy.url, True)
    assert "".join(p.message.content or "" for p in parts) == "<think>pondering</think>Answer"


@pytest_twisted.ensureDeferred
async def test_backend_that_rejects_stream_options_still_streams(
    proxy: RunningProxy, http: HTTPClient
) -> None:
    await http.get(proxy.url + "/api/tags")  # so the next backend call is the chat itself
    proxy.backend.fail_next(
        400, {"error": {"message": "Unrecognized request argument supplied: stream_options"}}
    )
    parts = await in_thread(_sdk_chat, proxy.url, True)
    assert "".join(p.message.content or "" for p in parts) == "Hello!"
    first, second = chat_requests(proxy.backend)
    assert "stream_options" in first
    assert "stream_options" not in second


class _RawExchange(Protocol):
    """Sends bytes as they are and collects the whole answer until the server closes."""

    def __init__(self, payload: bytes) -> None:
        self._payload = payload
        self.data = b""
        self.closed: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._payload)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(self.data)


@pytest_twisted.ensureDeferred
async def test_h2c_upgrade_offer_is_ignored_and_the_body_still_read(proxy: RunningProxy) -> None:
    """JetBrains' JDK client offers HTTP/2 on a plain POST; the answer must be HTTP/1.1 with the body used."""
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False}
    ).encode()
    payload = (
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    exchange = _RawExchange(payload)
    reactor().connectTCP(
        "127.0.0.1", int(proxy.url.rsplit(":", 1)[1]), ClientFactory.forProtocol(lambda: exchange)
    )
    answer = await exchange.closed
    head, _, content = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(content)["message"]["content"] == "Hello!"


def _langchain_with_tools(url: str) -> Any:
    from langchain_ollama import ChatOllama

    return ChatOllama(model=MODEL, base_url=url).bind_tools(TOOLS).invoke("Weather in Paris?")


def _langchain_structured(url: str) -> Any:
    from langchain_ollama import ChatOllama
    from pydantic import BaseModel

    class Answer(BaseModel):
        answer: str

    return ChatOllama(model=MODEL, base_url=url).with_structured_output(Answer).invoke("Say hi")


@pytest_twisted.ensureDeferred
async def test_langchain_bind_tools_and_structured_output(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(
        content=[],
        tool_calls=[{"id": "call_9", "name": "get_weather", "arguments": '{"city": "Paris"}'}],
        finish_reason="tool_calls",
    )
    message = await in_thread(_langchain_with_tools, proxy.url)
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert chat_requests(proxy.backend)[-1]["tools"] == TOOLS
    proxy.backend.script = ChatScript(content=['{"answer": ', '"hi"}'])
    structured = await in_thread(_langchain_structured, proxy.url)
    assert structured.answer == "hi"
    assert chat_requests(proxy.backend)[-1]["response_format"]["type"] == "json_schema"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_in_a_prompt_reaches_the_backend(
    proxy: RunningProxy, http: HTTPClient, stream: bool
) -> None:
    """JSON readers accept half of an emoji's escape pair ("\\ud83d"); it cannot be UTF-8, so the body to
    the backend carries it escaped, streaming or not."""
    body = b'{"model": "qwen", "messages": [{"role": "user", "content": "hi \\ud83d"}], "stream": %s}' % (
        b"true" if stream else b"false"
    )
    response = await http.post(proxy.url + "/api/chat", data=body)
    assert response.code == 200
    await response.content()
    assert proxy.backend.requests[-1].json["messages"][-1]["content"] == "hi \ud83d"


# ---------------------------------------------------------------------------------------------------------
# What current Ollama clients read: thinking, generate's context and tool calls, whole replies' durations
# ---------------------------------------------------------------------------------------------------------

THINKER = "Qwen/Qwen3-8B"  # thinking-capable by its family
CODER = "Qwen/Qwen2.5-Coder-7B-Instruct"  # insert-capable by its family


@pytest_twisted.async_yield_fixture
async def families_proxy() -> AsyncIterator[RunningProxy]:
    """The daemon before a vLLM serving a thinking model, a plain chat model and a code model."""
    backend = FakeBackend("vllm", models=[THINKER, BACKEND_ID, CODER])
    await backend.listen(reactor())
    running = await start_proxy(backend, backend.base_url, dialect=Dialect.VLLM)
    yield running
    await running.service.stopService()
    await backend.stop()


def _reasoning_anyway(delivery: str) -> ChatScript:
    """A backend that reasons whatever it was asked: in a reasoning field, or inline (no parser)."""
    if delivery == "field":
        return ChatScript(reasoning=["ponder", "ing"], content=["Answer"])
    return ChatScript(content=["<think>", "ponder", "ing", "</think>", "\n\nAnswer"])


async def _chat_lines(http: HTTPClient, url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = await http.post(url + "/api/chat", json=body)
    assert response.code == 200
    raw = await response.content()
    return [json.loads(line) for line in raw.splitlines()] if body.get("stream", True) else [json.loads(raw)]


@pytest.mark.parametrize(
    ("think", "effort"),
    [(None, "medium"), (True, "medium"), ("high", "high"), (False, None)],
    ids=["omitted", "true", "high", "false"],
)
@pytest.mark.parametrize("delivery", ["field", "inline"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest_twisted.ensureDeferred
async def test_think_as_ollama_does_with_a_backend_that_reasons_anyway(
    families_proxy: RunningProxy,
    http: HTTPClient,
    think: bool | str | None,
    effort: str | None,
    delivery: str,
    stream: bool,
) -> None:
    """Ollama 0.12.4+: on a thinking-capable model an absent ``think`` is thinking on; ``false`` lets no
    reasoning reach the client, whatever the backend sends; levels as before."""
    families_proxy.backend.script = _reasoning_anyway(delivery)
    body: dict[str, Any] = {
        "model": THINKER,
        "messages": [{"role": "user", "content": "x"}],
        "stream": stream,
    }
    if think is not None:
        body["think"] = think
    lines = await _chat_lines(http, families_proxy.url, body)
    thinking = "".join(line["message"].get("thinking", "") for line in lines)
    assert "".join(line["message"]["content"] for line in lines) == "Answer"
    sent = chat_requests(families_proxy.backend)[-1]
    if effort is None:
        assert all("thinking" not in line["message"] for line in lines)
        assert sent["chat_template_kwargs"] == {"enable_thinking": False}
        assert "reasoning_effort" not in sent
    else:
        assert thinking == "pondering"
        assert sent["chat_template_kwargs"] == {"enable_thinking": True}
        assert sent["reasoning_effort"] == effort


@pytest_twisted.ensureDeferred
async def test_a_model_that_answered_with_reasoning_thinks_from_then_on(
    families_proxy: RunningProxy, http: HTTPClient
) -> None:
    show = await read_json(await http.post(families_proxy.url + "/api/show", json={"model": BACKEND_ID}))
    assert "thinking" not in show["capabilities"]
    families_proxy.backend.script = _reasoning_anyway("field")
    (reply,) = await _chat_lines(
        http,
        families_proxy.url,
        {"model": BACKEND_ID, "messages": [{"role": "user", "content": "x"}], "stream": False},
    )
    assert reply["message"]["thinking"] == "pondering"  # relayed, though nobody asked
    assert "chat_template_kwargs" not in chat_requests(families_proxy.backend)[-1]
    # A refresh of the model list keeps what was learnt.
    await families_proxy.service.app.catalog.snapshot(max_age=0)
    show = await read_json(await http.post(families_proxy.url + "/api/show", json={"model": BACKEND_ID}))
    assert "thinking" in show["capabilities"]
    assert ".Thinking" in show["template"]  # Ollama's own test for a thinking template
    await _chat_lines(
        http, families_proxy.url, {"model": BACKEND_ID, "messages": [{"role": "user", "content": "y"}]}
    )
    assert chat_requests(families_proxy.backend)[-1]["chat_template_kwargs"] == {"enable_thinking": True}


def _generate_context_round_trip(url: str, stream: bool) -> tuple[Any, Any]:
    client = ollama.Client(host=url)

    def final(prompt: str, **kwargs: Any) -> Any:
        if stream:
            return list(client.generate(model=BACKEND_ID, prompt=prompt, stream=True, **kwargs))[-1]
        return client.generate(model=BACKEND_ID, prompt=prompt, **kwargs)

    first = final("My name is Ada.", system="Be brief.")
    second = final("What is my name?", context=first.context)
    return first, second


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest_twisted.ensureDeferred
async def test_a_generate_context_sent_back_continues_the_conversation(
    families_proxy: RunningProxy, stream: bool
) -> None:
    first, second = await in_thread(_generate_context_round_trip, families_proxy.url, stream)
    assert first.context
    assert second.context
    *_, sent = chat_requests(families_proxy.backend)
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is my name?"},
    ]


@pytest_twisted.ensureDeferred
async def test_a_context_the_daemon_did_not_make_is_a_clear_400(families_proxy: RunningProxy) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(_sdk_generate_on, families_proxy.url, BACKEND_ID, prompt="x", context=[1, 2, 3])
    assert caught.value.status_code == 400
    assert caught.value.error.startswith("invalid context: it was not made by this server")


def _sdk_generate_on(url: str, model: str, **kwargs: Any) -> Any:
    return ollama.Client(host=url).generate(model=model, **kwargs)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest_twisted.ensureDeferred
async def test_generate_replies_relay_tool_calls(
    families_proxy: RunningProxy, http: HTTPClient, stream: bool
) -> None:
    families_proxy.backend.script = ChatScript(
        content=[],
        tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}],
        finish_reason="tool_calls",
    )
    response = await http.post(
        families_proxy.url + "/api/generate",
        json={"model": BACKEND_ID, "prompt": "Weather?", "stream": stream},
    )
    lines = [json.loads(line) for line in (await response.content()).splitlines()]
    calls = [call for line in lines for call in line.get("tool_calls", [])]
    assert calls == [
        {"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
    assert lines[-1]["done"] is True


@pytest.mark.parametrize("endpoint", ["chat", "generate"])
@pytest_twisted.ensureDeferred
async def test_whole_replies_carry_prompt_eval_and_load_durations(
    families_proxy: RunningProxy, endpoint: str
) -> None:
    """Measured as a stream's: vLLM's whole reply is its stream folded, so the first token is seen."""
    families_proxy.backend.script = ChatScript(content=["Hel", "lo", "!"], event_delay=0.02)
    if endpoint == "chat":
        reply = await in_thread(_sdk_chat_on, families_proxy.url, BACKEND_ID)
        assert reply.message.content == "Hello!"
    else:
        reply = await in_thread(_sdk_generate_on, families_proxy.url, BACKEND_ID, prompt="Hi")
        assert reply.response == "Hello!"
    assert (reply.prompt_eval_count, reply.eval_count) == (12, 3)
    assert reply.load_duration
    assert reply.prompt_eval_duration
    assert reply.eval_duration
    assert reply.eval_duration >= 40_000_000  # two 20 ms gaps after the first token
    assert (
        reply.total_duration >= reply.load_duration + reply.prompt_eval_duration + reply.eval_duration - 1000
    )


def _sdk_chat_on(url: str, model: str, **kwargs: Any) -> Any:
    return ollama.Client(host=url).chat(model=model, messages=[{"role": "user", "content": "Hi"}], **kwargs)


@pytest_twisted.ensureDeferred
async def test_fill_in_the_middle_on_vllm_is_written_with_the_models_tokens(
    families_proxy: RunningProxy,
) -> None:
    """vLLM refuses ``suffix``; Continue sends it to an ``insert`` model, so the daemon writes the prompt."""
    families_proxy.backend.script = ChatScript(content=["    c = a + b"])
    reply = await in_thread(
        _sdk_generate_on, families_proxy.url, CODER, prompt="def add(a, b):\n", suffix="\n    return c\n"
    )
    assert reply.response == "    c = a + b"
    (sent,) = [r.json for r in families_proxy.backend.requests if r.path == "/v1/completions"]
    assert sent["prompt"] == "<|fim_prefix|>def add(a, b):\n<|fim_suffix|>\n    return c\n<|fim_middle|>"
    assert "suffix" not in sent


@pytest_twisted.ensureDeferred
async def test_a_backend_named_by_its_ipv6_address_is_reached(http: HTTPClient) -> None:
    """IDNA refuses an IPv6 literal's colons: a backend URL's host went through it on every request, and
    every request to ``http://[::1]:PORT/v1`` failed."""
    backend = FakeBackend("vllm", api_key="sk-test-secret")
    url = await backend.listen(reactor(), interface="::1")
    assert url.startswith("http://[::1]:")
    running = await start_proxy(backend, url, api_key="sk-test-secret", dialect=Dialect.VLLM)
    try:
        await serves_next_request(running, http)
    finally:
        await running.service.stopService()
        await backend.stop()

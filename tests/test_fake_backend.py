"""The fake backend speaks real protocol: checked with the real ``openai`` SDK (in threads) and raw treq."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed

from tests.fake_backend import DEFAULT_MODELS, ChatScript, FakeBackend

StartBackend = Callable[..., Awaitable[FakeBackend]]
ROOT = Path(__file__).resolve().parent.parent


# -- helpers ---------------------------------------------------------------------------------------
def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(_reactor(), seconds, lambda: None)


async def _wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError("condition not reached in time")
        await _sleep(0.01)
        waited += 0.01


def _client(url: str, api_key: str = "k") -> Any:  # Any: the SDK's overloads don't matter here
    return openai.OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=10)


def _in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    return threads.deferToThread(fn, *args, **kwargs)


def _http() -> Any:
    import treq.client

    reactor = _reactor()
    return treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


def _parse_sse(raw: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body (comments skipped)."""
    events = raw.decode("utf-8").split("\n\n")
    assert events[-1] == ""
    out = []
    for event in events[:-1]:
        for line in event.split("\n"):
            if line.startswith("data: "):
                out.append(line[len("data: ") :])
            else:
                assert line.startswith(":"), line
    return out


def _cuts_a_character(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@pytest_twisted.async_yield_fixture
async def start_backend():
    started: list[FakeBackend] = []

    async def start(flavour: str = "vllm", **kwargs: Any) -> FakeBackend:
        reactor = _reactor()
        fake = FakeBackend(flavour, reactor=reactor, **kwargs)
        await fake.listen(reactor)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        await fake.stop()


@pytest_twisted.async_yield_fixture
async def backend(start_backend):
    yield await start_backend("vllm")


# -- models ----------------------------------------------------------------------------------------
def _list_models(url: str) -> list[dict[str, Any]]:
    with _client(url) as client:
        return [m.to_dict() for m in client.models.list()]


@pytest.mark.parametrize("flavour", ["vllm", "openai", "openrouter", "llamacpp"])
@pytest_twisted.ensureDeferred
async def test_models_list_per_flavour(start_backend: StartBackend, flavour: str) -> None:
    fake = await start_backend(flavour)
    models = await _in_thread(_list_models, fake.base_url)
    assert [m["id"] for m in models] == DEFAULT_MODELS[flavour]
    first = models[0]
    if flavour == "vllm":
        assert first["owned_by"] == "vllm"
        assert first["max_model_len"] == 8192
        assert first["parent"] is None
        assert first["permission"][0]["object"] == "model_permission"
    elif flavour == "openai":
        assert set(first) == {"id", "object", "created", "owned_by"}
    elif flavour == "openrouter":
        assert first["architecture"]["input_modalities"] == ["text", "image"]
        assert "reasoning" in first["supported_parameters"]
        assert "reasoning" not in models[1]["supported_parameters"]
        assert first["top_provider"]["context_length"] == 131072
    else:
        assert first["owned_by"] == "llamacpp"
        assert first["meta"]["n_ctx_train"] == 8192
        raw = fake.models_body()
        assert raw["models"][0]["name"] == "smollm2"
        assert raw["models"][0]["capabilities"] == ["completion"]
    assert fake.requests[0].method == "GET"
    assert fake.requests[0].path == "/v1/models"
    assert fake.requests[0].headers["authorization"] == "Bearer k"


def _retrieve(url: str, model: str) -> dict[str, Any]:
    with _client(url) as client:
        return client.models.retrieve(model).to_dict()


@pytest_twisted.ensureDeferred
async def test_model_retrieve_with_slash_and_unknown(backend: FakeBackend) -> None:
    entry = await _in_thread(_retrieve, backend.base_url, "Qwen/Qwen2.5-7B-Instruct")
    assert entry["id"] == "Qwen/Qwen2.5-7B-Instruct"
    with pytest.raises(openai.NotFoundError):
        await _in_thread(_retrieve, backend.base_url, "nope/nothing")


# -- chat ------------------------------------------------------------------------------------------
MODEL = "Qwen/Qwen2.5-7B-Instruct"
MESSAGES: Any = [{"role": "user", "content": "hi"}]


def _chat(url: str, **kwargs: Any) -> dict[str, Any]:
    with _client(url) as client:
        return client.chat.completions.create(model=MODEL, messages=MESSAGES, **kwargs).to_dict()


def _chat_stream(url: str, **kwargs: Any) -> list[dict[str, Any]]:
    with _client(url) as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **kwargs)
        return [chunk.to_dict() for chunk in stream]


@pytest_twisted.ensureDeferred
async def test_chat_non_stream(backend: FakeBackend) -> None:
    backend.script = ChatScript(reasoning=["Think", "ing"], reasoning_field="reasoning")
    body = await _in_thread(_chat, backend.base_url)
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["content"] == "Hello!"
    assert message["reasoning"] == "Thinking"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == 15
    sent = backend.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.json["messages"] == MESSAGES
    assert sent.headers["content-type"] == "application/json"


@pytest_twisted.ensureDeferred
async def test_chat_non_stream_tool_calls(backend: FakeBackend) -> None:
    call = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    backend.script = ChatScript(content=[], tool_calls=[call], finish_reason="tool_calls")
    body = await _in_thread(_chat, backend.base_url)
    message = body["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert body["choices"][0]["finish_reason"] == "tool_calls"


@pytest_twisted.ensureDeferred
async def test_chat_stream_usage_reasoning_and_tool_calls(backend: FakeBackend) -> None:
    calls = [
        {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": "call_2", "name": "get_time", "arguments": '{"tz": "Europe/Paris", "format": "24h"}'},
    ]
    backend.script = ChatScript(reasoning=["Let me ", "think."], tool_calls=calls, finish_reason="tool_calls")
    chunks = await _in_thread(_chat_stream, backend.base_url, stream_options={"include_usage": True})

    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Let me think."
    assert "".join(d.get("content") or "" for d in deltas) == "Hello!"
    # reasoning comes before content
    first_reasoning = next(i for i, d in enumerate(deltas) if d.get("reasoning_content"))
    first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert first_reasoning < first_content

    calls_seen: dict[int, dict[str, str]] = {}
    fragments = 0
    for delta in deltas:
        for frag in delta.get("tool_calls", []):
            fragments += 1
            slot = calls_seen.setdefault(frag["index"], {"id": "", "name": "", "arguments": ""})
            slot["id"] += frag.get("id") or ""
            fn = frag.get("function") or {}
            slot["name"] += fn.get("name") or ""
            slot["arguments"] += fn.get("arguments") or ""
    assert [calls_seen[i] for i in sorted(calls_seen)] == calls
    assert fragments == 2 * 4  # a head fragment plus three argument pieces per call
    assert json.loads(calls_seen[1]["arguments"]) == {"tz": "Europe/Paris", "format": "24h"}

    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1
    assert finish[0]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert backend.open_streams == 0
    assert backend.disconnects == 0


@pytest_twisted.ensureDeferred
async def test_chat_stream_without_include_usage_has_no_usage_chunk(backend: FakeBackend) -> None:
    chunks = await _in_thread(_chat_stream, backend.base_url)
    assert all(c["choices"] for c in chunks)
    assert all(not c.get("usage") for c in chunks)


@pytest.mark.parametrize("flavour", ["openai", "openrouter", "llamacpp"])
@pytest_twisted.ensureDeferred
async def test_chat_stream_other_flavours(start_backend: StartBackend, flavour: str) -> None:
    fake = await start_backend(flavour, models=[MODEL])
    fake.script.reasoning = ["hmm"]
    fake.script.reasoning_field = "reasoning"
    chunks = await _in_thread(_chat_stream, fake.base_url, stream_options={"include_usage": True})
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Hello!"
    assert "".join(d.get("reasoning") or "" for d in deltas) == "hmm"
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    if flavour == "llamacpp":
        assert chunks[0]["choices"][0]["delta"]["content"] is None
        body = await _in_thread(_chat, fake.base_url)
        assert body["timings"]["predicted_n"] == 3


@pytest_twisted.ensureDeferred
async def test_chat_stream_error_event_raises(backend: FakeBackend) -> None:
    backend.script.error_after = 2
    with pytest.raises(openai.APIError, match="after 2 content events"):
        await _in_thread(_chat_stream, backend.base_url)


# -- completions and embeddings --------------------------------------------------------------------
def _completions(url: str, stream: bool) -> Any:
    with _client(url) as client:
        result = client.completions.create(model=MODEL, prompt="Once upon", stream=stream)
        if stream:
            return [chunk.to_dict() for chunk in result]
        return result.to_dict()


@pytest_twisted.ensureDeferred
async def test_completions(backend: FakeBackend) -> None:
    body = await _in_thread(_completions, backend.base_url, False)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "Hello!"
    assert body["usage"]["prompt_tokens"] == 12
    chunks = await _in_thread(_completions, backend.base_url, True)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello!"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert backend.requests[-1].path == "/v1/completions"


def _embed(url: str, inputs: Any, **kwargs: Any) -> dict[str, Any]:
    with _client(url) as client:
        return client.embeddings.create(model="BAAI/bge-small-en-v1.5", input=inputs, **kwargs).to_dict()


@pytest_twisted.ensureDeferred
async def test_embeddings(backend: FakeBackend) -> None:
    body = await _in_thread(_embed, backend.base_url, ["hello world", "bye"], encoding_format="float")
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1]
    first = body["data"][0]["embedding"]
    assert first == backend.embedding_for("hello world")
    assert len(first) == 8
    assert abs(math.sqrt(sum(x * x for x in first)) - 1.0) > 0.1  # not normalised
    assert body["data"][1]["embedding"] != first
    assert body["usage"]["prompt_tokens"] == 3

    # the SDK's default: base64 float32, decoded by the SDK
    body = await _in_thread(_embed, backend.base_url, "hello world")
    assert backend.requests[-1].json["encoding_format"] == "base64"
    assert body["data"][0]["embedding"] == pytest.approx(backend.embedding_for("hello world"), abs=1e-5)

    body = await _in_thread(_embed, backend.base_url, "hello world", dimensions=3, encoding_format="float")
    assert body["data"][0]["embedding"] == backend.embedding_for("hello world")[:3]


@pytest_twisted.ensureDeferred
async def test_embeddings_truncate_and_refuse_like_vllm(backend: FakeBackend) -> None:
    backend.max_model_len = 4
    body = await _in_thread(
        _embed,
        backend.base_url,
        ["a b c d e f"],
        encoding_format="float",
        extra_body={"truncate_prompt_tokens": 2},
    )
    # vLLM keeps the last tokens.
    assert body["data"][0]["embedding"] == backend.embedding_for("e f")
    assert body["usage"]["prompt_tokens"] == 2
    body = await _in_thread(
        _embed,
        backend.base_url,
        ["a b c d e f"],
        encoding_format="float",
        extra_body={"truncate_prompt_tokens": -1},
    )
    assert body["data"][0]["embedding"] == backend.embedding_for("c d e f")
    with pytest.raises(
        openai.BadRequestError, match=r"maximum context length is 4 tokens\. However, you requested 6"
    ):
        await _in_thread(_embed, backend.base_url, ["a b c d e f"], encoding_format="float")
    with pytest.raises(openai.BadRequestError, match=r"truncate_prompt_tokens value \(5\) is greater than"):
        await _in_thread(
            _embed, backend.base_url, ["a"], encoding_format="float", extra_body={"truncate_prompt_tokens": 5}
        )


@pytest_twisted.ensureDeferred
async def test_llamacpp_props(start_backend: StartBackend) -> None:
    fake = await start_backend("llamacpp", models=["smollm2"])
    fake.props["smollm2"] = {"modalities": {"vision": True, "audio": False}}
    http = _http()
    root = fake.base_url.removesuffix("/v1")
    for url in (root + "/props", root + "/props?model=smollm2"):
        response = await http.get(url)
        assert response.code == 200
        body = json.loads(await response.content())
        assert body["default_generation_settings"]["n_ctx"] == fake.max_model_len
        assert body["chat_template_caps"]["supports_tools"] is False
        assert body["modalities"] == {"vision": True, "audio": False}
        assert body["eos_token"] == "<|im_end|>"
    assert (await http.get(root + "/props?model=other")).code == 404
    vllm = await start_backend("vllm")
    assert (await http.get(vllm.base_url.removesuffix("/v1") + "/props")).code == 404  # vLLM has none


def _responses(url: str, stream: bool) -> Any:
    with _client(url) as client:
        if stream:
            return [
                e.to_dict()
                for e in client.responses.create(model=DEFAULT_MODELS["vllm"][0], input="Hi", stream=True)
            ]
        return client.responses.create(model=DEFAULT_MODELS["vllm"][0], input="Hi")


@pytest_twisted.ensureDeferred
async def test_responses_api(backend: FakeBackend) -> None:
    reply = await _in_thread(_responses, backend.base_url, False)
    assert reply.output_text == "Hello!"
    assert reply.usage.input_tokens == 12
    events = await _in_thread(_responses, backend.base_url, True)
    assert [e["type"] for e in events] == [
        "response.created",
        *["response.output_text.delta"] * 3,
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(5))
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "Hello!"
    raw = bytes(backend.sent_streams[-1])
    assert raw.startswith(b"event: response.created\ndata: {")
    assert backend.requests[-1].path == "/v1/responses"


@pytest_twisted.ensureDeferred
async def test_sent_streams_and_extra_headers(backend: FakeBackend) -> None:
    backend.extra_headers = {"x-trace": "t1"}
    response = await _http().post(
        backend.base_url + "/chat/completions",
        json={"model": DEFAULT_MODELS["vllm"][0], "messages": MESSAGES, "stream": True},
        headers={"authorization": "Bearer k"},
    )
    body = await response.content()
    assert response.headers.getRawHeaders("x-trace") == ["t1"]
    assert [bytes(sent) for sent in backend.sent_streams] == [body]


# -- errors and auth -------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_unknown_model_is_404(backend: FakeBackend) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await _in_thread(
            lambda: _client(backend.base_url).chat.completions.create(model="x", messages=MESSAGES)
        )
    assert info.value.body == {
        "message": "The model `x` does not exist.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }


@pytest_twisted.ensureDeferred
async def test_fail_next(backend: FakeBackend) -> None:
    backend.fail_next(503, times=2, headers={"retry-after": "0"})
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as info:
            await _in_thread(_chat, backend.base_url)
        assert info.value.status_code == 503
        assert info.value.response.headers["retry-after"] == "0"
    body = await _in_thread(_chat, backend.base_url)
    assert body["choices"][0]["message"]["content"] == "Hello!"
    backend.fail_next(429, {"error": {"message": "slow down", "type": "rate_limit", "code": 429}})
    with pytest.raises(openai.RateLimitError, match="slow down"):
        await _in_thread(_list_models, backend.base_url)
    assert len(backend.requests) == 4


@pytest_twisted.ensureDeferred
async def test_invalid_json_and_unknown_path(backend: FakeBackend) -> None:
    import treq

    http = _http()
    response = await http.post(backend.base_url + "/chat/completions", data=b"{not json")
    assert response.code == 400
    assert (await response.json())["error"]["code"] == 400
    response = await http.get(backend.base_url + "/nothing/here?x=1")
    assert response.code == 404
    assert "error" in await response.json()
    assert backend.requests[-1].query == b"x=1"
    assert backend.requests[-1].path == "/v1/nothing/here"
    await treq.content(response)


@pytest_twisted.ensureDeferred
async def test_auth(start_backend: StartBackend) -> None:
    fake = await start_backend("openai", api_key="sekrit")
    with pytest.raises(openai.AuthenticationError):
        await _in_thread(_list_models, fake.base_url)

    def good() -> list[str]:
        with _client(fake.base_url, api_key="sekrit") as client:
            return [m.id for m in client.models.list()]

    assert await _in_thread(good) == DEFAULT_MODELS["openai"]


# -- raw streaming: split writes, comments, drops, disconnects, backpressure -----------------------
@pytest_twisted.ensureDeferred
async def test_raw_stream_split_writes(backend: FakeBackend) -> None:
    import treq

    backend.script = ChatScript(content=["Grüß ", "dich ", "👋"], split_writes=True, comments=True)
    http = _http()
    response = await http.post(
        backend.base_url + "/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "stream": True},
        unbuffered=True,
    )
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    pieces: list[bytes] = []
    await treq.collect(response, pieces.append)
    raw = b"".join(pieces)
    payloads = _parse_sse(raw)
    assert payloads[-1] == "[DONE]"
    events = [json.loads(p) for p in payloads[:-1]]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert text == "Grüß dich 👋"
    assert raw.count(b": OPENROUTER PROCESSING\n\n") >= 2
    assert len(pieces) > 2 * len(payloads)  # every event went out in several writes
    assert any(_cuts_a_character(piece) for piece in pieces)
    assert b"dat" in pieces  # cut inside "data:"
    assert backend.bytes_streamed == len(raw)


@pytest_twisted.ensureDeferred
async def test_raw_stream_drop_after(backend: FakeBackend) -> None:
    import treq

    backend.script.drop_after = 1
    response = await _http().post(
        backend.base_url + "/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "stream": True},
        unbuffered=True,
    )
    pieces: list[bytes] = []
    with pytest.raises(ResponseFailed):
        await treq.collect(response, pieces.append)
    assert b'"content":"Hel"' in b"".join(pieces)
    assert backend.disconnects == 0
    assert backend.open_streams == 0


class _Reader(Protocol):
    """Reads an unbuffered body; can stop reading (pause) or hang up after the first data."""

    def __init__(self, action: str) -> None:
        self.action = action
        self.received = 0
        self.first_data: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if not self.first_data.called:
            self.first_data.callback(None)
            if self.action == "pause":
                self.transport.pauseProducing()  # type: ignore[union-attr]
            elif self.action == "hangup":
                self.transport.stopProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


async def _open_endless(backend: FakeBackend, action: str) -> _Reader:
    backend.script = ChatScript(content=["tok "], endless=True)
    response = await _http().post(
        backend.base_url + "/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "stream": True},
        unbuffered=True,
    )
    reader = _Reader(action)
    response.deliverBody(reader)
    await reader.first_data
    return reader


@pytest_twisted.ensureDeferred
async def test_disconnect_mid_endless_stream(backend: FakeBackend) -> None:
    reader = await _open_endless(backend, "hangup")
    await reader.lost
    await _wait_for(lambda: backend.disconnects == 1)
    assert backend.open_streams == 0
    streamed = backend.bytes_streamed
    await _sleep(0.05)
    assert backend.bytes_streamed == streamed  # nothing written after the client left


@pytest_twisted.ensureDeferred
async def test_endless_stream_respects_backpressure(backend: FakeBackend) -> None:
    reader = await _open_endless(backend, "pause")
    await _wait_for(lambda: backend.pauses >= 1, timeout=5.0)
    # once the socket buffers are full the producer stays paused and the output levels off
    for _ in range(50):
        streamed = backend.bytes_streamed
        await _sleep(0.1)
        if backend.bytes_streamed == streamed:
            break
    else:
        raise AssertionError("the endless stream never levelled off")
    assert backend.disconnects == 0
    assert backend.open_streams == 1
    reader.transport.stopProducing()  # type: ignore[union-attr]
    await reader.lost
    await _wait_for(lambda: backend.disconnects == 1)


@pytest_twisted.ensureDeferred
async def test_disconnect_during_header_delay(backend: FakeBackend) -> None:
    backend.script.header_delay = 10.0
    d = _http().post(
        backend.base_url + "/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "stream": True},
    )
    await _wait_for(lambda: backend.open_streams == 1)
    d.cancel()
    with pytest.raises(Exception):  # noqa: B017, PT011 -- ResponseNeverReceived or CancelledError
        await d
    await _wait_for(lambda: backend.disconnects == 1)
    assert backend.open_streams == 0


# -- standalone --------------------------------------------------------------------------------------
def _run_standalone() -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_backend", "--flavour", "llamacpp", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        return [m["id"] for m in _list_models(line.split()[-1])]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


@pytest_twisted.ensureDeferred
async def test_standalone_process() -> None:
    assert await _in_thread(_run_standalone) == ["smollm2"]

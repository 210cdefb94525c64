"""Every API family answers the same kinds of failure in its own shape and status, through a real daemon on
a real socket: a bad client key, an unknown model, a body too large, a backend that is down, one that does
not answer in time, a full queue, and a stream that breaks after it began.

The family is chosen by the request's path alone (``/api/...`` is Ollama's, ``/v1/messages`` Anthropic's,
``/v1/responses`` the Responses API's, the rest of ``/v1/...`` OpenAI's), so the same failure on the same
daemon reads differently to an Ollama SDK, an OpenAI SDK and an Anthropic SDK.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from ollama_proxy.exchange import Family
from tests.fake_backend import ChatScript, FakeBackend
from tests.support import reactor, start_proxy

MODEL = "Qwen/Qwen2.5-7B-Instruct"
KEY = "sk-test-secret"  # what the fake backend expects
MESSAGES = [{"role": "user", "content": "x"}]


@attrs.frozen
class FamilyCase:
    name: str
    path: str
    # The request body for a model, whole (stream False) or streamed.
    body: Callable[[str, bool], dict[str, Any]]
    # Checks an error body's shape and returns its message.
    message: Callable[[Any], str]
    # The last piece of a stream that broke: the family's ending, parsed.
    stream_ending: Callable[[bytes], str]
    # The family's status for the daemon's 503 (Anthropic says "overloaded" with 529).
    overloaded: int = 503


def _ollama_message(body: Any) -> str:
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    return body["error"]


def _openai_message(body: Any) -> str:
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert isinstance(error["type"], str)
    assert isinstance(error["message"], str)
    return error["message"]


def _ollama_ending(data: bytes) -> str:
    last = json.loads(data.splitlines()[-1])
    assert "done" not in last
    return _ollama_message(last)


def _openai_ending(data: bytes) -> str:
    events = [block for block in data.decode().split("\n\n") if block.strip()]
    last = events[-1]
    assert last.startswith("data: ")
    return _openai_message(json.loads(last[len("data: ") :]))


def _anthropic_message(body: Any) -> str:
    assert isinstance(body, dict)
    assert set(body) == {"type", "error"}
    assert body["type"] == "error"
    error = body["error"]
    assert set(error) == {"type", "message"}
    assert isinstance(error["type"], str)
    assert isinstance(error["message"], str)
    return error["message"]


def _sse_events(data: bytes) -> list[tuple[str, Any]]:
    """(event name, parsed data) of each event, every one with its ``event:`` line."""
    events = []
    for block in data.decode().split("\n\n"):
        if block.strip():
            name, payload = block.split("\n", 1)
            assert name.startswith("event: ")
            assert payload.startswith("data: ")
            events.append((name[len("event: ") :], json.loads(payload[len("data: ") :])))
    return events


def _anthropic_ending(data: bytes) -> str:
    events = _sse_events(data)
    assert events[0][0] == "message_start"
    assert "message_stop" not in [name for name, _ in events]
    name, last = events[-1]
    assert name == "error"
    return _anthropic_message(last)


def _responses_ending(data: bytes) -> str:
    events = _sse_events(data)
    assert events[0][0] == "response.created"
    (failed_name, failed), (name, last) = events[-2:]
    assert failed_name == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["id"] == events[0][1]["response"]["id"]
    assert name == "error"
    assert last["message"] == failed["response"]["error"]["message"]
    return _openai_message({"error": last["error"]})


FAMILIES = [
    FamilyCase(
        "ollama",
        "/api/chat",
        lambda model, stream: {"model": model, "messages": MESSAGES, "stream": stream},
        _ollama_message,
        _ollama_ending,
    ),
    FamilyCase(
        "openai",
        "/v1/chat/completions",
        lambda model, stream: {"model": model, "messages": MESSAGES, "stream": stream},
        _openai_message,
        _openai_ending,
    ),
    FamilyCase(
        "anthropic",
        "/v1/messages",
        lambda model, stream: {"model": model, "max_tokens": 16, "messages": MESSAGES, "stream": stream},
        _anthropic_message,
        _anthropic_ending,
        overloaded=529,
    ),
    FamilyCase(
        "responses",
        "/v1/responses",
        lambda model, stream: {"model": model, "input": "x", "stream": stream},
        _openai_message,
        _responses_ending,
    ),
]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def client() -> HTTPClient:
    return treq.client.HTTPClient(Agent(reactor(), pool=HTTPConnectionPool(reactor(), persistent=False)))


async def _post(client: HTTPClient, url: str, body: Any, **headers: str) -> tuple[int, Any, Any]:
    response = await client.post(
        url, data=json.dumps(body).encode(), headers=Headers({k: [v] for k, v in headers.items()})
    )
    data = await response.content()
    return response.code, json.loads(data) if data else None, response.headers


families = pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])


@families
@pytest_twisted.ensureDeferred
async def test_bad_client_key(family: FamilyCase, fake_backend: FakeBackend, client: HTTPClient) -> None:
    running = await start_proxy(
        fake_backend, fake_backend.base_url, api_key=KEY, client_keys=frozenset({"right-key"})
    )
    try:
        code, body, headers = await _post(
            client, running.url + family.path, family.body(MODEL, False), Authorization="Bearer wrong"
        )
        assert code == 401
        assert "bearer token" in family.message(body)
        assert headers.getRawHeaders(b"www-authenticate") == [b'Bearer realm="ollama-proxy"']
        assert fake_backend.requests == []
    finally:
        await running.service.stopService()


@families
@pytest_twisted.ensureDeferred
async def test_unknown_model(family: FamilyCase, fake_backend: FakeBackend, client: HTTPClient) -> None:
    running = await start_proxy(fake_backend, fake_backend.base_url, api_key=KEY)
    try:
        code, body, _ = await _post(client, running.url + family.path, family.body("no-such-model", False))
        assert code == 404
        assert "no-such-model" in family.message(body)
    finally:
        await running.service.stopService()


@families
@pytest_twisted.ensureDeferred
async def test_body_too_large(family: FamilyCase, fake_backend: FakeBackend, client: HTTPClient) -> None:
    running = await start_proxy(fake_backend, fake_backend.base_url, api_key=KEY, max_body=1024)
    try:
        body = family.body(MODEL, False)
        body["messages"] = [{"role": "user", "content": "a" * 4096}]
        code, answer, _ = await _post(client, running.url + family.path, body)
        assert code == 413
        assert family.message(answer) == "request body too large: the limit is 1024 bytes"
    finally:
        await running.service.stopService()


@families
@pytest_twisted.ensureDeferred
async def test_backend_down(family: FamilyCase, fake_backend: FakeBackend, client: HTTPClient) -> None:
    running = await start_proxy(fake_backend, f"http://127.0.0.1:{_closed_port()}/v1", retries=0)
    try:
        code, body, _ = await _post(client, running.url + family.path, family.body(MODEL, False))
        assert code == 502
        assert family.message(body) == "cannot reach the backend: connection refused"
    finally:
        await running.service.stopService()


@families
@pytest_twisted.ensureDeferred
async def test_backend_timeout(family: FamilyCase, fake_backend: FakeBackend, client: HTTPClient) -> None:
    running = await start_proxy(
        fake_backend, fake_backend.base_url, api_key=KEY, headers_timeout=0.3, retries=0
    )
    try:
        fake_backend.script = ChatScript(header_delay=5.0)
        code, body, _ = await _post(client, running.url + family.path, family.body(MODEL, False))
        assert code == 504
        assert family.message(body) == "the backend did not answer within 0.3 seconds"
    finally:
        await running.service.stopService()


@families
@pytest_twisted.ensureDeferred
async def test_overloaded(family: FamilyCase, fake_backend: FakeBackend, client: HTTPClient) -> None:
    running = await start_proxy(
        fake_backend, fake_backend.base_url, api_key=KEY, max_concurrent=1, max_queue=0, drain_timeout=0.2
    )
    try:
        fake_backend.script = ChatScript(endless=True, event_delay=0.05)
        holding: Deferred[Any] = client.post(
            running.url + family.path, data=json.dumps(family.body(MODEL, True)).encode()
        )
        assert (await holding).code == 200  # its headers came: it holds the one backend slot, streaming
        code, body, _ = await _post(client, running.url + family.path, family.body(MODEL, False))
        assert code == family.overloaded
        assert "busy" in family.message(body)
    finally:
        await running.service.stopService()


@families
@pytest_twisted.ensureDeferred
async def test_broken_stream(family: FamilyCase, fake_backend: FakeBackend, client: HTTPClient) -> None:
    running = await start_proxy(fake_backend, fake_backend.base_url, api_key=KEY)
    try:
        fake_backend.script = ChatScript(content=["a", "b", "c", "d"], drop_after=2)
        response = await client.post(
            running.url + family.path, data=json.dumps(family.body(MODEL, True)).encode()
        )
        assert response.code == 200  # the status line went out with the first bytes
        data = await response.content()
        assert family.stream_ending(data) == "the backend connection broke mid-stream"
    finally:
        await running.service.stopService()


@pytest.mark.parametrize(
    ("path", "family"),
    [
        (b"/api/chat", Family.OLLAMA),
        (b"/", Family.OLLAMA),
        (b"/health", Family.OLLAMA),
        (b"/v1", Family.OPENAI),
        (b"/v1/chat/completions", Family.OPENAI),
        (b"/chat/completions", Family.OPENAI),
        (b"/models?x=1", Family.OPENAI),
        (b"/v1/messages", Family.ANTHROPIC),
        (b"/v1/messages?beta=true", Family.ANTHROPIC),
        (b"/v1/messages/count_tokens", Family.ANTHROPIC),
        (b"/messages", Family.ANTHROPIC),
        (b"/v1/responses", Family.RESPONSES),
        (b"/responses/resp_1", Family.RESPONSES),
        (b"/v1/messagesx", Family.OPENAI),
        (b"/messagesx", Family.OLLAMA),
        (b"/api/messages", Family.OLLAMA),
    ],
)
def test_the_family_comes_from_the_path(path: bytes, family: Family) -> None:
    assert Family.for_path(path) is family

"""Fault injection end to end: what a client sees when the backend or another client misbehaves, and that
the daemon serves the next request afterwards."""

from __future__ import annotations

import json
import resource
from collections.abc import AsyncIterator
from typing import Any

import ollama
import pytest
import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from tests.fake_backend import ChatScript, FakeBackend
from tests.support import RunningProxy, in_thread, reactor, read_json, serves_next_request, start_proxy

MODEL = "Qwen/Qwen2.5-7B-Instruct"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": False}
STREAM = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}


def chats(backend: FakeBackend) -> int:
    return sum(1 for r in backend.requests if r.path.endswith("/chat/completions"))


@pytest_twisted.async_yield_fixture
async def tight(fake_backend: FakeBackend) -> AsyncIterator[RunningProxy]:
    """A daemon with short timeouts and a quick breaker, so faults show within a test's patience."""
    running = await start_proxy(
        fake_backend,
        fake_backend.base_url,
        api_key="sk-test-secret",
        headers_timeout=0.5,
        idle_timeout=0.5,
        retries=2,
        retry_budget=2.0,
        breaker_threshold=3,
        breaker_cooldown=0.5,
        max_body=1024 * 1024,
        max_concurrent=2,
        max_queue=1,
    )
    await running.service.app.catalog.snapshot()  # later backend calls are the ones under test
    yield running
    await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_503_is_retried_invisibly(tight: RunningProxy, http: HTTPClient) -> None:
    tight.backend.fail_next(503)
    reply = await in_thread(lambda: ollama.Client(host=tight.url).chat(model=MODEL, messages=[]))
    assert reply.done_reason == "load"  # answered locally: no backend call yet
    reply = await in_thread(
        lambda: ollama.Client(host=tight.url).chat(model=MODEL, messages=[{"role": "user", "content": "x"}])
    )
    assert reply.message.content == "Hello!"
    assert chats(tight.backend) == 2


@pytest_twisted.ensureDeferred
async def test_retry_after_is_honoured_within_the_budget(tight: RunningProxy, http: HTTPClient) -> None:
    tight.backend.fail_next(429, headers={"Retry-After": "30"})  # beyond the 2 s budget: not retried
    response = await http.post(tight.url + "/api/chat", json=CHAT)
    assert response.code == 429
    assert chats(tight.backend) == 1
    tight.backend.fail_next(429, headers={"Retry-After": "0"})
    assert (await http.post(tight.url + "/api/chat", json=CHAT)).code == 200


@pytest_twisted.ensureDeferred
async def test_backend_slow_to_answer_is_a_504(tight: RunningProxy, http: HTTPClient) -> None:
    tight.backend.script = ChatScript(header_delay=2.0)
    response = await http.post(tight.url + "/api/chat", json=STREAM)
    assert (response.code, await read_json(response)) == (
        504,
        {"error": "the backend did not answer within 0.5 seconds"},
    )
    await serves_next_request(tight, http)


@pytest_twisted.ensureDeferred
async def test_garbage_instead_of_a_stream(tight: RunningProxy, http: HTTPClient) -> None:
    tight.backend.fail_next(200, "this is not an event stream", headers={"Content-Type": "text/event-stream"})
    response = await http.post(tight.url + "/api/chat", json=STREAM)
    lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert lines == [{"error": "the backend's stream ended before it was complete"}]
    await serves_next_request(tight, http)


@pytest_twisted.ensureDeferred
async def test_body_too_large_is_413_and_the_daemon_goes_on(tight: RunningProxy, http: HTTPClient) -> None:
    big = b'{"model": "x", "prompt": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    response = await http.post(tight.url + "/api/generate", data=big)
    assert response.code == 413
    assert (await read_json(response))["error"] == "request body too large: the limit is 1048576 bytes"

    def chunks() -> Any:
        yield big

    # Without a Content-Length (chunked), the limit applies while reading.
    from twisted.web.client import FileBodyProducer

    class Unsized(FileBodyProducer):
        length = None

    import io

    response = await http.post(tight.url + "/api/generate", data=Unsized(io.BytesIO(big)))
    assert response.code == 413
    await serves_next_request(tight, http)


@pytest_twisted.ensureDeferred
async def test_client_keys(fake_backend: FakeBackend, http: HTTPClient) -> None:
    running = await start_proxy(
        fake_backend,
        fake_backend.base_url,
        api_key="sk-test-secret",
        client_keys=frozenset({"tok-1", "tok-2"}),
    )
    try:
        url = running.url
        response = await http.get(url + "/api/tags")
        assert response.code == 401
        assert response.headers.getRawHeaders("www-authenticate") == ['Bearer realm="ollama-proxy"']
        assert (await read_json(response))["error"].startswith("unauthorized")
        assert (
            await http.get(url + "/api/tags", headers=Headers({"Authorization": ["Bearer nope"]}))
        ).code == 401
        assert (await http.get(url + "/")).code == 200  # probes stay open
        # The ollama SDK sends OLLAMA_API_KEY as a bearer token.
        listing = await in_thread(
            lambda: ollama.Client(host=url, headers={"Authorization": "Bearer tok-2"}).list()
        )
        assert listing.models
        # LangChain's http://user:TOKEN@host becomes Basic auth.
        basic = Headers({"Authorization": ["Basic dXNlcjp0b2stMQ=="]})  # user:tok-1
        assert (await http.get(url + "/api/tags", headers=basic)).code == 200
        # The client's token never reaches the backend.
        assert {r.headers.get("authorization") for r in fake_backend.requests} == {"Bearer sk-test-secret"}
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_cors(fake_backend: FakeBackend, http: HTTPClient) -> None:
    running = await start_proxy(fake_backend, fake_backend.base_url, origins=("https://chat.example.com",))
    try:
        url = running.url + "/api/version"
        response = await http.get(url, headers=Headers({"Origin": ["http://localhost:5173"]}))
        assert response.headers.getRawHeaders("access-control-allow-origin") == ["http://localhost:5173"]
        assert response.headers.getRawHeaders("access-control-allow-credentials") is None
        preflight = await http.request(
            "OPTIONS",
            url,
            headers=Headers(
                {"Origin": ["https://chat.example.com"], "Access-Control-Request-Method": ["POST"]}
            ),
        )
        assert preflight.code == 204
        assert "Authorization" in preflight.headers.getRawHeaders("access-control-allow-headers")[0]
        refused = await http.get(url, headers=Headers({"Origin": ["https://evil.example"]}))
        assert (refused.code, await read_json(refused)) == (
            403,
            {"error": "origin https://evil.example is not allowed"},
        )
    finally:
        await running.service.stopService()


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


@pytest.mark.parametrize("streams", [300, 1000])
@pytest_twisted.ensureDeferred
async def test_many_concurrent_streams_all_complete(fake_backend: FakeBackend, streams: int) -> None:
    _raise_fd_limit(6 * streams)
    running = await start_proxy(
        fake_backend, fake_backend.base_url, api_key="sk-test-secret", max_concurrent=2000
    )
    fake_backend.script = ChatScript(content=["one ", "two ", "three"], event_delay=0.05)
    pool = HTTPConnectionPool(reactor(), persistent=False)
    client = treq.client.HTTPClient(Agent(reactor(), pool=pool))

    async def one() -> list[Any]:
        response = await client.post(running.url + "/api/chat", json=STREAM)
        assert response.code == 200
        return [json.loads(line) for line in (await response.text()).splitlines()]

    try:
        results = await defer.gatherResults([defer.ensureDeferred(one()) for _ in range(streams)])
        for lines in results:
            assert "".join(line["message"]["content"] for line in lines) == "one two three"
            assert lines[-1]["done"] is True
            assert lines[-1]["eval_count"] == 3
    finally:
        await pool.closeCachedConnections()
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_clients_leaving_before_the_headers_do_not_trip_the_breaker(tight: RunningProxy) -> None:
    """Users pressing stop while a model loads are not backend failures: the next request still goes
    through (the breaker here opens after 3 real failures)."""
    from tests.support import STREAM_BODY, StreamingClient, connect_client, eventually

    tight.backend.script = ChatScript(header_delay=5.0)
    before = tight.backend.disconnects
    for _ in range(5):
        client = await connect_client(
            tight.url, StreamingClient(STREAM_BODY.replace(b"qwen", MODEL.encode()), read=True)
        )
        await eventually(lambda: tight.backend.open_streams == 1)
        assert client.transport is not None
        client.transport.loseConnection()
        await eventually(lambda: tight.backend.open_streams == 0)
    assert tight.backend.disconnects - before == 5
    assert tight.service.app.backend.breaker.state.value == "closed"
    assert tight.service.app.backend.breaker.failures == 0


@pytest.mark.parametrize("body", [CHAT, STREAM], ids=["json", "stream"])
@pytest_twisted.ensureDeferred
async def test_a_request_closed_unanswered_is_sent_again_at_once(
    tight: RunningProxy, http: HTTPClient, body: dict[str, Any]
) -> None:
    """llama.cpp's server closes every connection that carried a stream, and the next request sent on
    it is closed unanswered: against real llama.cpp, 10 of 30 chats sent right after a stream got a 502
    ("the backend closed the connection") before this was retried."""
    tight.backend.close_first_attempts = True
    response = await http.post(tight.url + "/api/chat", json=body)
    assert response.code == 200
    lines = (await response.content()).splitlines()
    assert json.loads(lines[-1])["done"] is True
    assert chats(tight.backend) == 2
    breaker = tight.service.app.backend.breaker
    assert (breaker.state.value, breaker.failures) == ("closed", 0)
    metrics = (await (await http.get(tight.url + "/metrics")).content()).decode()
    assert 'ollama_proxy_backend_errors_total{reason="reset"} 1.0' in metrics


@pytest_twisted.ensureDeferred
async def test_a_burst_on_connections_the_backend_is_closing_does_not_open_the_breaker(
    fake_backend: FakeBackend, http: HTTPClient
) -> None:
    """Several pooled connections can be closing at once (each carried a stream, say): eight concurrent
    requests each closed unanswered once are all answered, and the breaker (threshold 3) stays closed."""
    running = await start_proxy(
        fake_backend, fake_backend.base_url, api_key="sk-test-secret", breaker_threshold=3, retries=1
    )
    try:
        await running.service.app.catalog.snapshot()
        fake_backend.close_first_attempts = True
        responses = await defer.gatherResults(
            [defer.ensureDeferred(http.post(running.url + "/api/chat", json=CHAT)) for _ in range(8)]
        )
        assert [r.code for r in responses] == [200] * 8
        for response in responses:
            await response.content()
        assert chats(fake_backend) == 16
        assert running.service.app.backend.breaker.state.value == "closed"
    finally:
        await running.service.stopService()

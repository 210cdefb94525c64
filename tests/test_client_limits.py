"""Clients that misbehave, and the limits that hold them: a request head or body trickled a byte at a time
(408 after ``client-header-timeout`` / ``client-body-timeout``), a client that stops reading (its connection
aborted after ``stall-timeout``), a request line or head too large (414, 431), and more connections than
``max-connections`` or ``max-connections-per-client`` allow (503).

Each is shown through the daemon on a real socket, with raw sockets for the clients no HTTP library plays,
and followed by a request that succeeds; the deadlines are also shown to the tick on the in-memory daemon's
simulated clock, where a byte can be sent every simulated second.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.defer import ensureDeferred

from ollama_proxy.site import CLOSE_LINGER
from tests.fake_backend import ChatScript, FakeBackend
from tests.support import (
    MemoryDaemon,
    RawConnection,
    RunningProxy,
    eventually,
    parse_response,
    serves_next_request,
    sleep,
    start_proxy,
)

MODEL = "Qwen/Qwen2.5-7B-Instruct"
CHAT = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": False}).encode()
# A request head a trickling client takes 13 s to send at a byte every 50 ms.
SLOW_HEAD = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Pad: %s\r\n\r\n" % (
    b"a" * 200
)


def head_for(path: str, body: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
        path.encode(),
        len(body),
    )


def openai_error(message: str) -> dict[str, object]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


@pytest_twisted.async_yield_fixture
async def guarded(fake_backend: FakeBackend) -> AsyncIterator[RunningProxy]:
    """A daemon that gives clients half a second for a head, a body, and a full send buffer."""
    running = await start_proxy(
        fake_backend,
        fake_backend.base_url,
        api_key="sk-test-secret",
        client_header_timeout=0.5,
        client_body_timeout=0.5,
        stall_timeout=0.5,
    )
    yield running
    await running.service.stopService()


# -- on real sockets --------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_clients_trickling_their_heads_get_a_408_in_time(
    guarded: RunningProxy, http: HTTPClient
) -> None:
    clients = [RawConnection(guarded.url) for _ in range(20)]
    started = time.monotonic()
    for client in clients:
        ensureDeferred(client.trickle(SLOW_HEAD, 0.05))
    await serves_next_request(guarded, http)  # meanwhile, and while they trickle, others are served
    answers = [await client.until_closed(within=3.0) for client in clients]
    assert time.monotonic() - started < 1.5  # a 0.5 s deadline, not Twisted's idle timeout or the 13 s
    for raw in answers:
        status, headers, body = parse_response(raw)
        assert (status, headers["connection"]) == (408, "close")
        assert json.loads(body) == {"error": "the request's headers did not arrive within 0.5 seconds"}
    for client in clients:
        client.close()
    await eventually(lambda: not guarded.service.site.connections, timeout=1.0)
    await serves_next_request(guarded, http)


@pytest_twisted.ensureDeferred
async def test_a_trickled_body_gets_a_408_in_its_family(guarded: RunningProxy, http: HTTPClient) -> None:
    client = RawConnection(guarded.url)
    client.send(head_for("/v1/chat/completions", CHAT))  # the whole head at once: the body is slow
    started = time.monotonic()
    ensureDeferred(client.trickle(CHAT, 0.05))
    status, _, body = parse_response(await client.until_closed(within=3.0))
    assert time.monotonic() - started < 1.5
    assert status == 408
    assert json.loads(body) == openai_error("the request body did not arrive within 0.5 seconds")
    client.close()
    await serves_next_request(guarded, http)


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_aborted_at_the_stall_timeout(
    guarded: RunningProxy, http: HTTPClient
) -> None:
    """A whole reply far larger than the socket buffers, to a client that reads none of it: the response is
    complete on the daemon's side, so no stream timer covers it; the connection goes at the stall timeout
    (before, Twisted's idle timeout closed it politely 60 s later, and aborted it 15 s after that)."""
    guarded.backend.script = ChatScript(content=["x" * (8 * 1024 * 1024)])
    site = guarded.service.site
    client = RawConnection(guarded.url, receive_buffer=4096)
    client.send(head_for("/api/chat", CHAT) + CHAT)
    asked = guarded.backend.requests
    await eventually(lambda: any(r.path.endswith("/chat/completions") for r in asked) and not site.active)
    answered = time.monotonic()
    assert site.connections  # the reply sits in the send buffer, unread
    await eventually(lambda: not site.connections, timeout=1.5)
    assert 0.4 < time.monotonic() - answered < 1.5
    await serves_next_request(guarded, http)
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_client_that_reads_slowly_is_not_cut_off(guarded: RunningProxy) -> None:
    """The same reply read slowly: it takes several stall timeouts to drain, but the client reads something
    in each, so it gets all of it."""
    guarded.backend.script = ChatScript(content=["x" * (8 * 1024 * 1024)])
    client = RawConnection(guarded.url, receive_buffer=65536)
    client.send(head_for("/api/chat", CHAT) + CHAT)
    started = time.monotonic()
    while not client.closed and time.monotonic() - started < 30:
        client.read(at_most=256 * 1024)
        await sleep(0.1)  # at most 2.5 MiB/s: the reply takes several stall timeouts to read
        head, _, body = client.received.partition(b"\r\n\r\n")
        if body and len(body) >= int(parse_response(head + b"\r\n\r\n")[1]["content-length"]):
            break
    status, _, body = parse_response(client.received)
    assert time.monotonic() - started > 2.0
    assert status == 200
    assert json.loads(body)["message"]["content"] == "x" * (8 * 1024 * 1024)
    client.close()


@pytest_twisted.ensureDeferred
async def test_a_stream_to_a_client_that_stops_reading_is_cut_with_its_backend_request(
    guarded: RunningProxy, http: HTTPClient
) -> None:
    guarded.backend.script = ChatScript(content=["x" * 65536], endless=True)
    stream = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).encode()
    client = RawConnection(guarded.url, receive_buffer=4096)
    client.send(head_for("/api/chat", stream) + stream)
    await eventually(lambda: guarded.backend.disconnects == 1, timeout=5.0)
    await eventually(lambda: not guarded.service.site.connections, timeout=0.5)
    await serves_next_request(guarded, http)
    client.close()


@pytest.mark.parametrize(
    ("head", "status", "error"),
    [
        pytest.param(
            b"GET /api/tags?q=%s HTTP/1.1\r\nHost: x\r\n\r\n" % (b"a" * 20000),
            414,
            {"error": "request line too long: the limit is 16384 bytes"},
            id="request-line",
        ),
        pytest.param(
            b"GET /v1/models?q=%s HTTP/1.1\r\nHost: x\r\n\r\n" % (b"a" * 20000),
            414,
            openai_error("request line too long: the limit is 16384 bytes"),
            id="openai-request-line",
        ),
        pytest.param(
            b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n" % (b"a" * 20000),
            431,
            {"error": "request headers too large: the limit is 16384 bytes"},
            id="one-header",
        ),
        pytest.param(
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\n%s\r\n"
            % b"".join(b"X-Pad-%03d: %s\r\n" % (n, b"a" * 50) for n in range(300)),
            431,
            openai_error("request headers too large: the limit is 16384 bytes"),
            id="many-headers",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_head_too_large_is_answered(
    guarded: RunningProxy, http: HTTPClient, head: bytes, status: int, error: object
) -> None:
    client = RawConnection(guarded.url)
    client.send(head)
    answer, _, body = parse_response(await client.until_closed(within=2.0))
    assert (answer, json.loads(body)) == (status, error)
    client.close()
    await serves_next_request(guarded, http)


@pytest_twisted.ensureDeferred
async def test_connections_over_the_limit_are_refused_at_once(
    fake_backend: FakeBackend, http: HTTPClient
) -> None:
    running = await start_proxy(
        fake_backend, fake_backend.base_url, api_key="sk-test-secret", max_connections=3
    )
    site = running.service.site
    try:
        held = [RawConnection(running.url) for _ in range(3)]
        await eventually(lambda: len(site.connections) == 3)
        extra = RawConnection(running.url)
        started = time.monotonic()
        status, headers, body = parse_response(await extra.until_closed(within=1.0))
        assert time.monotonic() - started < 0.5
        assert (status, headers["connection"]) == (503, "close")
        assert json.loads(body) == {"error": "too many connections: the server's limit is 3; try again later"}
        extra.close()
        held.pop().close()
        await eventually(lambda: len(site.connections) == 2)
        await serves_next_request(running, http)  # a connection again has room
        metrics = await (await http.get(running.url + "/metrics")).text()
        assert 'ollama_proxy_connections_refused_total{limit="max_connections"} 1.0' in metrics
        for connection in held:
            connection.close()
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_connections_over_the_limit_per_client_are_refused(
    fake_backend: FakeBackend, http: HTTPClient
) -> None:
    running = await start_proxy(
        fake_backend, fake_backend.base_url, api_key="sk-test-secret", max_connections_per_client=2
    )
    site = running.service.site
    try:
        held = [RawConnection(running.url) for _ in range(2)]
        await eventually(lambda: len(site.connections) == 2)
        extra = RawConnection(running.url)
        status, _, body = parse_response(await extra.until_closed(within=1.0))
        assert (status, json.loads(body)) == (
            503,
            {"error": "too many connections from 127.0.0.1: the limit is 2"},
        )
        extra.close()
        other = RawConnection(running.url, source="127.0.0.2")  # another client is not held back
        other.send(b"GET /api/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert parse_response(await other.until_closed(within=2.0))[0] == 200
        other.close()
        held.pop().close()
        await eventually(lambda: len(site.connections) == 1)
        await serves_next_request(running, http)
        held.pop().close()
    finally:
        await running.service.stopService()


# -- on the simulated clock -------------------------------------------------------------------------------


def test_a_request_head_must_be_in_within_the_header_timeout_of_its_first_byte() -> None:
    daemon = MemoryDaemon(client_header_timeout=10.0, keep_alive_timeout=5.0)
    connection = daemon.connect()
    daemon.advance(4.0)  # idle before its first byte: the keep-alive timeout's business, not this one's
    head = b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n"
    for byte in head[:10]:  # a byte a second: Twisted's idle timeout (5 s) never fires
        connection.write(bytes([byte]))
        daemon.advance(0.99)
    assert connection.received == b""
    daemon.advance(0.2)  # 10 s after the first byte
    status, _, body = parse_response(connection.received)
    assert (status, json.loads(body)) == (
        408,
        {"error": "the request's headers did not arrive within 10 seconds"},
    )
    daemon.advance(CLOSE_LINGER + 0.1)
    assert connection.closed
    assert daemon.request("GET", "/api/version").status == 200


def test_a_body_must_be_in_within_the_body_timeout_of_its_head() -> None:
    daemon = MemoryDaemon(client_body_timeout=10.0, keep_alive_timeout=5.0)
    connection = daemon.connect()
    connection.write(head_for("/api/chat", CHAT))
    for byte in CHAT[:9]:
        connection.write(bytes([byte]))
        daemon.advance(1.0)
    assert connection.received == b""
    daemon.advance(1.05)
    status, _, body = parse_response(connection.received)
    assert (status, json.loads(body)) == (408, {"error": "the request body did not arrive within 10 seconds"})
    assert daemon.request("POST", "/api/chat", data=CHAT).status == 200


def test_time_between_requests_is_the_keep_alive_timeout_and_gets_no_408() -> None:
    daemon = MemoryDaemon(client_header_timeout=2.0, keep_alive_timeout=30.0)
    connection = daemon.connect()
    for _ in range(2):
        connection.write(b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n")
        daemon.advance(0.1)
        assert parse_response(connection.received)[0] == 200
        connection.received = b""
        daemon.advance(20.0)  # idle, kept alive: longer than the header timeout, shorter than keep-alive
        assert not connection.closed
    daemon.advance(10.0)
    assert connection.closed
    assert connection.received == b""  # an idle connection is closed without an answer


def test_a_send_buffer_full_for_the_stall_timeout_aborts_the_connection() -> None:
    """What the transport does to a client that stops reading: it pauses the channel when its send buffer
    fills, and resumes it once the buffer has drained."""
    daemon = MemoryDaemon(stall_timeout=5.0)
    daemon.connect()
    (channel,) = daemon.service.site.connections
    channel.pauseProducing()
    daemon.advance(4.9)
    channel.resumeProducing()  # the client read in time
    daemon.advance(10.0)
    assert daemon.service.site.connections == {channel}
    channel.pauseProducing()
    daemon.advance(4.9)
    assert daemon.service.site.connections == {channel}
    daemon.advance(0.2)
    assert not daemon.service.site.connections


def test_connections_over_the_limit_per_client_are_refused_and_others_admitted() -> None:
    daemon = MemoryDaemon(max_connections_per_client=2)
    held = [daemon.connect("10.0.0.1") for _ in range(2)]
    refused = daemon.connect("10.0.0.1")
    status, _, body = parse_response(refused.received)
    assert (status, json.loads(body)) == (
        503,
        {"error": "too many connections from 10.0.0.1: the limit is 2"},
    )
    daemon.advance(CLOSE_LINGER + 0.1)
    assert refused.closed
    other = daemon.connect("10.0.0.2")
    assert (other.received, other.closed) == (b"", False)
    held[0].close()
    daemon.pump()
    again = daemon.connect("10.0.0.1")
    assert (again.received, again.closed) == (b"", False)
    assert len(daemon.service.site.connections) == 3

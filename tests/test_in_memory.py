"""The gate, the resource tree and every timer of the daemon, in memory on a simulated clock
(``tests/support.py``'s ``MemoryDaemon``): no socket, no wall-clock wait, so a cool-down of 15 s is
tested by advancing the clock 15 s and a timeout is shown to fire exactly when it should, not merely
eventually."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import StringTransport

from ollama_proxy.catalog import PROPS_TIMEOUT
from ollama_proxy.resilience import BreakerState
from ollama_proxy.translate.dialect import Dialect
from tests.fake_backend import ChatScript
from tests.support import MemoryDaemon

MODEL = "Qwen/Qwen2.5-7B-Instruct"
KEY = "sk-test-secret"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": False}
STREAM = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
OPENAI_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}


def daemon(**settings: Any) -> MemoryDaemon:
    """A daemon whose model list is already fetched, so the backend's next answers go to the request."""
    settings.setdefault("api_key", KEY)
    running = MemoryDaemon(**settings)
    running.settle(ensureDeferred(running.app.catalog.snapshot()))
    running.backend.requests.clear()
    return running


def chats(running: MemoryDaemon) -> int:
    return sum(1 for r in running.backend.requests if r.path.endswith("/chat/completions"))


# -- the gate ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/chat", {"error": "unauthorized: a valid bearer token is required"})],
)
def test_a_bad_key_on_the_ollama_api_gets_ollamas_shape(path: str, body: Any) -> None:
    running = daemon(client_keys=frozenset({"good"}))
    reply = running.request("POST", path, json_body=CHAT, headers={"Authorization": "Bearer bad"})
    assert (reply.status, reply.json()) == (401, body)
    assert reply.headers["www-authenticate"] == 'Bearer realm="ollama-proxy"'
    assert running.backend.requests == []


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions", "/v1/models", "/models"])
def test_a_bad_key_on_the_openai_api_gets_openais_shape(path: str) -> None:
    running = daemon(client_keys=frozenset({"good"}))
    reply = running.request("POST", path, json_body=OPENAI_CHAT, headers={"Authorization": "Bearer bad"})
    assert reply.status == 401
    assert reply.json() == {
        "error": {
            "message": "unauthorized: a valid bearer token is required",
            "type": "authentication_error",
            "param": None,
            "code": None,
        }
    }


def test_the_right_key_passes_and_probes_need_none() -> None:
    running = daemon(client_keys=frozenset({"good"}))
    assert (
        running.request("POST", "/api/chat", json_body=CHAT, headers={"Authorization": "Bearer good"}).status
        == 200
    )
    for probe in ("/", "/health", "/ready"):
        assert running.request("GET", probe).status == 200


def test_a_refused_origin_is_403_in_the_familys_shape() -> None:
    running = daemon()
    ollama = running.request("POST", "/api/chat", json_body=CHAT, headers={"Origin": "https://evil.example"})
    assert (ollama.status, ollama.json()) == (403, {"error": "origin https://evil.example is not allowed"})
    openai = running.request(
        "POST", "/v1/chat/completions", json_body=OPENAI_CHAT, headers={"Origin": "https://evil.example"}
    )
    assert openai.status == 403
    assert openai.json()["error"]["type"] == "permission_error"
    assert running.backend.requests == []


def test_a_preflight_is_answered_by_the_gate() -> None:
    running = daemon()
    reply = running.request(
        "OPTIONS",
        "/api/chat",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
    )
    assert (reply.status, reply.body) == (204, b"")
    assert reply.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in reply.headers["access-control-allow-methods"]


@pytest.mark.parametrize(("path", "openai"), [("/api/generate", False), ("/v1/completions", True)])
def test_a_body_over_the_limit_is_413_in_the_familys_shape(path: str, openai: bool) -> None:
    running = daemon(max_body=1024)
    reply = running.request("POST", path, data=b'{"model": "m", "prompt": "' + b"a" * 4096 + b'"}')
    assert reply.status == 413
    message = "request body too large: the limit is 1024 bytes"
    if openai:
        assert reply.json()["error"]["message"] == message
        assert reply.json()["error"]["type"] == "invalid_request_error"
    else:
        assert reply.json() == {"error": message}
    assert running.backend.requests == []


# -- the resource tree ---------------------------------------------------------------------------------


def test_unknown_paths_and_methods() -> None:
    running = daemon()
    missing = running.request("GET", "/api/nope")
    assert (missing.status, missing.json()) == (404, {"error": "404 page not found"})
    below = running.request("GET", "/api/tags/extra")
    assert below.status == 404
    wrong = running.request("GET", "/api/chat")
    assert (wrong.status, wrong.json()) == (405, {"error": "method GET not allowed"})
    assert wrong.headers["allow"] == "POST"
    assert running.request("HEAD", "/").status == 200
    assert running.request("GET", "/").body == b"Ollama is running"


# -- timers --------------------------------------------------------------------------------------------


def test_backend_headers_timeout_fires_at_its_bound_not_before() -> None:
    running = daemon(headers_timeout=30.0, retries=0)
    running.backend.script = ChatScript(header_delay=600.0)
    pending = running.send("POST", "/api/chat", json_body=CHAT)
    running.advance(29.9, step=1.0)
    assert not pending.called
    reply = running.settle(pending, within=1.0)
    assert (reply.status, reply.json()) == (504, {"error": "the backend did not answer within 30 seconds"})


def test_503s_are_retried_after_a_backoff_within_the_budget() -> None:
    running = daemon(retries=2)
    running.backend.fail_next(503, times=2)
    reply = running.request("POST", "/api/chat", json_body=CHAT, within=30.0)
    assert reply.status == 200
    assert reply.json()["message"]["content"] == "Hello!"
    assert chats(running) == 3


def test_retry_after_beyond_the_budget_is_not_waited_for() -> None:
    running = daemon(retries=2, retry_budget=2.0)
    running.backend.fail_next(429, headers={"Retry-After": "30"})
    reply = running.request("POST", "/api/chat", json_body=CHAT)
    assert reply.status == 429
    assert chats(running) == 1
    running.backend.fail_next(429, headers={"Retry-After": "1"})
    pending = running.send("POST", "/api/chat", json_body=CHAT)
    running.advance(0.9)
    assert not pending.called  # Retry-After is honoured: the retry waits its second
    assert running.settle(pending).status == 200


def test_failures_open_the_breaker_and_a_probe_after_the_cool_down_closes_it() -> None:
    running = daemon(retries=0, breaker_threshold=3, breaker_cooldown=15.0)
    page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    running.backend.fail_next(502, page, times=3, headers={"Content-Type": "text/html"})
    for _ in range(3):
        reply = running.request("POST", "/api/chat", json_body=CHAT)
        assert (reply.status, reply.json()) == (502, {"error": "backend returned HTTP 502"})
    breaker = running.app.backend.breaker
    assert breaker.state.value == "open"
    before = chats(running)
    paused = running.request("POST", "/api/chat", json_body=CHAT)
    assert paused.status == 503
    assert paused.json()["error"].startswith(
        "the backend is failing (3 consecutive errors); requests are paused"
    )
    assert chats(running) == before  # answered without touching the backend
    running.advance(14.0, step=1.0)
    assert running.request("POST", "/api/chat", json_body=CHAT).status == 503
    running.advance(1.0)
    reply = running.request("POST", "/api/chat", json_body=CHAT)
    assert (reply.status, reply.json()["message"]["content"]) == (200, "Hello!")
    assert breaker.state is BreakerState.CLOSED


def test_a_dead_backend_is_502_then_503_and_recovery_closes_the_breaker() -> None:
    running = daemon(retries=2, breaker_threshold=3, breaker_cooldown=5.0)
    running.backend_down()
    reply = running.request("POST", "/api/chat", json_body=CHAT, within=30.0)
    assert (reply.status, reply.json()) == (502, {"error": "cannot reach the backend: connection refused"})
    reply = running.request("POST", "/api/chat", json_body=CHAT)
    assert reply.status == 503  # three attempts, three consecutive failures: open
    running.backend_down(False)
    running.advance(5.0, step=1.0)
    assert running.request("POST", "/api/chat", json_body=CHAT).status == 200
    assert running.app.backend.breaker.state is BreakerState.CLOSED


def test_readiness_follows_the_backend_and_its_breaker() -> None:
    running = daemon(models_ttl=10.0, breaker_threshold=2, breaker_cooldown=5.0, retries=0)
    ready = running.request("GET", "/ready")
    assert (ready.status, ready.json()) == (200, {"status": "ready", "models": 2})
    running.backend_down()
    running.advance(10.0, step=1.0)  # the cached list is now stale
    ready = running.request("GET", "/ready")
    assert ready.status == 503
    assert ready.json()["error"].startswith("backend /models failed: cannot reach the backend")
    running.request("GET", "/ready")  # the second failure opens the breaker
    ready = running.request("GET", "/ready")
    assert (ready.status, ready.json()["error"][:20]) == (503, "circuit breaker open")
    assert running.request("GET", "/health").status == 200  # alive all the while
    running.backend_down(False)
    running.advance(5.0, step=1.0)
    ready = running.request("GET", "/ready")
    assert (ready.status, ready.json()) == (200, {"status": "ready", "models": 2})


def test_a_full_queue_is_503_at_once_and_the_queue_drains() -> None:
    running = daemon(max_concurrent=1, max_queue=1)
    running.backend.script = ChatScript(content=["a", "b"], event_delay=1.0)
    first = running.send("POST", "/api/chat", json_body=STREAM)
    second = running.send("POST", "/api/chat", json_body=STREAM)
    running.pump()
    full = running.request("POST", "/api/chat", json_body=STREAM, within=0.0)
    assert (full.status, full.json()) == (
        503,
        {"error": "server busy, please try again.  maximum pending requests exceeded"},
    )
    assert running.settle(first, within=30.0).status == 200
    assert not second.called  # it got the slot only when the first stream ended
    assert running.settle(second, within=30.0).lines()[-1]["done"] is True


def test_a_backend_stream_that_stays_silent_is_ended_at_the_idle_timeout() -> None:
    running = daemon(idle_timeout=20.0)
    running.backend.script = ChatScript(content=["a", "b", "c"], event_delay=60.0)
    pending = running.send("POST", "/api/chat", json_body=STREAM)
    running.advance(19.0, step=1.0)
    assert not pending.called
    reply = running.settle(pending, within=2.0)
    # Nothing had reached the client yet, so the timeout has a status of its own.
    assert (reply.status, reply.json()) == (504, {"error": "the backend sent nothing for 20 seconds"})


def test_api_tags_follows_every_refresh_and_model_map_reload() -> None:
    """Its bytes are made once per model list: a new list or a new map must still show."""
    running = daemon(models_ttl=5.0)
    names = lambda: [m["name"] for m in running.request("GET", "/api/tags").json()["models"]]  # noqa: E731
    assert names() == [MODEL + ":latest", "BAAI/bge-small-en-v1.5:latest"]
    running.app.catalog.set_model_map({"qwen": MODEL})
    assert names()[-1] == "qwen:latest"
    running.backend.models.append("new/model")
    assert "new/model:latest" not in names()  # the cached list is still fresh
    running.advance(5.0, step=1.0)
    assert "new/model:latest" in names()


# -- llama.cpp's /props ----------------------------------------------------------------------------


def test_a_props_that_never_answers_holds_the_model_list_for_its_bound_only() -> None:
    running = MemoryDaemon("llamacpp", dialect=Dialect.LLAMACPP)
    running.backend.props_delay = 3600.0
    listed = running.send("GET", "/api/tags")
    running.advance(PROPS_TIMEOUT - 0.1)
    assert not listed.called
    running.advance(0.2)
    reply = running.settle(listed, within=0.0)
    assert reply.status == 200
    assert [m["name"] for m in reply.json()["models"]] == ["smollm2:latest"]
    # Described by /models alone: the default tools, not /props' "no tools".
    assert reply.json()["models"][0]["capabilities"] == ["completion", "tools"]
    assert running.backend.disconnects == 1  # the /props request was given up, not left open


def test_a_keep_alive_connection_asks_for_its_own_address_once() -> None:
    """Twisted's ``Request`` reads the connection's local address for every request; the channel asks the
    transport (a ``getsockname``) once."""
    daemon = MemoryDaemon()
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 11434), peerAddress=IPv4Address("TCP", "10.0.0.1", 40000)
    )
    asked: list[Any] = []
    own_address = transport.getHost

    def counted() -> Any:
        asked.append(None)
        return own_address()

    transport.getHost = counted  # type: ignore[method-assign]
    channel = daemon.service.site.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    for _ in range(3):
        channel.dataReceived(b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n")
        daemon.pump()
    assert transport.value().count(b"HTTP/1.1 200 OK") == 3
    assert len(asked) == 1
    assert channel.getHost() == IPv4Address("TCP", "127.0.0.1", 11434)

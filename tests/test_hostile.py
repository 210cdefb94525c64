"""Hostile backends and hostile clients, through a real daemon: every wait has a bound, and no client can
poison or wedge the daemon for the others.  Each test names the defect it guards against; each failed on
the daemon before its fix.  Where the point is exactly when a bound fires, the same fault is also driven
in memory on a simulated clock (``MemoryDaemon``)."""

from __future__ import annotations

import json
import time
from typing import Any

import ollama
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.defer import ensureDeferred

from ollama_proxy.resilience import BreakerState
from tests.fake_backend import FakeBackend
from tests.support import MemoryDaemon, RunningProxy, in_thread, read_json, start_proxy

MODEL = "Qwen/Qwen2.5-7B-Instruct"
OTHER = "BAAI/bge-small-en-v1.5"  # the fake's second model, served by the same backend
KEY = "sk-test-secret"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": False}


async def _timed_post(http: HTTPClient, url: str, **kwargs: Any) -> tuple[int, Any, float]:
    started = time.monotonic()
    response = await http.post(url, **kwargs)
    body = await read_json(response)
    return response.code, body, time.monotonic() - started


# -- a backend that sends headers and stalls ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_stalled_model_list_does_not_wedge_the_daemon(
    fake_backend: FakeBackend, http: HTTPClient
) -> None:
    running = await start_proxy(
        fake_backend, fake_backend.base_url, api_key=KEY, models_timeout=0.5, retries=0
    )
    try:
        fake_backend.stall_next("/v1/models")
        code, body, took = await _timed_post(http, running.url + "/api/chat", json=CHAT)
        assert (code, body) == (504, {"error": "the backend's /models took longer than 0.5 seconds"})
        assert took < 3.0
        # The backend is healthy again: the very next request is served, nothing is left waiting.
        code, body, _ = await _timed_post(http, running.url + "/api/chat", json=CHAT)
        assert (code, body["message"]["content"]) == (200, "Hello!")
        ready = await http.get(running.url + "/ready")
        assert ready.code == 200
    finally:
        await running.service.stopService()


def test_a_stalled_refresh_keeps_the_previous_list_and_bounds_every_wait() -> None:
    running = MemoryDaemon(api_key=KEY, models_timeout=10.0, models_ttl=5.0)
    assert running.request("GET", "/api/tags").status == 200
    running.backend.stall_next("/v1/models")
    running.advance(6.0, step=1.0)  # the list is stale: the next lookup refreshes it, and that stalls
    waiting = running.send("GET", "/api/tags")
    running.advance(9.5, step=0.5)
    assert not waiting.called
    running.advance(1.0)
    # The refresh gave up at its bound, kept the list it had, and the client got that list.
    tags = running.settle(waiting)
    assert tags.status == 200
    assert [m["name"] for m in tags.json()["models"]] == [
        "Qwen/Qwen2.5-7B-Instruct:latest",
        OTHER + ":latest",
    ]
    assert "took longer than 10 seconds" in running.app.catalog.errors[running.app.backend]
    # The backend answers again: the next refresh replaces the error.
    running.request("GET", "/ready")
    running.settle(ensureDeferred(running.app.catalog.snapshot(max_age=0)))
    assert running.app.catalog.errors == {}


@pytest_twisted.ensureDeferred
async def test_a_whole_reply_that_stalls_after_its_headers_is_cut_at_the_idle_timeout(
    fake_backend: FakeBackend, http: HTTPClient
) -> None:
    running = await start_proxy(fake_backend, fake_backend.base_url, api_key=KEY, idle_timeout=0.5, retries=0)
    try:
        fake_backend.stall_next("/v1/chat/completions")
        code, body, took = await _timed_post(http, running.url + "/api/chat", json=CHAT)
        assert (code, body) == (504, {"error": "the backend sent nothing for 0.5 seconds"})
        assert took < 3.0
        code, body, _ = await _timed_post(http, running.url + "/api/chat", json=CHAT)
        assert code == 200
    finally:
        await running.service.stopService()


def test_a_whole_reply_is_bounded_in_all_even_when_bytes_trickle() -> None:
    """Idle between bytes is not the only bound: the whole body may take no longer than the headers
    could have (``--headers-timeout``)."""
    running = MemoryDaemon(api_key=KEY, idle_timeout=5.0, headers_timeout=20.0, retries=0)
    assert running.request("GET", "/api/tags").status == 200
    running.backend.stall_next("/v1/chat/completions")
    pending = running.send("POST", "/api/chat", json_body=CHAT)
    running.advance(0.5)
    (stalled,) = running.backend.stalled
    for _ in range(30):  # a byte every 0.9 s: never idle for 5 s
        stalled.write(b" ")
        running.advance(0.9)
        if pending.called:
            break
    reply = running.settle(pending)
    assert (reply.status, reply.json()) == (504, {"error": "the backend's reply took longer than 20 seconds"})


# -- one client's input poisoning shared state -----------------------------------------------------------


@pytest.mark.parametrize(
    ("keep_alive", "status"),
    [
        (1e300, 200),  # kept "for ever": a date that /api/ps can still print
        (10**400, 200),
        (-(10**400), 200),
        ("2562047h", 200),  # within Go's 292 years
        ("2562048h", 400),  # beyond them: Go refuses it, so do we
        ("9" * 200 + "s", 400),
        ("1" * 70, 400),
        ("NaN", 400),
    ],
)
@pytest_twisted.ensureDeferred
async def test_keep_alive_extremes_never_break_api_ps(
    proxy: RunningProxy, http: HTTPClient, keep_alive: Any, status: int
) -> None:
    body = json.dumps({"model": "qwen", "messages": [], "keep_alive": keep_alive}).encode()
    response = await http.post(proxy.url + "/api/chat", data=body)
    assert response.code == status, await response.text()
    if status == 400:
        assert isinstance((await read_json(response))["error"], str)
    ps = await http.get(proxy.url + "/api/ps")
    assert ps.code == 200
    listed = await in_thread(lambda: ollama.Client(host=proxy.url).ps())  # the SDK parses the dates
    assert [m.model for m in listed.models] == (["qwen:latest"] if status == 200 else [])


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
@pytest_twisted.ensureDeferred
async def test_non_finite_numbers_are_refused_not_forwarded(
    proxy: RunningProxy, http: HTTPClient, path: str
) -> None:
    body = (
        b'{"model": "qwen", "messages": [{"role": "user", "content": "x"}], "options": {"temperature": NaN},'
    )
    body += b' "temperature": Infinity, "stream": false}'
    response = await http.post(proxy.url + path, data=body)
    assert response.code == 400
    error = (await read_json(response))["error"]
    message = error if isinstance(error, str) else error["message"]
    assert "is not a JSON number" in message
    assert not [r for r in proxy.backend.requests if r.path.endswith("/chat/completions")]


# -- the circuit breaker measures the backend, not the requests ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_one_broken_model_cannot_take_the_backend_away_from_others(
    fake_backend: FakeBackend, http: HTTPClient
) -> None:
    running = await start_proxy(
        fake_backend, fake_backend.base_url, api_key=KEY, retries=0, breaker_threshold=3, breaker_cooldown=60
    )
    try:
        fake_backend.fail_model(MODEL, 500)
        for _ in range(3):
            response = await http.post(running.url + "/api/chat", json=CHAT)
            assert response.code == 502
        response = await http.post(running.url + "/api/chat", json=CHAT)
        assert response.code == 503
        assert (await read_json(response))["error"].startswith(f"the model {MODEL} is failing (3 consecutive")
        # The same backend's other model, and the backend itself, are untouched.
        response = await http.post(running.url + "/api/embed", json={"model": OTHER, "input": "hi"})
        assert response.code == 200
        assert running.service.app.backend.breaker.state is BreakerState.CLOSED
        assert (await http.get(running.url + "/ready")).code == 200
    finally:
        await running.service.stopService()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, None),
        (422, None),
        (404, None),
        (429, None),
        # A server error whose body says the request was invalid is the request's fault too.
        (500, {"error": {"message": "invalid tool schema", "type": "invalid_request_error", "code": 500}}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_answers_caused_by_the_request_never_open_a_breaker(
    fake_backend: FakeBackend, http: HTTPClient, status: int, body: Any
) -> None:
    running = await start_proxy(
        fake_backend, fake_backend.base_url, api_key=KEY, retries=0, breaker_threshold=2
    )
    try:
        assert (await http.post(running.url + "/api/chat", json=CHAT)).code == 200  # the list is fetched
        fake_backend.fail_next(status, body, times=5)
        for _ in range(5):
            assert (await http.post(running.url + "/api/chat", json=CHAT)).code < 503
        response = await http.post(running.url + "/api/chat", json=CHAT)
        assert response.code == 200
        backend = running.service.app.backend
        assert backend.breaker.state is BreakerState.CLOSED
        assert backend.model_breakers.open_models() == []
    finally:
        await running.service.stopService()


# -- replies the daemon cannot use, paths it must not forward ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_backend_reply_nested_too_deep_is_a_502(proxy: RunningProxy, http: HTTPClient) -> None:
    deep = "[" * 5000 + "]" * 5000
    proxy.backend.fail_next(200, deep, headers={"Content-Type": "application/json"})
    response = await http.post(proxy.url + "/api/chat", json={**CHAT, "model": "qwen"})
    assert response.code == 502
    assert (await read_json(response))["error"].startswith("backend sent a reply the daemon cannot use")


@pytest.mark.parametrize(
    "path", [b"/v1/..%2F..%2Fadmin", b"/v1/models/..%2f..%2fsecret", b"/v1/%2e%2e/x", b"/v1/a/..%5Cb"]
)
@pytest_twisted.ensureDeferred
async def test_encoded_dot_segments_are_refused(proxy: RunningProxy, http: HTTPClient, path: bytes) -> None:
    before = len(proxy.backend.requests)
    response = await http.get(proxy.url.encode() + path)
    assert response.code == 400
    assert (await read_json(response))["error"]["message"] == "the request path has a dot segment"
    assert len(proxy.backend.requests) == before


@pytest.mark.parametrize("path", ["/api/chat", "/api/show", "/v1/chat/completions"])
@pytest_twisted.ensureDeferred
async def test_a_body_of_countless_tiny_values_is_refused_before_it_is_parsed(
    proxy: RunningProxy, http: HTTPClient, path: str
) -> None:
    """A value costs Python 30 to 70 bytes: 3 MiB of ``{},`` would cost the daemon some 80 MiB, a 16 MiB
    one 443 MiB (``bench/body_memory.py``); past a million values a body is refused unread."""
    body = b'{"model": "qwen", "messages": [], "x": [' + b"{}," * 1_000_000 + b"{}]}"
    response = await http.post(proxy.url + path, data=body)
    assert response.code == 400
    error = (await read_json(response))["error"]
    assert "more than 1000000 values" in (error if isinstance(error, str) else error["message"])
    # Commas inside strings are text, not values: a prompt full of them is read as usual.
    csv = ",".join(["1"] * 1_200_000)
    prompt = {"model": "qwen", "messages": [{"role": "user", "content": csv}], "stream": False}
    response = await http.post(proxy.url + "/api/chat", json=prompt)
    assert response.code == 200


def test_a_client_that_leaves_during_a_model_list_refresh_does_not_fail_the_others() -> None:
    """The refresh one request starts is shared by everyone who needs the list meanwhile; the first
    client leaving must cancel only its own wait (it used to cancel the fetch, and every other waiter
    got a 500)."""
    running = MemoryDaemon(api_key=KEY)
    catalog = running.app.catalog
    running.backend.stall_next("/v1/models")  # the list comes when the test says so
    leaving = ensureDeferred(catalog.snapshot())
    staying = ensureDeferred(catalog.snapshot())
    running.pump()
    leaving.cancel()  # what the first client's disconnect does to its handler
    leaving.addErrback(lambda failure: None)  # its own CancelledError
    (answering,) = running.backend.stalled
    models = [{"id": name, "object": "model", "created": 1, "owned_by": "vllm"} for name in (MODEL, OTHER)]
    answering.write(json.dumps({"object": "list", "data": models})[1:].encode())  # after the "{" sent
    answering.finish()
    snapshot = running.settle(staying)
    assert [info.id for info in snapshot.models] == [MODEL, OTHER]

"""Request ids, the access event, Prometheus metrics and health/readiness, end to end."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import pytest_twisted
import treq
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from treq.client import HTTPClient
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher, textFileLogObserver
from twisted.scripts._twistd_unix import ServerOptions
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from zope.interface import implementer

from ollama_proxy.logs import event_as_json, json_observer, text_observer
from ollama_proxy.metrics import endpoint_label, model_label
from tests.fake_backend import ChatScript
from tests.support import (
    STREAM_BODY,
    Child,
    RunningProxy,
    StreamingClient,
    child_env,
    connect_client,
    eventually,
    reactor,
)
from tests.twistd_measured import twistd_command

MODEL = "Qwen/Qwen2.5-7B-Instruct"


@pytest.fixture
def access_events() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "ollama_proxy.access":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


async def scrape(http: HTTPClient, url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await http.get(url + "/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest_twisted.ensureDeferred
async def test_one_chat_moves_the_metrics(proxy: RunningProxy, http: HTTPClient) -> None:
    body = {"model": "qwen", "messages": [{"role": "user", "content": "Hi"}]}
    response = await http.post(proxy.url + "/api/chat", json=body)
    await response.content()
    samples = await scrape(http, proxy.url)
    chat = (("api", "ollama"), ("endpoint", "/api/chat"), ("method", "POST"), ("status", "200"))
    assert samples[("ollama_proxy_requests_total", chat)] == 1
    model = (("model", MODEL),)
    assert samples[("ollama_proxy_prompt_tokens_total", model)] == 12
    assert samples[("ollama_proxy_completion_tokens_total", model)] == 3
    ttft = (("endpoint", "/api/chat"), ("model", MODEL))
    assert samples[("ollama_proxy_time_to_first_token_seconds_count", ttft)] == 1
    assert samples[("ollama_proxy_tokens_per_second_count", model)] == 1
    assert samples[("ollama_proxy_backend_requests_total", (("status", "200"),))] == 2  # /models and chat
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert ("ollama_proxy_process_threads", ()) in samples
    # The scrape itself is the one request in flight.
    assert samples[("ollama_proxy_requests_in_flight", ())] == 1
    assert samples[("ollama_proxy_open_streams", ())] == 0
    breaker = (("backend", proxy.backend.base_url),)
    assert samples[("ollama_proxy_backend_breaker_state", breaker)] == 0


@pytest_twisted.ensureDeferred
async def test_unknown_models_fold_into_one_label(proxy: RunningProxy, http: HTTPClient) -> None:
    await http.get(proxy.url + "/api/tags")
    response = await http.post(
        proxy.url + "/v1/chat/completions", json={"model": "made-up-123", "messages": []}
    )
    await response.content()
    assert response.code == 404
    text = await (await http.get(proxy.url + "/metrics")).text()
    assert "made-up-123" not in text
    # A 404 records no per-model series at all, so the fold itself is checked directly.
    assert model_label(lambda _: False, "made-up-123") == "unknown"
    assert model_label(lambda model: model == "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct") == (
        "Qwen/Qwen2.5-7B-Instruct"
    )


@pytest.mark.parametrize(
    ("path", "label"),
    [
        (b"/api/chat", "/api/chat"),
        (b"/api/chat/", "/api/chat"),
        (b"/api/nope", "other"),
        (b"/v1/models/a/b", "/v1/models"),
        (b"/chat/completions?x=1", "/v1/chat/completions"),
        (b"/v1/files", "/v1/other"),
        (b"/v1/messages?beta=true", "/v1/messages"),
        (b"/messages/count_tokens", "/v1/messages/count_tokens"),
        (b"/v1/messagesx", "/v1/other"),
        (b"/responses", "/v1/responses"),
        (b"/", "/"),
        (b"/random/" + b"x" * 100, "other"),
    ],
)
def test_endpoint_labels_are_bounded(path: bytes, label: str) -> None:
    assert endpoint_label(path) == label


@pytest_twisted.ensureDeferred
async def test_request_id_round_trip(
    proxy: RunningProxy, http: HTTPClient, access_events: list[LogEvent]
) -> None:
    headers = Headers({"X-Request-ID": ["abc"]})
    body = {"model": "qwen", "messages": [{"role": "user", "content": "Hi"}], "stream": False}
    response = await http.post(proxy.url + "/api/chat", json=body, headers=headers)
    await response.content()
    assert response.headers.getRawHeaders("x-request-id") == ["abc"]
    chat_call = next(r for r in proxy.backend.requests if r.path.endswith("/chat/completions"))
    assert chat_call.headers["x-request-id"] == "abc"
    (event,) = [e for e in access_events if e["path"] == "/api/chat"]
    assert event["request_id"] == "abc"
    assert (event["model"], event["backend_model"]) == ("qwen", MODEL)
    assert (event["prompt_tokens"], event["completion_tokens"], event["status"]) == (12, 3, 200)
    assert event["outcome"] == "completed"
    record = json.loads(event_as_json(event))
    assert record["ns"] == "ollama_proxy.access"
    assert record["request_id"] == "abc"
    assert record["msg"].startswith("abc ")
    # A request id that could forge log lines is replaced.
    response = await http.get(proxy.url + "/api/version", headers=Headers({"X-Request-ID": ["a b\nc"]}))
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers.getRawHeaders("x-request-id")[0])


@pytest_twisted.ensureDeferred
async def test_the_api_family_labels_the_metrics_and_the_access_events(
    proxy: RunningProxy, http: HTTPClient, access_events: list[LogEvent]
) -> None:
    user = [{"role": "user", "content": "Hi"}]
    calls = {
        "/api/chat": {"model": "qwen", "messages": user, "stream": False},
        "/v1/chat/completions": {"model": "qwen", "messages": user},
        "/v1/messages": {"model": "qwen", "max_tokens": 8, "messages": user},
        "/v1/responses": {"model": "qwen", "input": "Hi"},
    }
    for path, body in calls.items():
        response = await http.post(proxy.url + path, json=body)
        assert response.code == 200
        await response.content()
    samples = await scrape(http, proxy.url)
    for api, path in zip(("ollama", "openai", "anthropic", "responses"), calls, strict=True):
        labels = (("api", api), ("endpoint", path), ("method", "POST"), ("status", "200"))
        assert samples[("ollama_proxy_requests_total", labels)] == 1
        (event,) = [e for e in access_events if e["path"] == path]
        assert event["api"] == api
        if api != "openai":  # the pass-through relays the backend's bytes without reading them
            assert (event["prompt_tokens"], event["completion_tokens"]) == (12, 3)
    assert samples[("ollama_proxy_prompt_tokens_total", (("model", MODEL),))] == 3 * 12


@pytest_twisted.ensureDeferred
async def test_a_disconnected_stream_still_gets_its_access_event(
    proxy: RunningProxy, access_events: list[LogEvent]
) -> None:
    proxy.backend.script = ChatScript(content=["tok "], endless=True, event_delay=0.005)
    client = await connect_client(proxy.url, StreamingClient(STREAM_BODY, read=True))
    await client.first_data
    assert client.transport is not None
    client.transport.loseConnection()
    await eventually(lambda: any(e["outcome"] == "client_gone" for e in access_events))
    (event,) = [e for e in access_events if e["path"] == "/api/chat"]
    assert event["status"] == 499  # nginx's "client closed request", not the 200 that went out first
    assert event["ttft_ms"] is not None
    assert event["bytes_out"] > 0
    requests = proxy.service.app.metrics.requests
    assert requests.labels("ollama", "/api/chat", "POST", "499")._value.get() == 1


# Around Berlin's spring change (2026-03-29 01:00 UTC) and its autumn one (2026-10-25 01:00 UTC), where the
# zone's offset in each line changes between two seconds.
_DST_CHANGES = (1_774_746_000.0, 1_792_890_000.0)


@contextmanager
def berlin_time() -> Iterator[None]:
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


def _lines(observer_for: Any, times: Sequence[float | None]) -> str:
    stream = io.StringIO()
    observer = observer_for(stream)
    for index, when in enumerate(times):
        observer(
            {"log_format": "line {n}", "n": index, "log_time": when, "log_namespace": "t", "log_level": None}
        )
    return stream.getvalue()


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.sampled_from(_DST_CHANGES).flatmap(lambda t: st.floats(t - 3, t + 3)),
            st.floats(1_600_000_000, 1_900_000_000),
            st.floats(-3, 3),  # either side of 1970, where a second is not what int() rounds toward
            # Within a microsecond of a second's end, which datetime rounds up into the next second.
            st.sampled_from(_DST_CHANGES).flatmap(lambda t: st.sampled_from([t - 2.4e-7, t - 8e-7])),
        ),
        max_size=30,
    )
)
def test_the_text_lines_are_twistds_own_whatever_the_times(times: list[float | None]) -> None:
    """The observer keeps each second's timestamp: its lines must still be exactly twistd's, line by line,
    for times in and out of order, within one second and across a change of the zone's offset."""
    with berlin_time():
        assert _lines(text_observer, times) == _lines(textFileLogObserver, times)


@pytest.mark.parametrize("second", [1_774_746_000, 1_800_000_000, 0])
def test_a_time_a_fraction_of_a_microsecond_before_a_second_prints_as_the_next(second: int) -> None:
    # datetime rounds to the microsecond: the second of such a time is not the one it falls in.
    times = [second - 0.5, second - 2.4e-7, second - 0.25, second + 0.1]
    with berlin_time():
        assert _lines(text_observer, times) == _lines(textFileLogObserver, times)


def test_the_text_lines_across_a_change_of_offset() -> None:
    spring = _DST_CHANGES[0]
    with berlin_time():
        lines = _lines(text_observer, [spring - 0.5, spring - 0.25, spring, spring + 0.75]).splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == [
        "2026-03-29T01:59:59+0100",
        "2026-03-29T01:59:59+0100",
        "2026-03-29T03:00:00+0200",
        "2026-03-29T03:00:00+0200",
    ]


def _twistd_observer(*arguments: str, daemon: tuple[str, ...] = ()) -> Any:
    options = ServerOptions()
    options.parseOptions([*arguments, "ollamaproxy", "--backend", "http://127.0.0.1:1/v1", *daemon])
    return options["logger"]


def test_twistd_prints_the_daemons_lines_where_it_would_print_its_own() -> None:
    assert _twistd_observer("-n") is text_observer
    assert _twistd_observer("-n", "--logfile", "-") is text_observer
    # Elsewhere twistd's own observer writes them: its log file (rotated on SIGUSR1) or syslog.
    assert _twistd_observer("-n", "--logfile", "daemon.log") is None
    assert _twistd_observer("--logfile", "daemon.log") is None
    assert _twistd_observer("-n", "--syslog") is None
    # An operator's own observer is theirs to keep.
    assert _twistd_observer("-n", "--logger", "twisted.logger.textFileLogObserver") is textFileLogObserver
    assert _twistd_observer("-n", daemon=("--log-format", "json")) is json_observer


def test_twistd_log_format_json_prints_one_object_per_line() -> None:
    backend = Child([sys.executable, "-m", "tests.fake_backend", "--port", "0"], child_env())
    try:
        backend_url = backend.wait_for(r"listening on (\S+)").group(1)
        daemon = Child(
            twistd_command(
                "--backend", backend_url, "--listen", "tcp:0:interface=127.0.0.1", "--log-format", "json"
            ),
            child_env(OPENAI_API_KEY="sk-json-secret"),
        )
        try:
            match = daemon.wait_for(r'"msg":"ollama-proxy listening on (http://[^"]+)"')
            import urllib.request

            request = urllib.request.Request(  # noqa: S310 -- a loopback http URL read from the daemon
                match.group(1) + "/api/version", headers={"X-Request-ID": "abc"}
            )
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
                assert answer.headers["X-Request-ID"] == "abc"
            line = daemon.wait_for(r'"ns":"ollama_proxy.access"')
            record: dict[str, Any] = json.loads(line.string)
            assert record["request_id"] == "abc"
            assert (record["path"], record["status"], record["outcome"]) == ("/api/version", 200, "completed")
        finally:
            daemon.stop()
        output = "".join(daemon.seen) + "".join(daemon.lines.queue)
        assert all(json.loads(text) for text in output.splitlines() if text.strip())
        assert "sk-json-secret" not in output
    finally:
        backend.stop()


@pytest_twisted.ensureDeferred
async def test_one_log_line_per_request_and_none_per_connection(proxy: RunningProxy) -> None:
    """Twisted's client factories announce every backend connection at info ("Starting factory"); an
    operator should see one access line per request and nothing per connection."""
    seen: list[LogEvent] = []

    @implementer(ILogObserver)
    def observer(event: LogEvent) -> None:
        seen.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        body = {"model": "qwen", "messages": [{"role": "user", "content": "Hi"}], "stream": False}
        for _ in range(3):
            # A fresh connection to the daemon each time; the daemon's own backend connections are new too
            # the first time.
            pool = HTTPConnectionPool(reactor(), persistent=False)
            client = treq.client.HTTPClient(Agent(reactor(), pool=pool))
            response = await client.post(proxy.url + "/api/chat", json=body)
            await response.content()
        await proxy.service.app.backend.close()  # the pooled backend connections close: no line either
    finally:
        globalLogPublisher.removeObserver(observer)
    backend_port = proxy.backend.base_url.rsplit(":", 1)[1].split("/")[0]
    texts = [formatEvent(event) for event in seen]
    # (The test's own client connections to the daemon announce themselves; the daemon's do not.)
    assert [t for t in texts if "factory" in t.lower() and f":{backend_port}>" in t] == []
    assert [t for t in texts if "factory" in t.lower() and f":{proxy.url.rsplit(':', 1)[1]}>" in t]
    assert len([e for e in seen if e.get("log_namespace") == "ollama_proxy.access"]) == 3

"""Secrets kept out of everything the daemon says, and log lines that a client cannot forge.

End to end: a real daemon in front of a hostile backend (``FakeBackend.echo_credentials``, a backend that
quotes the credentials it refused: the header as it came, decoded, and in OpenAI's partial forms), with
the backend's credentials in its URL (sent as Basic) or as a key (sent as Bearer).  Nothing the client
receives, nothing logged (rendered as twistd's text and as ``--log-format json``) and nothing in
``/metrics`` holds any form of them.  Then the scrubber's rules on their own, and the log escaping.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from twisted.web.http_headers import Headers
from zope.interface import implementer

from ollama_proxy.config import BackendConfig, ProxyConfig, load_client_keys, parse_backend_url
from ollama_proxy.handlers.meta import VersionResource
from ollama_proxy.logs import escape_controls, event_as_json, untrusted
from ollama_proxy.redact import Scrubber, backend_secrets, redact_url
from ollama_proxy.service import ProxyService
from ollama_proxy.site import ProxyRequest
from tests.fake_backend import ChatScript, FakeBackend
from tests.support import MemoryDaemon, RunningProxy, eventually, reactor, read_json, start_proxy

MODEL = "Qwen/Qwen2.5-7B-Instruct"
KEY = "sk-secret-Hq2Lm9Xv4Tp7Wd3XYZ"
USER, PASSWORD = "deploy", "hunter-Qx7Jp2Vb"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
CLIENT_KEY = "ck-Rf5Gh8Jk2Lw9"
AUTHORIZED = Headers({"Authorization": [f"Bearer {CLIENT_KEY}"]})
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": False}
STREAM = {**CHAT, "stream": True}


def forms(secret: str) -> list[str]:
    """What may not appear anywhere: the secret, and the first and last characters any partial form of
    it shows (the hostile backend prints 3 to 8 of each)."""
    return [secret, secret[:6], secret[-3:]]


FORBIDDEN = [form for secret in (KEY, PASSWORD, BASIC, CLIENT_KEY) for form in forms(secret)]


def assert_clean(text: str, where: str) -> None:
    for form in FORBIDDEN:
        assert form not in text, f"{form!r} in {where}: {text}"


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    """Every log event while the test runs."""
    events: list[LogEvent] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def rendered(events: list[LogEvent]) -> Iterator[tuple[str, str]]:
    """Each event as twistd's text observer writes it, and as the JSON observer does."""
    for event in events:
        yield formatEventAsClassicLogText(event) or "", "text log"
        yield event_as_json(event), "JSON log"


@pytest_twisted.async_yield_fixture(params=["url-credentials", "api-key"])
async def hostile(request: Any) -> AsyncIterator[RunningProxy]:
    """The daemon in front of a backend that quotes the credentials it refuses; with client keys, and a
    model-list refresh often enough for its failure to be logged within the test."""
    with_key = request.param == "api-key"
    backend = FakeBackend("vllm", api_key=KEY if with_key else None)
    await backend.listen(reactor())
    url = backend.base_url if with_key else backend.base_url.replace("http://", f"http://{USER}:{PASSWORD}@")
    running = await start_proxy(
        backend,
        url,
        api_key=KEY if with_key else None,
        client_keys=frozenset({CLIENT_KEY}),
        models_ttl=0.5,
        breaker_threshold=100,
    )
    yield running
    await running.service.stopService()
    await backend.stop()


@pytest_twisted.ensureDeferred
async def test_no_credential_reaches_a_reply_a_log_or_the_metrics(
    hostile: RunningProxy, http: HTTPClient, logged: list[LogEvent]
) -> None:
    backend, url = hostile.backend, hostile.url
    seen: list[tuple[str, str]] = []

    backend.echo_credentials = 401
    response = await http.get(url + "/ready")
    ready = await read_json(response)
    assert response.code == 503
    assert ready["error"].startswith("backend /models failed: Incorrect API key provided: [redacted]")
    seen.append((json.dumps(ready), "/ready"))

    def refresh_failed() -> bool:
        return any(e.get("log_namespace") == "ollama_proxy.service" and "why" in e for e in logged)

    await eventually(refresh_failed)  # the model-list refresh logs the backend's words

    backend.echo_credentials = None
    assert (await http.get(url + "/api/tags", headers=AUTHORIZED)).code == 200
    backend.echo_credentials = 500
    response = await http.post(url + "/api/chat", json=CHAT, headers=AUTHORIZED)
    body = await read_json(response)
    assert response.code == 502
    assert body["error"].startswith("Incorrect API key provided: [redacted]. You sent 'Authorization:")
    seen.append((json.dumps(body), "/api/chat"))

    response = await http.post(url + "/v1/chat/completions", json=CHAT, headers=AUTHORIZED)
    relayed = await response.text()
    assert response.code == 500  # the backend's own error, relayed
    assert json.loads(relayed)["error"]["message"].startswith("Incorrect API key provided: [redacted]")
    seen.append((relayed, "/v1/chat/completions"))

    response = await http.get(url + "/metrics", headers=AUTHORIZED)
    assert response.code == 200
    seen.append((await response.text(), "/metrics"))

    for text, where in [*seen, *rendered(logged)]:
        assert_clean(text, where)


@pytest_twisted.ensureDeferred
async def test_a_stream_broken_by_an_error_quoting_credentials(
    hostile: RunningProxy, http: HTTPClient, logged: list[LogEvent]
) -> None:
    hostile.backend.script = ChatScript(error_after=1, echo_credentials=True)

    response = await http.post(hostile.url + "/api/chat", json=STREAM, headers=AUTHORIZED)
    lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert response.code == 200
    assert lines[0]["message"]["content"] == "Hel"
    assert lines[-1]["error"].startswith("Incorrect API key provided: [redacted]")
    assert not any(line.get("done") for line in lines)

    response = await http.post(hostile.url + "/v1/chat/completions", json=STREAM, headers=AUTHORIZED)
    events = await response.text()
    assert response.code == 200
    error = json.loads(events.strip().split("\n\n")[-1].removeprefix("data: "))
    assert error["error"]["message"].startswith("Incorrect API key provided: [redacted]")

    for text, where in [(json.dumps(lines), "/api/chat"), (events, "/v1"), *rendered(logged)]:
        assert_clean(text, where)


@attrs.define
class Replicas:
    url: str
    service: ProxyService
    backends: tuple[FakeBackend, FakeBackend]


@pytest_twisted.async_yield_fixture
async def replicas() -> AsyncIterator[Replicas]:
    """One model on two hostile backends: one with URL credentials, one with a key."""
    with_url, with_key = FakeBackend("vllm"), FakeBackend("vllm", api_key=KEY)
    for backend in (with_url, with_key):
        await backend.listen(reactor())
    config = ProxyConfig(
        listen=("tcp:0:interface=127.0.0.1",),
        backends=(
            BackendConfig(url=with_url.base_url.replace("http://", f"http://{USER}:{PASSWORD}@")),
            BackendConfig(url=with_key.base_url, api_key=KEY),
        ),
        retries=0,
    )
    service = ProxyService(config, reactor())
    service.startService()
    port: Any = (await service.listeners[0].listening).getHost()
    yield Replicas(f"http://127.0.0.1:{port.port}", service, (with_url, with_key))
    await service.stopService()
    for backend in (with_url, with_key):
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_the_failover_log_quotes_no_credential(
    replicas: Replicas, http: HTTPClient, logged: list[LogEvent]
) -> None:
    assert (await http.get(replicas.url + "/api/tags")).code == 200
    for backend in replicas.backends:
        backend.echo_credentials = 500
    response = await http.post(replicas.url + "/api/chat", json=CHAT)
    body = await read_json(response)
    assert response.code == 502
    assert "[redacted]" in body["error"]
    handed_over = [e for e in logged if e.get("log_namespace") == "ollama_proxy.failover"]
    assert len(handed_over) == 1
    assert "Incorrect API key provided: [redacted]" in formatEvent(handed_over[0])
    for text, where in [(json.dumps(body), "/api/chat"), *rendered(logged)]:
        assert_clean(text, where)


@pytest_twisted.ensureDeferred
async def test_an_unexpected_error_is_logged_without_the_secret_it_quotes(
    proxy: RunningProxy, http: HTTPClient, logged: list[LogEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    said = f"the backend said: Bearer {proxy.service.config.backends[0].api_key}"

    async def broken(self: VersionResource, request: ProxyRequest) -> None:
        raise RuntimeError(said)  # (a traceback shows this line: the secret is not written in it)

    monkeypatch.setattr(VersionResource, "on_get", broken)
    response = await http.get(proxy.url + "/api/version")
    assert response.code == 500
    assert "internal error" in (await read_json(response))["error"]
    (failure,) = [e for e in logged if e.get("log_failure") is not None]
    text, json_line = formatEventAsClassicLogText(failure) or "", event_as_json(failure)
    assert "RuntimeError: the backend said: Bearer [redacted]" in text
    assert "Bearer [redacted]" in json.loads(json_line)["traceback"]
    assert "sk-test-secret" not in text + json_line


FORGED = "x\n2026-12-04T00:00:00+0000 [ollama_proxy.access#info] forged\x1b[2J"


@pytest_twisted.ensureDeferred
async def test_a_model_name_cannot_forge_a_log_line(
    proxy: RunningProxy, http: HTTPClient, logged: list[LogEvent]
) -> None:
    response = await http.post(proxy.url + "/v1/chat/completions", json={**CHAT, "model": FORGED})
    assert response.code == 404  # the backend's answer, relayed
    await response.content()
    (access,) = [e for e in logged if e.get("log_namespace") == "ollama_proxy.access"]
    text = formatEventAsClassicLogText(access) or ""
    assert text.count("\n") == 1
    assert text.endswith("\n")
    assert "\x1b" not in text
    assert "model=x\\n2026-12-04T00:00:00+0000 [ollama_proxy.access#info] forged\\x1b[2J " in text
    line = event_as_json(access)
    assert len(line.splitlines()) == 1
    record = json.loads(line)
    assert record["model"] == FORGED  # the JSON format keeps the raw value: JSON escapes it
    assert "\\x1b[2J" in record["msg"]


# -- the scrubber's rules -----------------------------------------------------------------------------

PROJECT_KEY = "sk-proj-4f9QmZ2xTb7LkW1pRv8NcY3abcd"
SCRUBBER = Scrubber([PROJECT_KEY, KEY, *backend_secrets(f"http://{USER}:{PASSWORD}@gpu1:8000/v1", None)])


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        (f"Bearer {PROJECT_KEY}", "Bearer [redacted]"),
        (f"Basic {BASIC}", "Basic [redacted]"),
        (f"Basic {BASIC.rstrip('=')}", "Basic [redacted]"),
        (f"rejected {USER}:{PASSWORD}", "rejected [redacted]"),
        (f'{{"password": "{PASSWORD}"}}', '{"password": "[redacted]"}'),
        ("Incorrect API key provided: sk-proj-...abcd.", "Incorrect API key provided: [redacted]."),
        ("key sk-secre...XYZ, try again", "key [redacted], try again"),
        ("sk-proj-********************abcd", "[redacted]"),
        ("sk-****...****abcd", "[redacted]"),
        ("key ***abcd!", "key [redacted]!"),
        ("sk-secre…XYZ", "[redacted]"),
        ("…abcd", "[redacted]"),
        ("starts sk-secret-H...", "starts [redacted]"),
        ("hunter-Q...2Vb", "[redacted]"),
        (f"{BASIC[:6]}...{BASIC[-4:]}", "[redacted]"),
        ("xsk-proj-...abcd", "xsk-proj-[redacted]"),  # no prefix inside a word, the suffix still goes
    ],
)
def test_every_form_of_a_secret_is_redacted(text: str, scrubbed: str) -> None:
    assert SCRUBBER.scrub(text) == scrubbed
    assert SCRUBBER.scrub_bytes(text.encode()) == scrubbed.encode()


@pytest.mark.parametrize(
    "text",
    [
        "Loading...",
        "wait... what",
        "**bold** and 2 ** 8",
        "keys look like sk-... or sk-****",  # a prefix of 3 alone
        "the last two: ...YZ",  # a suffix of 2 alone
        "it ends abcd... or ...abcde",  # not right after a mask, or not the end of a word
        f"{USER} logged in",  # the user name beside a password is an identity, not a secret
        "hunter... again",  # a prefix alone must be 6 long
        "the model `sk-proj` does not exist",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert SCRUBBER.scrub(text) == text


def test_a_prefix_alone_that_is_a_word_is_left_alone() -> None:
    scrubber = Scrubber(["password-Zk81Qm"])
    assert scrubber.scrub("enter your password...") == "enter your password..."
    assert scrubber.scrub("password-Z... was refused") == "[redacted] was refused"


def test_short_secrets_are_not_looked_for() -> None:
    assert Scrubber(["abc12"]).scrub("abc12 and abc...12") == "abc12 and abc...12"


def test_which_secrets_a_backend_holds() -> None:
    assert set(backend_secrets("http://gpu1:8000/v1", KEY)) == {KEY}
    assert set(backend_secrets(f"http://{USER}:{PASSWORD}@gpu1/v1", None)) == {
        f"{USER}:{PASSWORD}",
        PASSWORD,
        BASIC,
        BASIC.rstrip("="),
    }
    token = base64.b64encode(b"tok-en-1234:").decode()
    assert set(backend_secrets("http://tok-en-1234@gpu1/v1", None)) == {"tok-en-1234:", "tok-en-1234", token}
    assert backend_secrets("http://gpu1/v1", None) == []


def test_client_keys_are_replaced_on_reload() -> None:
    scrubber = Scrubber([KEY], client_keys=["client-old-123"])
    scrubber.set_client_keys(["client-new-456"])
    assert scrubber.scrub(f"{KEY} client-old-123 client-new-456") == "[redacted] client-old-123 [redacted]"


def test_a_reload_makes_the_new_client_keys_secret(tmp_path: Path) -> None:
    keys = tmp_path / "client-keys"
    keys.write_text("ck-old-Tq81Lm\n")
    daemon = MemoryDaemon(client_keys_file=str(keys), client_keys=load_client_keys(str(keys)))
    assert daemon.app.scrubber.scrub("ck-old-Tq81Lm") == "[redacted]"
    keys.write_text("ck-new-Wz52Pn\n")
    daemon.service.reload()
    assert daemon.app.scrubber.scrub("ck-new-Wz52Pn ck-old-Tq81Lm") == "[redacted] ck-old-Tq81Lm"


def test_a_bad_backend_url_is_named_without_its_credentials() -> None:
    with pytest.raises(ValueError, match="has an invalid port") as raised:
        parse_backend_url(f"http://{USER}:{PASSWORD}@gpu1:99999/v1")
    assert PASSWORD not in str(raised.value)


def test_redact_url_keeps_host_and_port_as_written() -> None:
    assert redact_url("http://u:p@[::1]:8000/v1") == "http://[::1]:8000/v1"
    assert redact_url("http://u:p@x:99999/v1") == "http://x:99999/v1"
    assert redact_url("http://gpu1:8000/v1") == "http://gpu1:8000/v1"


# -- log escaping ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("qwen:7b", "qwen:7b"),
        ("modèle 🎉", "modèle 🎉"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("\x1b[2J\x00\x7f", "\\x1b[2J\\x00\\x7f"),
        ("\x85 \u2028 \u2029", "\\x85 \\u2028 \\u2029"),
        ("\u202e evil", "\\u202e evil"),  # a bidirectional override
        ("a\\nb", "a\\\\nb"),  # a backslash is escaped too: an escape is never ambiguous
    ],
)
def test_control_characters_are_escaped(raw: str, escaped: str) -> None:
    assert escape_controls(raw) == escaped


def test_an_untrusted_field_is_escaped_in_text_and_raw_in_json() -> None:
    raw = "a\nb\x1b[2J\u2028c"
    event: LogEvent = {
        "log_format": "model={model} path={path!s}",
        "log_namespace": "ollama_proxy.access",
        "log_level": LogLevel.info,
        "log_time": 1_700_000_000.0,
        "model": untrusted(raw),
        "path": untrusted(raw),
    }
    assert formatEvent(event) == "model=a\\nb\\x1b[2J\\u2028c path=a\\nb\\x1b[2J\\u2028c"
    line = event_as_json(event)
    assert len(line.splitlines()) == 1  # U+2028 too: str.splitlines and some shippers end lines there
    record = json.loads(line)
    assert record["model"] == raw
    assert record["path"] == raw
    assert record["msg"] == formatEvent(event)
    assert untrusted(raw) == raw
    assert untrusted(None) is None

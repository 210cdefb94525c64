"""The daemon as a process under operational stress: graceful SIGTERM, secrets kept out of every byte it
prints, and hypothesis-generated malformed requests that must never produce a 500 or kill it."""

from __future__ import annotations

import http.client
import json
import re
import resource
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import Child, child_env
from tests.twistd_measured import twistd_command

MODEL = "Qwen/Qwen2.5-7B-Instruct"


def _backend(*extra: str) -> Child:
    return Child(
        [sys.executable, "-m", "tests.fake_backend", "--flavour", "vllm", "--port", "0", *extra], child_env()
    )


def _daemon(backend_url: str, *extra: str, **env: str) -> tuple[Child, str]:
    child = Child(
        twistd_command("--backend", backend_url, "--listen", "tcp:0:interface=127.0.0.1", *extra),
        child_env(**env),
    )
    url = child.wait_for(r"listening on (http://\S+)").group(1)
    return child, url


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _post(url: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(*_host_port(url), timeout=30)
    try:
        connection.request(
            "POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _stream_in_thread(url: str, lines: list[Any], first: threading.Event) -> threading.Thread:
    def read() -> None:
        connection = http.client.HTTPConnection(*_host_port(url), timeout=30)
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        connection.request("POST", "/api/chat", body=body)
        response = connection.getresponse()
        while line := response.readline():
            lines.append(json.loads(line))
            first.set()
        connection.close()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_sigterm_lets_streams_finish_and_exits_zero() -> None:
    backend = _backend("--event-delay", "0.3")
    try:
        backend_url = backend.wait_for(r"listening on (\S+)").group(1)
        daemon, url = _daemon(backend_url)
        lines: list[Any] = []
        first = threading.Event()
        thread = _stream_in_thread(url, lines, first)
        assert first.wait(15)
        daemon.process.send_signal(signal.SIGTERM)
        daemon.wait_for(r"stopping: waiting up to")
        daemon.process.send_signal(signal.SIGTERM)  # a second one (an impatient operator) changes nothing
        thread.join(15)
        assert daemon.process.wait(timeout=30) == 0
        assert "".join(line["message"]["content"] for line in lines) == "Hello!"
        assert lines[-1]["done"] is True
        # Stopped accepting: nothing listens on the port any more.
        with pytest.raises(ConnectionRefusedError):
            _post(url, "/api/version", b"")
    finally:
        backend.stop()


def test_sigterm_past_the_drain_timeout_ends_streams_with_an_error_line() -> None:
    backend = _backend("--event-delay", "2")
    try:
        backend_url = backend.wait_for(r"listening on (\S+)").group(1)
        daemon, url = _daemon(backend_url, "--drain-timeout", "0.5")
        lines: list[Any] = []
        first = threading.Event()
        thread = _stream_in_thread(url, lines, first)
        assert first.wait(15)  # the first content chunk has been relayed
        daemon.process.send_signal(signal.SIGTERM)
        thread.join(15)
        assert daemon.process.wait(timeout=30) == 0
        output = "".join(daemon.seen) + "".join(daemon.lines.queue)
        assert lines[-1] == {"error": "the server is shutting down"}, output
        assert not any(line.get("done") for line in lines)
    finally:
        backend.stop()


def test_no_secret_reaches_any_output(tmp_path: Path) -> None:
    backend = _backend("--api-key", "sk-backend-secret-123")
    keys = tmp_path / "client-keys"
    keys.write_text("# clients\nclient-token-abc\n")
    try:
        backend_url = backend.wait_for(r"listening on (\S+)").group(1)
        with_credentials = backend_url.replace("http://", "http://admin:url-password-xyz@")
        daemon, url = _daemon(
            with_credentials, "--client-keys-file", str(keys), OPENAI_API_KEY="sk-backend-secret-123"
        )
        good = {"Authorization": "Bearer client-token-abc"}
        bad = {"Authorization": "Bearer client-token-abd"}
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": False})
        status, reply = _post(url, "/api/chat", body.encode(), good)
        assert status == 200, reply
        status, reply = _post(url, "/api/chat", body.encode(), bad)
        assert status == 401
        status, reply = _post(url, "/api/show", json.dumps({"model": MODEL}).encode(), good)
        assert status == 200
        shown = reply.decode()
        daemon.process.send_signal(signal.SIGTERM)
        daemon.process.wait(timeout=30)
        output = "".join(daemon.seen) + "".join(daemon.lines.queue)
        assert "listening on" in output
        for secret in ("sk-backend-secret-123", "client-token-abc", "client-token-abd", "url-password-xyz"):
            assert secret not in output
            assert secret not in shown
    finally:
        backend.stop()


# Runs the rest of its command line with the soft limit on open files at 256 and the hard one at argv[1].
_WITH_FEW_FILES = (
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, int(sys.argv[1])));"
    " os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc/PID/limits (Linux)")
def test_the_daemon_raises_its_open_file_limit_and_fits_its_connections_under_it() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    backend = _backend()
    try:
        backend_url = backend.wait_for(r"listening on (\S+)").group(1)
        command = twistd_command("--backend", backend_url, "--listen", "tcp:0:interface=127.0.0.1")
        daemon = Child([sys.executable, "-c", _WITH_FEW_FILES, str(hard), *command[1:]], child_env())
        try:
            daemon.wait_for(rf"open-file limit raised from 256 to {hard}\b")
            # Room for one backend's connections (max-concurrent 64 + pool-size 64) and 64 files of its own.
            accepted = daemon.wait_for(r"accepts (\d+) client connections at once").group(1)
            assert int(accepted) == hard - 128 - 64
            limits = Path(f"/proc/{daemon.process.pid}/limits").read_text()
            assert re.search(rf"Max open files\s+{hard}\s+{hard}\s", limits), limits
            url = daemon.wait_for(r"listening on (http://\S+)").group(1)
            connection = http.client.HTTPConnection(*_host_port(url), timeout=30)
            connection.request("GET", "/api/version")
            assert connection.getresponse().status == 200  # serving (and its signal handlers installed)
            connection.close()
        finally:
            assert daemon.stop() == 0
    finally:
        backend.stop()


@pytest.fixture(scope="module")
def daemon_url() -> Iterator[str]:
    backend = _backend()
    backend_url = backend.wait_for(r"listening on (\S+)").group(1)
    daemon, url = _daemon(backend_url, "--max-body", "1MiB")
    yield url
    daemon.stop()
    backend.stop()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=10,
)
FIELDS = st.sampled_from(
    [
        "model",
        "messages",
        "prompt",
        "stream",
        "format",
        "options",
        "think",
        "keep_alive",
        "tools",
        "images",
        "name",
        "source",
        "destination",
        "input",
        "raw",
        "suffix",
        "system",
        "logprobs",
        "top_logprobs",
    ]
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool", 3, None])},
    optional={
        "content": JSON_VALUES,
        "images": JSON_VALUES,
        "tool_calls": JSON_VALUES,
        "thinking": JSON_VALUES,
    },
)
BODIES = st.one_of(
    st.dictionaries(FIELDS, JSON_VALUES, max_size=6),
    st.fixed_dictionaries(
        {"model": st.sampled_from([MODEL, "nope", "", 7]), "messages": st.lists(MESSAGE, max_size=3)},
        optional={
            "stream": st.booleans(),
            "options": JSON_VALUES,
            "format": JSON_VALUES,
            "think": JSON_VALUES,
        },
    ),
    JSON_VALUES,
)
PATHS = ["/api/chat", "/api/generate", "/api/show", "/api/pull", "/api/copy", "/api/push", "/api/create"]
MANAGED_BY_BACKEND = frozenset({"/api/copy", "/api/push", "/api/create"})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), body=BODIES, raw=st.booleans())
def test_malformed_requests_get_clear_errors_never_500(
    daemon_url: str, path: str, body: Any, raw: bool
) -> None:
    data = json.dumps(body).encode()
    if raw:
        data = data[: max(len(data) - 1, 0)]  # truncated JSON
    status, reply = _post(daemon_url, path, data)
    # 501 is the honest answer of the model-management calls a backend cannot do; nothing else may be 5xx.
    assert status < 500 or (status == 501 and path in MANAGED_BY_BACKEND), (status, reply)
    decoded = [json.loads(line) for line in reply.splitlines() if line.strip()]
    assert decoded, reply
    if status >= 400:
        assert len(decoded) == 1
        assert isinstance(decoded[0]["error"], str)
        assert "Traceback" not in decoded[0]["error"]
    else:
        assert all("error" not in line or isinstance(line["error"], str) for line in decoded)

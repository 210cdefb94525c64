"""systemd's notify protocol: the function against a test datagram socket, and the daemon's READY=1,
WATCHDOG=1 and STOPPING=1 as systemd would receive them."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from ollama_proxy.sdnotify import NotifyReceiver, parse_state, sd_notify, watchdog_period
from tests.support import Child, NotifySocket, child_env
from tests.twistd_measured import twistd_command


@pytest.fixture
def receiver() -> Iterator[NotifySocket]:
    made = NotifySocket()
    yield made
    made.close()


def test_sd_notify_sends_to_a_socket_path(receiver: NotifySocket) -> None:
    assert sd_notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": receiver.path})
    pid, message = receiver.wait_for("READY=1", timeout=5)
    assert (pid, message) == (os.getpid(), "READY=1\nSTATUS=up")


def test_sd_notify_sends_to_an_abstract_name() -> None:
    name = f"ollama-proxy-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind("\0" + name)
        abstract.settimeout(5)
        assert sd_notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert abstract.recv(100) == b"WATCHDOG=1"


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"NOTIFY_SOCKET": ""},
        {"NOTIFY_SOCKET": "/nonexistent/notify"},
        {"NOTIFY_SOCKET": "/" + "x" * 200},  # longer than an AF_UNIX path may be
        {"NOTIFY_SOCKET": "/run/with\0nul"},
        {"NOTIFY_SOCKET": "vsock:2:1234"},
        {"NOTIFY_SOCKET": "relative/path"},
    ],
)
def test_sd_notify_never_raises(environ: dict[str, str]) -> None:
    assert sd_notify("READY=1", environ) is False


def test_sd_notify_to_a_regular_file_is_refused(tmp_path: Any) -> None:
    target = tmp_path / "file"
    target.write_text("")
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": str(target)}) is False


def test_watchdog_period() -> None:
    assert watchdog_period({}) is None
    assert watchdog_period({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "2"}, pid=2) == 15.0
    assert watchdog_period({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_period({"WATCHDOG_USEC": "soon"}) is None


def test_parse_state() -> None:
    assert parse_state(b"READY=1\nSTATUS=a=b\njunk\n") == {"READY": "1", "STATUS": "a=b"}


@pytest_twisted.ensureDeferred
async def test_notify_receiver_reports_the_senders_pid(tmp_path: Any) -> None:
    from twisted.internet import reactor

    got: Deferred[tuple[int, dict[str, str]]] = Deferred()
    path = os.path.join(tempfile.mkdtemp(dir="/tmp"), "notify")  # short: AF_UNIX paths are limited
    notify = NotifyReceiver(path, lambda pid, fields: got.callback((pid, fields)))
    reactor.addReader(notify)
    try:
        assert sd_notify("READY=1", {"NOTIFY_SOCKET": path})
        assert await got == (os.getpid(), {"READY": "1"})
    finally:
        reactor.removeReader(notify)
        notify.close()
        shutil.rmtree(os.path.dirname(path))


def test_the_daemon_is_ready_only_once_listening_pings_the_watchdog_and_says_stopping(
    receiver: NotifySocket,
) -> None:
    """READY=1 goes out after the port is bound and after the signal handlers exist: a SIGTERM sent the moment
    READY=1 arrives still stops the daemon gracefully (STOPPING=1, exit 0)."""
    daemon = Child(
        twistd_command("--backend", "http://127.0.0.1:9/v1", "--listen", "tcp:0:interface=127.0.0.1"),
        child_env(NOTIFY_SOCKET=receiver.path, WATCHDOG_USEC="200000"),
    )
    try:
        pid, ready = receiver.wait_for("READY=1")
        assert pid == daemon.process.pid
        match = re.search(r"STATUS=serving on http://127\.0\.0\.1:(\d+)", ready)
        assert match, ready
        socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=5).close()  # bound already
        daemon.process.send_signal(signal.SIGTERM)  # at once
        receiver.wait_for("STOPPING=1")
        assert daemon.process.wait(timeout=30) == 0
        pings = [message for _, message in receiver.messages if message == "WATCHDOG=1"]
        assert pings  # from callWhenRunning, at once, then every 0.1 s
        assert [m for _, m in receiver.messages if m.startswith("READY")] == [ready]
    finally:
        daemon.stop()

"""The daemon's reactor (``ollama_proxy/reactor.py``) on real loopback sockets: a write leaves in the loop
pass that made it, a write too big for the kernel's buffer waits for room, writes from timed calls do not
wait for the poll's timeout, and a handler's error is logged without stopping the loop.  Each test drives a
private reactor pass by pass.  Twisted's own reactor tests run against it too (``reactor_conformance.py``).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.protocol import Factory, Protocol

from ollama_proxy import reactor as reactor_module
from ollama_proxy.reactor import SendingReactor
from tests.support import ROOT, Child, child_env, logged

# Comfortably more than a loopback socket's send and receive buffers together.
_BIG = 16 * 2**20


@pytest.fixture
def sending() -> Iterator[SendingReactor]:
    reactor = SendingReactor()
    yield reactor
    for call in reactor.getDelayedCalls():
        call.cancel()
    reactor.disconnectAll()
    for reader in list(getattr(reactor, "_internalReaders", ())):
        reactor.removeReader(reader)
        reader.connectionLost(None)


def _passes(reactor: SendingReactor, done: Callable[[], bool], limit: int = 2000) -> None:
    """Run loop passes (as ``mainLoop`` does) until ``done``."""
    for _ in range(limit):
        reactor.runUntilCurrent()
        wait = reactor.timeout()
        reactor.doIteration(0.05 if wait is None else min(wait, 0.05))
        if done():
            return
    raise AssertionError(f"not done after {limit} passes")


class _Answer(Protocol):
    """Answers each read with ``reply(data)`` in one or more writes; may close after it."""

    def __init__(self, reply: Callable[[bytes], list[bytes]], close: bool = False) -> None:
        self.reply = reply
        self.close = close

    def dataReceived(self, data: bytes) -> None:
        for piece in self.reply(data):
            self.transport.write(piece)  # type: ignore[union-attr]
        if self.close:
            self.transport.loseConnection()  # type: ignore[union-attr]


def _served(
    reactor: SendingReactor, protocol: Callable[[], Protocol]
) -> tuple[socket.socket, list[Protocol]]:
    """A plain client socket connected to a server on ``reactor``, and the server's protocols."""
    made: list[Protocol] = []

    def build(_addr: Any) -> Protocol:
        made.append(protocol())
        return made[-1]

    port = reactor.listenTCP(0, Factory.forProtocol(lambda: None), interface="127.0.0.1")
    port.factory.buildProtocol = build
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.setblocking(False)
    _passes(reactor, lambda: bool(made))
    port.stopListening()
    return client, made


def _received(client: socket.socket) -> bytes:
    try:
        return client.recv(_BIG)
    except BlockingIOError:
        return b"?"  # nothing yet


def test_a_write_leaves_in_the_pass_that_made_it(sending: SendingReactor) -> None:
    client, _ = _served(sending, lambda: _Answer(lambda data: [b"pong:", data, b"!"]))
    with client:
        client.sendall(b"ping")
        _passes(sending, lambda: True)  # one pass: the read, the three writes and their send
        assert _received(client) == b"pong:ping!"
        assert sending.getWriters() == []  # sent whole: epoll was never asked to watch for room


def test_a_write_bigger_than_the_socket_buffer_waits_for_room_and_arrives_whole(
    sending: SendingReactor,
) -> None:
    payload = os.urandom(_BIG)
    client, made = _served(sending, lambda: _Answer(lambda _: [payload]))
    with client:
        client.sendall(b"go")
        _passes(sending, lambda: True)
        assert made[0].transport in sending.getWriters()  # the rest waits for room
        got = bytearray()

        def drained() -> bool:
            while True:
                try:
                    piece = client.recv(2**20)
                except BlockingIOError:
                    return len(got) == _BIG
                got.extend(piece)

        _passes(sending, drained)
        assert bytes(got) == payload
        _passes(sending, lambda: sending.getWriters() == [])


def test_a_closing_write_arrives_before_the_end_of_the_connection(sending: SendingReactor) -> None:
    client, _ = _served(sending, lambda: _Answer(lambda data: [b"bye:" + data], close=True))
    with client:
        client.sendall(b"x")
        got = bytearray()

        def closed() -> bool:
            piece = _received(client)
            if piece == b"?":
                return False
            got.extend(piece)
            return piece == b""

        _passes(sending, closed)
        assert bytes(got) == b"bye:x"


class _Poller:
    """The reactor's epoll object, recording how long each poll was allowed to wait."""

    def __init__(self, poller: Any) -> None:
        self._poller = poller
        self.waits: list[float] = []

    def poll(self, timeout: float, maxevents: int) -> Any:
        self.waits.append(timeout)
        return self._poller.poll(timeout, maxevents)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poller, name)


@pytest.mark.parametrize("driven_by", ["the loop", "iterate"])
def test_a_write_from_a_timed_call_does_not_wait_out_the_poll(
    sending: SendingReactor, driven_by: str
) -> None:
    client, made = _served(sending, lambda: _Answer(lambda _: []))
    poller = _Poller(sending._poller)
    sending._poller = poller
    with client:
        sending.callLater(0, made[0].transport.write, b"tick")  # type: ignore[union-attr]
        sending.callLater(5, lambda: None)  # what the loop would otherwise wait for
        if driven_by == "iterate":
            sending.iterate(5)
        else:
            sending.runUntilCurrent()
            sending.doIteration(sending.timeout())
        assert poller.waits == [0]
        assert _received(client) == b"tick"
        _passes(sending, lambda: True)
        assert poller.waits[-1] > 0  # nothing unsent: the next pass waits again


class _ThreeBytesAtATime(FileDescriptor):
    """A writer on a regular file, which epoll refuses to watch, taking three bytes a send."""

    def __init__(self, fd: int, reactor: SendingReactor) -> None:
        super().__init__(reactor)
        self.fd = fd
        self.connected = 1

    def fileno(self) -> int:
        return self.fd

    def writeSomeData(self, data: bytes) -> int:  # noqa: N802 -- Twisted's name
        return os.write(self.fd, bytes(data[:3]))


def test_a_writer_epoll_refuses_is_polled_until_its_bytes_are_out(
    sending: SendingReactor, tmp_path: Path
) -> None:
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        writer = _ThreeBytesAtATime(fd, sending)
        writer.write(b"abcdef")
        _passes(sending, lambda: True)
        writer.write(b"ghi")  # while it is polled for the rest: not also among the unsent
        assert sending.getWriters().count(writer) == 1
        _passes(sending, lambda: path.read_bytes() == b"abcdefghi")
        _passes(sending, lambda: writer not in sending.getWriters())
    finally:
        os.close(fd)


def test_an_error_in_a_handler_is_logged_and_the_loop_goes_on(sending: SendingReactor) -> None:
    class Broken(_Answer):
        def connectionLost(self, reason: Any = None) -> None:
            raise RuntimeError("broken handler")

    broken_client, _ = _served(sending, lambda: Broken(lambda _: []))
    healthy_client, _ = _served(sending, lambda: _Answer(lambda data: [data]))
    with broken_client, healthy_client, logged("ollama_proxy.reactor") as events:
        broken_client.close()
        healthy_client.sendall(b"still here")
        _passes(sending, lambda: bool(events))
        _passes(sending, lambda: _received(healthy_client) == b"still here")
    [event] = events
    assert event["log_failure"].check(RuntimeError)


def test_a_reactor_already_installed_is_kept() -> None:
    from twisted.internet import reactor

    reactor_module.install_unless_chosen()
    from twisted.internet import reactor as after

    assert after is reactor
    assert not isinstance(after, SendingReactor)


def test_a_worker_runs_on_the_sending_reactor() -> None:
    """A worker imports its modules, then parses its options, as ``worker_main`` does: none of those imports
    may install Twisted's default reactor first."""
    code = (
        "from ollama_proxy.worker import WorkerOptions\n"
        "WorkerOptions(1).parseOptions(['--backend', 'http://127.0.0.1:9/v1'])\n"
        "from twisted.internet import reactor\n"
        "print(type(reactor).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "SendingReactor"


def test_twisteds_own_reactor_suites_pass_on_it(tmp_path: Path) -> None:
    """The suites every Twisted reactor must pass (``tests/reactor_conformance.py``), in a process of their
    own, in a directory of their own (some of them leave files in it)."""
    suites = str(ROOT / "tests" / "reactor_conformance.py")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", suites],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env(),
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed, done.stdout[-400:]
    assert int(passed.group(1)) > 150  # the suites were found and ran


def test_twistd_keeps_the_reactor_an_operator_chose() -> None:
    twistd = [sys.executable, "-m", "tests.twistd_measured", "--reactor=epoll", "-n", "--pidfile="]
    plugin = ["ollamaproxy", "--backend", "http://127.0.0.1:9/v1", "--listen", "tcp:0:interface=127.0.0.1"]
    daemon = Child([*twistd, *plugin], child_env())
    try:
        reactor_class = daemon.wait_for(r"reactor class: (\S+)\.").group(1)
        assert reactor_class == "twisted.internet.epollreactor.EPollReactor"
        daemon.wait_for(r"listening on http://")
    finally:
        daemon.stop()

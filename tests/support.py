"""What several test files share: the daemon and fake backend in this process on real sockets, the daemon
in memory on a simulated clock, subprocesses (``twistd``, the fake backend), and small waiting helpers.

Fixtures live in ``conftest.py``; everything here is a plain function or class that any test imports.
No module-level reactor import (craft.md §4): pytest-twisted installs the reactor first.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import treq
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent, _SynchronousProducer
from twisted.internet import defer, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from ollama_proxy.config import ProxyConfig
from ollama_proxy.service import ProxyService
from tests.fake_backend import ChatScript, FakeBackend

T = TypeVar("T")

# -- the daemon in this process, on real sockets ------------------------------------------------------


def reactor() -> Any:
    from twisted.internet import reactor as installed

    return installed


@attrs.define
class RunningProxy:
    url: str
    service: ProxyService
    backend: FakeBackend


async def start_proxy(backend: FakeBackend, backend_url: str, **settings: Any) -> RunningProxy:
    """The daemon in this process in front of ``backend`` at ``backend_url``; ``settings`` are those of
    ``ProxyConfig.for_backend`` (``api_key``, ``dialect`` and any other field)."""
    settings.setdefault("listen", ("tcp:0:interface=127.0.0.1:backlog=1024",))
    config = ProxyConfig.for_backend(backend_url, **settings)
    service = ProxyService(config, reactor())
    service.startService()
    port = await service.listeners[0].listening
    address: Any = port.getHost()
    return RunningProxy(f"http://127.0.0.1:{address.port}", service, backend)


async def serves_next_request(running: RunningProxy, http: HTTPClient) -> None:
    """A plain /api/chat for the fake backend's model is answered as usual (after a fault, say)."""
    running.backend.script = ChatScript()
    chat = {
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "messages": [{"role": "user", "content": "x"}],
        "stream": False,
    }
    response = await http.post(running.url + "/api/chat", json=chat)
    assert response.code == 200
    assert (await read_json(response))["message"]["content"] == "Hello!"


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking SDK call off the reactor thread (the daemon under test runs on that reactor)."""
    result: T = await threads.deferToThread(fn, *args, **kwargs)
    return result


async def read_json(response: Any) -> Any:
    return json.loads(await treq.content(response))


ROOT = Path(__file__).resolve().parent.parent


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``root``, by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


class Child:
    """A subprocess whose stdout lines are read by a thread, so a test can wait for one with a timeout."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r}; output was:\n{''.join(self.seen)}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "OPENAI_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@contextlib.contextmanager
def logged(namespace: str) -> Iterator[list[LogEvent]]:
    """The log events of one logger namespace (``ollama_proxy.access`` ...) emitted inside the block."""
    events: list[LogEvent] = []

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == namespace:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


async def eventually(check: Any, timeout: float = 5.0) -> None:
    """Poll a condition on the reactor (the backend side of a disconnect arrives a moment later)."""
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await task.deferLater(reactor(), 0.02, lambda: None)
    assert check()


class StreamingClient(Protocol):
    """A client that sends a streaming request (to ``path``) and then either reads nothing or hangs up."""

    def __init__(self, body: bytes, *, read: bool, path: bytes = b"/api/chat") -> None:
        self._body = body
        self._read = read
        self._path = path
        self.received = 0
        self.first_data: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (self._path, len(self._body), self._body)
        )
        if not self._read:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if not self.first_data.called:
            self.first_data.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


async def connect_client(url: str, protocol: StreamingClient) -> StreamingClient:
    factory = ClientFactory.forProtocol(lambda: protocol)
    port = int(url.rsplit(":", 1)[1])
    reactor().connectTCP("127.0.0.1", port, factory)
    return protocol


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor(), seconds, lambda: None)


class RawConnection:
    """A client socket worked by hand from the reactor thread, for clients no HTTP library plays: one that
    sends its request a byte at a time, or stops reading.  It sends only what the test says, reads only
    when asked (``receive_buffer`` shrinks what the kernel reads for it meanwhile), and can come from
    another loopback address (``source``, such as ``127.0.0.2``).

    Its socket is non-blocking once connected, so nothing here blocks the daemon under test; the connect
    itself does not need the daemon's reactor (the kernel completes it from the listen backlog).
    """

    def __init__(self, url: str, *, receive_buffer: int | None = None, source: str | None = None) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.socket = socket.socket()
        if receive_buffer is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        if source is not None:
            self.socket.bind((source, 0))
        self.socket.connect((host, int(port)))
        self.socket.setblocking(False)
        self.received = b""
        self.closed = False  # the daemon ended the connection (a close or a reset)

    def send(self, data: bytes) -> None:
        """Send ``data`` (small: the socket does not block); nothing once the daemon has closed."""
        try:
            self.socket.sendall(data)
        except OSError:
            self.closed = True

    def read(self, at_most: int | None = None) -> bytes:
        """Everything the daemon has sent so far, or ``at_most`` bytes more of it (also noticing when it
        has closed)."""
        goal = None if at_most is None else len(self.received) + at_most
        while not self.closed and (goal is None or len(self.received) < goal):
            try:
                chunk = self.socket.recv(65536 if goal is None else min(65536, goal - len(self.received)))
            except BlockingIOError:
                break
            except OSError:
                self.closed = True
                break
            if not chunk:
                self.closed = True
            self.received += chunk
        return self.received

    async def trickle(self, data: bytes, interval: float) -> None:
        """Send ``data`` a byte every ``interval`` seconds, until it is all sent or the daemon closes."""
        for byte in data:
            self.read()
            if self.closed:
                return
            self.send(bytes([byte]))
            await sleep(interval)

    async def until_closed(self, within: float) -> bytes:
        """Everything the daemon sent, once it has closed the connection (AssertionError after ``within``
        seconds still open)."""
        deadline = time.monotonic() + within
        while not self.closed and time.monotonic() < deadline:
            self.read()
            await sleep(0.01)
        assert self.closed, f"still open after {within} s; received {self.received[:200]!r}"
        return self.received

    def close(self) -> None:
        self.socket.close()


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-cased names) and body of one raw HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


# A streaming /api/chat body for the ``proxy`` fixture ("qwen" is an alias there).
STREAM_BODY = json.dumps({"model": "qwen", "messages": [{"role": "user", "content": "x"}]}).encode()


class NotifySocket:
    """A test AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET, noting each sender's pid."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="notify-", dir="/tmp")  # short: AF_UNIX paths are limited
        self.path = os.path.join(self.directory, "notify")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.socket.bind(self.path)
        self.messages: list[tuple[int, str]] = []

    def wait_for(self, text: str, timeout: float = 30.0) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.socket.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, ancillary, _flags, _addr = self.socket.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                break
            pid = int.from_bytes(ancillary[0][2][:4], sys.byteorder) if ancillary else 0
            self.messages.append((pid, data.decode()))
            if text in data.decode():
                return pid, data.decode()
        raise AssertionError(f"no {text!r} in {self.messages}")

    def close(self) -> None:
        self.socket.close()
        shutil.rmtree(self.directory, ignore_errors=True)


# -- the daemon in memory, on a simulated clock -------------------------------------------------------

BACKEND_URL = "http://backend.test/v1"


class ServingAgent(RequestTraversalAgent):
    """treq's in-memory agent, answered by any server factory (the daemon's site, the fake backend's)."""

    def __init__(self, factory: Site) -> None:
        super().__init__(Resource())
        self._serverFactory = factory
        # While True, every new connection is refused, as by a backend that is down.
        self.refusing = False

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Any:  # noqa: N803
        if self.refusing:
            return fail(ConnectionRefusedError())
        return super().request(method, uri, headers, bodyProducer)

    def flush_all(self) -> bool:
        """Move every pending byte both ways; True when anything moved."""
        moved = False
        for pump in list(self._pumps):
            moved = bool(pump.pump()) or moved
        self.flush()
        return moved


@attrs.frozen
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.body.splitlines()]


class MemoryConnection(Protocol):
    """A raw client connection to the in-memory daemon (``MemoryDaemon.connect``): bytes written by hand,
    everything received kept."""

    def __init__(self) -> None:
        self.received = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True

    def close(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


class MemoryDaemon:
    """The daemon in memory in front of a fake backend, on one simulated clock."""

    def __init__(self, flavour: str = "vllm", **settings: Any) -> None:
        self.clock = MemoryReactorClock()
        self.backend = FakeBackend(flavour, reactor=self.clock)
        self.backend.base_url = BACKEND_URL
        self._to_backend = ServingAgent(self.backend.site())
        settings.setdefault("listen", ())
        config = ProxyConfig.for_backend(BACKEND_URL, **settings)
        self.service = ProxyService(config, self.clock, agent=self._to_backend)
        self._to_daemon = ServingAgent(self.service.site)
        # Bodies written at once: treq's default producer would wait on the real reactor's cooperator.
        self.http = HTTPClient(self._to_daemon, data_to_body_producer=_SynchronousProducer)
        self._raw: list[iosim.IOPump] = []

    def connect(self, client: str = "10.0.0.1") -> MemoryConnection:
        """A raw connection to the daemon from the address ``client``, opened now (the daemon may refuse
        it: see ``received`` and ``closed`` after a ``pump``)."""
        peer = IPv4Address("TCP", client, 40000 + len(self._raw))
        server = self.service.site.buildProtocol(peer)
        connection = MemoryConnection()
        server_transport = iosim.FakeTransport(server, isServer=True, peerAddress=peer)
        client_transport = iosim.FakeTransport(connection, isServer=False)
        self._raw.append(iosim.connect(server, server_transport, connection, client_transport, greet=False))
        self.pump()
        return connection

    @property
    def app(self) -> Any:
        return self.service.app

    def backend_down(self, down: bool = True) -> None:
        """Refuse (or again accept) every new connection to the backend."""
        self._to_backend.refusing = down

    def pump(self) -> None:
        """Move bytes between client, daemon and backend until nothing moves (no time passes)."""
        for _ in range(1000):
            moved = self._to_daemon.flush_all()
            moved = self._to_backend.flush_all() or moved
            for raw in self._raw:
                moved = bool(raw.pump(advanceClock=False)) or moved
            self.clock.advance(0)  # calls due now (callLater(0, ...))
            if not moved:
                return
        raise AssertionError("the in-memory connections never went quiet")

    def advance(self, seconds: float, *, step: float = 0.05) -> None:
        """Let ``seconds`` pass in steps, moving bytes at each step."""
        remaining = seconds
        self.pump()
        while remaining > 1e-9:
            tick = min(step, remaining)
            self.clock.advance(tick)
            remaining -= tick
            self.pump()

    def settle(self, waiting: Deferred[T], *, within: float = 5.0) -> T:
        """The result of ``waiting``, letting simulated time pass (at most ``within`` seconds)."""
        results: list[T | Failure] = []
        waiting.addBoth(results.append)
        elapsed = 0.0
        self.pump()
        while not results and elapsed < within:
            self.advance(0.05)
            elapsed += 0.05
        if not results:
            raise AssertionError(f"still waiting after {within} simulated seconds")
        (outcome,) = results
        if isinstance(outcome, Failure):
            outcome.raiseException()
        return outcome

    def send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Deferred[Reply]:
        """Start a request; its reply (read to the end) once bytes and time have moved enough."""

        async def exchange() -> Reply:
            body: dict[str, Any] = {"json": json_body} if json_body is not None else {"data": data}
            response: IResponse = await self.http.request(
                method,
                "http://daemon.test" + path,
                headers=Headers({k: [v] for k, v in (headers or {}).items()}),
                **body,
            )
            content = await treq.content(response)
            flat = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
            return Reply(response.code, flat, content)

        return ensureDeferred(exchange())

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        within: float = 5.0,
    ) -> Reply:
        """One whole request and its reply, letting at most ``within`` simulated seconds pass."""
        sent = self.send(method, path, json_body=json_body, data=data, headers=headers)
        return self.settle(sent, within=within)


# -- backend stream events, as test input ------------------------------------------------------------


def chat_chunk(
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    *,
    logprobs: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
    choices: bool = True,
    standard: bool = True,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` a backend streams, checked against the openai SDK so that test inputs
    look like real backends (``standard``), or deliberately not."""
    from openai.types.chat import ChatCompletionChunk

    event: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1748772000,
        "model": "backend",
        "choices": [],
    }
    if choices:
        choice: dict[str, Any] = {"index": 0, "delta": delta or {}, "finish_reason": finish_reason}
        if logprobs is not None:
            choice["logprobs"] = logprobs
        event["choices"] = [choice]
    if usage is not None:
        event["usage"] = usage
    if standard:
        # Backends invent finish reasons ("error", "eos"...); the rest must still be OpenAI's shape.
        fixed = [{**c, "finish_reason": c["finish_reason"] and "stop"} for c in event["choices"]]
        ChatCompletionChunk.model_validate({**event, "choices": fixed})
    return event


def token_usage(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    """OpenAI's ``usage`` object, with the cached prompt tokens where given."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def chat_posts(backend: FakeBackend) -> list[dict[str, Any]]:
    """The chat completions the fake backend was asked for, in order; that it was asked for nothing of
    the translated APIs' own (it has none) is checked on the way."""
    assert all(r.path not in ("/v1/messages", "/v1/responses") for r in backend.requests)
    return [r.json for r in backend.requests if r.path == "/v1/chat/completions"]

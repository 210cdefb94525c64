"""A bounded soak: a real ``twistd`` daemon in front of a hostile backend, with well-behaved and hostile
clients mixed, for about half a minute.

The backend stalls after its headers (on ``/models`` and on chat replies), breaks streams, fails one model
with 500s and sends replies it should not; the clients send junk bodies, leave mid-stream, stop reading,
and poison ``keep_alive``.  Meanwhile every well-behaved request must be answered within its configured
bounds (plus scheduling slack), and afterwards the daemon's memory and file descriptors must be back
near where they started: nothing a client or backend did is left behind.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time
from typing import Any

import psutil
import pytest_twisted
import treq
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool

from tests.fake_backend import ChatScript, FakeBackend
from tests.support import Child, child_env, reactor
from tests.twistd_measured import twistd_command

MODEL = "Qwen/Qwen2.5-7B-Instruct"
BROKEN = "BAAI/bge-small-en-v1.5"  # the fake's other model: it fails on every chat here
SOAK_SECONDS = 25.0
BOUNDS = {"idle": 1.0, "headers": 2.0, "models": 1.0, "stall": 1.0, "client_header": 1.0}
# A request may take its bound plus this: the daemon, the backend and the clients share two cores.
SLACK = 2.5


def _settings(backend_url: str) -> list[str]:
    return [
        *("--backend", backend_url, "--listen", "tcp:0:interface=127.0.0.1"),
        *("--idle-timeout", str(BOUNDS["idle"]), "--headers-timeout", str(BOUNDS["headers"])),
        *("--models-timeout", str(BOUNDS["models"]), "--stall-timeout", str(BOUNDS["stall"])),
        *("--models-ttl", "2", "--retries", "0", "--breaker-threshold", "3", "--breaker-cooldown", "2"),
        *("--client-header-timeout", str(BOUNDS["client_header"]), "--client-body-timeout", "1"),
    ]


class Soak:
    def __init__(self, url: str, backend: FakeBackend) -> None:
        self.url = url
        self.backend = backend
        self.pool = HTTPConnectionPool(reactor(), persistent=True)
        self.pool.maxPersistentPerHost = 16
        self.http = treq.client.HTTPClient(Agent(reactor(), pool=self.pool))
        self.rng = random.Random(7)
        self.slowest: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []

    async def timed(self, name: str, bound: float, method: str, path: str, **kwargs: Any) -> int:
        started = time.monotonic()
        try:
            response = await self.http.request(method, self.url + path, **kwargs)
            body = await response.content()
        except Exception as exc:
            self.errors.append(f"{name}: {exc!r}")
            return 0
        took = time.monotonic() - started
        self.slowest[name] = max(self.slowest.get(name, 0.0), took)
        self.counts[name] = self.counts.get(name, 0) + 1
        if response.code >= 500 and response.code not in (502, 503, 504):
            self.errors.append(f"{name}: {response.code} {body[:200]!r}")
        if took > bound + SLACK:
            self.errors.append(f"{name}: took {took:.2f} s, bound {bound} s")
        return int(response.code)

    async def healthy_chat(self) -> None:
        stream = self.rng.random() < 0.5
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        await self.timed("chat", BOUNDS["headers"] + BOUNDS["models"], "POST", "/api/chat", json=body)

    async def broken_model(self) -> None:
        body = {"model": BROKEN, "prompt": "x", "stream": False}
        await self.timed("broken model", BOUNDS["headers"], "POST", "/api/generate", json=body)

    async def junk(self) -> None:
        bodies = [b"[]", b"null", b'{"model": 7}', b"[" * 20_000, b'{"model": "x", "t": NaN}', b"\xff"]
        path = self.rng.choice(["/api/chat", "/v1/chat/completions", "/api/show", "/embeddings"])
        await self.timed("junk", 1.0, "POST", path, data=self.rng.choice(bodies))

    async def poison_keep_alive(self) -> None:
        value = self.rng.choice([1e300, 10**400, "9999999999999h", "NaN", -1, 0])
        body = json.dumps({"model": MODEL, "messages": [], "keep_alive": value}).encode()
        await self.timed("keep_alive", 1.0, "POST", "/api/chat", data=body)
        code = await self.timed("ps", 1.0, "GET", "/api/ps")
        if code != 200:
            self.errors.append(f"/api/ps answered {code}")

    async def leave_mid_stream(self) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await deferLater(reactor(), 0.05)
        self.counts["left"] = self.counts.get("left", 0) + 1

    async def trickle(self) -> None:
        """A client that sends its request head a byte at a time: cut at the header deadline."""
        port = int(self.url.rsplit(":", 1)[1])
        started = time.monotonic()
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setblocking(False)
        answer = b""
        for byte in b"POST /api/chat HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 200:
            try:
                sock.send(bytes([byte]))
                answer += sock.recv(4096)
            except (BlockingIOError, ConnectionError):
                pass
            if answer or time.monotonic() - started > BOUNDS["client_header"] + SLACK + 1:
                break
            await deferLater(reactor(), 0.05)
        sock.close()
        took = time.monotonic() - started
        if not answer.startswith(b"HTTP/1.1 408") or took > BOUNDS["client_header"] + SLACK:
            self.errors.append(f"trickling client: {answer[:40]!r} after {took:.2f} s")
        self.counts["trickled"] = self.counts.get("trickled", 0) + 1

    async def stop_reading(self) -> None:
        """A client that asks for an endless stream and never reads: the daemon must cut it."""
        port = int(self.url.rsplit(":", 1)[1])
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).encode()
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await deferLater(reactor(), BOUNDS["stall"] + SLACK + 1.0)
        sock.close()
        self.counts["stalled"] = self.counts.get("stalled", 0) + 1

    async def backend_trouble(self) -> None:
        trouble = self.rng.choice(["stall models", "stall chat", "break stream", "garbage"])
        if trouble == "stall models":
            self.backend.stall_next("/v1/models")
        elif trouble == "stall chat":
            self.backend.stall_next("/v1/chat/completions")
        elif trouble == "break stream":
            self.backend.script = ChatScript(content=["a", "b", "c"], drop_after=1)
        else:
            self.backend.fail_next(200, "not json at all", headers={"Content-Type": "application/json"})
        await deferLater(reactor(), 0.5)
        self.backend.script = ChatScript()

    async def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        kinds = [
            (self.healthy_chat, 10),
            (self.broken_model, 2),
            (self.junk, 3),
            (self.poison_keep_alive, 1),
            (self.leave_mid_stream, 1),
            (self.backend_trouble, 1),
            (self.trickle, 1),
        ]
        choices = [kind for kind, weight in kinds for _ in range(weight)]

        async def worker() -> None:
            while time.monotonic() < deadline:
                await self.rng.choice(choices)()

        stallers = [ensureDeferred(self.stop_reading()) for _ in range(3)]
        await DeferredList([ensureDeferred(worker()) for _ in range(8)] + stallers, consumeErrors=False)


def _resources(pid: int) -> tuple[float, int]:
    process = psutil.Process(pid)
    return process.memory_info().rss / 2**20, process.num_fds()


@pytest_twisted.ensureDeferred
async def test_a_hostile_soak_leaves_the_daemon_as_it_found_it() -> None:
    backend = FakeBackend("vllm")
    backend.fail_model(BROKEN, 500)
    url = backend.listen_sync(reactor())
    daemon = Child(twistd_command(*_settings(url)), child_env())
    try:
        port = int(daemon.wait_for(r"listening on .*:(\d+)").group(1))
        soak = Soak(f"http://127.0.0.1:{port}", backend)
        for _ in range(20):  # warm: the pool, the model list, the first of everything
            await soak.healthy_chat()
        baseline_rss, baseline_fds = _resources(daemon.process.pid)
        await soak.run(SOAK_SECONDS)
        await soak.pool.closeCachedConnections()
        backend.script = ChatScript()
        await deferLater(reactor(), 2 * BOUNDS["stall"] + 1.0)  # cut streams and half-closed sockets go
        for _ in range(5):
            await soak.healthy_chat()
        await soak.pool.closeCachedConnections()
        # The daemon keeps an idle backend connection for 4 s (its pool's cachedConnectionTimeout), so the
        # soak's last ones may still be open: their file descriptors may take that long to go (on a
        # loaded machine the soak's last requests end late).
        for _ in range(40):
            await deferLater(reactor(), 0.2)
            rss, fds = _resources(daemon.process.pid)
            if fds <= baseline_fds + 4:
                break
        logged = []
        while not daemon.lines.empty():
            logged.append(daemon.lines.get())
        if soak.errors:
            text = "".join(logged)
            at = text.find("Traceback")
            print(text[at - 200 : at + 4000], file=sys.stderr)
        assert soak.errors == [], soak.errors[:5]
        assert soak.counts.get("chat", 0) > 100, soak.counts
        assert rss - baseline_rss < 25, (baseline_rss, rss)
        assert fds <= baseline_fds + 4, (baseline_fds, fds)
        print(
            f"soak: {soak.counts}; slowest {soak.slowest}; rss {baseline_rss:.1f} -> {rss:.1f} MiB",
            file=sys.stderr,
        )
    finally:
        daemon.stop()
        await backend.stop()

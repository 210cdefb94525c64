"""The stream clients: time to first chunk, thousands of open slow streams, and a client that never reads.

All of them talk to loopback only and every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.procstat import MB, RSSSampler, open_fds, rss_bytes
from bench.scenarios import Request


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def first_chunk_latency(port: int, request: Request, count: int, *, whole: bool = True) -> dict[str, Any]:
    """Time from sending the request to the first body byte, ``count`` times in a row.  Milliseconds.

    With ``whole`` each response is read to its end over one persistent connection, as an SDK does;
    without, each request gets a fresh connection (set up before the clock starts) that is closed after
    the first byte, for backends whose streams last long.
    """
    body = request.body_bytes()
    headers = request.headers()
    first: list[float] = []
    total: list[float] = []
    errors: list[str] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(count + 5):  # the first five warm the connection and the daemon up
            if not whole:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.connect()
            started = time.perf_counter()
            conn.request(request.method, request.path, body=body, headers=headers)
            response = conn.getresponse()
            chunk = response.read1(1) if response.status == 200 else b""
            got_first = time.perf_counter()
            if whole or response.status != 200:
                response.read()
            ended = time.perf_counter()
            if response.status != 200 or not chunk:
                errors.append(f"HTTP {response.status}")
                continue
            first.append((got_first - started) * 1000)
            total.append((ended - started) * 1000)
    except (OSError, http.client.HTTPException) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    if errors:
        return {"count": 0, "errors": len(errors), "why": errors[-1]}
    first, total = first[5:], total[5:]
    return {
        "count": len(first),
        "errors": 0,
        "p50_ms": round(_percentile(first, 50), 3),
        "p90_ms": round(_percentile(first, 90), 3),
        "p99_ms": round(_percentile(first, 99), 3),
        "mean_ms": round(statistics.fmean(first), 3) if first else 0.0,
        "total_p50_ms": round(_percentile(total, 50), 3),
    }


# -- many slow streams at once -----------------------------------------------------------------------------


def _dechunk(data: bytes) -> bytes:
    """The body of an HTTP/1.1 chunked response (enough of the format for a benchmark)."""
    out = bytearray()
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        size = int(data[pos:end].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)


class _Progress:
    """Counts streams that are open (or have failed to open); ``all_settled`` fires when none is pending."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.settled = 0
        self.all_settled = asyncio.Event()

    def settle(self) -> None:
        self.settled += 1
        if self.settled >= self.total:
            self.all_settled.set()


@dataclass
class _StreamOutcome:
    opened: bool = False
    done: bool = False
    lines: int = 0
    error: str = ""


def _stream_request(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode() + data


async def _one_stream(
    port: int, payload: bytes, gate: asyncio.Semaphore, progress: _Progress, deadline: float
) -> _StreamOutcome:
    outcome = _StreamOutcome()
    writer: asyncio.StreamWriter | None = None
    settled = False
    try:
        async with gate:  # bounds the connections being set up at once (the daemon's accept backlog)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            await writer.drain()
            received = bytearray()
            while b"\r\n\r\n" not in received or len(received) <= received.find(b"\r\n\r\n") + 4:
                chunk = await asyncio.wait_for(
                    reader.read(65536), timeout=max(0.1, deadline - time.monotonic())
                )
                if not chunk:
                    break
                received += chunk
        settled = True
        progress.settle()
        if not received.startswith(b"HTTP/1.1 200"):
            outcome.error = received[:80].decode("latin-1")
            return outcome
        outcome.opened = True
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout=max(0.1, deadline - time.monotonic()))
            if not chunk:
                break
            received += chunk
        body = _dechunk(bytes(received[received.find(b"\r\n\r\n") + 4 :]))
        lines = [json.loads(line) for line in body.split(b"\n") if line.strip()]
        outcome.lines = len(lines)
        outcome.done = bool(lines) and lines[-1].get("done") is True
        if not outcome.done:
            outcome.error = f"last line {lines[-1] if lines else None}"
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        if not settled:
            progress.settle()
        if writer is not None:
            writer.close()
    return outcome


@dataclass
class SlowStreamsResult:
    streams: int
    opened: int
    completed: int
    errors: list[str] = field(default_factory=list)
    rss_before_mb: float = 0.0
    rss_open_mb: float = 0.0
    rss_after_mb: float = 0.0
    per_stream_kb: float = 0.0
    fds_before: int = 0
    fds_open: int = 0
    open_seconds: float = 0.0
    total_seconds: float = 0.0


def slow_streams(
    daemon_pid: int, port: int, model: str, streams: int, stream_seconds: float
) -> SlowStreamsResult:
    """Open ``streams`` concurrent ``/api/chat`` streams through the daemon to the slow backend, measure the
    daemon's RSS before and while they are all open, and check that every one ends with ``done``."""
    payload = _stream_request(
        "/api/chat", {"model": model, "messages": [{"role": "user", "content": "tick"}], "stream": True}
    )
    result = SlowStreamsResult(streams=streams, opened=0, completed=0)
    time.sleep(0.5)
    result.rss_before_mb = rss_bytes(daemon_pid) / MB
    result.fds_before = open_fds(daemon_pid)
    sampler = RSSSampler(daemon_pid).start()

    async def main() -> list[_StreamOutcome]:
        gate = asyncio.Semaphore(50)
        progress = _Progress(streams)
        started = time.monotonic()
        deadline = started + stream_seconds + 60
        tasks = [
            asyncio.create_task(_one_stream(port, payload, gate, progress, deadline)) for _ in range(streams)
        ]
        # Wait until all are open (or some failed), then hold a few seconds to read the memory while open.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(progress.all_settled.wait(), timeout=deadline - time.monotonic())
        result.open_seconds = round(time.monotonic() - started, 2)
        window_start = time.monotonic()
        await asyncio.sleep(min(3.0, max(0.5, stream_seconds / 4)))
        result.fds_open = open_fds(daemon_pid)
        window = sampler.window(window_start, time.monotonic())
        result.rss_open_mb = (max(window) if window else rss_bytes(daemon_pid)) / MB
        outcomes = await asyncio.gather(*tasks)
        result.total_seconds = round(time.monotonic() - started, 2)
        return outcomes

    try:
        outcomes = asyncio.run(main())
    finally:
        sampler.stop()
    result.opened = sum(o.opened for o in outcomes)
    result.completed = sum(o.done for o in outcomes)
    errors = sorted({o.error for o in outcomes if o.error})
    result.errors = errors[:5]
    time.sleep(1.0)
    result.rss_after_mb = rss_bytes(daemon_pid) / MB
    if result.opened:
        result.per_stream_kb = round((result.rss_open_mb - result.rss_before_mb) * 1024 / result.opened, 1)
    result.rss_before_mb = round(result.rss_before_mb, 1)
    result.rss_open_mb = round(result.rss_open_mb, 1)
    result.rss_after_mb = round(result.rss_after_mb, 1)
    return result


# -- a client that never reads -----------------------------------------------------------------------------


def never_reads(
    daemon_pid: int, port: int, model: str, seconds: float, backend_sent: Callable[[], int]
) -> dict[str, Any]:
    """Ask for an endless stream and never read it: the daemon's RSS must stay flat, and the backend must
    be held back (what it manages to send stops growing once the socket buffers on the way are full)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    before = rss_bytes(daemon_pid)
    samples: list[tuple[float, int]] = []
    sent_at_1s = 0
    try:
        sock.connect(("127.0.0.1", port))
        sock.sendall(
            _stream_request(
                "/api/chat", {"model": model, "messages": [{"role": "user", "content": "go"}], "stream": True}
            )
        )
        started = time.monotonic()
        status = ""
        while time.monotonic() - started < seconds:
            samples.append((time.monotonic() - started, rss_bytes(daemon_pid)))
            if not sent_at_1s and samples[-1][0] >= 1.0:
                sent_at_1s = backend_sent()
                # A look at the status line without taking it off the socket: the client still reads nothing.
                status = (
                    sock.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT).split(b"\r\n")[0].decode("latin-1")
                )
            time.sleep(0.1)
        sent_at_end = backend_sent()
    except BlockingIOError:
        status = "no answer within 1 s"
    finally:
        sock.close()
    if not status.startswith("HTTP/1.1 200") or not sent_at_1s:
        return {"seconds": seconds, "error": f"the endless stream did not start ({status or 'no answer'})"}
    settled = [rss for t, rss in samples if t >= 1.0] or [rss for _, rss in samples]
    return {
        "seconds": seconds,
        "rss_before_mb": round(before / MB, 1),
        "rss_at_1s_mb": round(settled[0] / MB, 1),
        "rss_max_mb": round(max(settled) / MB, 1),
        "rss_end_mb": round(settled[-1] / MB, 1),
        "growth_after_1s_mb": round((max(settled) - settled[0]) / MB, 2),
        "backend_sent_at_1s_mb": round(sent_at_1s / MB, 2),
        "backend_sent_mb": round(sent_at_end / MB, 2),
    }

"""The realistic stream scenario's client: opens ``--streams`` concurrent streams against a proxy (or the
paced backend itself), reads every line, and measures each event's latency: the client's
``time.monotonic()`` when the line arrived minus the send time the backend stamped into it.

Streams are opened evenly over ``--ramp`` seconds, so that their events interleave (each stream keeps the
phase it started with) rather than arriving in bursts of every stream at once.  The *steady window* runs
from the last stream's first event to the first stream's end: only then are all of them open, and only
events received in it count.  In that window the client also reads the CPU time of the proxy (``--pid``),
of the load-generating processes (``--load-pid``, and its own), and samples the proxy's RSS.

One thread, one epoll loop and plain non-blocking sockets (see ``bench/paced_backend.py`` for why).  It
prints one JSON object.  Run: ``python -m bench.paced_client --port N --streams 100 ...``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import select
import shutil
import socket
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any

from bench.paced import DONE, MODEL, STAMPS, Dechunker, summarise
from bench.procstat import cpu_seconds, rss_bytes

SAMPLE_INTERVAL = 0.25


class Stream:
    __slots__ = (
        "body",
        "chunked",
        "dechunker",
        "done",
        "ended_at",
        "error",
        "events",
        "first_at",
        "head",
        "index",
        "opened",
        "sock",
        "status",
        "tail",
    )

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.head = b""
        self.status = 0
        self.chunked = False
        self.dechunker = Dechunker()
        self.tail = b""  # an incomplete line
        self.body = True  # False until the response head has been read
        self.opened = False
        self.done = False
        self.error = ""
        self.events = 0
        self.first_at = 0.0
        self.ended_at = 0.0


def request_bytes(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode() + data


def body_for(path: str, model: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": "stream"}]
    if path == "/api/chat":
        return {"model": model, "messages": messages, "stream": True}
    if path == "/api/generate":
        return {"model": model, "prompt": "stream", "stream": True}
    return {"model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.payload = request_bytes(args.path, body_for(args.path, args.model))
        self.poll = select.epoll()
        self.streams: dict[int, Stream] = {}
        self.all: list[Stream] = []
        self.recv_at = array("d")  # per event: when its line arrived
        self.latency = array("d")  # per event: arrival minus its stamp
        self.open_streams = 0
        self.errors: dict[str, int] = {}

    # -- connections ---------------------------------------------------------------------------------------

    def open(self, index: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = Stream(index, sock)
        stream.body = False
        self.all.append(stream)
        code = sock.connect_ex(("127.0.0.1", self.args.port))
        if code not in (0, errno.EINPROGRESS):
            self.fail(stream, f"connect: {os.strerror(code)}")
            return
        self.streams[sock.fileno()] = stream
        self.open_streams += 1
        self.poll.register(sock.fileno(), select.EPOLLOUT)

    def fail(self, stream: Stream, why: str) -> None:
        stream.error = why
        self.errors[why] = self.errors.get(why, 0) + 1
        self.finish(stream)

    def finish(self, stream: Stream) -> None:
        fd = stream.sock.fileno()
        if fd >= 0 and self.streams.pop(fd, None) is not None:
            self.open_streams -= 1
            self.poll.unregister(fd)
        stream.ended_at = stream.ended_at or time.monotonic()
        stream.sock.close()

    def writable(self, stream: Stream) -> None:
        code = stream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.fail(stream, f"connect: {os.strerror(code)}")
            return
        stream.sock.sendall(self.payload)  # a few hundred bytes into an empty socket buffer
        self.poll.modify(stream.sock.fileno(), select.EPOLLIN)

    def readable(self, stream: Stream) -> None:
        try:
            data = stream.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(stream, f"recv: {exc.strerror}")
            return
        now = time.monotonic()
        if not data:
            if not stream.done:
                self.fail(stream, "closed before the last line" if stream.opened else "closed before a reply")
            else:
                self.finish(stream)
            return
        if not stream.body:
            stream.head += data
            end = stream.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = stream.head[:end].lower(), stream.head[end + 4 :]
            stream.head = b""
            stream.body = True
            stream.status = int(head.split(b" ", 2)[1])
            if stream.status != 200:
                self.fail(stream, f"HTTP {stream.status}")
                return
            stream.opened = True
            stream.chunked = b"transfer-encoding: chunked" in head
        body = stream.dechunker.feed(data) if stream.chunked else data
        if not body:
            if stream.dechunker.finished and not stream.done:
                self.fail(stream, "the body ended before the last line")
            return
        # Whole lines only (a stamp may be cut by the end of a read); a few C-level calls per read, however
        # many events it carried, so that the client's cost stays far below the proxy's.
        data = stream.tail + body if stream.tail else body
        cut = data.rfind(b"\n") + 1
        lines, stream.tail = data[:cut], data[cut:]
        if not lines:
            return
        found = STAMPS.findall(lines)
        if found:
            if not stream.events:
                stream.first_at = now
            stream.events += len(found)
            for sent in found:
                self.recv_at.append(now)
                self.latency.append(now - float(sent))
        if DONE.search(lines):
            stream.done = True
            stream.ended_at = now
            self.finish(stream)

    # -- the run -------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """The raw record ``bench.paced.summarise`` reads."""
        args = self.args
        started = time.monotonic()
        deadline = started + args.ramp + args.timeout
        gap = args.ramp / max(1, args.streams - 1) if args.streams > 1 else 0.0
        next_open = 0
        samples: list[tuple[float, float, float, float, int]] = []
        next_sample = started
        while (next_open < args.streams or self.streams) and time.monotonic() < deadline:
            now = time.monotonic()
            while next_open < args.streams and started + next_open * gap <= now:
                self.open(next_open)
                next_open += 1
            if now >= next_sample:
                samples.append(
                    (
                        now,
                        cpu_seconds(args.pid) if args.pid else 0.0,
                        sum(cpu_seconds(p) for p in args.load_pid or []),
                        time.process_time(),
                        rss_bytes(args.pid) if args.pid else 0,
                    )
                )
                next_sample = now + SAMPLE_INTERVAL
            wake = next_sample
            if next_open < args.streams:
                wake = min(wake, started + next_open * gap)
            for fd, mask in self.poll.poll(max(0.0, min(wake - time.monotonic(), 0.5))):
                stream = self.streams.get(fd)
                if stream is None:
                    continue
                if mask & select.EPOLLOUT:
                    self.writable(stream)
                elif mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    self.readable(stream)
        for stream in list(self.streams.values()):
            self.fail(stream, "timed out")
        return {
            "streams": [
                {
                    "opened": s.opened,
                    "done": s.done,
                    "events": s.events,
                    "first_at": s.first_at,
                    "ended_at": s.ended_at,
                    "error": s.error,
                }
                for s in self.all
            ],
            "samples": samples,
            "recv_at": self.recv_at,
            "latency": self.latency,
            "seconds": round(time.monotonic() - started, 2),
        }


# -- running a client (the C one where it compiles) -------------------------------------------------------


C_SOURCE = Path(__file__).with_name("paced_client.c")


def build_c_client(directory: Path) -> tuple[Path | None, str]:
    """Compile ``paced_client.c`` into ``directory``: the binary, or None and why not."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc)"
    binary = directory / "paced_client"
    done = subprocess.run(
        [compiler, "-O2", "-o", str(binary), str(C_SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        return None, f"cc failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:160]}"
    return binary, ""


def parse_c_output(text: str, events: Path) -> dict[str, Any]:
    """The C client's printed lines and events file as the raw record ``bench.paced.summarise`` reads."""
    streams: list[dict[str, Any]] = []
    samples: list[tuple[float, float, float, float, int]] = []
    seconds = 0.0
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "stream" and len(parts) == 9:
            streams.append(
                {
                    "opened": parts[2] == "1",
                    "done": parts[3] == "1",
                    "events": int(parts[4]),
                    "first_at": float(parts[5]),
                    "ended_at": float(parts[6]),
                    "error": "" if parts[8] == "-" else parts[8].replace("-", " "),
                }
            )
        elif parts and parts[0] == "sample" and len(parts) == 6:
            t, proxy, load, own = (float(x) for x in parts[1:5])
            samples.append((t, proxy, load, own, int(parts[5])))
        elif parts and parts[0] == "end":
            seconds = float(parts[1])
    pairs = array("d")
    with events.open("rb") as source:
        pairs.frombytes(source.read())
    return {
        "streams": streams,
        "samples": samples,
        "recv_at": pairs[0::2],
        "latency": pairs[1::2],
        "seconds": seconds,
    }


def run_client(
    *,
    port: int,
    path: str,
    streams: int,
    ramp: float,
    timeout: float,
    pid: int,
    load_pids: list[int],
    cpu: int | None,
    binary: Path | None,
    workdir: Path,
    model: str = MODEL,
    margin: float = 0.5,
) -> dict[str, Any]:
    """One run of the client (C if ``binary``, else this module), pinned to ``cpu``; its summary."""
    options = ["--port", str(port), "--path", path, "--model", model, "--streams", str(streams)]
    options += ["--ramp", str(ramp), "--timeout", str(timeout), "--pid", str(pid)]
    for load in load_pids:
        options += ["--load-pid", str(load)]
    events = workdir / "paced-events.bin"
    if binary is not None:
        command = [str(binary), *options, "--events-out", str(events)]
    else:
        command = [sys.executable, "-m", "bench.paced_client", *options, "--raw-out", str(events)]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=ramp + timeout + 60,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if done.returncode != 0:
        return {"streams": streams, "error": f"client exit {done.returncode}: {done.stderr.strip()[-200:]}"}
    raw = parse_c_output(done.stdout, events) if binary is not None else json.loads(events.read_text())
    events.unlink(missing_ok=True)
    result = summarise(raw, streams, margin)
    result["client"] = "C" if binary is not None else "Python"
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--port", type=int, required=True)
    add("--path", default="/api/chat", help="/api/chat, /api/generate or /v1/chat/completions")
    add("--model", default=MODEL)
    add("--streams", type=int, default=100)
    add("--ramp", type=float, default=1.0, help="seconds over which the streams are opened (1)")
    add("--margin", type=float, default=0.5, help="seconds left out after the last stream opened (0.5)")
    add("--timeout", type=float, default=120.0, help="give up this long after the ramp (120)")
    add("--pid", type=int, default=0, help="the proxy: its CPU and RSS are read in the steady window")
    add("--load-pid", type=int, action="append", help="another load process whose CPU is read (the backend)")
    add("--raw-out", type=Path, help="write the raw record here as JSON (else print the summary)")
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    raw = Client(args).run()
    if args.raw_out:
        raw = {**raw, "recv_at": list(raw["recv_at"]), "latency": list(raw["latency"])}
        args.raw_out.write_text(json.dumps(raw))
    else:
        sys.stdout.write(json.dumps(summarise(raw, args.streams, args.margin)) + "\n")


if __name__ == "__main__":
    main()

"""An OpenAI-compatible backend that paces its stream events like a GPU server: ``--rate`` events a second
per stream, ``--events`` of them, each stamped with its send time (``bench/paced.py``).

Model ``bench-paced`` streams ``--events`` content events, the first at once (the prompt's prefill is
instant here) and each next one ``1/--rate`` seconds after the previous one's *scheduled* time, so that a
late event does not delay the rest.  ``bench-paced-short`` streams three, for warm-ups and checks.  Every
stream ends with the finish chunk, the usage chunk and ``[DONE]``.  ``GET /stats`` reports how many events
were sent and how late the sends were against their schedule (``?reset`` starts the count anew).

One thread, one epoll loop and plain non-blocking sockets: at 500 streams of 50 events a second this has to
send 25,000 events a second on a core it shares with the client, which asyncio's per-write overhead would not
allow.  It only ever listens on loopback and every stream ends by itself.
Run: ``python -m bench.paced_backend --port N``.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import resource
import select
import socket
import sys
import time
from typing import Any

from bench.canned import CREATED, PROMPT_TOKENS
from bench.paced import MODEL, SHORT_EVENTS, SHORT_MODEL, latency_summary

EVENT = (
    b'data: {"id":"chatcmpl-paced","object":"chat.completion.chunk","created":%d,"model":"%s",'
    b'"choices":[{"index":0,"delta":{%s"content":"t=%.6f "},"logprobs":null,"finish_reason":null}]}\n\n'
)
ROLE = b'"role":"assistant",'
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _json_reply(obj: Any, status: str = "200 OK") -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def _tail(model: str, events: int) -> bytes:
    """The finish chunk, the usage chunk, ``[DONE]`` and the last (empty) HTTP chunk."""

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj = {
            "id": "chatcmpl-paced",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    finish = chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": events,
        "total_tokens": PROMPT_TOKENS + events,
    }
    return _chunk(finish) + _chunk(chunk([], usage=usage)) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class Connection:
    __slots__ = ("events", "inbox", "model", "outbox", "sent", "sock", "stream")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = b""
        self.outbox = b""
        self.stream = 0  # a number per stream on this connection, so that stale timers are ignored
        self.model = b""
        self.events = 0
        self.sent = 0


class Backend:
    def __init__(self, port: int, rate: float, events: int) -> None:
        self.interval = 1.0 / rate
        self.events = events
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.poll = select.epoll()
        self.poll.register(self.listener.fileno(), select.EPOLLIN)
        self.conns: dict[int, Connection] = {}
        self.timers: list[tuple[float, int, int, int]] = []  # (due, sequence, fd, stream)
        self.sequence = 0
        self.reset()

    def reset(self) -> None:
        self.sent_events = 0
        self.late: list[float] = []
        self.streams_started = 0
        self.streams_done = 0
        self.blocked_writes = 0
        self.cpu_start = time.process_time()
        self.wall_start = time.monotonic()

    def stats(self) -> dict[str, Any]:
        wall = time.monotonic() - self.wall_start
        return {
            "events": self.sent_events,
            "streams_started": self.streams_started,
            "streams_done": self.streams_done,
            "open_connections": len(self.conns),
            "blocked_writes": self.blocked_writes,
            "lateness": latency_summary(self.late),
            "cpu_s": round(time.process_time() - self.cpu_start, 3),
            "wall_s": round(wall, 3),
        }

    # -- the loop ------------------------------------------------------------------------------------------

    def serve(self, lifetime: float) -> None:
        end = time.monotonic() + lifetime
        print(f"paced backend listening on 127.0.0.1:{self.listener.getsockname()[1]}", flush=True)
        while True:
            now = time.monotonic()
            if now >= end:
                return
            timeout = min(end - now, 1.0)
            if self.timers:
                timeout = max(0.0, min(timeout, self.timers[0][0] - now))
            for fd, mask in self.poll.poll(timeout):
                if fd == self.listener.fileno():
                    self.accept()
                    continue
                conn = self.conns.get(fd)
                if conn is None:
                    continue
                if mask & select.EPOLLOUT:
                    self.flush(conn)
                if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and fd in self.conns:
                    self.read(conn)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                due, _, fd, stream = heapq.heappop(self.timers)
                conn = self.conns.get(fd)
                if conn is not None and conn.stream == stream:
                    self.late.append(time.monotonic() - due)
                    self.next_event(conn, due)

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns[sock.fileno()] = Connection(sock)
            self.poll.register(sock.fileno(), select.EPOLLIN)

    def close(self, conn: Connection) -> None:
        fd = conn.sock.fileno()
        self.conns.pop(fd, None)
        with contextlib.suppress(OSError):
            self.poll.unregister(fd)
        conn.sock.close()

    def read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close(conn)
            return
        conn.inbox += data
        while conn.sock.fileno() in self.conns and not conn.events:
            if not self.one_request(conn):
                return

    def write(self, conn: Connection, data: bytes) -> None:
        if conn.outbox:
            conn.outbox += data
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close(conn)
            return
        if sent < len(data):
            self.blocked_writes += 1
            conn.outbox = data[sent:]
            self.poll.modify(conn.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)

    def flush(self, conn: Connection) -> None:
        data, conn.outbox = conn.outbox, b""
        self.poll.modify(conn.sock.fileno(), select.EPOLLIN)
        if data:
            self.write(conn, data)

    # -- requests ------------------------------------------------------------------------------------------

    def one_request(self, conn: Connection) -> bool:
        """Answer one whole request from the connection's inbox; False if none is complete yet."""
        end = conn.inbox.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = conn.inbox[:end].decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip() or 0)
        if len(conn.inbox) < end + 4 + length:
            return False
        body = conn.inbox[end + 4 : end + 4 + length]
        conn.inbox = conn.inbox[end + 4 + length :]
        method, path = [*head[0].split(" "), "", ""][:2]
        if method == "GET" and path.endswith("/models"):
            data = [
                {"id": m, "object": "model", "created": CREATED, "owned_by": "bench"}
                for m in (MODEL, SHORT_MODEL)
            ]
            self.write(conn, _json_reply({"object": "list", "data": data}))
        elif method == "GET" and path.startswith("/stats"):
            self.write(conn, _json_reply(self.stats()))
            if "reset" in path:
                self.reset()
        elif method == "POST" and path.endswith("/chat/completions"):
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                request = {}
            model = str(request.get("model") or MODEL)
            if request.get("stream"):
                self.start_stream(conn, model)
            else:
                self.write(conn, _json_reply(_completion(model)))
        else:
            self.write(conn, _json_reply({"error": {"message": "not found"}}, "404 Not Found"))
        return True

    def start_stream(self, conn: Connection, model: str) -> None:
        conn.stream += 1
        conn.model = model.encode()
        conn.events = SHORT_EVENTS if model == SHORT_MODEL else self.events
        conn.sent = 0
        self.streams_started += 1
        self.write(conn, STREAM_HEAD)
        self.next_event(conn, time.monotonic())

    def next_event(self, conn: Connection, due: float) -> None:
        role = ROLE if conn.sent == 0 else b""
        self.write(conn, _chunk(EVENT % (CREATED, conn.model, role, time.monotonic())))
        conn.sent += 1
        self.sent_events += 1
        if conn.sent < conn.events:
            self.sequence += 1
            heapq.heappush(self.timers, (due + self.interval, self.sequence, conn.sock.fileno(), conn.stream))
            return
        self.write(conn, _tail(conn.model.decode(), conn.events))
        self.streams_done += 1
        conn.events = 0
        if conn.inbox and conn.sock.fileno() in self.conns:
            while conn.sock.fileno() in self.conns and not conn.events and self.one_request(conn):
                pass


def _completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-paced",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "t=0 "}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 1, "total_tokens": PROMPT_TOKENS + 1},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=50.0, help="events a second per stream (50)")
    parser.add_argument("--events", type=int, default=500, help="content events per stream (500)")
    parser.add_argument("--lifetime", type=float, default=900.0, help="exit after this many seconds")
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(KeyboardInterrupt):
        Backend(args.port, args.rate, args.events).serve(args.lifetime)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

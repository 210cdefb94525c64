"""What keeps one backend's bad minute from becoming every client's: a circuit breaker, a retry policy
with full-jitter backoff, and a bound on concurrent backend requests with a bounded wait queue.

Each is a small object driven by an injected clock, so its behaviour is tested with ``task.Clock`` and
read in one place; ``backend.py`` composes them around every backend call.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from email.utils import parsedate_to_datetime
from types import TracebackType

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from ollama_proxy.errors import Overloaded

# Statuses worth another attempt: the backend is briefly overloaded or restarting.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
# What a server (or the gateway in front of it) answers when it, not the request, is unwell: these count
# toward the backend's breaker.  Other server errors count toward the model's own (ModelBreakers).
GATEWAY_STATUSES = frozenset({502, 503, 504})
# Model breakers kept per backend, at most: a client naming endless models cannot grow them without end.
MAX_MODEL_BREAKERS = 1024
# Ollama's own words for a full queue (clients match on them).
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BackendCircuitOpen(Overloaded):
    """503 at once, without touching the backend, while the breaker is open."""


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; after ``cool_down`` seconds lets one probe through
    (half-open); the probe's success closes it, its failure opens it for another cool-down."""

    def __init__(self, clock: IReactorTime, *, threshold: int, cool_down: float) -> None:
        self._clock = clock
        self.threshold = threshold
        self.cool_down = cool_down
        self.failures = 0
        self.state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probing = False
        self.subject = "the backend"  # what is failing, in the message

    def before_request(self) -> bool:
        """Raise BackendCircuitOpen if no request may go now; True when this request is the probe."""
        if self.state is BreakerState.CLOSED:
            return False
        remaining = self._opened_at + self.cool_down - self._clock.seconds()
        if self.state is BreakerState.OPEN and remaining <= 0:
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        wait = max(remaining, 0.0)
        raise BackendCircuitOpen(
            f"{self.subject} is failing ({self.failures} consecutive errors); "
            f"requests are paused, next try in {wait:.1f} s"
        )

    def succeeded(self) -> None:
        self.failures = 0
        self._probing = False
        self.state = BreakerState.CLOSED

    def failed(self) -> None:
        self.failures += 1
        self._probing = False
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.state = BreakerState.OPEN
            self._opened_at = self._clock.seconds()

    def abandoned(self) -> None:
        """A probe whose outcome is unknown (the client left): let the next request probe instead."""
        self._probing = False

    def seconds_until_retry(self) -> float:
        if self.state is BreakerState.CLOSED:
            return 0.0
        return max(self._opened_at + self.cool_down - self._clock.seconds(), 0.0)


class ModelBreakers:
    """One circuit breaker per model of a backend, for the server errors that are the model's (a broken
    model, a template that fails on every request): they pause requests for that model only, while the
    backend's other models go on being served.

    A breaker exists only for a model that failed; it is dropped once a request for it succeeds again,
    and at most ``MAX_MODEL_BREAKERS`` are kept (the oldest closed ones go first).
    """

    def __init__(self, clock: IReactorTime, *, threshold: int, cool_down: float) -> None:
        self._clock = clock
        self._threshold = threshold
        self._cool_down = cool_down
        self._breakers: dict[str, CircuitBreaker] = {}

    def find(self, model: str | None) -> CircuitBreaker | None:
        return None if model is None else self._breakers.get(model)

    def failed(self, model: str | None) -> None:
        key = model or ""
        breaker = self._breakers.get(key)
        if breaker is None:
            if len(self._breakers) >= MAX_MODEL_BREAKERS:
                closed = [k for k, b in self._breakers.items() if b.state is BreakerState.CLOSED]
                for stale in (closed or list(self._breakers))[: len(self._breakers) - MAX_MODEL_BREAKERS + 1]:
                    del self._breakers[stale]
            breaker = CircuitBreaker(self._clock, threshold=self._threshold, cool_down=self._cool_down)
            breaker.subject = f"the model {model}" if model else "the backend"
            self._breakers[key] = breaker
        breaker.failed()

    def succeeded(self, model: str | None) -> None:
        self._breakers.pop(model or "", None)

    def open_models(self) -> list[str]:
        return [model for model, b in self._breakers.items() if b.seconds_until_retry() > 0]


@attrs.frozen
class RetryPolicy:
    """``retries`` further attempts (0 turns retrying off), all within ``budget`` seconds of the first."""

    retries: int = 2
    budget: float = 15.0
    base: float = 0.25
    cap: float = 4.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (attempt counts from 0)."""
        return rng.uniform(0.0, min(self.cap, self.base * (2**attempt)))


def retry_after_seconds(value: bytes | None, now: float) -> float | None:
    """``Retry-After`` as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(when.timestamp() - now, 0.0)


class ConcurrencyLimit:
    """At most ``limit`` backend requests at once; up to ``queue`` more wait their turn, the rest get 503.

    Used as ``async with limit:`` around the whole backend exchange, stream included.  A waiter whose
    client leaves is cancelled and gives up its place in the queue.
    """

    def __init__(self, limit: int, queue: int) -> None:
        self.limit = limit
        self.queue = queue
        self.active = 0
        self._waiters: deque[Deferred[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def __aenter__(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        if len(self._waiters) >= self.queue:
            raise Overloaded(QUEUE_FULL)
        waiter: Deferred[None] = Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        await waiter  # release() hands its slot over: ``active`` is unchanged

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()

    def release(self) -> None:
        if self._waiters:
            self._waiters.popleft().callback(None)
        else:
            self.active -= 1

"""The whole daemon in memory: its resource tree, gate, handlers, relay and backend client, driven over
in-memory connections on one simulated clock (Twisted's ``MemoryReactorClock``), the way synapse's
``FakeChannel`` tests and treq's ``RequestTraversalAgent`` work.

No socket and no running reactor: bytes move when :meth:`MemoryDaemon.pump` is called, and timeouts,
retries and cool-downs happen when the clock is advanced, so a test of a 30-second timeout takes
microseconds and cannot flake.  The fake backend is the real one of ``fake_backend.py``, served through
the same kind of in-memory connection, on the same clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
import treq
from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent, _SynchronousProducer
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import Site

from ollama_proxy.config import ProxyConfig
from ollama_proxy.service import ProxyService
from tests.fake_backend import FakeBackend

T = TypeVar("T")

BACKEND_URL = "http://backend.test/v1"


class ServingAgent(RequestTraversalAgent):
    """treq's in-memory agent, answered by any server factory (the daemon's site, the fake backend's)."""

    def __init__(self, factory: Site) -> None:
        super().__init__(Resource())
        self._serverFactory = factory
        # While True, every new connection is refused, as by a backend that is down.
        self.refusing = False

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Any:  # noqa: N803
        if self.refusing:
            return fail(ConnectionRefusedError())
        return super().request(method, uri, headers, bodyProducer)

    def flush_all(self) -> bool:
        """Move every pending byte both ways; True when anything moved."""
        moved = False
        for pump in list(self._pumps):
            moved = bool(pump.pump()) or moved
        self.flush()
        return moved


@attrs.frozen
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.body.splitlines()]


class MemoryDaemon:
    """The daemon in memory in front of a fake backend, on one simulated clock."""

    def __init__(self, flavour: str = "vllm", **settings: Any) -> None:
        self.clock = MemoryReactorClock()
        self.backend = FakeBackend(flavour, reactor=self.clock)
        self.backend.base_url = BACKEND_URL
        self._to_backend = ServingAgent(self.backend.site())
        settings.setdefault("listen", ())
        config = ProxyConfig.for_backend(BACKEND_URL, **settings)
        self.service = ProxyService(config, self.clock, agent=self._to_backend)
        self._to_daemon = ServingAgent(self.service.site)
        # Bodies written at once: treq's default producer would wait on the real reactor's cooperator.
        self.http = HTTPClient(self._to_daemon, data_to_body_producer=_SynchronousProducer)

    @property
    def app(self) -> Any:
        return self.service.app

    def backend_down(self, down: bool = True) -> None:
        """Refuse (or again accept) every new connection to the backend."""
        self._to_backend.refusing = down

    def pump(self) -> None:
        """Move bytes between client, daemon and backend until nothing moves (no time passes)."""
        for _ in range(1000):
            moved = self._to_daemon.flush_all()
            moved = self._to_backend.flush_all() or moved
            self.clock.advance(0)  # calls due now (callLater(0, ...))
            if not moved:
                return
        raise AssertionError("the in-memory connections never went quiet")

    def advance(self, seconds: float, *, step: float = 0.05) -> None:
        """Let ``seconds`` pass in steps, moving bytes at each step."""
        remaining = seconds
        self.pump()
        while remaining > 1e-9:
            tick = min(step, remaining)
            self.clock.advance(tick)
            remaining -= tick
            self.pump()

    def settle(self, waiting: Deferred[T], *, within: float = 5.0) -> T:
        """The result of ``waiting``, letting simulated time pass (at most ``within`` seconds)."""
        results: list[T | Failure] = []
        waiting.addBoth(results.append)
        elapsed = 0.0
        self.pump()
        while not results and elapsed < within:
            self.advance(0.05)
            elapsed += 0.05
        if not results:
            raise AssertionError(f"still waiting after {within} simulated seconds")
        (outcome,) = results
        if isinstance(outcome, Failure):
            outcome.raiseException()
        return outcome

    def send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Deferred[Reply]:
        """Start a request; its reply (read to the end) once bytes and time have moved enough."""

        async def exchange() -> Reply:
            body: dict[str, Any] = {"json": json_body} if json_body is not None else {"data": data}
            response: IResponse = await self.http.request(
                method,
                "http://daemon.test" + path,
                headers=Headers({k: [v] for k, v in (headers or {}).items()}),
                **body,
            )
            content = await treq.content(response)
            flat = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
            return Reply(response.code, flat, content)

        return ensureDeferred(exchange())

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        within: float = 5.0,
    ) -> Reply:
        """One whole request and its reply, letting at most ``within`` simulated seconds pass."""
        sent = self.send(method, path, json_body=json_body, data=data, headers=headers)
        return self.settle(sent, within=within)

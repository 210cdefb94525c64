"""``/health`` (liveness), ``/ready`` (readiness) and ``/metrics`` (Prometheus).

Liveness answers from the reactor alone, so it fails only when the process is wedged.  Readiness asks
what a client would need: a closed circuit breaker and a backend that answered ``/models`` recently
(the cached list, refreshed when older than ``models_ttl``).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.web.server import Request

from ollama_proxy.errors import BackendError, Overloaded
from ollama_proxy.resilience import BreakerState
from ollama_proxy.web import Handler, reply_json


class HealthResource(Handler):
    async def on_get(self, request: Request) -> None:
        reply_json(request, {"status": "ok"})


class ReadyResource(Handler):
    async def on_get(self, request: Request) -> None:
        breaker = self.app.backend.breaker
        wait = breaker.seconds_until_retry()
        if wait > 0:
            reason = f"circuit breaker {breaker.state.value}: next try in {wait:.1f} s"
            reply_json(request, {"status": "not ready", "error": reason}, 503)
            return
        try:
            # After a cool-down this fetch is the breaker's probe: its answer decides readiness.
            fresh = breaker.state is not BreakerState.CLOSED
            snapshot = await self.app.catalog.snapshot(max_age=0 if fresh else None)
        except (BackendError, Overloaded) as error:
            reason = f"backend /models failed: {error.message}"
            reply_json(request, {"status": "not ready", "error": reason}, 503)
            return
        reply_json(request, {"status": "ready", "models": len(snapshot.models)})


class MetricsResource(Handler):
    async def on_get(self, request: Request) -> None:
        body = self.app.metrics.exposition()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

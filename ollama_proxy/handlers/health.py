"""``/health`` (liveness), ``/ready`` (readiness) and ``/metrics`` (Prometheus).

Liveness answers from the reactor alone, so it fails only when the process is wedged.  Readiness asks
what a client would need: a closed circuit breaker and a backend that answered ``/models`` recently
(the cached list, refreshed when older than ``models_ttl``).
"""

from __future__ import annotations

from contextlib import suppress

from prometheus_client import CONTENT_TYPE_LATEST

from ollama_proxy.backend import BackendClient
from ollama_proxy.errors import BackendError, Overloaded
from ollama_proxy.resilience import BreakerState
from ollama_proxy.site import ProxyRequest
from ollama_proxy.web import Handler
from ollama_proxy.wire.answer import Answer


class HealthResource(Handler):
    async def on_get(self, request: ProxyRequest) -> None:
        request.send_json({"status": "ok"})


class ReadyResource(Handler):
    """Ready while at least one backend is: its breaker closed (or due a probe) and its ``/models``
    answered within ``models_ttl``.  The body reports every backend, so a degraded replica shows."""

    async def on_get(self, request: ProxyRequest) -> None:
        catalog = self.app.catalog
        due = [client for client in self.app.backends if client.breaker.seconds_until_retry() == 0]
        if due:
            # After a cool-down this fetch is the breaker's probe: its answer decides readiness.
            fresh = any(client.breaker.state is not BreakerState.CLOSED for client in due)
            with suppress(BackendError, Overloaded):  # each backend's failure is kept in catalog.errors
                await catalog.snapshot(max_age=0 if fresh else None)
        # Each backend's last failure, in its own words, which may quote its credentials.
        errors = {client: self.app.scrubber.scrub(error) for client, error in catalog.errors.items()}
        backends = {
            client.name: _backend_status(client, errors.get(client), catalog.model_count(client))
            for client in self.app.backends
        }
        ready = [name for name, status in backends.items() if status["status"] == "ready"]
        body: dict[str, object] = {"status": "ready" if ready else "not ready", "backends": backends}
        if len(self.app.backends) == 1:
            (only,) = backends.values()
            body = {"status": only["status"], **{k: v for k, v in only.items() if k != "status"}}
        request.send_json(body, 200 if ready else 503)


def _backend_status(client: BackendClient, error: str | None, models: int | None) -> dict[str, object]:
    wait = client.breaker.seconds_until_retry()
    if wait > 0:
        reason = f"circuit breaker {client.breaker.state.value}: next try in {wait:.1f} s"
        return {"status": "not ready", "error": reason}
    if error is not None or models is None:
        return {"status": "not ready", "error": f"backend /models failed: {error}"}
    return {"status": "ready", "models": models}


class MetricsResource(Handler):
    async def on_get(self, request: ProxyRequest) -> None:
        # Label values come from the configuration and the backends' model lists: scrubbed like any
        # backend text (once per scrape, not per request).
        exposition = self.app.scrubber.scrub_bytes(self.app.metrics.exposition())
        request.send(Answer(200, exposition, CONTENT_TYPE_LATEST.encode()))

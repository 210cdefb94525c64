"""The objects every handler shares, built once per process by ``service.py``."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.web.iweb import IAgent

from ollama_proxy.backend import BackendClient
from ollama_proxy.catalog import ModelCatalog, RecentModels
from ollama_proxy.config import BackendConfig, ProxyConfig
from ollama_proxy.exchange import Family
from ollama_proxy.metrics import Metrics
from ollama_proxy.redact import Scrubber, backend_secrets
from ollama_proxy.resilience import CircuitBreaker, ConcurrencyLimit, RetryPolicy


@attrs.define
class App:
    """Passed to every resource instead of module globals, so tests build as many as they like."""

    config: ProxyConfig
    # IReactorTime + IReactorTCP; typed loosely because Twisted's reactor has no single interface.
    reactor: Any
    backends: tuple[BackendClient, ...]
    catalog: ModelCatalog
    recent: RecentModels
    started_at: float  # wall clock at start-up: the modified_at of models whose backend gives no date
    metrics: Metrics
    # Every secret the configuration holds, removed from whatever backend text leaves the daemon.
    scrubber: Scrubber

    @property
    def backend(self) -> BackendClient:
        """The first backend: where requests naming no known model go (``/v1`` paths without a model)."""
        return self.backends[0]

    def serves_natively(self, client: BackendClient, family: Family) -> bool:
        """Whether a backend serves ``family``'s API itself (its ``native-apis``): then requests of that
        family are passed through to it rather than translated."""
        for backend, spec in zip(self.backends, self.config.backends, strict=True):
            if backend is client:
                return family in spec.native_apis
        return False

    @classmethod
    def build(cls, config: ProxyConfig, reactor: Any, agent: IAgent | None = None) -> App:
        """``agent``: how backend requests travel (tests pass an in-memory one); default, TCP."""
        metrics = Metrics()
        scrubber = Scrubber(
            (secret for spec in config.backends for secret in backend_secrets(spec.url, spec.api_key)),
            client_keys=config.client_keys,
        )
        backends = tuple(_client(spec, config, reactor, metrics, agent, scrubber) for spec in config.backends)
        catalog = ModelCatalog(
            backends,
            reactor,
            model_map=config.model_map,
            overrides=config.models,
            ttl=config.models_ttl,
            fetch_timeout=config.models_timeout,
        )
        recent = RecentModels(reactor)
        return cls(config, reactor, backends, catalog, recent, reactor.seconds(), metrics, scrubber)


def _client(
    spec: BackendConfig,
    config: ProxyConfig,
    reactor: Any,
    metrics: Metrics,
    agent: IAgent | None,
    scrubber: Scrubber,
) -> BackendClient:
    """One backend's client: its own pool, breaker and concurrency limit."""
    return BackendClient(
        reactor,
        spec.url,
        api_key=spec.api_key,
        pool_size=config.pool_size,
        connect_timeout=config.connect_timeout,
        headers_timeout=config.headers_timeout,
        retry=RetryPolicy(retries=config.retries, budget=config.retry_budget),
        breaker=CircuitBreaker(
            reactor, threshold=config.breaker_threshold, cool_down=config.breaker_cooldown
        ),
        limit=ConcurrencyLimit(config.max_concurrent, config.max_queue),
        observer=metrics,
        name=spec.label,
        dialect=spec.dialect,
        serves=spec.serves,
        agent=agent,
        body_idle_timeout=config.idle_timeout,
        # A body is not read for longer than its headers could have taken.
        body_timeout=config.headers_timeout,
        scrubber=scrubber,
    )

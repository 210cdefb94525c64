"""The running daemon: listeners, the backend pool's lifetime, and SIGHUP reloads of the model map."""

from __future__ import annotations

import contextlib
import gc
import signal
from typing import Any

from prometheus_client.core import Metric
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent
from twisted.web.server import Site

from ollama_proxy.access import ClientKeys, CorsPolicy
from ollama_proxy.app import App
from ollama_proxy.config import ProxyConfig, load_client_keys, load_model_map
from ollama_proxy.errors import BackendError, ConfigError, Overloaded
from ollama_proxy.logs import untrusted
from ollama_proxy.metrics import gauge
from ollama_proxy.open_files import connection_budget
from ollama_proxy.resilience import BreakerState
from ollama_proxy.resources import build_root
from ollama_proxy.sdnotify import describe
from ollama_proxy.signals import SignalHandlers, install_when_running, stop_once
from ollama_proxy.site import ClientLimits, ProxySite

log = Logger(namespace="ollama_proxy.service")

# The youngest generation is collected once this many more container objects were allocated than freed
# (CPython's default: 700).  Nearly all of the daemon's garbage is freed by reference counting as each
# request ends, so at 700 it was the requests in flight that set collections off, about one per five
# requests, and each of them promoted live request objects towards the costly full collections.
GC_THRESHOLDS = (10_000, 10, 10)


def settle_garbage_collector() -> None:
    """Once the daemon is up: leave what start-up made (modules, configuration, the site) out of every
    future collection, and collect the youngest generation far less often.

    Start-up objects never become garbage, yet each full collection walked all of them (some 60,000): with
    CPython's defaults the collector took 80 µs per ``/api/chat`` request under load (2.6 s over about
    33,000 requests, ``gc.callbacks`` timing), a tenth of the daemon's CPU; frozen and with these thresholds,
    about 1 µs.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class ListeningService(Service):
    """Listens on one endpoint description; keeps the bound port for tests, logs and readiness."""

    def __init__(self, reactor: Any, description: str, site: Site) -> None:
        self._reactor = reactor
        self.description = description
        self._site = site
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()
        endpoint = serverFromString(self._reactor, self.description)
        endpoint.listen(self._site).addCallbacks(self._listening, self._cannot_listen)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        address = port.getHost()
        log.info("ollama-proxy listening on {address}", address=describe(address), endpoint=self.description)
        self.listening.callback(port)

    def _cannot_listen(self, failure: Failure) -> None:
        log.error(
            "cannot listen on {endpoint}: {why}", endpoint=self.description, why=failure.getErrorMessage()
        )
        self.listening.errback(failure)
        if self._reactor.running:
            self._reactor.stop()
        else:
            self._reactor.callWhenRunning(self._reactor.stop)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        return port.stopListening()


class ProxyService(MultiService):
    """The whole daemon.  Stopping it stops accepting connections, lets in-flight requests finish within
    the drain timeout, ends the rest with an error, then closes the backend pool.

    With ``handle_signals`` (what ``twistd ollamaproxy`` uses) SIGTERM starts that graceful stop and the
    process exits 0, and SIGHUP reloads the model map and the client keys.
    """

    def __init__(
        self, config: ProxyConfig, reactor: Any, *, handle_signals: bool = False, agent: IAgent | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.app = App.build(config, reactor, agent)
        self.site = ProxySite(
            build_root(self.app),
            clock=reactor,
            max_body=config.max_body,
            client_keys=ClientKeys(config.client_keys),
            cors=CorsPolicy(config.origins),
            metrics=self.app.metrics,
            known_model=self.app.catalog.knows,
            log_bodies=config.log_bodies,
            scrubber=self.app.scrubber,
            limits=ClientLimits(
                header_timeout=config.client_header_timeout,
                body_timeout=config.client_body_timeout,
                stall_timeout=config.stall_timeout,
                keep_alive_timeout=config.keep_alive_timeout,
                max_connections=config.max_connections or connection_budget(config),
                max_connections_per_client=config.max_connections_per_client,
            ),
        )
        self.app.metrics.add_live(self.site.live_gauges)
        self.app.metrics.add_live(self._backend_gauges)
        # Keeps the model list warm, so /api/tags and name lookups rarely wait for the backend.  The
        # first refresh comes one interval after start; until then lookups fetch on demand.
        self._refresh = LoopingCall(self._refresh_models)
        self._refresh.clock = reactor
        self.listeners = [ListeningService(reactor, endpoint, self.site) for endpoint in config.listen]
        for listener in self.listeners:
            listener.setServiceParent(self)
        self._handle_signals = handle_signals
        self._signals: SignalHandlers | None = None

    def startService(self) -> None:
        for client in self.app.backends:
            log.info(
                "ollama-proxy serving backend {backend} (dialect {dialect})",
                backend=client.base_url,
                dialect=client.dialect.value,
            )
        log.info(
            "ollama-proxy accepts {connections} client connections at once",
            connections=self.site.limits.max_connections,
        )
        super().startService()
        self._refresh.start(self.config.models_ttl, now=False)
        if self._handle_signals and self._signals is None:
            # reactor.stop() runs stopService (the drain); a handled SIGTERM, unlike Twisted's own, is not
            # re-raised by twistd at the end, so the drained daemon exits 0.
            self._signals = install_when_running(
                self.reactor, {signal.SIGTERM: stop_once(self.reactor), signal.SIGHUP: self.reload}
            )

    def reload(self) -> None:
        """SIGHUP: re-read the model map and the client keys; a broken file keeps the old values."""
        self.reload_model_map()
        path = self.config.client_keys_file
        if path:
            try:
                tokens = load_client_keys(path)
            except ConfigError as exc:
                log.error("client keys not reloaded, keeping the previous ones: {why}", why=str(exc))
            else:
                self.site.client_keys = ClientKeys(tokens)
                self.app.scrubber.set_client_keys(tokens)
                log.info("client keys reloaded from {path}", path=path)

    def reload_model_map(self) -> None:
        """Swap the alias table; a broken file keeps the old one.  Requests in flight are unaffected."""
        path = self.config.model_map_path
        if not path:
            return
        try:
            model_map = load_model_map(path)
        except ConfigError as exc:
            log.error("model map not reloaded, keeping the previous one: {why}", why=str(exc))
            return
        self.app.catalog.set_model_map(model_map)
        log.info("model map reloaded from {path}: {count} aliases", path=path, count=len(model_map))

    async def _refresh_models(self) -> None:
        try:
            await self.app.catalog.snapshot(max_age=0)
        except (BackendError, Overloaded) as error:
            why = untrusted(self.app.scrubber.scrub(error.message))
            log.warn("backend /models refresh failed: {why}", why=why)

    def _backend_gauges(self) -> list[Metric]:
        states = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
        gauges: list[Metric] = []
        for client in self.app.backends:
            labels = {"backend": client.name}
            gauges += [
                gauge(
                    "backend_breaker_state",
                    "Circuit breaker: 0 closed, 1 half-open (probing), 2 open.",
                    states[client.breaker.state],
                    labels,
                ),
                gauge(
                    "backend_slots_in_use",
                    "Backend requests in flight (max-concurrent).",
                    client.limit.active,
                    labels,
                ),
                gauge("backend_queue", "Requests waiting for a backend slot.", client.limit.waiting, labels),
            ]
        return gauges

    def stopService(self) -> Deferred[None]:
        if self._refresh.running:
            self._refresh.stop()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await super().stopService()  # the listeners: no new connections from here on
        await self._drain()
        for client in self.app.backends:
            await client.close()

    async def _drain(self) -> None:
        await self._finish_requests()
        # What the last responses wrote is still in the transports' buffers: flush it before the reactor
        # stops (its shutdown drops connections without writing what they hold).
        await self.site.close_connections(grace=2.0)

    async def _finish_requests(self) -> None:
        if not self.site.active:
            return
        timeout = self.config.drain_timeout
        log.info(
            "stopping: waiting up to {timeout}s for {count} requests",
            timeout=timeout,
            count=len(self.site.active),
        )
        try:
            await self.site.idle().addTimeout(timeout, self.reactor)
        except defer.TimeoutError:
            log.warn("stopping: ending {count} unfinished requests", count=len(self.site.active))
            for request in list(self.site.active):
                request.end(Overloaded("the server is shutting down"))
            with contextlib.suppress(defer.TimeoutError):
                await self.site.idle().addTimeout(2.0, self.reactor)

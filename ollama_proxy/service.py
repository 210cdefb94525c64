"""The running daemon: listeners, the backend pool's lifetime, and SIGHUP reloads of the model map."""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from ollama_proxy.app import App
from ollama_proxy.backend import redact_url
from ollama_proxy.config import ProxyConfig, load_model_map
from ollama_proxy.errors import ConfigError
from ollama_proxy.resources import build_root
from ollama_proxy.site import ProxySite

log = Logger(namespace="ollama_proxy.service")


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
        log.info("ollama-proxy listening on {address}", address=_describe(address), endpoint=self.description)
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


def _describe(address: Any) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    return str(getattr(address, "name", address))


class ProxyService(MultiService):
    """The whole daemon.  Stopping it stops the listeners first, then closes the backend pool."""

    def __init__(self, config: ProxyConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.app = App.build(config, reactor)
        self.site = ProxySite(build_root(self.app))
        self.listeners = [ListeningService(reactor, endpoint, self.site) for endpoint in config.listen]
        for listener in self.listeners:
            listener.setServiceParent(self)
        self._previous_sighup: Any = None

    def startService(self) -> None:
        log.info(
            "ollama-proxy serving backend {backend} (dialect {dialect})",
            backend=redact_url(self.config.backend),
            dialect=self.config.dialect.value,
        )
        super().startService()
        if self.config.model_map_path:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload_model_map)

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

    def stopService(self) -> Deferred[None]:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await super().stopService()
        await self.app.backend.close()

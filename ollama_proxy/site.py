"""The HTTP site: a Request subclass that decides, before any handler runs, whether a request may proceed
(body size, CORS origin, client token), carries the request id, and writes the access log when the
request really ends.

``Site.log`` is not called for requests whose client went away mid-stream, which are exactly the ones an
operator most needs to see, so the access event is written from ``finish()`` and ``connectionLost()``.
An oversized body is refused from its ``Content-Length`` before a byte of it is stored, or as soon as a
chunked body passes the limit; the rest of it is read and dropped so the client sees the 413.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.core import Metric
from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ollama_proxy.access import ALLOWED_HEADERS, ALLOWED_METHODS, ClientKeys, CorsPolicy
from ollama_proxy.errors import Forbidden, PayloadTooLarge, ProxyError, Unauthorized
from ollama_proxy.exchange import Exchange, Family, Outcome
from ollama_proxy.logs import untrusted
from ollama_proxy.metrics import Metrics, endpoint_label, gauge, model_label
from ollama_proxy.redact import Scrubber
from ollama_proxy.wire import ollama, openai
from ollama_proxy.wire.answer import Answer, Wire, json_answer, raw_response

# Each API family's words (wire/): chosen per request from its path.
WIRES: dict[Family, Wire] = {Family.OLLAMA: ollama.WIRE, Family.OPENAI: openai.WIRE}

access_log = Logger(namespace="ollama_proxy.access")

# A client-supplied X-Request-ID is kept only when it is a plain token, so it cannot forge log lines.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
# Probes must work without a token (load balancers, systemd, Kubernetes).
OPEN_PATHS = frozenset({b"/", b"/health", b"/ready"})
# nginx's status for a request whose client went away before its answer ended.
CLIENT_CLOSED_REQUEST = 499
# How long the rest of an oversized body is read and dropped before the connection is closed anyway.
LINGER_SECONDS = 10.0


class ProxyRequest(Request):
    """A client request: the gate it passes before any handler runs, its :class:`Exchange` (the one home
    of per-request state), the one way anything is written back to the client, and the access event
    once it ends."""

    oversized = False
    received = 0
    _site: ProxySite | None = None

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        self.exchange = Exchange()

    @property
    def proxy_site(self) -> ProxySite:
        # Kept on the request: Twisted drops request.channel once the request finishes.
        if self._site is None:
            self._site = self.channel.site  # type: ignore[attr-defined]  # Site.buildProtocol sets it
        assert self._site is not None  # noqa: S101 -- for mypy; set just above
        return self._site

    @property
    def wire(self) -> Wire:
        """The API family's words for every answer this request gets."""
        return WIRES[self.exchange.family]

    @property
    def _transport(self) -> Any:
        return self.channel.transport

    # -- before the body: the size limit -------------------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        # The path is known to the channel before the request has it: it decides the error's shape.
        self.exchange.family = Family.for_path(getattr(self.channel, "_path", b"/"))
        if length is not None and length > self.proxy_site.max_body:
            self._refuse_oversized()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.oversized:
            return
        self.received += len(data)
        if self.received > self.proxy_site.max_body:
            self._refuse_oversized()
            return
        super().handleContentChunk(data)

    def _refuse_oversized(self) -> None:
        """The 413 goes out at once, before the body is read (Twisted's request machinery has not run),
        and the rest of the body is read and dropped for a while so the client sees it."""
        self.oversized = True
        self.content = io.BytesIO()
        answer = self.wire.error(PayloadTooLarge(self.proxy_site.max_body), self.exchange)
        transport = self._transport
        transport.write(raw_response(answer))
        self.code = answer.status
        self.exchange.started = time.monotonic()
        self.proxy_site.clock.callLater(LINGER_SECONDS, transport.loseConnection)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.oversized:
            self.method, self.uri = command, path
            self._log_access(Outcome.TOO_LARGE)
            self._transport.loseConnection()
            return
        super().requestReceived(command, path, version)

    # -- the request proper ----------------------------------------------------------------------------

    def process(self) -> None:
        exchange = self.exchange
        exchange.started = time.monotonic()
        exchange.family = Family.for_path(self.path or b"/")
        supplied = (self.getHeader(b"x-request-id") or b"").decode("latin-1")
        exchange.request_id = supplied if _SANE_REQUEST_ID.match(supplied) else os.urandom(16).hex()
        self.setHeader(b"x-request-id", exchange.request_id.encode())
        site = self.proxy_site
        self.site = site  # what Request.process() sets first; the early answers below need it too
        if not self._cors(site.cors) or not self._authorized(site.client_keys):
            return
        if site.log_bodies and self.content is not None:
            # --log-bodies, for debugging: bodies may hold private prompts (keys are in headers).
            self.content.seek(0)
            body = self.content.read(4096).decode("utf-8", "replace")
            self.content.seek(0)
            access_log.debug(
                "{request_id} request body: {body}", request_id=exchange.request_id, body=untrusted(body)
            )
        site.active.add(self)
        super().process()

    def _cors(self, policy: CorsPolicy) -> bool:
        """Apply CORS; False when the request has been answered here (preflight or refused origin)."""
        origin = self.getHeader(b"origin")
        if origin is None:
            return True
        text = origin.decode("latin-1")
        if not policy.allows(text):
            self.send_error(Forbidden(f"origin {text} is not allowed"))
            return False
        self.setHeader(b"access-control-allow-origin", policy.allow_origin_header(text))
        self.setHeader(b"vary", b"Origin")
        if self.method == b"OPTIONS" and self.getHeader(b"access-control-request-method"):
            self.setHeader(b"access-control-allow-methods", ALLOWED_METHODS)
            self.setHeader(b"access-control-allow-headers", ALLOWED_HEADERS)
            self.setHeader(b"access-control-max-age", b"86400")
            self.send(Answer(204))
            return False
        return True

    def _authorized(self, keys: ClientKeys) -> bool:
        if not keys.enabled or (self.path or b"/") in OPEN_PATHS:
            return True
        if keys.allows(self.getHeader(b"authorization")):
            self.exchange.client_key = True
            return True
        self.send_error(Unauthorized("unauthorized: a valid bearer token is required"))
        return False

    # -- answering: every byte for the client goes through here ----------------------------------------

    @property
    def gone(self) -> bool:
        """True once the client disconnected or the response is complete: nothing may be written any more."""
        return bool(self.finished) or self.channel is None or bool(getattr(self, "_disconnected", False))

    def finish_response(self) -> None:
        """``finish()`` raises after a disconnect, when there is nothing left to finish anyway."""
        if not self.gone:
            self.finish()

    def send(self, answer: Answer) -> None:
        """Write a whole answer and finish."""
        if self.gone:
            return
        self.setResponseCode(answer.status)
        for name, value in answer.headers:
            self.setHeader(name, value)
        if answer.content_type is not None:
            self.setHeader(b"content-type", answer.content_type)
        self.setHeader(b"content-length", b"%d" % len(answer.body))
        if answer.body:
            self.write(answer.body)
        self.finish()

    def send_json(self, body: Any, status: int = 200) -> None:
        self.send(json_answer(body, status))

    def send_error(self, error: ProxyError) -> None:
        """Before any output: the error in the family's shape, with its status.  After output began (the
        status line has gone): the family's closing bytes for a broken stream, never a fake ending.

        Whatever made the error, its words pass the scrubber here: some quote a backend's."""
        if self.gone:
            return
        error.message = self.proxy_site.scrubber.scrub(error.message)
        if self.startedWriting:
            self.exchange.stream_failed = True
            tail = self.wire.broken_stream(error.message)
            if tail:
                self.write(tail)
            self.finish()
            return
        self.send(self.wire.error(error, self.exchange))

    def end(self, error: ProxyError) -> None:
        """End a request in flight from outside its handler (a shutdown): a stream gets ``error`` as its
        ending, anything else ``error`` as its answer; the handler's work, and its backend call, is
        cancelled."""
        exchange = self.exchange
        if exchange.relay is not None:
            exchange.relay.shutdown(error.message)
            return
        self.send_error(error)
        if exchange.running is not None:
            exchange.running.cancel()

    # -- the end -------------------------------------------------------------------------------------

    def finish(self) -> None:
        super().finish()
        self._log_access(Outcome.STREAM_ERROR if self.exchange.stream_failed else Outcome.COMPLETED)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._log_access(Outcome.CLIENT_GONE)

    def _log_access(self, outcome: Outcome) -> None:
        exchange = self.exchange
        if exchange.outcome is not None:  # finish() then connectionLost(): one event per request
            return
        exchange.outcome = outcome
        if outcome is Outcome.CLIENT_GONE:
            # What nginx logs for a request its client abandoned: whatever status line went out (or was
            # about to), the client never had the whole answer.
            self.code = CLIENT_CLOSED_REQUEST
        duration = time.monotonic() - exchange.started
        method = (self.method or b"").decode("ascii", "replace")
        path = (self.uri or b"").decode("utf-8", "replace").split("?", 1)[0]
        site = self._site
        if site is not None:
            site.request_ended(self)
            site.record(self, method, duration)
        ttft = exchange.first_token_seconds
        access_log.info(
            "{request_id} {client} {method} {path} {status} {duration_ms}ms {outcome}"
            " model={model} ttft_ms={ttft_ms} tokens={prompt_tokens}/{completion_tokens}",
            request_id=exchange.request_id,
            client=untrusted(_peer(self)),
            method=untrusted(method),
            path=untrusted(path),
            status=self.code,
            duration_ms=round(duration * 1000, 1),
            ttft_ms=None if ttft is None else round(ttft * 1000, 1),
            model=untrusted(exchange.model),
            backend_model=untrusted(exchange.backend_model),
            api=exchange.family.value,
            prompt_tokens=exchange.prompt_tokens,
            completion_tokens=exchange.completion_tokens,
            bytes_out=self.sentLength,
            outcome=outcome.value,
        )


def _peer(request: Request) -> str:
    address: Any = request.getClientAddress()
    host = getattr(address, "host", None)
    return str(host) if host is not None else str(address)


class ProxyChannel(HTTPChannel):
    """A client connection that tells its site when it opens and closes.

    Used in place of Twisted's default protocol, a proxy that exists to switch to HTTP/2 after a TLS ALPN
    negotiation: this daemon serves neither (an h2c upgrade offer is ignored), and the site needs an exact
    count of its open connections (graceful shutdown, and ``--workers`` sharing them out).
    """

    site: ProxySite

    def connectionMade(self) -> None:
        super().connectionMade()
        # Streams are many small writes: none may wait for the client's ACK of the one before (Nagle).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.site.connection_opened(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.site.connection_closed(self)


class ProxySite(Site):
    requestFactory = ProxyRequest
    protocol = ProxyChannel  # type: ignore[assignment]  # Twisted types it as its HTTP/2-switching proxy
    noisy = False

    def __init__(
        self,
        root: Resource,
        *,
        clock: Any,
        max_body: int,
        client_keys: ClientKeys | None = None,
        cors: CorsPolicy | None = None,
        metrics: Metrics | None = None,
        known_model: Callable[[str], bool] = lambda _: False,
        log_bodies: bool = False,
        scrubber: Scrubber | None = None,
    ) -> None:
        super().__init__(root)
        # Nothing here takes HTML form posts; not parsing them saves an email.message header parse on
        # every POST (a tenth of the daemon's CPU on /api/chat in the profile).  Requests copy this flag.
        self._parsePOSTFormSubmission = False
        self.clock = clock
        self.metrics = metrics or Metrics()
        self._known_model = known_model
        self.log_bodies = log_bodies
        self.max_body = max_body
        self.client_keys = client_keys or ClientKeys(())
        self.cors = cors or CorsPolicy(())
        # Every configured secret: error answers and relayed error bytes pass it on their way out.
        self.scrubber = scrubber or Scrubber()
        # Requests being handled, for a graceful shutdown; idle() fires when the set empties.
        self.active: set[ProxyRequest] = set()
        self._idle_waiters: list[Deferred[None]] = []
        # Open client connections, so a shutdown can close them politely (flushing what was written), and
        # whoever shares connections out between workers is told how many there are.
        self.connections: set[ProxyChannel] = set()
        self.connections_changed: Callable[[int], object] | None = None

    def connection_opened(self, channel: ProxyChannel) -> None:
        self.connections.add(channel)
        if self.connections_changed is not None:
            self.connections_changed(len(self.connections))

    def connection_closed(self, channel: ProxyChannel) -> None:
        self.connections.discard(channel)
        if self.connections_changed is not None:
            self.connections_changed(len(self.connections))

    async def close_connections(self, grace: float) -> None:
        """Close every client connection after its pending output is written; abort after ``grace``."""
        transports: list[Any] = [
            channel.transport for channel in list(self.connections) if channel.transport is not None
        ]
        for transport in transports:
            transport.loseConnection()
        deadline = self.clock.seconds() + grace
        while any(getattr(t, "connected", False) for t in transports) and self.clock.seconds() < deadline:
            await deferLater(self.clock, 0.02)
        for transport in transports:
            if getattr(transport, "connected", False):
                transport.abortConnection()

    def request_ended(self, request: ProxyRequest) -> None:
        self.active.discard(request)
        if not self.active:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.called:  # a cancelled wait (drain timeout) has already fired
                    waiter.callback(None)

    def record(self, request: ProxyRequest, method: str, seconds: float) -> None:
        """Metrics for a request that has ended."""
        exchange = request.exchange
        endpoint = endpoint_label(request.path or b"/")
        self.metrics.request_ended(
            endpoint, method, request.code, seconds, gone=exchange.outcome is Outcome.CLIENT_GONE
        )
        if exchange.backend_model is not None:
            self.metrics.generation(
                endpoint,
                model_label(self._known_model, exchange.backend_model),
                ttft=exchange.first_token_seconds,
                prompt_tokens=exchange.prompt_tokens,
                completion_tokens=exchange.completion_tokens,
                decode_seconds=exchange.decode_seconds,
            )

    def live_gauges(self) -> list[Metric]:
        """In-flight requests and open streams, counted when Prometheus asks."""
        streams = sum(1 for request in self.active if request.exchange.relay is not None)
        return [
            gauge("requests_in_flight", "Requests being handled now.", len(self.active)),
            gauge("open_streams", "Streaming responses being relayed now.", streams),
        ]

    def idle(self) -> Deferred[None]:
        """Fires once no request is being handled."""
        waiter: Deferred[None] = Deferred()
        if not self.active:
            waiter.callback(None)
        else:
            self._idle_waiters.append(waiter)
        return waiter

    def log(self, request: Any) -> None:
        """Replaced by ProxyRequest's access event, which also covers aborted requests."""

"""The HTTP site: a Request subclass that decides, before any handler runs, whether a request may proceed
(body size, CORS origin, client token), carries the request id, and writes the access log when the
request really ends; and a channel subclass, the client's connection, that holds it to the site's
``ClientLimits`` (how many connections, how long for a request's head and body, how large a head, how long
a response may wait unread).

``Site.log`` is not called for requests whose client went away mid-stream, which are exactly the ones an
operator most needs to see, so the access event is written from ``finish()`` and ``connectionLost()``.
An oversized body is refused from its ``Content-Length`` before a byte of it is stored, or as soon as a
chunked body passes the limit; the rest of it is read and dropped so the client sees the 413.
"""

from __future__ import annotations

import collections
import io
import os
import re
import time
from collections.abc import Callable
from typing import Any

import attrs
from prometheus_client.core import Metric
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ollama_proxy.access import ALLOWED_HEADERS, ALLOWED_METHODS, ClientKeys, CorsPolicy
from ollama_proxy.errors import (
    Forbidden,
    HeadersTooLarge,
    Overloaded,
    PayloadTooLarge,
    ProxyError,
    RequestTimeout,
    Unauthorized,
    URITooLong,
)
from ollama_proxy.exchange import Exchange, Family, Outcome
from ollama_proxy.logs import literal_format, untrusted
from ollama_proxy.metrics import Metrics, endpoint_label, gauge, model_label
from ollama_proxy.redact import Scrubber
from ollama_proxy.wire import anthropic, ollama, openai, responses
from ollama_proxy.wire.answer import Answer, Wire, json_answer, raw_response

# Each API family's words (wire/): chosen per request from its path.
WIRES: dict[Family, Wire] = {
    wire.family: wire for wire in (ollama.WIRE, openai.WIRE, anthropic.WIRE, responses.WIRE)
}

access_log = Logger(namespace="ollama_proxy.access")
log = Logger(namespace="ollama_proxy.site")

# A client-supplied X-Request-ID is kept only when it is a plain token, so it cannot forge log lines.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
# Probes must work without a token (load balancers, systemd, Kubernetes).
OPEN_PATHS = frozenset({b"/", b"/health", b"/ready"})
# nginx's status for a request whose client went away before its answer ended.
CLIENT_CLOSED_REQUEST = 499
# How long the rest of an oversized body is read and dropped before the connection is closed anyway.
LINGER_SECONDS = 10.0
# How long a connection answered before its request was read whole (408, 414, 431, a refusal) goes on being
# read, and what comes dropped, before it is aborted: time for the client to read the answer and close.
CLOSE_LINGER = 2.0
# Beyond this many refused connections still closing, a refused connection is aborted at once (its answer
# may be lost): a client that opens connections faster than it closes them cannot hold descriptors that way.
REFUSED_CLOSING_MAX = 32
# The access event's text line.
ACCESS_LINE = (
    "{request_id} {client} {method} {path} {status} {duration_ms}ms {outcome}"
    " model={model} ttft_ms={ttft_ms} tokens={prompt_tokens}/{completion_tokens}"
)
# How much of a request line too long to read is kept for the access log.
LOGGED_URI_BYTES = 256


class ProxyRequest(Request):
    """A client request: the gate it passes before any handler runs, its :class:`Exchange` (the one home
    of per-request state), the one way anything is written back to the client, and the access event
    once it ends."""

    oversized = False
    received = 0
    _site: ProxySite | None = None

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        # Started when its request line is in; process() starts it again once the whole request is.
        self.exchange = Exchange(started=time.monotonic())

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
        self._write_early(PayloadTooLarge(self.proxy_site.max_body))
        self.proxy_site.clock.callLater(LINGER_SECONDS, self._transport.loseConnection)

    def answer_early(self, error: ProxyError, outcome: Outcome, method: bytes, uri: bytes) -> None:
        """Answer a request that was not read whole (its head or body too slow, its head too large, its
        connection over a limit) with ``error``, in the family of the path read so far, and write its
        access event.  The channel closes the connection."""
        self.method, self.uri = method, uri
        self.path = uri.split(b"?", 1)[0]
        self.exchange.family = Family.for_path(self.path or b"/")
        self._write_early(error)
        self._log_access(outcome)

    def _write_early(self, error: ProxyError) -> None:
        """``error`` in the family's words, written straight to the transport with ``Connection: close``:
        what is said before Twisted's request machinery runs."""
        answer = self.wire.error(error, self.exchange)
        self._transport.write(raw_response(answer))
        self.code = answer.status

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.oversized:
            self.method, self.uri, self.path = command, path, path.split(b"?", 1)[0]
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
        # Anthropic's SDKs send their key as x-api-key, Claude Code's auth token as a bearer token.
        if keys.allows(self.getHeader(b"authorization"), self.getHeader(b"x-api-key")):
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
        self._log_access(Outcome.CLIENT_TOO_SLOW if self.exchange.cut_off else Outcome.CLIENT_GONE)

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
        fields: dict[str, Any] = {
            "request_id": exchange.request_id,
            "client": untrusted(_peer(self)),
            "method": untrusted(method),
            "path": untrusted(path),
            "status": self.code,
            "duration_ms": round(duration * 1000, 1),
            "outcome": outcome.value,
            "model": untrusted(exchange.model),
            "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
            "prompt_tokens": exchange.prompt_tokens,
            "completion_tokens": exchange.completion_tokens,
            "backend_model": untrusted(exchange.backend_model),
            "api": exchange.family.value,
            "bytes_out": self.sentLength,
        }
        # Rendered here by str.format (in C; untrusted values escape themselves) rather than by
        # Twisted's formatter, pure Python, which cost 55 us of every request's 200 on /api/tags
        # (bench/results/callprofile-tags.txt); the fields still ride along for the JSON format.
        access_log.info(literal_format(ACCESS_LINE.format_map(fields)), **fields)


def _unsent_bytes(transport: Any) -> int | None:
    """How much output a TCP or UNIX transport still holds (Twisted's ``FileDescriptor`` buffers), or None
    for one that keeps it elsewhere (TLS): a smaller number later means the client read some."""
    try:
        return len(transport.dataBuffer) - int(transport.offset) + int(transport._tempDataLen)
    except (AttributeError, TypeError):
        return None


def _peer(request: Request) -> str:
    address: Any = request.getClientAddress()
    host = getattr(address, "host", None)
    return str(host) if host is not None else str(address)


@attrs.frozen
class ClientLimits:
    """What one client connection may take of the daemon: time to send a request head and a body, time
    to read what it is sent, idle time between requests, and how many connections may be open at once
    (in all, and from one address; None: no limit)."""

    header_timeout: float = 60.0
    body_timeout: float = 60.0
    stall_timeout: float = 60.0
    keep_alive_timeout: float = 60.0
    max_connections: int | None = None
    max_connections_per_client: int | None = None


class ProxyChannel(HTTPChannel):
    """A client connection: it tells its site when it opens and closes, and holds the client to the site's
    :class:`ClientLimits`.

    Used in place of Twisted's default protocol, a proxy that exists to switch to HTTP/2 after a TLS ALPN
    negotiation: this daemon serves neither (an h2c upgrade offer is ignored), and the site needs an exact
    count of its open connections (graceful shutdown, the connection limits, and ``--workers`` sharing
    them out).

    Twisted's own idle timeout starts again at every byte received, so a client that trickles its request a
    byte at a time is never timed out by it; here a request's head must be in within ``header_timeout`` of
    its first byte and its body within ``body_timeout`` of its head, or the client gets a 408.  A client
    that stops reading is found through its transport, which pauses the channel when its send buffer is
    full and resumes it once the buffer has drained: a pause in which the client reads nothing for
    ``stall_timeout`` aborts the connection, whether a stream is being relayed or a whole response is
    waiting to be read.  A client that reads, however slowly, is left alone (a large answer over a slow
    link can take longer than ``stall_timeout`` to drain).
    """

    site: ProxySite
    requests: list[ProxyRequest]  # the site's request factory makes them
    transport: Any  # a TCP (or UNIX, or TLS) transport: it can abort and half-close
    client_host: str | None = None  # the peer's IP address, for the per-client limit
    admitted = False  # counted among the site's connections (not refused over a limit)
    _own_address: Any = None
    _head_deadline: IDelayedCall | None = None
    _body_deadline: IDelayedCall | None = None
    _stall: IDelayedCall | None = None
    _unsent_at_last_look: int | None = None
    # Set once the connection has been answered early and is closing: what the client still sends is
    # dropped until it closes, or this call aborts the connection.
    _closing: IDelayedCall | None = None

    @property
    def _limits(self) -> ClientLimits:
        return self.site.limits

    def getHost(self) -> Any:  # noqa: N802 -- Twisted's name
        """The connection's own address, asked of the kernel once: Twisted's ``Request`` asks for it on
        every request it makes (a ``getsockname`` and an address object each), and it cannot change."""
        if self._own_address is None:
            self._own_address = self.transport.getHost()
        return self._own_address

    def connectionMade(self) -> None:
        super().connectionMade()
        # Streams are many small writes: none may wait for the client's ACK of the one before (Nagle).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.client_host = getattr(self.transport.getPeer(), "host", None)
        refusal = self.site.admit(self)
        if refusal is not None:
            self._answer_early(refusal, Outcome.REFUSED)
            if len(self.site.refused) > REFUSED_CLOSING_MAX:
                self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for call in (self._head_deadline, self._body_deadline, self._stall, self._closing):
            self._cancel(call)
        self._head_deadline = self._body_deadline = self._stall = self._closing = None
        super().connectionLost(reason)
        self.site.connection_closed(self)

    # -- reading a request: its head and its body, each against its deadline ---------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing is not None:
            return
        # A request head starts with its first byte (blank lines between requests do not count).
        if (
            self._head_deadline is None
            and self.line_mode
            and not self._handlingRequest
            and data.strip(b"\r\n")
        ):
            self._head_deadline = self.callLater(self._limits.header_timeout, self._head_too_slow)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._closing is not None:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._head_too_large(line)
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line longer than Twisted reads (16 KiB), which it would close the connection on, unanswered."""
        if self._closing is None:
            self._head_too_large(line)

    def rawDataReceived(self, data: bytes) -> None:
        if self._closing is None:
            super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        self._cancel(self._head_deadline)
        self._head_deadline = None
        if self.length != 0:  # a body follows (None: a chunked one)
            self._body_deadline = self.callLater(self._limits.body_timeout, self._body_too_slow)
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._cancel(self._body_deadline)
        self._body_deadline = None
        super().allContentReceived()

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        seconds = self._limits.header_timeout
        error = RequestTimeout(f"the request's headers did not arrive within {seconds:g} seconds")
        self._answer_early(error, Outcome.CLIENT_TOO_SLOW, self._buffer)

    def _body_too_slow(self) -> None:
        self._body_deadline = None
        if self.requests[-1].oversized:  # its 413 is out already
            self.transport.loseConnection()
            return
        seconds = self._limits.body_timeout
        error = RequestTimeout(f"the request body did not arrive within {seconds:g} seconds")
        self._answer_early(error, Outcome.CLIENT_TOO_SLOW)

    def _head_too_large(self, line: bytes) -> None:
        limit = self.totalHeadersSize
        if self._reading_request_line:
            self._answer_early(URITooLong(limit), Outcome.TOO_LARGE, line)
        else:
            self._answer_early(HeadersTooLarge(limit), Outcome.TOO_LARGE)

    @property
    def _reading_request_line(self) -> bool:
        # Twisted keeps the parsed request line in these until the request has been read whole.
        return not hasattr(self, "_path")

    # -- answering before Twisted's request machinery runs, and closing -----------------------------------

    def _answer_early(self, error: ProxyError, outcome: Outcome, partial_line: bytes = b"") -> None:
        """Answer the request being read with ``error`` and close the connection.

        Its request line is Twisted's, or, while that line is still coming, what has come of it
        (``partial_line``): either way its path decides the family of the answer.  The connection is
        closed as a polite server closes: the answer, then the end of the write side, so the client reads
        the answer and then the end; what the client goes on sending is read and dropped until it closes,
        or for ``CLOSE_LINGER`` seconds, when the connection is aborted.  (Closed at once with unread input
        the socket would be reset instead, and the reset can destroy the answer before the client reads it:
        Python's http.client, hence requests, lost eight answers in ten that way.)
        """
        for call in (self._head_deadline, self._body_deadline):
            self._cancel(call)
        self._head_deadline = self._body_deadline = None
        if self._reading_request_line:
            method, _, rest = partial_line.partition(b" ")
            uri = rest.split(b" ", 1)[0][:LOGGED_URI_BYTES]
            request = ProxyRequest(self)
        else:
            method, uri, request = self._command, self._path, self.requests[-1]
        request.answer_early(error, outcome, method[:LOGGED_URI_BYTES], uri)
        self.setTimeout(None)
        self._closing = self.callLater(CLOSE_LINGER, self.transport.abortConnection)
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is not None:
            half_close()
        else:
            self.transport.loseConnection()

    # -- sending: a client that stops reading ------------------------------------------------------------

    def pauseProducing(self) -> None:
        super().pauseProducing()  # called at every write while the buffer is full: one watch
        if self._stall is None and self._closing is None:
            self._watch_stall()

    def resumeProducing(self) -> None:
        self._cancel(self._stall)
        self._stall = None
        super().resumeProducing()

    def _watch_stall(self) -> None:
        self._unsent_at_last_look = _unsent_bytes(self.transport)
        self._stall = self.callLater(self._limits.stall_timeout, self._look_for_a_stall)

    def _look_for_a_stall(self) -> None:
        """The send buffer has been full for ``stall_timeout``: a client that read something meanwhile is
        slow, and is watched for as long again; one that read nothing is cut off (no answer could reach it,
        and a polite close would wait for the buffers it does not read), and a stream being relayed stops
        its backend request as the connection goes."""
        self._stall = None
        before, now = self._unsent_at_last_look, _unsent_bytes(self.transport)
        if before is not None and now is not None and now < before:
            self._watch_stall()
            return
        log.info(
            "aborting the connection of {client}: it read nothing for {seconds:g} seconds",
            client=self.client_host,
            seconds=self._limits.stall_timeout,
        )
        for request in self.requests:
            request.exchange.cut_off = True
        self.transport.abortConnection()

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()


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
        limits: ClientLimits | None = None,
    ) -> None:
        self.limits = limits or ClientLimits()
        # Twisted's idle timeout of a connection between requests (and while one is read) is the
        # keep-alive timeout; on the site's clock, like every other timer.
        super().__init__(root, timeout=self.limits.keep_alive_timeout, reactor=clock)
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
        self._per_client: collections.Counter[str] = collections.Counter()
        # Connections refused over a limit, while they are answered and closed.
        self.refused: set[ProxyChannel] = set()

    def admit(self, channel: ProxyChannel) -> Overloaded | None:
        """Count a new connection in, or say why it is refused (a connection limit is reached)."""
        limits = self.limits
        host = channel.client_host
        if limits.max_connections is not None and len(self.connections) >= limits.max_connections:
            self.metrics.connection_refused("max_connections")
            refusal = Overloaded(
                f"too many connections: the server's limit is {limits.max_connections}; try again later"
            )
        elif (
            limits.max_connections_per_client is not None
            and host is not None
            and self._per_client[host] >= limits.max_connections_per_client
        ):
            self.metrics.connection_refused("max_connections_per_client")
            refusal = Overloaded(
                f"too many connections from {host}: the limit is {limits.max_connections_per_client}"
            )
        else:
            channel.admitted = True
            self.connections.add(channel)
            if host is not None:
                self._per_client[host] += 1
            if self.connections_changed is not None:
                self.connections_changed(len(self.connections))
            return None
        self.refused.add(channel)
        return refusal

    def connection_closed(self, channel: ProxyChannel) -> None:
        self.refused.discard(channel)
        if not channel.admitted:
            return
        self.connections.discard(channel)
        host = channel.client_host
        if host is not None:
            self._per_client[host] -= 1
            if self._per_client[host] <= 0:
                del self._per_client[host]
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
        # A request answered before its path was read (a refused connection) is no route's.
        endpoint = endpoint_label(request.path) if request.path else "other"
        self.metrics.request_ended(
            exchange.family.value,
            endpoint,
            method,
            request.code,
            seconds,
            gone=exchange.outcome is Outcome.CLIENT_GONE,
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
            gauge("client_connections", "Client connections open now.", len(self.connections)),
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

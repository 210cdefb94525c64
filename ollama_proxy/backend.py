"""The one client of the OpenAI-compatible backend: a treq ``HTTPClient`` over one persistent connection pool
for the life of the process.

Every way a backend call can fail becomes a typed ``BackendError`` here, so handlers never see a Twisted
connection exception and clients never see the backend's key or address credentials.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any, Protocol

from hyperlink import EncodedURL
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet import error as net_error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from ollama_proxy.errors import BackendError, BackendRejected, BackendTimeout, BackendUnreachable
from ollama_proxy.json_codec import JSONRejected, compact_json, parse_json
from ollama_proxy.redact import Scrubber, backend_secrets, basic_credentials, redact_url
from ollama_proxy.resilience import (
    GATEWAY_STATUSES,
    RETRYABLE_STATUSES,
    BackendCircuitOpen,
    CircuitBreaker,
    ConcurrencyLimit,
    ModelBreakers,
    RetryPolicy,
    retry_after_seconds,
)
from ollama_proxy.translate.dialect import Dialect

# Error bodies are read only this far: enough for any real message, bounded against a hostile backend.
MAX_ERROR_BODY = 64 * 1024
# Parsed backend URLs kept, one per path.
MAX_CACHED_URLS = 256
# JSON replies (model lists, non-stream completions) are bounded too.
MAX_JSON_BODY = 64 * 1024 * 1024


def error_message(body: bytes, status: int) -> str:
    """The human message inside a backend error body (OpenAI, vLLM, llama.cpp, FastAPI shapes)."""
    text = body[:MAX_ERROR_BODY].decode("utf-8", "replace").strip()
    try:
        data = parse_json(text, allow_constants=True, max_values=None)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("msg") or json.dumps(value)
            if isinstance(value, list) and value and isinstance(value[0], dict):
                value = value[0].get("msg") or json.dumps(value)
            if isinstance(value, str) and value:
                return value
    if text and not text.startswith("<"):
        return text[:500]
    return f"backend returned HTTP {status}"


_INVALID_REQUEST_TYPES = frozenset(
    {"invalid_request_error", "badrequesterror", "bad_request", "bad_request_error", "validation_error"}
)


def blames_request(body: bytes) -> bool:
    """Whether a server error's body says the request itself was invalid (some servers answer a bad
    request with a 500 whose error type says so); such an answer says nothing about the model's health."""
    try:
        data = parse_json(body[:MAX_ERROR_BODY], allow_constants=True, max_values=None)
    except ValueError:
        return False
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return False
    kind = error.get("type")
    return (isinstance(kind, str) and kind.lower() in _INVALID_REQUEST_TYPES) or error.get("code") == 400


@implementer(IResponse)
class ReadResponse:
    """A backend response whose (error) body the breaker already read: the same answer, body in hand."""

    def __init__(self, response: IResponse, body: bytes) -> None:
        self.version = response.version
        self.code = response.code
        self.phrase = response.phrase
        self.headers = response.headers
        self.length = len(body)
        self.request = response.request
        self.previousResponse = response.previousResponse
        self.body = body

    def deliverBody(self, protocol: Any) -> None:  # noqa: N802 -- IResponse's name
        raise RuntimeError("a ReadResponse's body was read already: use BackendClient.read_body")

    def setPreviousResponse(self, response: IResponse) -> None:  # noqa: N802 -- IResponse's name
        self.previousResponse = response


class _BodyReader(TwistedProtocol):
    """Collects a response body, aborting the connection when it grows beyond ``limit``, when the
    backend sends nothing for ``idle`` seconds, or when the whole read takes longer than ``total``."""

    def __init__(
        self,
        done: Deferred[bytes],
        clock: IReactorTime,
        limit: int,
        idle: float,
        total: float,
        each: Callable[[bytes], object] | None = None,
    ) -> None:
        self._done = done
        # Given, each part goes there as it arrives rather than into the collected body.
        self._each = each
        self._clock = clock
        self._limit = limit
        self._idle_seconds = idle
        self._parts: list[bytes] = []
        self._size = 0
        self._failure: BaseException | None = None
        self._idle: IDelayedCall = clock.callLater(idle, self.abort, BackendTimeout(_silent(idle)))
        self._total: IDelayedCall = clock.callLater(total, self.abort, BackendTimeout(_too_slow(total)))

    def dataReceived(self, data: bytes) -> None:
        if self._failure is not None:
            return
        self._size += len(data)
        if self._size > self._limit:
            self.abort(BackendError(f"backend reply larger than {self._limit} bytes"))
            return
        if self._each is None:
            self._parts.append(data)
        else:
            self._each(data)
        if self._idle.active():
            self._idle.reset(self._idle_seconds)

    def abort(self, failure: BaseException | None) -> None:
        """Stop reading: ``failure`` is what the reader gets (None: it was cancelled)."""
        if self._failure is None:
            self._failure = failure or CancelledError()
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for call in (self._idle, self._total):
            if call.active():
                call.cancel()
        if self._done.called:
            return
        if self._failure is not None:
            self._done.errback(self._failure)
        elif reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(_connection_error(reason.value or net_error.ConnectionDone()))


def _silent(seconds: float) -> str:
    return f"the backend sent nothing for {seconds:g} seconds"


def _too_slow(seconds: float) -> str:
    return f"the backend's reply took longer than {seconds:g} seconds"


class BackendObserver(Protocol):
    """Who hears about every backend exchange (the metrics)."""

    def backend_response(self, status: int) -> None: ...

    def backend_error(self, reason: str) -> None: ...

    def backend_retry(self) -> None: ...


class _Unobserved:
    def backend_response(self, status: int) -> None:
        """Nobody is listening."""

    def backend_error(self, reason: str) -> None:
        """Nobody is listening."""

    def backend_retry(self) -> None:
        """Nobody is listening."""


class NoCookies(IndexableCookieJar):
    """treq's cookie jar, kept empty.

    treq keeps one jar per client and sends its cookies with every later request.  Here every Ollama
    client's requests share the one backend client, so a cookie the backend sets would ride along with
    everybody's requests: a load balancer's affinity cookie in front of several vLLM replicas would pin
    the whole daemon to one of them.
    """

    def add_cookie_header(self, request: Any) -> None:
        """No cookie goes to the backend."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        """None is kept."""

    def set_cookie(self, cookie: Any) -> None:
        """None is kept."""


@implementer(IAgentEndpointFactory)
class BackendEndpoints:
    """How the agent reaches a backend: an address given as an IP literal (``127.0.0.1``, ``[::1]``, the
    usual way to name a local vLLM or llama.cpp) is connected to directly.

    Twisted's own factory resolves every host, IP literals included, with ``getaddrinfo`` on the
    reactor's thread pool: a thread hop on each new backend connection, and llama.cpp's server closes
    every connection that carried a stream, so a new one is needed per streamed request.  Host names
    are still resolved that way; ``https://`` connections are wrapped in TLS as Twisted's own agent does.
    """

    def __init__(self, reactor: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._timeout = connect_timeout
        self._tls: Any = None  # Twisted's browser-like TLS policy, made at the first https:// connection

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:  # noqa: N802 -- Twisted's name
        host = uri.host.decode("ascii")
        endpoint: IStreamClientEndpoint
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        else:
            endpoint = HostnameEndpoint(self._reactor, uri.host, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            if self._tls is None:
                from twisted.web.client import BrowserLikePolicyForHTTPS

                self._tls = BrowserLikePolicyForHTTPS()
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


class _QuietClientFactory(_HTTP11ClientFactory):
    """The pool's connection factory without its "Starting factory" / "Stopping factory" info lines: one
    pair per backend connection drowned the one access line per request an operator reads."""

    noisy = False


@implementer(IBodyProducer)
class BytesBody:
    """A request body already in memory, written at once.

    treq would wrap the bytes in a ``FileBodyProducer``, which hands them over from a cooperative task
    in a later reactor turn: one more scheduled call per backend request for nothing.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:  # noqa: N802 -- Twisted's name
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        """Everything was written at once."""

    def resumeProducing(self) -> None:
        """Everything was written at once."""

    def stopProducing(self) -> None:
        """Everything was written at once."""


class PreparedURL(EncodedURL):
    """A backend URL whose network form is worked out once, when it is first used.

    treq turns every URL it is given into its ASCII form (``to_uri().to_text()``) for every request:
    percent-encoding and an IDNA check of each label of the host, 44 us of pure Python per backend
    request (bench/results/callprofile-v1-chat.txt) for a URL that never changes.  The URL is already
    in that form here, and its text is kept.  An IP literal is no name for IDNA to check (which refuses
    an IPv6 address's colons: a backend at ``http://[::1]:8000/v1`` failed every request that way).
    """

    _text: str | None = None

    @classmethod
    def prepare(cls, text: str) -> PreparedURL:
        url = EncodedURL.from_text(text)
        if isIPAddress(url.host) or isIPv6Address(url.host):
            uri = url.replace(host="").to_uri().replace(host=url.host)
        else:
            uri = url.to_uri()
        prepared = cls(
            scheme=uri.scheme,
            host=uri.host,
            path=uri.path,
            query=uri.query,
            fragment=uri.fragment,
            port=uri.port,
            rooted=uri.rooted,
            userinfo=uri.userinfo,
            uses_netloc=uri.uses_netloc,
        )
        prepared._text = uri.to_text()
        return prepared

    def to_uri(self) -> EncodedURL:
        return self if self._text is not None else super().to_uri()

    def to_text(self, with_password: bool = False) -> str:
        if self._text is not None and not with_password:
            return self._text
        text: str = super().to_text(with_password)
        return text


class BackendClient:
    """Calls the backend under ``base_url`` (e.g. ``http://gpu1:8000/v1``) through one pool, with a
    response-headers timeout, retries before anything reaches the client, and a circuit breaker."""

    def __init__(
        self,
        reactor: IReactorTime,
        base_url: str,
        *,
        api_key: str | None,
        pool_size: int,
        connect_timeout: float,
        headers_timeout: float = 600.0,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        limit: ConcurrencyLimit | None = None,
        rng: random.Random | None = None,
        observer: BackendObserver | None = None,
        name: str = "",
        dialect: Dialect = Dialect.VLLM,
        serves: Callable[[str], bool] | None = None,
        agent: IAgent | None = None,
        body_idle_timeout: float = 300.0,
        body_timeout: float = 600.0,
        scrubber: Scrubber | None = None,
    ) -> None:
        # Credentials in the URL (``http://user:pass@host/v1``) become Basic auth when no key is set;
        # they never stay in the URL, which appears in logs.
        self.base_url = redact_url(base_url).rstrip("/")
        basic = basic_credentials(base_url)
        self._authorization: bytes | None = None
        if api_key:
            self._authorization = b"Bearer " + api_key.encode()
        elif basic is not None:
            self._authorization = b"Basic " + basic.encode("ascii")
        # Every configured secret (the App's, shared by all backends), else this backend's own.
        self.scrubber = scrubber or Scrubber(backend_secrets(base_url, api_key))
        self._clock = reactor
        self.headers_timeout = headers_timeout
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker(reactor, threshold=5, cool_down=15.0)
        self.model_breakers = ModelBreakers(
            reactor, threshold=self.breaker.threshold, cool_down=self.breaker.cool_down
        )
        self.body_idle_timeout = body_idle_timeout
        self.body_timeout = body_timeout
        self.limit = limit or ConcurrencyLimit(limit=64, queue=512)
        self._rng = rng or random.Random()  # noqa: S311 -- backoff jitter, not security
        self.observer: BackendObserver = observer or _Unobserved()
        self.name = name or redact_url(base_url)
        self.dialect = dialect
        # Which of the backend's model ids it serves through this daemon (a configured filter).
        self.serves: Callable[[str], bool] = serves or (lambda _: True)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = pool_size
        self.pool._factory = _QuietClientFactory  # Twisted names the hook privately
        # Below the usual backend keep-alive (uvicorn: 5 s) so a reused connection is rarely a closed one.
        self.pool.cachedConnectionTimeout = 4
        if agent is None:  # tests hand in an in-memory agent
            agent = Agent.usingEndpointFactory(
                reactor, BackendEndpoints(reactor, connect_timeout), pool=self.pool
            )
        self.http = HTTPClient(agent, cookiejar=NoCookies(), data_to_body_producer=BytesBody)
        self._urls: dict[str, PreparedURL] = {}

    def url(self, path: str) -> PreparedURL:
        """The backend URL for ``path``, parsed once per path (parsing showed up in the profile).

        ``path`` is relative to the base URL (``models`` is ``…/v1/models``); one that starts with ``/`` is
        from the server's root, the base URL without its ``/v1``, where llama.cpp keeps ``/props`` and
        llama.cpp and vLLM serve ``/tokenize``.
        """
        found = self._urls.get(path)
        if found is None:
            base = self.base_url.removesuffix("/v1") if path.startswith("/") else self.base_url
            found = PreparedURL.prepare(f"{base}/{path.lstrip('/')}")
            if len(self._urls) < MAX_CACHED_URLS:  # pass-through paths are the client's to choose
                self._urls[path] = found
        return found

    def _headers(self, request_id: str | None, extra: dict[bytes, list[bytes]] | None) -> Headers:
        headers = Headers({b"accept": [b"application/json"]})
        if self._authorization:
            headers.setRawHeaders(b"authorization", [self._authorization])
        if request_id:
            headers.setRawHeaders(b"x-request-id", [request_id.encode()])
        for name, values in (extra or {}).items():
            if name.lower() == b"authorization" and self._authorization:
                continue  # a pass-through client's own Authorization: the configured credentials replace it
            headers.setRawHeaders(name, values)
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        request_id: str | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
        retry: bool = True,
        model: str | None = None,
    ) -> IResponse:
        """Send a request and return the response as soon as its headers arrive (body unread, unbuffered).

        Nothing has reached the client yet, so refused or reset connections and 429/502/503/504 answers
        are retried with full-jitter backoff (honouring ``Retry-After``) while the policy allows.  The
        breakers see every outcome (``_attempt``); ``model`` names the backend model the request is for,
        whose own breaker a server error counts toward.  Connection failures raise BackendUnreachable /
        BackendTimeout; an HTTP error status is returned for the caller to relay or raise
        (``raise_for_status``).
        """
        deadline = self._clock.seconds() + self.retry.budget
        attempt = 0
        while True:
            outcome = await self._attempt(
                method, path, body, request_id, headers, first=attempt == 0, model=model
            )
            if isinstance(outcome, BackendError):
                # A first attempt the backend closed unanswered most likely went out on a kept-alive
                # connection it was closing (see _attempt): the retry goes at once.
                stale = attempt == 0 and _closed_unanswered(outcome)
                delay = 0.0 if stale else self.retry.backoff(attempt, self._rng)
            elif outcome.code not in RETRYABLE_STATUSES:
                return outcome
            else:
                retry_after = outcome.headers.getRawHeaders(b"retry-after", [None])[0]
                found = retry_after_seconds(retry_after, self._clock.seconds())
                delay = self.retry.backoff(attempt, self._rng) if found is None else found
            if not retry or attempt >= self.retry.retries or self._clock.seconds() + delay > deadline:
                if isinstance(outcome, BackendError):
                    raise outcome
                return outcome
            if not isinstance(outcome, BackendError):
                await self.read_body(outcome, MAX_ERROR_BODY)  # frees the pooled connection
            attempt += 1
            self.observer.backend_retry()
            await deferLater(self._clock, delay)

    async def _attempt(
        self,
        method: str,
        path: str,
        body: bytes | None,
        request_id: str | None,
        headers: dict[bytes, list[bytes]] | None,
        *,
        first: bool,
        model: str | None,
    ) -> IResponse | BackendError:
        """One attempt through the breakers: the response, or a failure worth retrying (others raise).

        What counts (``docs/operations.md``, "The circuit breakers"): toward the backend's breaker,
        connection failures, timeouts and the gateway statuses 502/503/504, which say the server itself
        is unwell; toward the model's own breaker, any other server error (500 ...) unless its body says
        the request was invalid, since one broken model, or one client's bad bodies, must not take the
        backend's healthy models away from everyone.  A backend's 4xx answers are the request's fault and
        never count.

        A request that goes out on a kept-alive connection the server is closing is closed unanswered.
        llama.cpp's server closes every connection that carried a streamed reply, without saying so in
        the reply, so the next request on it meets exactly that; uvicorn (so vLLM) closes connections
        idle for 5 s.  On a first attempt that says nothing about the backend's health, and a burst of
        requests can meet several such connections at once: counting each would open the breaker.
        """
        model_breaker = self.model_breakers.find(model)
        try:
            probe = self.breaker.before_request()
            model_probe = model_breaker.before_request() if model_breaker is not None else False
        except BackendCircuitOpen:
            self.observer.backend_error("breaker_open")
            raise
        try:
            response = await self._send(method, path, body, request_id, headers)
        except BackendError as error:
            if first and _closed_unanswered(error):
                if probe:
                    self.breaker.abandoned()
            else:
                self.breaker.failed()
            if model_probe and model_breaker is not None:
                model_breaker.abandoned()
            self.observer.backend_error(error.reason)
            if isinstance(error, BackendUnreachable) and error.retryable:
                return error
            raise
        except BaseException:
            if probe:
                self.breaker.abandoned()
            if model_probe and model_breaker is not None:
                model_breaker.abandoned()
            raise
        self.observer.backend_response(response.code)
        code = response.code
        if code in GATEWAY_STATUSES:
            self.breaker.failed()
            return response
        self.breaker.succeeded()  # the server answered for itself
        if code >= 500 and code != 501:
            # The body decides, so it is read here (bounded) and kept for whoever relays the error.
            error_body = await self.read_body(response, MAX_ERROR_BODY)
            response = ReadResponse(response, error_body)
            if blames_request(error_body):
                self.model_breakers.succeeded(model)
            else:
                self.model_breakers.failed(model)
        else:
            self.model_breakers.succeeded(model)
        return response

    async def _send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        request_id: str | None,
        headers: dict[bytes, list[bytes]] | None,
    ) -> IResponse:
        """One attempt, aborted if the response headers take longer than ``headers_timeout``."""
        all_headers = self._headers(request_id, headers)
        if body is not None and not all_headers.hasHeader(b"content-type"):
            all_headers.setRawHeaders(b"content-type", [b"application/json"])
        sending: Deferred[Any] = self.http.request(
            method,
            self.url(path),
            data=body,
            headers=all_headers,
            unbuffered=True,
            allow_redirects=False,  # a backend redirect is not followed with the key attached
        )
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            sending.cancel()

        timer: IDelayedCall = self._clock.callLater(self.headers_timeout, expire)
        try:
            response: IResponse = await sending
        except CancelledError:
            if expired:
                raise BackendTimeout(_no_headers(self.headers_timeout)) from None
            raise
        except Exception as exc:  # each failure kind is mapped below; nothing else escapes
            if expired:
                raise BackendTimeout(_no_headers(self.headers_timeout)) from None
            if _cancelled(exc):
                # The client left before the headers: Agent reports that as ResponseNeverReceived
                # around a CancelledError.  It says nothing about the backend's health.
                raise CancelledError() from None
            raise _connection_error(exc) from None
        finally:
            if timer.active():
                timer.cancel()
        return response

    async def raise_for_status(self, response: IResponse) -> None:
        """Turn a backend HTTP error into BackendRejected with the backend's own message, scrubbed of every
        secret (backends quote the credentials they rejected): from here it reaches clients, logs and
        ``/ready``."""
        if response.code < 400:
            return
        # Scrubbed before the message is cut to length (a secret cut short is no longer recognisable) and
        # after JSON decoded it (an escape can spell a secret's characters differently).
        body = self.scrubber.scrub_bytes(await self.read_body(response, MAX_ERROR_BODY))
        message = self.scrubber.scrub(error_message(body, response.code))
        raise BackendRejected.from_backend(message, response.code)

    async def read_body(
        self, response: IResponse, limit: int, *, each: Callable[[bytes], object] | None = None
    ) -> bytes:
        """The whole body, up to ``limit`` bytes, within ``body_idle_timeout`` between reads and
        ``body_timeout`` in all (the connection is dropped beyond any of them): a backend that sends its
        headers and then stalls cannot hold a request, or the model-list refresh, for ever.

        With ``each``, every part is handed to it as it arrives instead, and ``b""`` returned: for a
        stream read whole, where when each part came matters.
        """
        if isinstance(response, ReadResponse):
            if each is not None:
                each(response.body)
                return b""
            return response.body
        done: Deferred[bytes] = Deferred(lambda _: reader.abort(None))
        reader = _BodyReader(done, self._clock, limit, self.body_idle_timeout, self.body_timeout, each)
        response.deliverBody(reader)
        return await done

    async def get_json(self, path: str, *, request_id: str | None = None) -> Any:
        response = await self.request("GET", path, request_id=request_id)
        return await self.json_body(response)

    async def post_json(
        self,
        path: str,
        payload: Any,
        *,
        request_id: str | None = None,
        retry: bool = True,
        model: str | None = None,
    ) -> Any:
        body = compact_json(payload)
        response = await self.request(
            "POST", path, body=body, request_id=request_id, retry=retry, model=model
        )
        return await self.json_body(response)

    async def json_body(self, response: IResponse) -> Any:
        await self.raise_for_status(response)
        body = await self.read_body(response, MAX_JSON_BODY)
        try:
            return parse_json(body, allow_constants=True, max_values=None)
        except JSONRejected as exc:
            raise BackendError(f"backend sent a reply the daemon cannot use: {exc}") from None
        except ValueError:
            raise BackendError("backend sent a reply that is not JSON") from None

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


def _cancelled(exc: BaseException) -> bool:
    reasons = getattr(exc, "reasons", None) or []
    return isinstance(exc, CancelledError) or any(
        isinstance(getattr(reason, "value", None), CancelledError) for reason in reasons
    )


def _closed_unanswered(error: BackendError) -> bool:
    return isinstance(error, BackendUnreachable) and error.retryable and error.reason == "reset"


def _no_headers(seconds: float) -> str:
    return f"the backend did not answer within {seconds:g} seconds"


def _connection_error(exc: BaseException) -> BackendError:
    """Name the failure without the backend's address details a client has no use for."""
    reasons: list[BaseException] = [exc]
    if isinstance(exc, (ResponseNeverReceived, RequestTransmissionFailed, ResponseFailed)):
        reasons = [f.value for f in exc.reasons] or reasons
    first = reasons[0]
    if isinstance(first, (net_error.TimeoutError, net_error.ConnectingCancelledError)):
        return BackendTimeout("timed out connecting to the backend")
    if isinstance(first, net_error.ConnectionRefusedError):
        return BackendUnreachable(
            "cannot reach the backend: connection refused", retryable=True, reason="refused"
        )
    if isinstance(first, net_error.DNSLookupError):
        return BackendUnreachable("cannot reach the backend: its host name does not resolve", reason="dns")
    if isinstance(first, (net_error.ConnectionLost, net_error.ConnectionDone)) and (
        isinstance(exc, ResponseNeverReceived) or not isinstance(exc, ResponseFailed)
    ):
        # Closed before a byte of the response (ResponseNeverReceived is a ResponseFailed too): nothing
        # was generated for this request, so it is safe to send again.
        return BackendUnreachable("the backend closed the connection", retryable=True, reason="reset")
    if isinstance(first, (net_error.ConnectionLost, net_error.ConnectionDone)):
        return BackendUnreachable("the backend closed the connection", reason="reset")
    if isinstance(first, net_error.ConnectError):
        return BackendUnreachable(f"cannot reach the backend: {type(first).__name__}")
    return BackendUnreachable(f"backend request failed: {type(first).__name__}")

"""A fake OpenAI-compatible backend (vLLM / OpenAI / OpenRouter / llama.cpp flavours) for end-to-end tests.

It is a real twisted.web server: tests point the proxy (or an SDK) at ``await backend.listen(reactor)`` and
script the answers through ``backend.script`` and ``backend.fail_next(...)``. Streams are written by a push
producer registered on the request, so backpressure and client disconnects are observable through the
``pauses``, ``disconnects``, ``open_streams`` and ``bytes_streamed`` counters.

Standalone: ``python -m tests.fake_backend --flavour vllm --port 0`` prints ``listening on URL`` and serves
until SIGTERM.

No module-level reactor import: the reactor is passed in (``reactor=`` or ``listen(reactor)``) or imported
lazily, so pytest-twisted can install the reactor it wants first.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http
import itertools
import json
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, Literal, cast
from urllib.parse import parse_qs, unquote

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IPushProducer, IReactorTCP, IReactorTime
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

Flavour = Literal["vllm", "openai", "openrouter", "llamacpp"]
FLAVOURS: Final[tuple[str, ...]] = ("vllm", "openai", "openrouter", "llamacpp")

DEFAULT_MODELS: Final[dict[str, list[str]]] = {
    "vllm": ["Qwen/Qwen2.5-7B-Instruct", "BAAI/bge-small-en-v1.5"],
    "openai": ["gpt-4o-mini", "text-embedding-3-small"],
    "openrouter": ["meta-llama/llama-3.2-11b-vision-instruct:free", "openai/gpt-4o"],
    "llamacpp": ["smollm2"],
}

MODEL_CREATED: Final = 1_730_000_000
COMMENT_EVENT: Final = b": OPENROUTER PROCESSING\n\n"
DONE_EVENT: Final = b"data: [DONE]\n\n"
#: Bytes written per reactor turn, at most, when a stream has no event delay.
_BATCH_BYTES: Final = 64 * 1024


def _dumps(obj: Any) -> bytes:
    """Compact JSON with raw UTF-8, as vLLM (pydantic) writes it."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sse(obj: Any) -> bytes:
    """One SSE event carrying ``obj`` as JSON."""
    return b"data: " + _dumps(obj) + b"\n\n"


def _body_model(rec: Any) -> str | None:
    try:
        body = json.loads(rec.body) if rec.body else None
    except ValueError:
        return None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else None


def awkward_split(data: bytes) -> list[bytes]:
    """Split one SSE event at awkward places: inside ``data:``, mid-JSON, inside the first multi-byte UTF-8
    character (if any) and between the two terminating newlines."""
    cuts = {3, len(data) // 2, len(data) - 1}
    for i, byte in enumerate(data):
        if byte >= 0xC0:  # a UTF-8 lead byte: cut right after it
            cuts.add(i + 1)
            break
    points = sorted(c for c in cuts if 0 < c < len(data))
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def openai_error(
    message: str, type_: str, code: int | str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _error_type_for(status: int) -> str:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        return "APIError"
    name = "".join(word.capitalize() for word in phrase.replace("-", " ").split())
    return name if name.endswith("Error") else name + "Error"


@attrs.define
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    query: bytes
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define
class ChatScript:
    """What the next ``/chat/completions`` (and ``/completions``) calls answer."""

    content: list[str] = attrs.Factory(lambda: ["Hel", "lo", "!"])
    reasoning: list[str] = attrs.Factory(list)
    reasoning_field: str = "reasoning_content"
    tool_calls: list[dict[str, Any]] = attrs.Factory(list)
    finish_reason: str = "stop"
    usage: dict[str, Any] | None = attrs.Factory(
        lambda: {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    )
    event_delay: float = 0.0
    header_delay: float = 0.0
    split_writes: bool = False
    endless: bool = False
    error_after: int | None = None
    drop_after: int | None = None
    comments: bool = False
    # What the error_after error says (default: a fixed sentence naming the event count).
    error_message: str | None = None
    # The error_after error quotes the credentials its request came with, as a careless backend does.
    echo_credentials: bool = False


@attrs.define
class _Failure:
    status: int
    body: dict[str, Any] | str | None
    headers: dict[str, str]


class _Drop:
    """Marker in an event stream: abort the TCP connection here."""


_DROP: Final = _Drop()
StreamItem = bytes | _Drop


def _abort(transport: Any) -> None:
    """Reset a TCP connection (transports without abortConnection are just closed)."""
    if transport is None:
        return
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


def _abort_request(request: Request) -> None:
    if request.channel is not None:
        _abort(request.channel.transport)


class _TrackingFactory(WrappingFactory):
    """Wraps the Site to know its open connections, so ``stop()`` can close them and wait."""

    def __init__(self, site: Site) -> None:
        super().__init__(site)
        self._idle_waiters: list[Deferred[None]] = []

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def close_all(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if not self.protocols:
            d.callback(None)
            return d
        self._idle_waiters.append(d)
        for proto in list(self.protocols):
            _abort(proto.transport)
        return d


class _Root(Resource):
    isLeaf = True

    def __init__(self, backend: FakeBackend) -> None:
        super().__init__()
        self._backend = backend

    def render(self, request: Request) -> bytes | int:
        return self._backend._handle(request)


@implementer(IPushProducer)
class _SSEStream:
    """Writes an SSE event sequence into a request as a push producer."""

    def __init__(
        self,
        backend: FakeBackend,
        request: Request,
        events: Iterator[StreamItem],
        script: ChatScript,
    ) -> None:
        self._backend = backend
        self._request = request
        self._events = events
        self._delay = script.event_delay
        self._split = script.split_writes
        self._pending: deque[bytes] = deque()
        self._call: IDelayedCall | None = None
        self._paused = False
        self.running = False
        self.sent = bytearray()  # every byte written, for byte-for-byte comparisons

    def start(self, header_delay: float) -> None:
        self.running = True
        self._backend.open_streams += 1
        self._backend._streams.add(self)
        self._backend.sent_streams.append(self.sent)
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(self._client_gone)
        self._schedule(header_delay)

    # -- IPushProducer, called by the HTTP channel ---------------------------------------------
    def pauseProducing(self) -> None:
        if not self._paused:
            self._paused = True
            self._backend.pauses += 1

    def resumeProducing(self) -> None:
        if not self._paused:
            return
        self._paused = False
        if self.running and self._call is None:
            self._schedule(0.0)

    def stopProducing(self) -> None:
        self._client_gone(None)

    # -- internals -----------------------------------------------------------------------------
    def _client_gone(self, reason: Failure | None) -> None:
        if self.running:
            self._backend.disconnects += 1
            self.close()

    def close(self) -> None:
        """Stop without writing anything more (idempotent)."""
        if not self.running:
            return
        self.running = False
        self._backend.open_streams -= 1
        self._backend._streams.discard(self)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self, delay: float) -> None:
        self._call = self._backend._call_later(delay, self._step)

    def _write(self, data: bytes) -> None:
        self._backend.bytes_streamed += len(data)
        self.sent += data
        self._request.write(data)

    def _step(self) -> None:
        self._call = None
        written = 0
        while self.running and not self._paused:
            if self._pending:
                piece = self._pending.popleft()
                self._write(piece)
                written += len(piece)
                if self._pending:  # more pieces of a split event: next reactor turn
                    break
                if self._delay > 0 or self._split or written >= _BATCH_BYTES:
                    if self.running and not self._paused:
                        self._schedule(self._delay)
                    return
                continue
            item = next(self._events, None)
            if item is None:
                self._finish()
                return
            if isinstance(item, _Drop):
                self._drop()
                return
            self._pending.extend(awkward_split(item) if self._split else [item])
        if self.running and not self._paused:
            self._schedule(0.0)

    def _finish(self) -> None:
        self.close()
        if self._request.channel is not None:
            self._request.unregisterProducer()
            self._request.finish()

    def _drop(self) -> None:
        # Close the TCP connection mid-body, as a crashing backend process does: what was written so far
        # still reaches the client (an abortConnection() would discard it), then the chunked body is cut.
        self.close()
        channel = self._request.channel
        if channel is not None and channel.transport is not None:
            channel.transport.loseConnection()


class FakeBackend:
    """A scriptable OpenAI-compatible HTTP server."""

    def __init__(
        self,
        flavour: str = "vllm",
        models: list[str] | None = None,
        *,
        api_key: str | None = None,
        embedding_dim: int = 8,
        reactor: IReactorTime | None = None,
    ) -> None:
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
        self.flavour: str = flavour
        self.models: list[str] = list(models) if models is not None else list(DEFAULT_MODELS[flavour])
        self.api_key = api_key
        self.embedding_dim = embedding_dim
        # The context of every model, in the fake's tokens (words): vLLM's max_model_len, llama.cpp's n_ctx.
        self.max_model_len = 8192
        # llama.cpp's GET /props, per model: what the default (a model whose template shows no tools and
        # no reasoning, like SmolLM2's) is replaced with, key by key.
        self.props: dict[str, dict[str, Any]] = {}
        # Seconds before /props answers (a server busy loading, or hung).
        self.props_delay = 0.0
        self.requests: list[Recorded] = []
        self.script: ChatScript = ChatScript()
        self.disconnects = 0
        self.pauses = 0
        self.open_streams = 0
        self.bytes_streamed = 0
        # The bytes of each stream, in the order they were started.
        self.sent_streams: list[bytearray] = []
        # Headers added to every response (e.g. to see which ones a proxy relays).
        self.extra_headers: dict[str, str] = {}
        self.base_url: str = ""  # set by listen()
        # vLLM and llama.cpp serve POST /tokenize; False: a server of theirs without it (404).
        self.tokenizer = True
        self._clock = reactor
        self._failures: deque[_Failure] = deque()
        # When set, a request is closed unanswered (a clean close) the first time its X-Request-ID is
        # seen, as llama.cpp's server does to a request on a connection that carried a stream; the
        # request's retry is answered.
        self.close_first_attempts = False
        self._attempted: set[str] = set()
        self._stalls: dict[str, int] = {}
        self.stalled: list[Request] = []  # the requests left hanging by stall_next
        self._model_failures: dict[str | None, tuple[int, dict[str, Any]]] = {}
        # When set, every request is refused with this status and a message quoting the credentials it
        # came with (credential_echo), as a backend that echoes what it rejected does.
        self.echo_credentials: int | None = None
        self._streams: set[_SSEStream] = set()
        self._delayed: set[IDelayedCall] = set()
        self._root: _Root | None = None
        self._site: Site | None = None
        self._factory: _TrackingFactory | None = None
        self._port: IListeningPort | None = None
        self._ids = itertools.count(1)

    # -- public API ----------------------------------------------------------------------------
    def fail_next(
        self,
        status: int,
        body: dict[str, Any] | str | None = None,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next ``times`` requests, to any path, get this error (queued after earlier failures)."""
        for _ in range(times):
            self._failures.append(_Failure(status, body, dict(headers or {})))

    def stall_next(self, path: str, *, times: int = 1) -> None:
        """The next ``times`` requests to ``path`` (``/v1/models``, ``/v1/chat/completions``) get their
        response headers and one byte of body, then nothing more."""
        self._stalls[path.rstrip("/")] = self._stalls.get(path.rstrip("/"), 0) + times

    def fail_model(self, model: str, status: int, body: dict[str, Any] | None = None) -> None:
        """Every request naming ``model`` in its body gets this error (until ``heal_model``): one broken
        model on an otherwise healthy server."""
        error = body or openai_error(f"model {model} crashed", "InternalServerError", status)
        self._model_failures[model] = (status, error)

    def heal_model(self, model: str) -> None:
        self._model_failures.pop(model, None)

    @staticmethod
    def credential_echo(authorization: str) -> str:
        """What a careless backend says about credentials it refuses: the header as it came, the
        credentials decoded, and the partial forms OpenAI prints (``sk-proj-...abcd``, ``***abcd``)."""
        scheme, _, value = authorization.partition(" ")
        secret = value
        extra = ""
        if scheme.lower() == "basic":
            user, _, password = base64.b64decode(value).decode("utf-8", "replace").partition(":")
            secret = password or user
            extra = f" for {user}:{password} ({value[:6]}...{value[-4:]})"
        return (
            f"Incorrect API key provided: {secret[:8]}...{secret[-3:]}. You sent 'Authorization: "
            f"{authorization}'{extra}; the key is {secret[:3]}****...****{secret[-4:]} (***{secret[-4:]})."
        )

    def resource(self) -> IResource:
        if self._root is None:
            self._root = _Root(self)
        return self._root

    def site(self) -> Site:
        if self._site is None:
            self._site = Site(self.resource())
            self._site.noisy = False
            self._site.displayTracebacks = False
        return self._site

    def embedding_for(self, text: str, dimensions: int | None = None) -> list[float]:
        """The (unnormalised, deterministic) vector this fake returns for ``text``."""
        dim = self.embedding_dim if dimensions is None else min(dimensions, self.embedding_dim)
        out: list[float] = []
        block = 0
        while len(out) < dim:
            digest = hashlib.sha256(f"{block}:{text}".encode()).digest()
            for i in range(0, len(digest), 2):
                value = int.from_bytes(digest[i : i + 2], "big") / 65535.0
                out.append(round(value * 6.0 - 3.0, 6))  # in [-3, 3]: clearly not unit length
            block += 1
        return out[:dim]

    def listen_sync(self, reactor: IReactorTCP, interface: str = "127.0.0.1", port: int = 0) -> str:
        if self._port is not None:
            raise RuntimeError("already listening")
        if self._clock is None:
            self._clock = IReactorTime(reactor)
        self._factory = _TrackingFactory(self.site())
        self._factory.noisy = False
        # A backlog above Twisted's 50, for the tests that open hundreds of streams at once.
        self._port = reactor.listenTCP(port, self._factory, backlog=1024, interface=interface)  # type: ignore[arg-type]
        host = f"[{interface}]" if ":" in interface else interface
        self.base_url = f"http://{host}:{self._port.getHost().port}/v1"  # type: ignore[attr-defined]
        return self.base_url

    async def listen(self, reactor: IReactorTCP, interface: str = "127.0.0.1") -> str:
        """listenTCP on an ephemeral port; returns the base URL ``http://HOST:PORT/v1``."""
        return self.listen_sync(reactor, interface)

    async def stop(self) -> None:
        """Stop listening, end every stream quietly, cancel timers and close open connections."""
        for stream in list(self._streams):
            stream.close()
        for hanging in self.stalled:
            _abort_request(hanging)
        self.stalled.clear()
        for call in list(self._delayed):
            if call.active():
                call.cancel()
        self._delayed.clear()
        if self._port is not None:
            port, self._port = self._port, None
            stopped = port.stopListening()
            if stopped is not None:
                await stopped
        if self._factory is not None:
            await self._factory.close_all()

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def clock(self) -> IReactorTime:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = cast(IReactorTime, reactor)
        return self._clock

    def _call_later(self, delay: float, fn: Callable[[], None]) -> IDelayedCall:
        def run() -> None:
            self._delayed.discard(call)
            fn()

        call = self.clock.callLater(delay, run)
        self._delayed.add(call)
        return call

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}-fake{next(self._ids):08x}"

    def _now(self) -> int:
        return int(self.clock.seconds())

    # -- request handling ----------------------------------------------------------------------
    def _record(self, request: Request) -> Recorded:
        body = b""
        if request.content is not None:
            request.content.seek(0)
            body = request.content.read()
        headers: dict[str, str] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers[name.decode("latin-1").lower()] = ", ".join(v.decode("latin-1") for v in values)
        uri: bytes = request.uri
        query = uri.split(b"?", 1)[1] if b"?" in uri else b""
        rec = Recorded(
            method=request.method.decode("latin-1"),
            path=request.path.decode("utf-8", "replace"),
            query=query,
            headers=headers,
            body=body,
        )
        self.requests.append(rec)
        return rec

    def _json(self, request: Request, status: int, obj: Any, headers: dict[str, str] | None = None) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        for name, value in (headers or {}).items():
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        return _dumps(obj)

    def _error(self, request: Request, status: int, message: str, type_: str | None = None) -> bytes:
        return self._json(request, status, openai_error(message, type_ or _error_type_for(status), status))

    def _handle(self, request: Request) -> bytes | int:
        rec = self._record(request)
        for name, value in self.extra_headers.items():
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        request_id = rec.headers.get("x-request-id", "")
        if self.close_first_attempts and request_id not in self._attempted:
            self._attempted.add(request_id)
            if request.channel.transport is not None:
                request.channel.transport.loseConnection()
            return NOT_DONE_YET
        if self._failures:
            return self._send_failure(request, self._failures.popleft())
        stalls = self._stalls.get(rec.path.rstrip("/"), 0)
        if stalls:
            # Headers and a first byte, then nothing: a hung worker or a half-open connection.
            self._stalls[rec.path.rstrip("/")] = stalls - 1
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"application/json")
            request.write(b"{")
            self.stalled.append(request)
            return NOT_DONE_YET
        model_failure = self._model_failures.get(_body_model(rec))
        if model_failure is not None:
            return self._json(request, model_failure[0], model_failure[1])
        if self.echo_credentials is not None:
            message = self.credential_echo(rec.headers.get("authorization", ""))
            return self._json(
                request,
                self.echo_credentials,
                openai_error(message, "invalid_request_error", "invalid_api_key"),
            )
        if self.api_key is not None:
            auth = rec.headers.get("authorization", "")
            if auth != f"Bearer {self.api_key}":
                return self._json(
                    request,
                    401,
                    openai_error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
                )
        path = rec.path.rstrip("/") or "/"
        method = rec.method if rec.method != "HEAD" else "GET"
        routes: dict[str, tuple[str, Callable[[Request, Recorded], bytes | int]]] = {
            "/v1/models": ("GET", self._models),
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/completions": ("POST", self._completions),
            "/v1/embeddings": ("POST", self._embeddings),
            "/v1/responses": ("POST", self._responses),
            "/v1/messages": ("POST", self._messages),
        }
        if self.flavour in ("vllm", "llamacpp") and self.tokenizer:
            routes["/tokenize"] = ("POST", self._tokenize)  # at the server's root, beside /v1
        if path in routes:
            allowed, handler = routes[path]
            if method != allowed:
                request.setHeader(b"allow", allowed.encode())
                return self._error(request, 405, "Method Not Allowed")
            return handler(request, rec)
        if path.startswith("/v1/models/") and method == "GET":
            return self._model(request, unquote(path[len("/v1/models/") :]))
        if path == "/props" and method == "GET" and self.flavour == "llamacpp":
            return self._props(request, rec)
        return self._error(request, 404, f"Not Found: {rec.path}", "NotFoundError")

    def _send_failure(self, request: Request, failure: _Failure) -> bytes:
        body = failure.body
        if isinstance(body, str):
            request.setResponseCode(failure.status)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            for name, value in failure.headers.items():
                request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
            return body.encode("utf-8")
        if body is None:
            try:
                message = http.HTTPStatus(failure.status).phrase
            except ValueError:
                message = f"HTTP {failure.status}"
            body = openai_error(message, _error_type_for(failure.status), failure.status)
        return self._json(request, failure.status, body, failure.headers)

    def _unknown_model(self, request: Request, model: str) -> bytes:
        if self.flavour == "openai":
            err = openai_error(
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
            return self._json(request, 404, err)
        return self._error(request, 404, f"The model `{model}` does not exist.", "NotFoundError")

    def _parse_body(self, request: Request, rec: Recorded) -> dict[str, Any] | bytes:
        """The JSON object body, or the bytes of a 400 answer."""
        try:
            body = rec.json
        except ValueError as exc:
            return self._error(request, 400, f"Invalid JSON body: {exc}", "BadRequestError")
        if not isinstance(body, dict):
            return self._error(request, 400, "The request body must be a JSON object.", "BadRequestError")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._error(request, 400, "Field required: model", "BadRequestError")
        if model not in self.models:
            return self._unknown_model(request, model)
        return body

    # -- /v1/models ----------------------------------------------------------------------------
    def model_entry(self, index: int, model: str) -> dict[str, Any]:
        created = MODEL_CREATED + index
        if self.flavour == "vllm":
            return {
                "id": model,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": model,
                "parent": None,
                "max_model_len": self.max_model_len,
                "permission": [
                    {
                        "id": f"modelperm-fake{index:04d}",
                        "object": "model_permission",
                        "created": created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
        if self.flavour == "openai":
            return {"id": model, "object": "model", "created": created, "owned_by": "system"}
        if self.flavour == "openrouter":
            return self._openrouter_entry(index, model, created)
        return {
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "llamacpp",
            "meta": {
                "vocab_type": 2,
                "n_vocab": 49152,
                "n_ctx": self.max_model_len,
                "n_ctx_train": 8192,
                "n_embd": 576,
                "n_params": 134515008,
                "size": 100000000,
            },
        }

    @staticmethod
    def _openrouter_entry(index: int, model: str, created: int) -> dict[str, Any]:
        org, _, rest = model.partition("/")
        free = model.endswith(":free")
        name = f"{org.replace('-', ' ').title()}: {rest.removesuffix(':free').replace('-', ' ').title()}"
        if free:
            name += " (free)"
        price = "0" if free else "0.0000025"
        if index == 0:
            modality, inputs = "text+image->text", ["text", "image"]
            params = [
                "tools",
                "tool_choice",
                "reasoning",
                "include_reasoning",
                "max_tokens",
                "temperature",
                "top_p",
            ]
        elif index == 1:
            modality, inputs = "text->text", ["text"]
            params = ["tools", "tool_choice", "max_tokens", "temperature", "top_p", "stop", "seed"]
        else:
            modality, inputs = "text->text", ["text"]
            params = ["max_tokens", "temperature"]
        return {
            "id": model,
            "canonical_slug": model.removesuffix(":free"),
            "hugging_face_id": "",
            "name": name,
            "created": created,
            "description": f"Fake OpenRouter entry for {model}.",
            "context_length": 131072,
            "architecture": {
                "modality": modality,
                "input_modalities": inputs,
                "output_modalities": ["text"],
                "tokenizer": "Llama3",
                "instruct_type": None,
            },
            "pricing": {
                "prompt": price,
                "completion": price,
                "request": "0",
                "image": "0",
                "web_search": "0",
                "internal_reasoning": "0",
            },
            "top_provider": {
                "context_length": 131072,
                "max_completion_tokens": 16384,
                "is_moderated": not free,
            },
            "per_request_limits": None,
            "supported_parameters": params,
        }

    def models_body(self) -> dict[str, Any]:
        data = [self.model_entry(i, m) for i, m in enumerate(self.models)]
        if self.flavour == "openrouter":
            return {"data": data}
        body: dict[str, Any] = {"object": "list", "data": data}
        if self.flavour == "llamacpp":
            body["models"] = [
                {
                    "name": m,
                    "model": m,
                    "modified_at": "",
                    "size": "",
                    "digest": "",
                    "type": "model",
                    "description": "",
                    "tags": [""],
                    "capabilities": ["completion"],
                    "parameters": "",
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "",
                        "families": [""],
                        "parameter_size": "",
                        "quantization_level": "",
                    },
                }
                for m in self.models
            ]
        return body

    def _models(self, request: Request, rec: Recorded) -> bytes:
        return self._json(request, 200, self.models_body())

    def _model(self, request: Request, model_id: str) -> bytes:
        if model_id not in self.models:
            return self._unknown_model(request, model_id)
        return self._json(request, 200, self.model_entry(self.models.index(model_id), model_id))

    # -- llama.cpp's /props ----------------------------------------------------------------------
    def props_body(self, model: str) -> dict[str, Any]:
        """What llama.cpp's server says of the model it serves (its shape as of 2026), SmolLM2-like unless
        ``self.props`` says otherwise for the model."""
        body: dict[str, Any] = {
            "default_generation_settings": {
                "params": {"temperature": 0.8, "top_k": 40, "n_predict": -1, "stop": []},
                "n_ctx": self.max_model_len,
            },
            "total_slots": 1,
            "model_alias": model,
            "model_path": f"/models/{model}.gguf",
            "modalities": {"vision": False, "video": False, "audio": False},
            "chat_template": (
                "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
                " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|im_start|>assistant\n' }}{% endif %}"
            ),
            "chat_template_caps": {
                "supports_parallel_tool_calls": False,
                "supports_preserve_reasoning": False,
                "supports_reasoning_effort": False,
                "supports_system_role": True,
                "supports_tool_calls": False,
                "supports_tools": False,
            },
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "build_info": "b0-fake",
        }
        body.update(self.props.get(model, {}))
        return body

    def _props(self, request: Request, rec: Recorded) -> bytes | int:
        # One model per server: the ?model= of router mode names it or is left out.
        asked = parse_qs(rec.query.decode("utf-8", "replace")).get("model")
        model = asked[0] if asked else self.models[0]
        if model not in self.models:
            return self._unknown_model(request, model)
        if self.props_delay > 0:
            payload = _dumps(self.props_body(model))

            def respond() -> bytes:
                request.setHeader(b"content-type", b"application/json")
                return payload

            self._delay_response(request, self.props_delay, respond)
            return NOT_DONE_YET
        return self._json(request, 200, self.props_body(model))

    # -- chat and completions ------------------------------------------------------------------
    def _chat(self, request: Request, rec: Recorded) -> bytes | int:
        body = self._parse_body(request, rec)
        if isinstance(body, bytes):
            return body
        if not isinstance(body.get("messages"), list):
            return self._error(request, 400, "Field required: messages", "BadRequestError")
        return self._answer(request, body, chat=True)

    def _completions(self, request: Request, rec: Recorded) -> bytes | int:
        body = self._parse_body(request, rec)
        if isinstance(body, bytes):
            return body
        if not isinstance(body.get("prompt"), (str, list)):
            return self._error(request, 400, "Field required: prompt", "BadRequestError")
        return self._answer(request, body, chat=False)

    def _answer(self, request: Request, body: dict[str, Any], *, chat: bool) -> bytes | int:
        script = attrs.evolve(self.script)  # a snapshot: later script changes don't affect this answer
        if script.echo_credentials:
            authorization = request.getHeader(b"authorization") or b""
            script.error_message = self.credential_echo(authorization.decode("latin-1"))
        model: str = body["model"]
        if body.get("stream"):
            stream_options = body.get("stream_options")
            include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
            request.setHeader(b"cache-control", b"no-cache")
            events = (
                self._chat_events(script, model, include_usage)
                if chat
                else self._completion_events(script, model, include_usage)
            )
            _SSEStream(self, request, events, script).start(script.header_delay)
            return NOT_DONE_YET

        def respond() -> bytes | None:
            if script.drop_after is not None:
                return None
            if script.error_after is not None:
                message = script.error_message or "Fake backend failure."
                return self._error(request, 500, message, "InternalServerError")
            return self._json(
                request, 200, self._chat_body(script, model) if chat else self._text_body(script, model)
            )

        if script.header_delay <= 0:
            out = respond()
            if out is not None:
                return out
            _abort_request(request)
            return NOT_DONE_YET
        self._delay_response(request, script.header_delay, respond)
        return NOT_DONE_YET

    def _delay_response(self, request: Request, delay: float, respond: Callable[[], bytes | None]) -> None:
        state = {"gone": False}

        def fire() -> None:
            if state["gone"]:
                return
            out = respond()
            if out is None:
                _abort_request(request)
                return
            request.write(out)
            request.finish()

        call = self._call_later(delay, fire)

        def gone(reason: Failure) -> None:
            state["gone"] = True
            if call.active():
                call.cancel()
                self._delayed.discard(call)
                self.disconnects += 1

        request.notifyFinish().addErrback(gone)

    def _usage(self, script: ChatScript) -> dict[str, Any] | None:
        return dict(script.usage) if script.usage is not None else None

    def _timings(self, script: ChatScript) -> dict[str, Any]:
        usage = script.usage or {}
        prompt_n = int(usage.get("prompt_tokens", 0))
        predicted_n = int(usage.get("completion_tokens", 0))
        return {
            "prompt_n": prompt_n,
            "prompt_ms": 12.5,
            "prompt_per_token_ms": 12.5 / max(prompt_n, 1),
            "prompt_per_second": prompt_n / 0.0125,
            "predicted_n": predicted_n,
            "predicted_ms": 40.0,
            "predicted_per_token_ms": 40.0 / max(predicted_n, 1),
            "predicted_per_second": predicted_n / 0.04,
        }

    @staticmethod
    def _tool_call_parts(script: ChatScript) -> list[tuple[str, str, str]]:
        parts = []
        for i, call in enumerate(script.tool_calls):
            arguments = call.get("arguments", "")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            parts.append((str(call.get("id") or f"call_{i}"), str(call["name"]), arguments))
        return parts

    def _chat_body(self, script: ChatScript, model: str) -> dict[str, Any]:
        tool_calls = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            for cid, name, args in self._tool_call_parts(script)
        ]
        content: str | None = "".join(script.content)
        if not script.content and tool_calls:
            content = None
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if self.flavour == "openai":
            message["refusal"] = None
            message["annotations"] = []
            if tool_calls:
                message["tool_calls"] = tool_calls
        else:
            message["tool_calls"] = tool_calls
        reasoning = "".join(script.reasoning)
        if reasoning:
            message[script.reasoning_field] = reasoning
        elif self.flavour != "openai":
            message[script.reasoning_field] = None
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": script.finish_reason,
        }
        if self.flavour == "vllm":
            choice["stop_reason"] = None
        if self.flavour == "openrouter":
            choice["native_finish_reason"] = script.finish_reason
        out: dict[str, Any] = {
            "id": self._next_id("gen" if self.flavour == "openrouter" else "chatcmpl"),
            "object": "chat.completion",
            "created": self._now(),
            "model": model,
            "choices": [choice],
            "usage": self._usage(script),
        }
        if self.flavour == "openrouter":
            out["provider"] = "FakeProvider"
        if self.flavour == "openai":
            out["system_fingerprint"] = "fp_fake"
            out["service_tier"] = "default"
        if self.flavour == "llamacpp":
            out["system_fingerprint"] = "b0000-fake"
            out["timings"] = self._timings(script)
        return out

    def _text_body(self, script: ChatScript, model: str) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "text": "".join(script.content),
            "logprobs": None,
            "finish_reason": script.finish_reason,
        }
        if self.flavour == "vllm":
            choice["stop_reason"] = None
        out: dict[str, Any] = {
            "id": self._next_id("cmpl"),
            "object": "text_completion",
            "created": self._now(),
            "model": model,
            "choices": [choice],
            "usage": self._usage(script),
        }
        if self.flavour == "llamacpp":
            out["timings"] = self._timings(script)
        return out

    @staticmethod
    def _content_stream(script: ChatScript) -> Iterable[str]:
        """The content deltas to send: cycled for ever when endless, cut at error_after / drop_after."""
        pieces: Iterable[str] = itertools.cycle(script.content or ["x"]) if script.endless else script.content
        limits = [n for n in (script.error_after, script.drop_after) if n is not None]
        if limits:
            pieces = itertools.islice(pieces, max(0, min(limits)))
        return pieces

    def _mid_stream_error(self, base: dict[str, Any], script: ChatScript, chat: bool) -> bytes:
        message = script.error_message or f"Fake backend failure after {script.error_after} content events."
        if self.flavour == "openrouter":
            delta: dict[str, Any] = {"content": ""} if chat else {}
            choice = {"index": 0, "delta": delta, "finish_reason": "error", "native_finish_reason": "error"}
            return sse({**base, "error": {"code": 502, "message": message}, "choices": [choice]})
        return sse(openai_error(message, "InternalServerError", 500))

    def _chat_events(self, script: ChatScript, model: str, include_usage: bool) -> Iterator[StreamItem]:
        base: dict[str, Any] = {
            "id": self._next_id("gen" if self.flavour == "openrouter" else "chatcmpl"),
            "object": "chat.completion.chunk",
            "created": self._now(),
            "model": model,
        }
        if self.flavour == "openrouter":
            base["provider"] = "FakeProvider"
        if self.flavour == "openai":
            base["system_fingerprint"] = "fp_fake"
            base["service_tier"] = "default"
        extra: dict[str, Any] = {"usage": None} if include_usage and self.flavour == "openai" else {}

        def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> bytes:
            if self.flavour == "openrouter":
                delta = {"role": "assistant", **delta}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            if self.flavour == "vllm" and finish is not None:
                choice["stop_reason"] = None
            if self.flavour == "openrouter":
                choice["native_finish_reason"] = finish
            return sse({**base, "choices": [choice], **extra, **more})

        if script.comments:
            yield COMMENT_EVENT
        first: dict[str, Any] = {"role": "assistant", "content": None if self.flavour == "llamacpp" else ""}
        if self.flavour == "openai":
            first["refusal"] = None
        yield chunk(first)
        for piece in script.reasoning:
            yield chunk({script.reasoning_field: piece})
        for sent, piece in enumerate(self._content_stream(script), 1):
            yield chunk({"content": piece})
            if script.comments and sent % 2 == 0:
                yield COMMENT_EVENT
        if script.error_after is not None:
            yield self._mid_stream_error(base, script, chat=True)
            return
        if script.drop_after is not None:
            yield _DROP
            return
        for index, (cid, name, arguments) in enumerate(self._tool_call_parts(script)):
            head = {
                "index": index,
                "id": cid,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            yield chunk({"tool_calls": [head]})
            n = len(arguments)
            cuts = [0, n // 3, 2 * n // 3, n]
            for a, b in itertools.pairwise(cuts):
                if b > a:
                    yield chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[a:b]}}]})
        more: dict[str, Any] = {"timings": self._timings(script)} if self.flavour == "llamacpp" else {}
        yield chunk({}, script.finish_reason, **more)
        if include_usage and script.usage is not None:
            yield sse({**base, "choices": [], "usage": self._usage(script)})
        yield DONE_EVENT

    def _completion_events(self, script: ChatScript, model: str, include_usage: bool) -> Iterator[StreamItem]:
        base: dict[str, Any] = {
            "id": self._next_id("cmpl"),
            "object": "text_completion",
            "created": self._now(),
            "model": model,
        }

        def chunk(text: str, finish: str | None = None, **more: Any) -> bytes:
            choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            if self.flavour == "vllm":
                choice["stop_reason"] = None
            return sse({**base, "choices": [choice], **more})

        if script.comments:
            yield COMMENT_EVENT
        for sent, piece in enumerate(self._content_stream(script), 1):
            yield chunk(piece)
            if script.comments and sent % 2 == 0:
                yield COMMENT_EVENT
        if script.error_after is not None:
            yield self._mid_stream_error(base, script, chat=False)
            return
        if script.drop_after is not None:
            yield _DROP
            return
        more: dict[str, Any] = {"timings": self._timings(script)} if self.flavour == "llamacpp" else {}
        yield chunk("", script.finish_reason, **more)
        if include_usage and script.usage is not None:
            yield sse({**base, "choices": [], "usage": self._usage(script)})
        yield DONE_EVENT

    # -- responses (the Responses API, text only) ----------------------------------------------
    def _responses(self, request: Request, rec: Recorded) -> bytes | int:
        body = self._parse_body(request, rec)
        if isinstance(body, bytes):
            return body
        if not isinstance(body.get("input"), (str, list)):
            return self._error(request, 400, "Field required: input", "BadRequestError")
        script = attrs.evolve(self.script)
        model: str = body["model"]
        response_id = self._next_id("resp")
        if not body.get("stream"):
            return self._json(request, 200, self._response_object(script, model, response_id, done=True))
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        events = self._response_events(script, model, response_id)
        _SSEStream(self, request, events, script).start(script.header_delay)
        return NOT_DONE_YET

    def _response_object(
        self, script: ChatScript, model: str, response_id: str, *, done: bool
    ) -> dict[str, Any]:
        usage = script.usage or {}
        output = [
            {
                "type": "message",
                "id": f"msg_{response_id}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "".join(script.content), "annotations": []}],
            }
        ]
        return {
            "id": response_id,
            "object": "response",
            "created_at": self._now(),
            "status": "completed" if done else "in_progress",
            "model": model,
            "output": output if done else [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": usage.get("prompt_tokens", 0),
                "output_tokens": usage.get("completion_tokens", 0),
                "total_tokens": usage.get("total_tokens", 0),
            }
            if done
            else None,
        }

    def _response_events(self, script: ChatScript, model: str, response_id: str) -> Iterator[StreamItem]:
        """``event:`` + ``data:`` pairs, as the Responses API streams them."""
        sequence = itertools.count()

        def event(kind: str, **fields: Any) -> bytes:
            payload = {"type": kind, "sequence_number": next(sequence), **fields}
            return b"event: " + kind.encode() + b"\n" + sse(payload)

        yield event(
            "response.created", response=self._response_object(script, model, response_id, done=False)
        )
        for piece in self._content_stream(script):
            yield event(
                "response.output_text.delta",
                item_id=f"msg_{response_id}",
                output_index=0,
                content_index=0,
                delta=piece,
            )
        if script.drop_after is not None:
            yield _DROP
            return
        yield event(
            "response.completed", response=self._response_object(script, model, response_id, done=True)
        )

    # -- /tokenize (vLLM's and llama.cpp's), one token per word -----------------------------------
    def _tokenize(self, request: Request, rec: Recorded) -> bytes:
        body = rec.json
        if self.flavour == "llamacpp":
            tokens = list(range(len(str(body.get("content", "")).split())))
            return self._json(request, 200, {"tokens": tokens})
        if body.get("model") not in self.models:
            return self._unknown_model(request, str(body.get("model")))
        tokens = list(range(len(str(body.get("prompt", "")).split())))
        return self._json(request, 200, {"count": len(tokens), "max_model_len": 8192, "tokens": tokens})

    # -- messages (the Anthropic Messages API that vLLM serves, text only) ---------------------
    def _messages(self, request: Request, rec: Recorded) -> bytes | int:
        body = self._parse_body(request, rec)
        if isinstance(body, bytes):
            return body
        script = attrs.evolve(self.script)
        usage = script.usage or {}
        message = {
            "id": self._next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": "".join(script.content)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": usage.get("prompt_tokens", 0),
                "output_tokens": usage.get("completion_tokens", 0),
            },
        }
        if not body.get("stream"):
            return self._json(request, 200, message)
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        _SSEStream(self, request, self._message_events(script, message), script).start(script.header_delay)
        return NOT_DONE_YET

    def _message_events(self, script: ChatScript, message: dict[str, Any]) -> Iterator[StreamItem]:
        def event(kind: str, **fields: Any) -> bytes:
            return b"event: " + kind.encode() + b"\n" + sse({"type": kind, **fields})

        yield event("message_start", message={**message, "content": [], "stop_reason": None})
        yield event("content_block_start", index=0, content_block={"type": "text", "text": ""})
        for piece in self._content_stream(script):
            yield event("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
        if script.drop_after is not None:
            yield _DROP
            return
        yield event("content_block_stop", index=0)
        yield event("message_delta", delta={"stop_reason": "end_turn"}, usage=message["usage"])
        yield event("message_stop")

    # -- embeddings ----------------------------------------------------------------------------
    def _embeddings(self, request: Request, rec: Recorded) -> bytes | int:
        body = self._parse_body(request, rec)
        if isinstance(body, bytes):
            return body
        raw = body.get("input")
        if isinstance(raw, str):
            inputs: list[Any] = [raw]
        elif isinstance(raw, list):
            # a list of strings, or one token-id list ([1, 2, 3]), or a list of token-id lists
            inputs = [raw] if raw and all(isinstance(x, int) for x in raw) else list(raw)
        else:
            return self._error(request, 400, "Field required: input", "BadRequestError")
        dimensions = body.get("dimensions")
        if dimensions is not None and (not isinstance(dimensions, int) or dimensions < 1):
            return self._error(request, 400, "dimensions must be a positive integer", "BadRequestError")
        truncation = self._truncation(body)
        if isinstance(truncation, str):
            return self._error(request, 400, truncation, "BadRequestError")
        encoding = body.get("encoding_format") or "float"
        data = []
        tokens = 0
        for i, item in enumerate(inputs):
            if isinstance(item, str) and truncation is not None:
                item = " ".join(item.split()[-truncation:])  # vLLM keeps the last tokens
            text = item if isinstance(item, str) else json.dumps(item)
            count = max(1, len(text.split())) if isinstance(item, str) else max(1, len(item))
            if count > self.max_model_len and self.flavour in ("vllm", "openai"):
                return self._error(request, 400, self._too_long(count), "BadRequestError")
            tokens += count
            vector = self.embedding_for(text, dimensions)
            embedding: list[float] | str = vector
            if encoding == "base64":
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        out: dict[str, Any] = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        if self.flavour == "vllm":
            out = {"id": self._next_id("embd"), "created": self._now(), **out}
            out["usage"]["completion_tokens"] = 0
            out["usage"]["prompt_tokens_details"] = None
        header_delay = self.script.header_delay
        if header_delay > 0:
            payload = _dumps(out)

            def respond() -> bytes:
                request.setHeader(b"content-type", b"application/json")
                return payload

            self._delay_response(request, header_delay, respond)
            return NOT_DONE_YET
        return self._json(request, 200, out)

    def _truncation(self, body: dict[str, Any]) -> int | str | None:
        """vLLM's ``truncate_prompt_tokens`` (-1: the model's length): how many to keep, an error, or None."""
        value = body.get("truncate_prompt_tokens")
        if value is None or self.flavour != "vllm":
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < -1 or value == 0:
            return "truncate_prompt_tokens must be -1 or a positive integer"
        if value > self.max_model_len:
            return (
                f"truncate_prompt_tokens value ({value}) is greater than max_model_len "
                f"({self.max_model_len}). Please, select a smaller truncation size."
            )
        return self.max_model_len if value == -1 else value

    def _too_long(self, count: int) -> str:
        if self.flavour == "openai":
            return (
                f"This model's maximum context length is {self.max_model_len} tokens, however you requested "
                f"{count} tokens ({count} in your prompt; 0 for the completion). Please reduce your prompt; "
                "or completion length."
            )
        return (
            f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
            f"{count} tokens in the input for embedding generation. Please reduce the length of the input."
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fake_backend", description="Run the fake OpenAI-compatible backend."
    )
    parser.add_argument("--flavour", choices=FLAVOURS, default="vllm")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", action="append", dest="models", help="model id (repeatable)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--embedding-dim", type=int, default=8)
    parser.add_argument("--event-delay", type=float, default=0.0, help="seconds between SSE events")
    args = parser.parse_args(argv)

    from twisted.internet import reactor as _reactor

    reactor = cast(Any, _reactor)
    backend = FakeBackend(
        args.flavour, args.models, api_key=args.api_key, embedding_dim=args.embedding_dim, reactor=reactor
    )
    backend.script.event_delay = args.event_delay
    url = backend.listen_sync(reactor, args.host, args.port)
    print(f"listening on {url}", flush=True)
    reactor.run()  # the default reactor stops on SIGTERM/SIGINT


if __name__ == "__main__":
    main()

"""The OpenAI API on the daemon's port: every ``/v1/*`` path (but ``/v1/messages`` and ``/v1/responses``,
translated elsewhere), and the un-prefixed ``/chat/completions``, ``/completions``, ``/embeddings`` and
``/models`` some clients call, passed through to the same path under the backend base URL.  The same
forwarding serves those two translated APIs where a backend serves them itself (``forward_natively``).

Method, query and body go as they came (a model-map alias in the body's ``model`` becomes its backend id);
the backend's status, headers and body come back through the same stream relay as ``/api/chat`` (so with
its backpressure, stall and idle timeouts, and cancellation when the client leaves), byte for byte.  Only
``/v1/models`` is rewritten (the aliases are added), and ``/v1/models/{alias}`` is answered here.  What the
daemon itself answers with an error is in OpenAI's shape; the rules themselves live in
``translate/openai.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.web.iweb import IResponse

from ollama_proxy.app import App
from ollama_proxy.backend import MAX_JSON_BODY, BackendClient
from ollama_proxy.catalog import Resolved
from ollama_proxy.errors import BackendError, BadRequest, ModelNotFound, NotFound, Overloaded
from ollama_proxy.exchange import Family
from ollama_proxy.json_codec import compact_json, parse_json
from ollama_proxy.relay import StreamRelay
from ollama_proxy.site import ProxyRequest
from ollama_proxy.translate.openai import (
    PassThrough,
    alias_entry,
    backend_target,
    body_model,
    find_alias,
    is_event_stream,
    mapped_name,
    may_need_rewrite,
    merge_model_list,
    minimal_entry,
    model_path,
    request_headers,
    response_headers,
    with_model,
)
from ollama_proxy.web import Handler, HandlerMethod
from ollama_proxy.wire.openai import sse_error_event

# The methods a pass-through forwards (anything else is not HTTP an OpenAI-compatible server speaks).
METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
# Methods whose request carries a body even when it is empty (an empty one still gets Content-Length: 0).
_BODY_METHODS = frozenset({"PATCH", "POST", "PUT"})


def raw_body(request: ProxyRequest) -> bytes:
    """The request body as the client sent it."""
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read()
    return data


def _start_response(request: ProxyRequest, response: IResponse) -> None:
    """The backend's status and end-to-end headers on the client's response (nothing written yet)."""
    request.setResponseCode(response.code, response.phrase)
    request.defaultContentType = None  # only the backend's Content-Type
    for name, values in response_headers(response.headers.getAllRawHeaders()).items():
        if name == b"vary" and request.responseHeaders.hasHeader(name):
            # The daemon's own (CORS: ``Vary: Origin``) and the backend's both hold.
            values = [*(request.responseHeaders.getRawHeaders(name) or []), *values]
        elif name.startswith(b"access-control-"):
            continue  # CORS is the daemon's decision (site.py), not the backend's
        request.responseHeaders.setRawHeaders(name, values)


class OpenAIResource(Handler):
    """Forwards whatever method and path it is given; mounted at ``/v1`` and at the un-prefixed paths."""

    app: App
    takes_subpath = True

    def allowed_methods(self) -> tuple[str, ...]:
        return METHODS

    def _handler(self, method: str) -> HandlerMethod | None:
        return self._forward if method in METHODS else None

    async def _forward(self, request: ProxyRequest) -> None:
        method = (request.method or b"").decode("ascii")
        target = _target(request)
        is_list, model_id = model_path(target)
        if method in ("GET", "HEAD") and model_id is not None:
            alias = find_alias(model_id, self.app.catalog.model_map)
            if alias is not None:
                await self._alias_model(request, model_id, alias[0])
                return
        if method == "GET" and is_list and len(self.app.backends) > 1:
            await self._merged_model_list(request)
            return
        raw = raw_body(request)
        body: bytes | None = None
        backend = self.app.backend
        if raw or method in _BODY_METHODS:  # an empty one still goes with Content-Length: 0
            body, backend = await self._rewrite_model(request, target, raw)
        await forward(
            self.app, request, backend, method, target, body, model_list=method == "GET" and is_list
        )

    async def _rewrite_model(
        self, request: ProxyRequest, target: str, body: bytes
    ) -> tuple[bytes, BackendClient]:
        """The body with an alias (or ``NAME:latest``) in ``model`` replaced by the backend id, and the
        backend that serves that model (with one backend, the catalog is consulted only for aliases)."""
        try:
            found = body_model(target, body)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        catalog = self.app.catalog
        backend = self.app.backend
        if found is not None:
            request.exchange.served(found[1], found[1])
        routed = len(self.app.backends) > 1
        if found is None or not (routed or may_need_rewrite(found[1], catalog.model_map)):
            return body, backend
        data, name = found
        try:
            resolved = await catalog.resolve(name)
        except ModelNotFound:
            return body, backend  # the backend answers its own 404
        except (BackendError, Overloaded):
            # No model list to check against (a backend that authenticates each user, or one that is
            # down): the model map alone still says where an alias points.
            backend_id = mapped_name(name, catalog.model_map)
        else:
            backend_id, backend = resolved.backend_id, resolved.client
        request.exchange.backend_model = backend_id
        return (body if backend_id == name else with_model(data, backend_id)), backend

    async def _merged_model_list(self, request: ProxyRequest) -> None:
        """``/models`` with several backends: every backend's entries (from the catalog) and the aliases."""
        snapshot = await self.app.catalog.snapshot()
        listing = {"object": "list", "data": [dict(snapshot.entries[info.id]) for info in snapshot.models]}
        request.send_json(merge_model_list(listing, self.app.catalog.model_map))

    async def _alias_model(self, request: ProxyRequest, requested: str, alias: str) -> None:
        """``/models/{alias}``, answered here from the cached model list: the target's entry under the
        alias, or OpenAI's 404 when the backend does not serve the target."""
        catalog = self.app.catalog
        try:
            resolved = await catalog.resolve(alias)
        except ModelNotFound:
            raise NotFound(f"The model `{requested}` does not exist.") from None
        entry = (await catalog.snapshot()).entries.get(resolved.backend_id) or minimal_entry(
            resolved.backend_id, resolved.info.created or int(self.app.started_at), "ollama-proxy"
        )
        request.send_json(alias_entry(alias, entry))


async def forward(
    app: App,
    request: ProxyRequest,
    backend: BackendClient,
    method: str,
    target: str,
    body: bytes | None,
    *,
    model_list: bool = False,
) -> None:
    """The request to ``target`` under ``backend``'s base URL, and its answer relayed to the client as
    it comes (``model_list``: a ``/models`` list, which gains the model-map aliases).

    The client's end-to-end headers go along.  Its ``Authorization`` is replaced by the configured key,
    if there is one (BackendClient), and forwarded otherwise, so a daemon can front a backend that
    authenticates each user; a daemon client key (in ``Authorization`` or ``x-api-key``) is the client's
    credential for the daemon, which does not travel on to the backend.
    """
    headers = request_headers(request.requestHeaders.getAllRawHeaders())
    authorization = request.getHeader(b"authorization")
    if request.exchange.client_key:
        headers.pop(b"x-api-key", None)
    elif authorization is not None:
        headers[b"authorization"] = [authorization]
    request.exchange.backend = backend.name
    request_id = request.exchange.request_id
    async with backend.limit:
        response = await backend.request(
            method,
            target,
            body=body,
            request_id=request_id,
            headers=headers,
            model=request.exchange.backend_model,
        )
        if model_list and response.code == 200:
            await _model_list(app, request, backend, response)
        elif response.code >= 400:
            await _relay_error(app, request, backend, response)
        else:
            await _relay(app, request, response)


async def _relay(app: App, request: ProxyRequest, response: IResponse) -> None:
    _start_response(request, response)
    content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
    config = app.config
    relay = StreamRelay(
        request,
        PassThrough(
            event_stream=is_event_stream(content_type.decode("latin-1")),
            event_ending=_event_stream_ending(request),
        ),
        app.reactor,
        idle_timeout=config.idle_timeout,
    )
    response.deliverBody(relay)
    await relay.done


def _event_stream_ending(request: ProxyRequest) -> Callable[[str], bytes]:
    """How a relayed event stream that broke ends: OpenAI's error event on the OpenAI paths, the family's
    own ending on a natively served ``/v1/messages`` (Anthropic's ``error`` event) or ``/v1/responses``."""
    if request.exchange.family is Family.OPENAI:
        return sse_error_event
    return request.wire.broken_stream


async def _relay_error(app: App, request: ProxyRequest, backend: BackendClient, response: IResponse) -> None:
    """A backend error reply, status and body as they are, except for the secrets should the backend
    quote them (some echo the credentials they rejected, whole or in part)."""
    body = app.scrubber.scrub_bytes(await backend.read_body(response, MAX_JSON_BODY))
    _start_response(request, response)
    _write_all(request, body)


async def _model_list(app: App, request: ProxyRequest, backend: BackendClient, response: IResponse) -> None:
    """``/models``: the backend's list with the model-map aliases added as entries of their own."""
    raw = await backend.read_body(response, MAX_JSON_BODY)
    try:
        data: Any = parse_json(raw, allow_constants=True, max_values=None)
    except ValueError:
        merged: Any = None
    else:
        merged = merge_model_list(data, app.catalog.model_map)
    _start_response(request, response)
    _write_all(request, raw if merged is None or merged is data else compact_json(merged))


def _write_all(request: ProxyRequest, body: bytes) -> None:
    if request.gone:
        return
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


def _target(request: ProxyRequest) -> str:
    path, _, query = (request.uri or b"").partition(b"?")
    try:
        return backend_target(path, query)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


async def forward_natively(
    app: App, request: ProxyRequest, resolved: Resolved, data: Mapping[str, Any]
) -> None:
    """A request of a translated family (``/v1/messages``, ``/v1/responses``) passed through to a backend
    that serves that API itself (``native-apis``): the same path, query and body, only a model-map alias
    (or ``NAME:latest``) in ``model`` replaced by the backend id."""
    target = _target(request)
    raw = raw_body(request)
    body = raw if data.get("model") == resolved.backend_id else with_model(data, resolved.backend_id)
    await forward(app, request, resolved.client, (request.method or b"POST").decode("ascii"), target, body)


async def forward_unrouted(app: App, request: ProxyRequest) -> None:
    """A request that names no model (``GET /v1/responses/{id}``), passed through to the first backend."""
    method = (request.method or b"").decode("ascii")
    raw = raw_body(request)
    body = raw if raw or method in _BODY_METHODS else None
    await forward(app, request, app.backend, method, _target(request), body)


class NativeOnlyResource(Handler):
    """The paths below a translated API that only a server keeping state can answer (``/v1/responses/{id}``,
    ``/v1/messages/batches`` ...): passed through to the first backend when it serves that API itself
    (``native-apis``), otherwise a 404 saying why."""

    takes_subpath = True

    def __init__(self, app: App, family: Family, why: str) -> None:
        super().__init__(app)
        self.family = family
        self.why = why

    def allowed_methods(self) -> tuple[str, ...]:
        return METHODS

    def _handler(self, method: str) -> HandlerMethod | None:
        return self._answer if method in METHODS else None

    async def _answer(self, request: ProxyRequest) -> None:
        if not self.app.serves_natively(self.app.backend, self.family):
            raise NotFound(self.why)
        await forward_unrouted(self.app, request)

"""The OpenAI API on the daemon's port: every ``/v1/*`` path, and the un-prefixed ``/chat/completions``,
``/completions``, ``/embeddings``, ``/models`` and ``/responses`` some clients call, passed through to the
same path under the backend base URL.

Method, query and body go as they came (a model-map alias in the body's ``model`` becomes its backend id);
the backend's status, headers and body come back through the same stream relay as ``/api/chat`` (so with
its backpressure, stall and idle timeouts, and cancellation when the client leaves), byte for byte.  Only
``/v1/models`` is rewritten (the aliases are added), and ``/v1/models/{alias}`` is answered here.  What the
daemon itself answers with an error is in OpenAI's shape; the rules themselves live in
``translate/openai.py``.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IResponse

from ollama_proxy.app import App
from ollama_proxy.backend import MAX_JSON_BODY, BackendClient
from ollama_proxy.errors import BackendError, BadRequest, ModelNotFound, NotFound, Overloaded
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

# The methods a pass-through forwards (anything else is not HTTP an OpenAI-compatible server speaks).
METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
# Methods whose request carries a body even when it is empty (an empty one still gets Content-Length: 0).
_BODY_METHODS = frozenset({"PATCH", "POST", "PUT"})


def _raw_body(request: ProxyRequest) -> bytes:
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
        path, _, query = (request.uri or b"").partition(b"?")
        try:
            target = backend_target(path, query)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        is_list, model_id = model_path(target)
        if method in ("GET", "HEAD") and model_id is not None:
            alias = find_alias(model_id, self.app.catalog.model_map)
            if alias is not None:
                await self._alias_model(request, model_id, alias[0])
                return
        if method == "GET" and is_list and len(self.app.backends) > 1:
            await self._merged_model_list(request)
            return
        raw = _raw_body(request)
        body: bytes | None = None
        backend = self.app.backend
        if raw or method in _BODY_METHODS:  # an empty one still goes with Content-Length: 0
            body, backend = await self._rewrite_model(request, target, raw)
        headers = request_headers(request.requestHeaders.getAllRawHeaders())
        authorization = request.getHeader(b"authorization")
        if authorization is not None and not request.exchange.client_key:
            # Replaced by the configured key, if there is one (BackendClient); forwarded otherwise, so a
            # daemon can front a backend that authenticates each user.  A daemon client key is the
            # client's credential for the daemon, which does not travel on to the backend.
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
            if method == "GET" and is_list and response.code == 200:
                await self._model_list(request, response)
            elif response.code >= 400:
                await self._relay_error(request, response)
            else:
                await self._relay(request, response)

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

    async def _relay(self, request: ProxyRequest, response: IResponse) -> None:
        _start_response(request, response)
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        config = self.app.config
        relay = StreamRelay(
            request,
            PassThrough(event_stream=is_event_stream(content_type.decode("latin-1"))),
            self.app.reactor,
            idle_timeout=config.idle_timeout,
        )
        response.deliverBody(relay)
        await relay.done

    async def _relay_error(self, request: ProxyRequest, response: IResponse) -> None:
        """A backend error reply, status and body as they are, except for the secrets should the backend
        quote them (some echo the credentials they rejected, whole or in part)."""
        body = self.app.scrubber.scrub_bytes(await self.app.backend.read_body(response, MAX_JSON_BODY))
        _start_response(request, response)
        self._write_all(request, body)

    async def _model_list(self, request: ProxyRequest, response: IResponse) -> None:
        """``/models``: the backend's list with the model-map aliases added as entries of their own."""
        raw = await self.app.backend.read_body(response, MAX_JSON_BODY)
        try:
            data: Any = parse_json(raw, allow_constants=True, max_values=None)
        except ValueError:
            merged: Any = None
        else:
            merged = merge_model_list(data, self.app.catalog.model_map)
        _start_response(request, response)
        self._write_all(request, raw if merged is None or merged is data else compact_json(merged))

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

    @staticmethod
    def _write_all(request: ProxyRequest, body: bytes) -> None:
        if request.gone:
            return
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

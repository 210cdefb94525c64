"""The resource machinery every handler shares: async handlers run as Deferreds, cancelled when the client
leaves, their errors answered in the request's API family (``ProxyRequest.send_error``), and reading the
JSON body.

Handlers are ``async`` methods named ``on_<method>``; ``JSONResource.render`` runs them as a Deferred,
cancels that Deferred when the client disconnects (which aborts whatever backend call it is awaiting),
answers every ``ProxyError``, and never lets an unexpected exception reach the client as a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from copy import copy as shallow_copy
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.reflect import safe_str
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from ollama_proxy.catalog import keep_alive_seconds
from ollama_proxy.errors import BadRequest, MethodNotAllowed, NotFound, ProxyError
from ollama_proxy.json_codec import JSONRejected, parse_json
from ollama_proxy.redact import Scrubber
from ollama_proxy.site import ProxyRequest

log = Logger(namespace="ollama_proxy.web")

HandlerMethod = Callable[[ProxyRequest], Awaitable[None]]


def read_json(request: ProxyRequest) -> Any:
    """The request body as JSON, with Ollama's messages for an empty or malformed body.

    The site has already refused a body over ``--max-body`` with a 413, so the whole body is read.
    """
    content = request.content
    if content is None:
        raise BadRequest("missing request body")
    content.seek(0)
    raw = content.read()
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        return parse_json(raw)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except JSONRejected as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None


def read_keep_alive(value: Any) -> float:
    """A request's ``keep_alive`` in seconds; a string that is not a duration is the client's 400."""
    try:
        return keep_alive_seconds(value)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


class JSONResource(Resource):
    """Dispatches ``render`` to ``async def on_<method>(request)``; HEAD falls back to GET."""

    def allowed_methods(self) -> tuple[str, ...]:
        names = [name[3:].upper() for name in dir(self) if name.startswith("on_")]
        if "GET" in names and "HEAD" not in names:
            names.append("HEAD")
        return tuple(sorted(names))

    def _handler(self, method: str) -> HandlerMethod | None:
        found = getattr(self, f"on_{method.lower()}", None)
        if found is None and method == "HEAD":
            found = getattr(self, "on_get", None)
        return found

    # Whether a leaf answers paths below its own (``/api/blobs/<digest>``); others 404 there.
    takes_subpath = False

    def render(self, request: ProxyRequest) -> Any:  # bytes or NOT_DONE_YET
        if self.isLeaf and not self.takes_subpath and request.postpath not in ([], [b""]):
            request.send_error(NotFound("404 page not found"))
            return NOT_DONE_YET
        method = (request.method or b"").decode("ascii", "replace")
        handler = self._handler(method)
        if handler is None:
            request.send_error(MethodNotAllowed(method, self.allowed_methods()))
            return NOT_DONE_YET
        running = Deferred.fromCoroutine(self._run(request, handler))
        request.exchange.running = running  # a graceful shutdown cancels it
        # Twisted fires notifyFinish's errback when the client goes away; cancelling reaches whatever the
        # handler awaits (a treq call aborts its backend connection).
        request.notifyFinish().addErrback(lambda _: running.cancel())
        running.addErrback(_unhandled, request)
        return NOT_DONE_YET

    async def _run(self, request: ProxyRequest, handler: HandlerMethod) -> None:
        try:
            await handler(request)
        except ProxyError as error:
            request.send_error(error)
        except CancelledError:
            if not request.gone:
                raise


def _unhandled(failure: Failure, request: ProxyRequest) -> None:
    """Last resort: log the traceback for the operator, give the client a plain 500 without it."""
    request_id = request.exchange.request_id
    logged = _scrubbed(failure, request.proxy_site.scrubber)
    log.failure("unhandled error in request {request_id}", logged, request_id=request_id)
    request.send_error(ProxyError(f"internal error (request id {request_id})"))


def _scrubbed(failure: Failure, scrubber: Scrubber) -> Failure:
    """The failure with its exception's words scrubbed: the one part of a traceback that carries data
    (the frames name only code), and an unexpected exception may quote anything, a backend's reply too."""
    words = safe_str(failure.value)
    clean = scrubber.scrub(words)
    if clean == words:
        return failure
    copy = shallow_copy(failure)
    copy.value = Exception(clean)  # printed under the original type's name (failure.type)
    return copy


class Handler(JSONResource):
    """A leaf endpoint: answers its path (and the path with a trailing slash), nothing below it."""

    isLeaf = True

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app


class NotFoundResource(JSONResource):
    isLeaf = True

    def render(self, request: ProxyRequest) -> Any:
        request.send_error(NotFound("404 page not found"))
        return NOT_DONE_YET


class Directory(Resource):
    """A path segment such as ``/api``: its children, and a 404 for anything else."""

    def getChild(self, path: bytes, request: ProxyRequest) -> IResource:
        return NotFoundResource()

    def render(self, request: ProxyRequest) -> Any:
        return NotFoundResource().render(request)


class Fallback(Resource):
    """A path segment whose named children answer their own paths and ``fallback`` everything else,
    the segment itself included (``/v1``: the pass-through, but for the APIs translated here)."""

    def __init__(self, fallback: Resource) -> None:
        super().__init__()
        self.fallback = fallback

    def getChild(self, path: bytes, request: ProxyRequest) -> IResource:
        return self.fallback

    def render(self, request: ProxyRequest) -> Any:
        return self.fallback.render(request)


class OnFirstUse(Resource):
    """A handler built, and its module imported, by the first request that needs it: a daemon that is
    never asked for an API family does not carry its translation (``--workers`` N carry it N times)."""

    def __init__(self, build: Callable[[], Resource]) -> None:
        super().__init__()
        self._build = build
        self._built: Resource | None = None

    def _resource(self) -> Resource:
        if self._built is None:
            self._built = self._build()
        return self._built

    def getChildWithDefault(self, path: bytes, request: ProxyRequest) -> IResource:  # noqa: N802
        built = self._resource()
        if built.isLeaf and request.prepath is not None and request.postpath is not None:
            # It answers the paths below it itself: put the segment back for it.
            request.prepath.pop()
            request.postpath.insert(0, path)
            return built
        child: IResource = built.getChildWithDefault(path, request)
        return child

    def render(self, request: ProxyRequest) -> Any:
        return self._resource().render(request)

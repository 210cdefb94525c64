"""The resource tree and the one way every handler answers: JSON bodies, JSON errors, NDJSON lines.

Handlers are ``async`` methods named ``on_<method>``; ``JSONResource.render`` runs them as a Deferred,
cancels that Deferred when the client disconnects (which aborts whatever backend call it is awaiting),
turns every ``ProxyError`` into Ollama's ``{"error": "..."}`` with the error's status, and never lets an
unexpected exception reach the client as a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from ollama_proxy.catalog import keep_alive_seconds
from ollama_proxy.errors import BadRequest, MethodNotAllowed, NotFound, ProxyError
from ollama_proxy.translate.replies import compact_json, ndjson_line

log = Logger(namespace="ollama_proxy.web")

JSON_TYPE = b"application/json; charset=utf-8"
NDJSON_TYPE = b"application/x-ndjson"
MAX_JSON_REQUEST = 64 * 1024 * 1024

HandlerMethod = Callable[[Request], Awaitable[None]]


def client_gone(request: Request) -> bool:
    """True once the client disconnected or the response is complete: nothing may be written any more."""
    return bool(request.finished) or request.channel is None or getattr(request, "_disconnected", False)


def finish(request: Request) -> None:
    """``finish()`` raises after a disconnect, when there is nothing left to finish anyway."""
    if not client_gone(request):
        request.finish()


def reply_json(request: Request, body: Any, status: int = 200) -> None:
    """Write one JSON object as the whole response."""
    if client_gone(request):
        return
    data = compact_json(body)
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON_TYPE)
    request.setHeader(b"content-length", b"%d" % len(data))
    request.write(data)
    request.finish()


def reply_text(request: Request, text: str, status: int = 200) -> None:
    if client_gone(request):
        return
    data = text.encode()
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % len(data))
    request.write(data)
    request.finish()


def reply_ndjson(request: Request, lines: Iterable[Mapping[str, Any]]) -> None:
    """A short, fully known NDJSON stream (pull progress), in one write."""
    if client_gone(request):
        return
    request.setHeader(b"content-type", NDJSON_TYPE)
    request.write(b"".join(ndjson_line(line) for line in lines))
    request.finish()


def reply_error(request: Request, error: ProxyError) -> None:
    """Before any output: the error's status and ``{"error": msg}``.  Mid-stream: a last ``{"error"}`` line,
    never a fake ``done`` (the status line has already gone out, as in Ollama)."""
    if client_gone(request):
        return
    if request.startedWriting:
        request.write(ndjson_line({"error": error.message}))
        request.finish()
        return
    if isinstance(error, MethodNotAllowed):
        request.setHeader(b"allow", ", ".join(error.allowed).encode())
    reply_json(request, {"error": error.message}, error.status)


def end_request(request: Request, error: ProxyError) -> None:
    """End a request in flight from outside its handler (a shutdown): a stream gets ``error`` as its last
    line, anything else ``error`` as its response; the handler's work, and its backend call, is cancelled."""
    relay = getattr(request, "relay", None)
    if relay is not None:
        relay.shutdown(error.message)
        return
    reply_error(request, error)
    running = getattr(request, "render_deferred", None)
    if running is not None:
        running.cancel()


def note_model(request: Request, resolved: Any) -> None:
    """Record which model a request is for (client name and backend id), for the access log and metrics."""
    request.model_name = resolved.name  # type: ignore[attr-defined]
    request.backend_model = resolved.backend_id  # type: ignore[attr-defined]


def note_usage(request: Request, prompt_tokens: Any, completion_tokens: Any) -> None:
    """Record the backend's token counts for a request (ignoring anything that is not a count)."""
    if isinstance(prompt_tokens, int):
        request.prompt_tokens = prompt_tokens  # type: ignore[attr-defined]
    if isinstance(completion_tokens, int):
        request.completion_tokens = completion_tokens  # type: ignore[attr-defined]


def read_json(request: Request) -> Any:
    """The request body as JSON, with Ollama's messages for an empty or malformed body."""
    content = request.content
    if content is None:
        raise BadRequest("missing request body")
    content.seek(0)
    raw = content.read(MAX_JSON_REQUEST + 1)
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


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

    def render(self, request: Request) -> Any:  # bytes or NOT_DONE_YET
        if self.isLeaf and not self.takes_subpath and request.postpath not in ([], [b""]):
            reply_error(request, NotFound("404 page not found"))
            return NOT_DONE_YET
        method = (request.method or b"").decode("ascii", "replace")
        handler = self._handler(method)
        if handler is None:
            reply_error(request, MethodNotAllowed(method, self.allowed_methods()))
            return NOT_DONE_YET
        running = Deferred.fromCoroutine(self._run(request, handler))
        request.render_deferred = running  # type: ignore[attr-defined]  # read by a graceful shutdown
        # Twisted fires notifyFinish's errback when the client goes away; cancelling reaches whatever the
        # handler awaits (a treq call aborts its backend connection).
        request.notifyFinish().addErrback(lambda _: running.cancel())
        running.addErrback(_unhandled, request)
        return NOT_DONE_YET

    async def _run(self, request: Request, handler: HandlerMethod) -> None:
        try:
            await handler(request)
        except ProxyError as error:
            reply_error(request, error)
        except CancelledError:
            if not client_gone(request):
                raise


def _unhandled(failure: Failure, request: Request) -> None:
    """Last resort: log the traceback for the operator, give the client a plain 500 without it."""
    request_id = getattr(request, "request_id", "-")
    log.failure("unhandled error in request {request_id}", failure, request_id=request_id)
    reply_error(request, ProxyError(f"internal error (request id {request_id})"))


class Handler(JSONResource):
    """A leaf endpoint: answers its path (and the path with a trailing slash), nothing below it."""

    isLeaf = True

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app


class NotFoundResource(JSONResource):
    isLeaf = True

    def render(self, request: Request) -> Any:
        reply_error(request, NotFound("404 page not found"))
        return NOT_DONE_YET


class Directory(Resource):
    """A path segment such as ``/api``: its children, and a JSON 404 for anything else."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return NotFoundResource()

    def render(self, request: Request) -> Any:
        return NotFoundResource().render(request)


def read_keep_alive(value: Any) -> float:
    """A request's ``keep_alive`` in seconds; a string that is not a duration is the client's 400."""
    try:
        return keep_alive_seconds(value)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None

"""A generation translated onto the backend's chat completions, whichever API the client speaks
(``/api/chat`` and ``/api/generate``, ``/v1/messages``, ``/v1/responses``): the backend call on the first
replica that takes it, answered with one JSON object or relayed as the client's kind of stream.

What every family shares lives here, once: the translation made once per dialect, failover between
replicas under each backend's concurrency limit (:func:`on_each_replica`), a backend that refuses
``stream_options`` (:func:`open_stream`), the relay of a translated stream (:func:`relay_stream`:
backpressure, timeouts, cancellation when the client leaves), and the token counts and timings the access
log and the metrics read (:func:`note_stream`).  Ollama's chat and generate use these pieces in
``generation.py`` (their whole replies are measured in ways of their own); the Anthropic and Responses
APIs go through :func:`generate`, with a :class:`Replies` saying how their family words a reply.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import attrs
from twisted.web.iweb import IResponse

from ollama_proxy.app import App
from ollama_proxy.backend import BackendClient
from ollama_proxy.catalog import Resolved
from ollama_proxy.errors import BackendRejected, BadRequest
from ollama_proxy.exchange import Family
from ollama_proxy.failover import on_replicas
from ollama_proxy.handlers.openai import forward_natively
from ollama_proxy.json_codec import compact_json
from ollama_proxy.relay import StreamRelay
from ollama_proxy.site import ProxyRequest
from ollama_proxy.translate.dialect import Dialect
from ollama_proxy.translate.replies import Instant
from ollama_proxy.translate.stream import EventStreamTransform, EventTranslator
from ollama_proxy.web import read_json

# The backend request for a dialect: (endpoint under the base URL, JSON body).
Translate = Callable[[Dialect], tuple[str, dict[str, Any]]]
# One backend call on one replica: (that replica, endpoint, body, whether it is the last one).
ReplicaCall = Callable[[Resolved, str, dict[str, Any], bool], Awaitable[None]]

EVENT_STREAM_TYPE = b"text/event-stream; charset=utf-8"


def now() -> Instant:
    return Instant(time.time(), time.monotonic_ns())


@attrs.frozen
class BodyWords:
    """How an API family words the two ways a body can fail to name a model."""

    not_an_object: str
    no_model: str


async def resolve_body(
    app: App, request: ProxyRequest, family: Family, words: BodyWords
) -> tuple[Mapping[str, Any], Resolved] | None:
    """The request's JSON object and the model it names, resolved and noted on the exchange; None when
    the backend serving that model takes the family's API natively and the request went there whole."""
    body = read_json(request)
    if not isinstance(body, Mapping):
        raise BadRequest(words.not_an_object)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(words.no_model)
    resolved = await app.catalog.resolve(model)
    request.exchange.served(resolved.name, resolved.backend_id)
    if app.serves_natively(resolved.client, family):
        await forward_natively(app, request, resolved, body)
        return None
    return body, resolved


def check_can_generate(resolved: Resolved, verb: str) -> None:
    """An embedding-only model cannot chat: a 400 naming it, before the backend is asked."""
    capabilities = resolved.info.capabilities
    if "embedding" in capabilities and "completion" not in capabilities:
        raise BadRequest(f'"{resolved.name}" does not support {verb}')


def translated_once(translate: Translate) -> Translate:
    """The translation for a dialect, computed once: validating the request and sending it to the first
    replica (and to others of the same dialect) share one result instead of translating twice."""
    done: dict[Dialect, tuple[str, dict[str, Any]]] = {}

    def once(dialect: Dialect) -> tuple[str, dict[str, Any]]:
        if dialect not in done:
            done[dialect] = translate(dialect)
        return done[dialect]

    return once


async def on_each_replica(
    request: ProxyRequest, resolved: Resolved, translate: Translate, call: ReplicaCall
) -> None:
    """``call`` on the model's replicas in turn, each with its dialect's translation and under its
    concurrency limit, until one succeeds: a replica that fails before anything reached the client hands
    the request to the next (``failover.on_replicas``)."""
    translate = translated_once(translate)

    async def attempt(target: Resolved, last: bool) -> None:
        endpoint, body = translate(target.client.dialect)
        async with target.client.limit:
            await call(target, endpoint, body, last)

    await on_replicas(request, resolved, attempt)


async def open_stream(
    client: BackendClient,
    endpoint: str,
    body: dict[str, Any],
    request_id: str,
    *,
    retry: bool,
    model: str,
) -> IResponse:
    """The backend's streaming response, its headers read and its status checked; ``model`` is the
    backend id whose breaker the outcome counts toward."""
    try:
        response = await client.request(
            "POST", endpoint, body=compact_json(body), request_id=request_id, retry=retry, model=model
        )
        await client.raise_for_status(response)
    except BackendRejected as error:
        if not _rejects_usage_option(error, body):
            raise
        # Some OpenAI-compatible servers refuse stream_options; the stream is still worth having,
        # only without token counts.
        body = {key: value for key, value in body.items() if key != "stream_options"}
        response = await client.request(
            "POST", endpoint, body=compact_json(body), request_id=request_id, retry=retry, model=model
        )
        await client.raise_for_status(response)
    return response


def _rejects_usage_option(error: BackendRejected, body: dict[str, Any]) -> bool:
    message = error.message.lower()
    return (
        "stream_options" in body
        and error.backend_status in (400, 422)
        and ("stream_options" in message or "include_usage" in message)
    )


class StreamMeasures(Protocol):
    """What a stream's translator measured: the backend's token counts and when the first token came."""

    @property
    def usage(self) -> tuple[int | None, int | None]: ...

    @property
    def first_token_at(self) -> Instant | None: ...


def note_stream(request: ProxyRequest, translator: StreamMeasures, started: Instant) -> None:
    """Time to first token, decode time and token counts of a finished stream, for logs and metrics."""
    exchange = request.exchange
    exchange.counted(*translator.usage)
    first = translator.first_token_at
    if first is not None:
        exchange.first_token_seconds = (first.mono_ns - started.mono_ns) / 1e9
        exchange.decode_seconds = (time.monotonic_ns() - first.mono_ns) / 1e9


async def relay_stream(
    app: App,
    request: ProxyRequest,
    response: IResponse,
    translator: EventTranslator,
    content_type: bytes,
    before_finish: Callable[[], None],
) -> None:
    """The backend's event stream relayed in the client's family, read by read, until it ends;
    ``before_finish`` notes what the stream measured before the request's end is logged."""
    request.setHeader(b"content-type", content_type)
    config = app.config
    relay = StreamRelay(
        request,
        EventStreamTransform(translator, now),
        app.reactor,
        idle_timeout=config.idle_timeout,
        before_finish=before_finish,
    )
    response.deliverBody(relay)
    await relay.done


@attrs.frozen
class WholeReply:
    """A whole reply in the client's family, and the backend's token counts it reports."""

    body: Any
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Replies(Protocol):
    """How one API family words what the backend answered: a whole ``chat.completion`` (``whole``), or
    a stream (``stream`` builds a fresh translator for each attempt; ``stream_type`` is its
    Content-Type)."""

    @property
    def stream_type(self) -> bytes: ...

    def whole(self, data: Any, started: Instant, ended: Instant) -> WholeReply: ...

    def stream(self, started: Instant) -> EventTranslator: ...


async def generate(
    app: App,
    request: ProxyRequest,
    resolved: Resolved,
    *,
    translate: Translate,
    stream: bool,
    replies: Replies,
) -> None:
    """Call the backend and answer in ``replies``' words: one JSON object, or the relay of its stream."""

    async def call(target: Resolved, endpoint: str, body: dict[str, Any], last: bool) -> None:
        client = target.client
        request.exchange.backend = client.name
        request_id = request.exchange.request_id
        started = now()
        if not stream:
            data = await client.post_json(
                endpoint, body, request_id=request_id, retry=last, model=target.backend_id
            )
            reply = replies.whole(data, started, now())
            request.exchange.counted(reply.prompt_tokens, reply.completion_tokens)
            request.send_json(reply.body)
            return
        response = await open_stream(client, endpoint, body, request_id, retry=last, model=target.backend_id)
        translator = replies.stream(started)
        await relay_stream(
            app,
            request,
            response,
            translator,
            replies.stream_type,
            lambda: note_stream(request, translator, started),
        )

    await on_each_replica(request, resolved, translate, call)

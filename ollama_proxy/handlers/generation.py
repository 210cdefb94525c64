"""``/api/chat`` and ``/api/generate``: validate, resolve the model, translate, and either relay the
backend's SSE stream as Ollama NDJSON chunk by chunk or answer with one JSON object.

The translation itself lives in ``translate/chat.py`` (requests) and ``translate/replies.py`` (replies);
this module only reads clocks, calls the backend and hands bytes to the relay.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from ollama_proxy.app import App
from ollama_proxy.catalog import Resolved
from ollama_proxy.errors import BackendRejected, BadRequest, ModelNotFound
from ollama_proxy.failover import on_replicas
from ollama_proxy.json_codec import compact_json
from ollama_proxy.relay import StreamRelay
from ollama_proxy.schemas import ChatRequest, GenerateRequest, structure
from ollama_proxy.site import ProxyRequest
from ollama_proxy.translate.chat import CHAT_ENDPOINT, chat_to_openai, generate_to_openai
from ollama_proxy.translate.dialect import Dialect
from ollama_proxy.translate.replies import Instant, Kind, StreamTranslator, completion_to_reply, ollama_reply
from ollama_proxy.translate.stream import EventStreamTransform, OllamaStream
from ollama_proxy.web import Handler, read_json, read_keep_alive
from ollama_proxy.wire.ollama import NDJSON_TYPE

log = Logger(namespace="ollama_proxy.generation")


def now() -> Instant:
    return Instant(time.time(), time.monotonic_ns())


def _check_can_generate(resolved: Resolved, verb: str) -> None:
    capabilities = resolved.info.capabilities
    if "embedding" in capabilities and "completion" not in capabilities:
        raise BadRequest(f'"{resolved.name}" does not support {verb}')


def _load_reply(model: str, kind: Kind, keep_alive_for: float) -> dict[str, Any]:
    """Ollama's answer to an empty chat/generate: a load (or, with keep_alive 0, an unload) request."""
    return ollama_reply(model, kind, now(), done_reason="unload" if keep_alive_for <= 0 else "load")


class GenerationHandler(Handler):
    """What chat and generate share: the backend call, streaming or not."""

    app: App

    async def complete(
        self,
        request: ProxyRequest,
        resolved: Resolved,
        *,
        kind: Kind,
        translate: Callable[[Dialect], tuple[str, dict[str, Any]]],
        keep: float,
        stream: bool,
        think: bool | str | None,
    ) -> None:
        """Call the backend and answer: one JSON object, or the NDJSON relay of its SSE stream.

        ``translate`` builds (endpoint, body) for a backend's dialect; it runs once per dialect, and
        first here, so that a bad request fails before any backend is tried.  A replica that fails
        before anything reached the client hands the request to the next one.  A ``think`` request
        also splits a leading ``<think>…</think>`` out of the content.
        """
        _check_can_generate(resolved, kind)
        translate = translated_once(translate)
        translate(resolved.client.dialect)
        self.app.recent.touch(resolved, keep)
        thinking = wants_thinking(think)

        async def attempt(target: Resolved, last: bool) -> None:
            endpoint, body = translate(target.client.dialect)
            async with target.client.limit:
                await self._exchange(request, target, kind, endpoint, body, stream, thinking, retry=last)

        await on_replicas(request, resolved, attempt)

    async def _exchange(
        self,
        request: ProxyRequest,
        resolved: Resolved,
        kind: Kind,
        endpoint: str,
        body: dict[str, Any],
        stream: bool,
        thinking: bool,
        *,
        retry: bool = True,
    ) -> None:
        client = resolved.client
        request.exchange.backend = client.name
        request_id = request.exchange.request_id
        started = now()
        if not stream:
            data = await client.post_json(
                endpoint, body, request_id=request_id, retry=retry, model=resolved.backend_id
            )
            reply = completion_to_reply(
                data,
                model=resolved.name,
                kind=kind,
                started=started,
                ended=now(),
                split_think_tags=thinking,
            )
            request.exchange.counted(reply.get("prompt_eval_count"), reply.get("eval_count"))
            request.send_json(reply)
            return
        try:
            response = await client.request(
                "POST",
                endpoint,
                body=compact_json(body),
                request_id=request_id,
                retry=retry,
                model=resolved.backend_id,
            )
            await client.raise_for_status(response)
        except BackendRejected as error:
            if not _rejects_usage_option(error, body):
                raise
            # Some OpenAI-compatible servers refuse stream_options; the stream is still worth having,
            # only without token counts.
            body = {key: value for key, value in body.items() if key != "stream_options"}
            response = await client.request(
                "POST",
                endpoint,
                body=compact_json(body),
                request_id=request_id,
                retry=retry,
                model=resolved.backend_id,
            )
            await client.raise_for_status(response)
        translator = StreamTranslator(
            model=resolved.name, kind=kind, started=started, split_think_tags=thinking
        )
        request.setHeader(b"content-type", NDJSON_TYPE)
        config = self.app.config
        relay = StreamRelay(
            request,
            EventStreamTransform(OllamaStream(translator), now),
            self.app.reactor,
            stall_timeout=config.stall_timeout,
            idle_timeout=config.idle_timeout,
            before_finish=lambda: _note_stream(request, translator, started),
        )
        response.deliverBody(relay)
        await relay.done


def _note_stream(request: ProxyRequest, translator: StreamTranslator, started: Instant) -> None:
    """Time to first token, decode time and token counts of a finished stream, for logs and metrics."""
    exchange = request.exchange
    exchange.counted(*translator.usage)
    first = translator.first_token_at
    if first is not None:
        exchange.first_token_seconds = (first.mono_ns - started.mono_ns) / 1e9
        exchange.decode_seconds = (time.monotonic_ns() - first.mono_ns) / 1e9


def _rejects_usage_option(error: BackendRejected, body: dict[str, Any]) -> bool:
    message = error.message.lower()
    return (
        "stream_options" in body
        and error.backend_status in (400, 422)
        and ("stream_options" in message or "include_usage" in message)
    )


def translated_once(
    translate: Callable[[Dialect], tuple[str, dict[str, Any]]],
) -> Callable[[Dialect], tuple[str, dict[str, Any]]]:
    """The translation for a dialect, computed once: validating the request and sending it to the first
    replica (and to others of the same dialect) share one result instead of translating twice."""
    done: dict[Dialect, tuple[str, dict[str, Any]]] = {}

    def once(dialect: Dialect) -> tuple[str, dict[str, Any]]:
        if dialect not in done:
            done[dialect] = translate(dialect)
        return done[dialect]

    return once


def wants_thinking(think: bool | str | None) -> bool:
    return think is not None and think is not False


class ChatResource(GenerationHandler):
    async def on_post(self, request: ProxyRequest) -> None:
        chat = structure(read_json(request), ChatRequest)
        if not chat.model:
            raise BadRequest("model is required")
        resolved = await self.app.catalog.resolve(chat.model)
        request.exchange.served(resolved.name, resolved.backend_id)
        keep = read_keep_alive(chat.keep_alive)
        if not chat.messages:
            self.app.recent.touch(resolved, keep)
            request.send_json(_load_reply(chat.model, "chat", keep))
            return
        await self.complete(
            request,
            resolved,
            kind="chat",
            translate=lambda dialect: (
                CHAT_ENDPOINT,
                chat_to_openai(chat, resolved.backend_id, dialect),
            ),
            keep=keep,
            stream=chat.stream,
            think=chat.think,
        )


class GenerateResource(GenerationHandler):
    async def on_post(self, request: ProxyRequest) -> None:
        generate = structure(read_json(request), GenerateRequest)
        if not generate.model:
            # Ollama's quirk: generate without a model is a 404, not a 400.
            raise ModelNotFound("")
        resolved = await self.app.catalog.resolve(generate.model)
        request.exchange.served(resolved.name, resolved.backend_id)
        keep = read_keep_alive(generate.keep_alive)
        if not generate.prompt and not generate.images and not generate.suffix:
            self.app.recent.touch(resolved, keep)
            request.send_json(_load_reply(generate.model, "generate", keep))
            return
        await self.complete(
            request,
            resolved,
            kind="generate",
            translate=lambda dialect: generate_to_openai(generate, resolved.backend_id, dialect),
            keep=keep,
            stream=generate.stream,
            think=generate.think,
        )

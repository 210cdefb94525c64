"""``/api/chat`` and ``/api/generate``: validate, resolve the model, translate, and either relay the
backend's SSE stream as Ollama NDJSON chunk by chunk or answer with one JSON object.

The translation itself lives in ``translate/chat.py`` (requests) and ``translate/replies.py`` (replies);
this module only reads clocks, calls the backend and hands bytes to the relay.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.web.server import Request

from ollama_proxy.app import App
from ollama_proxy.catalog import Resolved
from ollama_proxy.errors import (
    BackendError,
    BackendRejected,
    BadRequest,
    ModelNotFound,
)
from ollama_proxy.failover import on_replicas
from ollama_proxy.relay import StreamRelay
from ollama_proxy.schemas import ChatRequest, GenerateRequest, structure
from ollama_proxy.sse import SSEDecoder, SSEEvent
from ollama_proxy.translate.chat import CHAT_ENDPOINT, chat_to_openai, generate_to_openai
from ollama_proxy.translate.dialect import Dialect
from ollama_proxy.translate.replies import (
    Instant,
    Kind,
    StreamTranslator,
    compact_json,
    completion_to_reply,
    ndjson_line,
)
from ollama_proxy.translate.timestamps import rfc3339_utc
from ollama_proxy.web import (
    NDJSON_TYPE,
    Handler,
    note_model,
    note_usage,
    read_json,
    read_keep_alive,
    reply_json,
)

log = Logger(namespace="ollama_proxy.generation")

# A backend stream event that is not JSON is skipped rather than ending the stream; this many in a row
# means the backend is not speaking OpenAI SSE at all.
MAX_BAD_EVENTS = 8


def now() -> Instant:
    return Instant(time.time(), time.monotonic_ns())


class NDJSONTransform:
    """Backend SSE bytes → Ollama NDJSON bytes, one write per upstream read."""

    def __init__(self, translator: StreamTranslator, clock: Callable[[], Instant] = now) -> None:
        self._decoder = SSEDecoder()
        self._translator = translator
        self._clock = clock
        self._bad_events = 0
        self._broken: str | None = None
        self._saw_done = False

    @property
    def failed(self) -> bool:
        return self._translator.failed or self._broken is not None

    def feed(self, data: bytes) -> bytes:
        try:
            events = self._decoder.feed(data)
        except BackendError as error:  # an event beyond the decoder's size limit
            self._broken = error.message
            return ndjson_line({"error": error.message})
        return self._translate(events)

    def _translate(self, events: list[SSEEvent]) -> bytes:
        lines: list[bytes] = []
        for event in events:
            if event.data == "[DONE]":
                self._saw_done = True
                continue
            try:
                payload = json.loads(event.data)
            except ValueError:
                self._bad_events += 1
                if self._bad_events >= MAX_BAD_EVENTS:
                    self._broken = "the backend is not sending OpenAI stream events"
                    lines.append(ndjson_line({"error": self._broken}))
                    break
                continue
            self._bad_events = 0
            if isinstance(payload, dict):
                lines.extend(ndjson_line(chunk) for chunk in self._translator.feed(payload, self._clock()))
            if self._translator.failed:
                break
        return b"".join(lines)

    def end(self) -> bytes:
        if self.failed:
            return b""
        # A last event the backend did not terminate with a blank line still counts.
        tail = self._translate(self._decoder.close())
        if self.failed:
            return tail
        if not (self._saw_done or self._translator.saw_finish):
            return tail + self.fail("the backend's stream ended before it was complete")
        return tail + b"".join(ndjson_line(chunk) for chunk in self._translator.finish(self._clock()))

    def fail(self, message: str) -> bytes:
        return ndjson_line({"error": message})


def _check_can_generate(resolved: Resolved, verb: str) -> None:
    capabilities = resolved.info.capabilities
    if "embedding" in capabilities and "completion" not in capabilities:
        raise BadRequest(f'"{resolved.name}" does not support {verb}')


def _load_reply(model: str, kind: Kind, keep_alive_for: float) -> dict[str, Any]:
    """Ollama's answer to an empty chat/generate: a load (or, with keep_alive 0, an unload) request."""
    reply: dict[str, Any] = {"model": model, "created_at": rfc3339_utc(time.time())}
    if kind == "chat":
        reply["message"] = {"role": "assistant", "content": ""}
    else:
        reply["response"] = ""
    reply["done"] = True
    reply["done_reason"] = "unload" if keep_alive_for <= 0 else "load"
    return reply


class GenerationHandler(Handler):
    """What chat and generate share: the backend call, streaming or not."""

    app: App

    async def complete(
        self,
        request: Request,
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
        request: Request,
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
        request_id = getattr(request, "request_id", None)
        started = now()
        try:
            if not stream:
                data = await client.post_json(endpoint, body, request_id=request_id, retry=retry)
                reply = completion_to_reply(
                    data,
                    model=resolved.name,
                    kind=kind,
                    started=started,
                    ended=now(),
                    split_think_tags=thinking,
                )
                note_usage(request, reply.get("prompt_eval_count"), reply.get("eval_count"))
                reply_json(request, reply)
                return
            try:
                response = await client.request(
                    "POST", endpoint, body=compact_json(body), request_id=request_id, retry=retry
                )
                await client.raise_for_status(response)
            except BackendRejected as error:
                if not _rejects_usage_option(error, body):
                    raise
                # Some OpenAI-compatible servers refuse stream_options; the stream is still worth having,
                # only without token counts.
                body = {key: value for key, value in body.items() if key != "stream_options"}
                response = await client.request(
                    "POST", endpoint, body=compact_json(body), request_id=request_id, retry=retry
                )
                await client.raise_for_status(response)
        except BackendRejected as error:
            if error.backend_status == 404:
                raise ModelNotFound(resolved.name) from None
            raise
        translator = StreamTranslator(
            model=resolved.name, kind=kind, started=started, split_think_tags=thinking
        )
        request.setHeader(b"content-type", NDJSON_TYPE)
        config = self.app.config
        relay = StreamRelay(
            request,
            NDJSONTransform(translator),
            self.app.reactor,
            stall_timeout=config.stall_timeout,
            idle_timeout=config.idle_timeout,
            before_finish=lambda: _note_stream(request, translator, started),
        )
        response.deliverBody(relay)
        await relay.done


def _note_stream(request: Request, translator: StreamTranslator, started: Instant) -> None:
    """Time to first token, decode time and token counts of a finished stream, for logs and metrics."""
    prompt_tokens, completion_tokens = translator.usage
    note_usage(request, prompt_tokens, completion_tokens)
    first = translator.first_token_at
    if first is not None:
        request.first_token_seconds = (first.mono_ns - started.mono_ns) / 1e9  # type: ignore[attr-defined]
        request.decode_seconds = (time.monotonic_ns() - first.mono_ns) / 1e9  # type: ignore[attr-defined]


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
    async def on_post(self, request: Request) -> None:
        chat = structure(read_json(request), ChatRequest)
        if not chat.model:
            raise BadRequest("model is required")
        resolved = await self.app.catalog.resolve(chat.model)
        note_model(request, resolved)
        keep = read_keep_alive(chat.keep_alive)
        if not chat.messages:
            self.app.recent.touch(resolved, keep)
            reply_json(request, _load_reply(chat.model, "chat", keep))
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
    async def on_post(self, request: Request) -> None:
        generate = structure(read_json(request), GenerateRequest)
        if not generate.model:
            # Ollama's quirk: generate without a model is a 404, not a 400.
            raise ModelNotFound("")
        resolved = await self.app.catalog.resolve(generate.model)
        note_model(request, resolved)
        keep = read_keep_alive(generate.keep_alive)
        if not generate.prompt and not generate.images and not generate.suffix:
            self.app.recent.touch(resolved, keep)
            reply_json(request, _load_reply(generate.model, "generate", keep))
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

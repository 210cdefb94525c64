"""``/api/chat`` and ``/api/generate``: validate, resolve the model, translate, and either relay the
backend's SSE stream as Ollama NDJSON chunk by chunk or answer with one JSON object (the backend's whole
reply, or its stream folded, where only a stream shows when the first token came).

Per request, the effective ``think`` is decided here from what the catalog knows of the model (a
thinking-capable model asked nothing thinks), and any reply showing reasoning is reported back to the
catalog, which then knows the model thinks.

The translation itself lives in ``translate/chat.py`` (requests) and ``translate/replies.py`` (replies);
this module only reads clocks, calls the backend and hands bytes to the relay.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
from twisted.logger import Logger

from ollama_proxy.app import App
from ollama_proxy.backend import MAX_JSON_BODY
from ollama_proxy.catalog import Resolved
from ollama_proxy.errors import BackendError, BadRequest, ModelNotFound
from ollama_proxy.handlers.translated import (
    Translate,
    check_can_generate,
    note_stream,
    now,
    on_each_replica,
    open_stream,
    relay_stream,
    translated_once,
)
from ollama_proxy.schemas import ChatRequest, GenerateRequest, structure
from ollama_proxy.site import ProxyRequest
from ollama_proxy.translate.chat import (
    CHAT_ENDPOINT,
    WHOLE_FROM_STREAM,
    as_stream,
    chat_to_openai,
    effective_think,
    generate_to_openai,
)
from ollama_proxy.translate.context import context_after
from ollama_proxy.translate.replies import (
    ContextFor,
    Instant,
    Kind,
    Reasoning,
    StreamTranslator,
    carries_reasoning,
    completion_to_reply,
    ollama_reply,
)
from ollama_proxy.translate.stream import EventStreamTransform, OllamaStream, OllamaWhole
from ollama_proxy.web import Handler, read_json, read_keep_alive
from ollama_proxy.wire.ollama import NDJSON_TYPE

log = Logger(namespace="ollama_proxy.generation")


def arrival(request: ProxyRequest) -> Instant:
    """When the request reached the daemon (the gate's monotonic reading), as an Instant."""
    started = request.exchange.started
    return Instant(time.time() - (time.monotonic() - started), round(started * 1e9))


def _load_reply(model: str, kind: Kind, keep_alive_for: float) -> dict[str, Any]:
    """Ollama's answer to an empty chat/generate: a load (or, with keep_alive 0, an unload) request."""
    return ollama_reply(model, kind, now(), done_reason="unload" if keep_alive_for <= 0 else "load")


@attrs.frozen
class ReplyPlan:
    """What the client of one chat or generate call gets, whichever replica serves it."""

    kind: Kind
    stream: bool
    # What of the model's reasoning reaches the client (after the request's effective ``think``).
    reasoning: Reasoning
    # A generate reply's ``context``, from its whole answer.
    context_for: ContextFor | None = None


class GenerationHandler(Handler):
    """What chat and generate share: the backend call, streaming or not."""

    app: App

    async def complete(
        self,
        request: ProxyRequest,
        resolved: Resolved,
        plan: ReplyPlan,
        *,
        translate: Translate,
        keep: float,
    ) -> None:
        """Call the backend and answer: one JSON object, or the NDJSON relay of its SSE stream.

        ``translate`` builds (endpoint, body) for a backend's dialect; it runs once per dialect, and
        first here, so that a bad request fails before any backend is tried (and before the model
        counts as used).  The replicas are tried in turn (``handlers/translated.py``).
        """
        check_can_generate(resolved, plan.kind)
        translate = translated_once(translate)
        translate(resolved.client.dialect)
        self.app.recent.touch(resolved, keep)

        async def call(target: Resolved, endpoint: str, body: dict[str, Any], last: bool) -> None:
            await self._exchange(request, target, plan, endpoint, body, retry=last)

        await on_each_replica(request, resolved, translate, call)

    async def _exchange(
        self,
        request: ProxyRequest,
        resolved: Resolved,
        plan: ReplyPlan,
        endpoint: str,
        body: dict[str, Any],
        *,
        retry: bool = True,
    ) -> None:
        """One backend call.  A whole reply is asked whole where the backend measures its own durations
        or may refuse to stream, else folded from the backend's stream (``WHOLE_FROM_STREAM``)."""
        client = resolved.client
        request.exchange.backend = client.name
        request_id = request.exchange.request_id
        started, arrived = now(), arrival(request)
        if not plan.stream and client.dialect not in WHOLE_FROM_STREAM:
            data = await client.post_json(
                endpoint, body, request_id=request_id, retry=retry, model=resolved.backend_id
            )
            reply = completion_to_reply(
                data,
                model=resolved.name,
                kind=plan.kind,
                started=started,
                ended=now(),
                think=plan.reasoning,
                arrived=arrived,
                context_for=plan.context_for,
            )
            if carries_reasoning(data):
                self.app.catalog.note_reasoning(resolved.backend_id)
            request.exchange.counted(reply.get("prompt_eval_count"), reply.get("eval_count"))
            request.send_json(reply)
            return
        response = await open_stream(
            client, endpoint, as_stream(body), request_id, retry=retry, model=resolved.backend_id
        )
        translator = StreamTranslator(
            model=resolved.name,
            kind=plan.kind,
            started=started,
            think=plan.reasoning,
            arrived=arrived,
            context_for=plan.context_for,
            whole=not plan.stream,
        )

        def noted() -> None:
            note_stream(request, translator, started)
            if translator.saw_reasoning:
                self.app.catalog.note_reasoning(resolved.backend_id)

        if plan.stream:
            await relay_stream(self.app, request, response, OllamaStream(translator), NDJSON_TYPE, noted)
            return
        whole = OllamaWhole(translator)
        transform = EventStreamTransform(whole, now)
        await client.read_body(response, MAX_JSON_BODY, each=transform.feed)
        transform.end()
        noted()
        if whole.error is not None or whole.reply is None:
            raise BackendError(whole.error or "the backend's stream ended before it was complete")
        request.send_json(whole.reply)


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
        chat = attrs.evolve(chat, think=effective_think(chat.think, resolved.info.capabilities))
        await self.complete(
            request,
            resolved,
            ReplyPlan("chat", chat.stream, Reasoning.after(chat.think)),
            translate=lambda dialect: (
                CHAT_ENDPOINT,
                chat_to_openai(chat, resolved.backend_id, dialect),
            ),
            keep=keep,
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
        generate = attrs.evolve(generate, think=effective_think(generate.think, resolved.info.capabilities))
        fim = resolved.info.fim
        await self.complete(
            request,
            resolved,
            ReplyPlan(
                "generate",
                generate.stream,
                Reasoning.after(generate.think),
                context_for=lambda answer: context_after(generate, answer),
            ),
            translate=lambda dialect: generate_to_openai(generate, resolved.backend_id, dialect, fim=fim),
            keep=keep,
        )

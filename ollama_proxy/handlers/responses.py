"""``/v1/responses`` (also without ``/v1``): OpenAI's Responses API, as Codex CLI (``--oss``) and the
openai SDK's ``responses.create`` speak it, on any backend.

A request is translated onto the backend's ``/chat/completions`` (``translate/responses.py``) and goes the
way of ``/api/chat`` (``handlers/translated.py``); a backend that serves this API itself
(``native-apis = ["responses"]``) gets it passed through instead, and then also what lies below it
(``/v1/responses/{id}`` ...), which otherwise needs state this server does not keep.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.web.resource import IResource

from ollama_proxy.app import App
from ollama_proxy.catalog import DEFAULT_KEEP_ALIVE
from ollama_proxy.exchange import Family
from ollama_proxy.handlers.openai import NativeOnlyResource
from ollama_proxy.handlers.translated import (
    EVENT_STREAM_TYPE,
    BodyWords,
    WholeReply,
    check_can_generate,
    generate,
    resolve_body,
    translated_once,
)
from ollama_proxy.site import ProxyRequest
from ollama_proxy.translate.chat import CHAT_ENDPOINT
from ollama_proxy.translate.dialect import Dialect
from ollama_proxy.translate.replies import Instant
from ollama_proxy.translate.responses import (
    STATELESS,
    ResponsesStream,
    completion_to_response,
    responses_to_openai,
)
from ollama_proxy.translate.stream import EventTranslator
from ollama_proxy.web import Handler

log = Logger(namespace="ollama_proxy.responses")


def response_id() -> str:
    """A new response id in OpenAI's shape (``resp_`` and 32 hex digits); item ids derive from it."""
    return "resp_" + os.urandom(16).hex()


# OpenAI's words for a body that names no model.
_BODY_WORDS = BodyWords("the request body must be a JSON object", "missing required parameter: 'model'")


def _wants_reasoning(body: Mapping[str, Any]) -> bool:
    """Reasoning asked for (an effort other than ``none``): a leading ``<think>…</think>`` in the content
    is then split out as a reasoning item."""
    reasoning = body.get("reasoning")
    return isinstance(reasoning, Mapping) and reasoning.get("effort") not in (None, "none")


@attrs.frozen
class ResponsesReplies:
    """The Responses API's words for a reply: a ``response`` object, or its event stream."""

    model: str
    response_id: str
    request: Mapping[str, Any]
    split_think_tags: bool
    stream_type: bytes = EVENT_STREAM_TYPE

    def whole(self, data: Any, started: Instant, ended: Instant) -> WholeReply:
        response = completion_to_response(
            data,
            model=self.model,
            response_id=self.response_id,
            created_at=started.wall,
            request=self.request,
            completed_at=ended.wall,
            split_think_tags=self.split_think_tags,
        )
        usage = response["usage"] or {}
        return WholeReply(response, usage.get("input_tokens"), usage.get("output_tokens"))

    def stream(self, started: Instant) -> EventTranslator:
        return ResponsesStream(
            model=self.model,
            response_id=self.response_id,
            created_at=started.wall,
            request=self.request,
            split_think_tags=self.split_think_tags,
        )


class ResponsesResource(Handler):
    """``POST /v1/responses``; the paths below it only where a backend serves the API natively."""

    isLeaf = False
    app: App

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self._elsewhere = NativeOnlyResource(app, Family.RESPONSES, f"no such response: {STATELESS}")

    def getChild(self, path: bytes, request: Any) -> IResource:
        return self if path == b"" else self._elsewhere

    async def on_post(self, request: ProxyRequest) -> None:
        found = await resolve_body(self.app, request, Family.RESPONSES, _BODY_WORDS)
        if found is None:
            return
        body, resolved = found
        check_can_generate(resolved, "chat")
        dropped_tools: set[str] = set()
        dropped_input: set[str] = set()

        def translate_for(dialect: Dialect) -> tuple[str, dict[str, Any]]:
            translated = responses_to_openai(body, resolved.backend_id, dialect)
            dropped_tools.update(translated.dropped_tools)
            dropped_input.update(translated.dropped_input)
            return CHAT_ENDPOINT, translated.body

        translate = translated_once(translate_for)
        _, first = translate(resolved.client.dialect)  # a bad request fails here, before any backend
        if dropped_tools or dropped_input:
            log.info(
                "{request_id} left out, the backend cannot take them: tools {tools}; input {input}",
                request_id=request.exchange.request_id,
                tools=", ".join(sorted(dropped_tools)) or "none",
                input=", ".join(sorted(dropped_input)) or "none",
            )
        self.app.recent.touch(resolved, DEFAULT_KEEP_ALIVE)
        replies = ResponsesReplies(resolved.name, response_id(), body, _wants_reasoning(body))
        await generate(
            self.app, request, resolved, translate=translate, stream=bool(first["stream"]), replies=replies
        )

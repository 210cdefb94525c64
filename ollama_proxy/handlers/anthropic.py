"""``/v1/messages`` and ``/v1/messages/count_tokens`` (also without ``/v1``): the Anthropic Messages API,
as Claude Code and the Anthropic SDKs speak it, on any backend.

A request is translated onto the backend's ``/chat/completions`` (``translate/anthropic.py``) and goes the
way of ``/api/chat`` (``handlers/translated.py``: routing, failover, limits, the relay, cancellation,
metrics); a backend that serves this API itself (``native-apis = ["anthropic"]``) gets it passed through
instead.  ``?beta=true`` and the ``anthropic-version`` and ``anthropic-beta`` headers change nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.web.resource import IResource

from ollama_proxy.app import App
from ollama_proxy.backend import BackendClient
from ollama_proxy.catalog import DEFAULT_KEEP_ALIVE, Resolved
from ollama_proxy.errors import BackendError, BackendRejected, Overloaded
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
from ollama_proxy.translate.anthropic import (
    AnthropicStream,
    completion_to_message,
    counted_input_tokens,
    estimate_input_tokens,
    fit_context,
    messages_to_openai,
    tokenize_text,
    tokenizer_count,
)
from ollama_proxy.translate.chat import CHAT_ENDPOINT
from ollama_proxy.translate.dialect import Dialect
from ollama_proxy.translate.replies import Instant
from ollama_proxy.translate.stream import EventTranslator
from ollama_proxy.web import Handler

log = Logger(namespace="ollama_proxy.anthropic")

# llama.cpp's server and vLLM both tokenize at the server's root, beside /v1 (BackendClient.url).
TOKENIZE_PATH = "/tokenize"
# Servers known to have no /tokenize: asking them would cost a round trip per count for nothing.
_NO_TOKENIZER = (Dialect.OPENAI, Dialect.OPENROUTER)
# What a server without the endpoint answers.
_NO_SUCH_ENDPOINT = (404, 405, 501)


def message_id() -> str:
    """A new message id in Anthropic's shape (``msg_`` and 24 characters); tool-use ids derive from it."""
    return "msg_" + os.urandom(12).hex()


# Anthropic's words for a body that names no model.
_BODY_WORDS = BodyWords("request body must be a JSON object", "model: field required")


def _wants_thinking(body: Mapping[str, Any]) -> bool:
    """Thinking asked for (``enabled``, or ``adaptive`` as Claude Code sends it): a leading
    ``<think>…</think>`` in the content is then split out as a thinking block."""
    thinking = body.get("thinking")
    return isinstance(thinking, Mapping) and thinking.get("type") in ("enabled", "adaptive")


@attrs.frozen
class AnthropicReplies:
    """Anthropic's words for a reply: a ``Message``, or the named SSE events of a stream."""

    model: str
    message_id: str
    split_think_tags: bool
    stream_type: bytes = EVENT_STREAM_TYPE

    def whole(self, data: Any, started: Instant, ended: Instant) -> WholeReply:
        message = completion_to_message(
            data, model=self.model, message_id=self.message_id, split_think_tags=self.split_think_tags
        )
        usage = message["usage"]
        prompt = usage["input_tokens"] + usage.get("cache_read_input_tokens", 0)
        return WholeReply(message, prompt, usage["output_tokens"])

    def stream(self, started: Instant) -> EventTranslator:
        return AnthropicStream(
            model=self.model, message_id=self.message_id, split_think_tags=self.split_think_tags
        )


class MessagesResource(Handler):
    """``POST /v1/messages``, with ``count_tokens`` below it."""

    isLeaf = False
    app: App

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self.putChild(b"count_tokens", CountTokensResource(app))
        self._elsewhere = NativeOnlyResource(
            app,
            Family.ANTHROPIC,
            "not found: this server answers POST /v1/messages and /v1/messages/count_tokens only",
        )

    def getChild(self, path: bytes, request: Any) -> IResource:
        return self if path == b"" else self._elsewhere

    async def on_post(self, request: ProxyRequest) -> None:
        found = await resolve_body(self.app, request, Family.ANTHROPIC, _BODY_WORDS)
        if found is None:
            return
        body, resolved = found
        check_can_generate(resolved, "chat")
        dropped: set[str] = set()

        def translate_for(dialect: Dialect) -> tuple[str, dict[str, Any]]:
            translated = messages_to_openai(body, resolved.backend_id, dialect)
            dropped.update(translated.dropped_tools)
            fitted = fit_context(translated.body, resolved.info.context_length, estimate_input_tokens(body))
            return CHAT_ENDPOINT, fitted

        translate = translated_once(translate_for)
        _, first = translate(resolved.client.dialect)  # a bad request fails here, before any backend
        if dropped:
            log.info(
                "{request_id} tools left out, only Anthropic's servers run them: {tools}",
                request_id=request.exchange.request_id,
                tools=", ".join(sorted(dropped)),
            )
        self.app.recent.touch(resolved, DEFAULT_KEEP_ALIVE)
        replies = AnthropicReplies(resolved.name, message_id(), _wants_thinking(body))
        await generate(
            self.app, request, resolved, translate=translate, stream=bool(first["stream"]), replies=replies
        )


class CountTokensResource(Handler):
    """``POST /v1/messages/count_tokens``: the backend's own tokenizer where it has one (llama.cpp's and
    vLLM's ``/tokenize``, over the request's text), else the stated estimate of ``translate/anthropic``."""

    app: App

    def __init__(self, app: App) -> None:
        super().__init__(app)
        # Backends that answered /tokenize with "no such endpoint": from then on, the estimate.
        self._without_tokenizer: set[BackendClient] = set()

    async def on_post(self, request: ProxyRequest) -> None:
        found = await resolve_body(self.app, request, Family.ANTHROPIC, _BODY_WORDS)
        if found is None:
            return
        body, resolved = found
        estimate = estimate_input_tokens(body)  # also checks the request's shape
        tokenized = await self._tokenized(request, resolved, body)
        counted = estimate if tokenized is None else counted_input_tokens(body, tokenized)
        request.send_json({"input_tokens": counted})

    async def _tokenized(
        self, request: ProxyRequest, resolved: Resolved, body: Mapping[str, Any]
    ) -> int | None:
        """The backend tokenizer's count of the request's text, or None (no tokenizer, or it failed:
        an estimate is a better answer than an error for a count)."""
        client = resolved.client
        if client.dialect in _NO_TOKENIZER or client in self._without_tokenizer:
            return None
        text = tokenize_text(body)
        # llama.cpp reads "content", vLLM "prompt" (and ignores what it does not know).
        payload = {"model": resolved.backend_id, "prompt": text, "content": text}
        request_id = request.exchange.request_id
        try:
            async with client.limit:
                reply = await client.post_json(TOKENIZE_PATH, payload, request_id=request_id, retry=False)
        except BackendRejected as error:
            if error.backend_status in _NO_SUCH_ENDPOINT:
                self._without_tokenizer.add(client)
            return None
        except (BackendError, Overloaded):
            return None
        return tokenizer_count(reply)

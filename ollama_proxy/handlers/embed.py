"""``/api/embed`` and ``/api/embeddings``: validate, resolve the model, call the backend's ``/embeddings`` in
batches, and answer in Ollama's shape.

The translation lives in ``translate/embeddings.py``; this module reads the clock, calls the backend and
maps its failures onto Ollama's errors.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import attrs

from ollama_proxy.app import App
from ollama_proxy.catalog import Resolved
from ollama_proxy.errors import BackendError, BackendRejected, BadRequest, ModelNotFound, NotFound
from ollama_proxy.failover import on_replicas
from ollama_proxy.schemas import EmbeddingsRequest, EmbedRequest, structure
from ollama_proxy.site import ProxyRequest
from ollama_proxy.translate.embeddings import (
    CONTEXT_EXCEEDED,
    batches,
    embed_inputs,
    embed_reply,
    embeddings_reply,
    embeddings_request,
    exceeds_context,
    parse_embeddings,
    shape_vector,
    sum_tokens,
)
from ollama_proxy.web import Handler, read_json, read_keep_alive


@attrs.define
class Embedded:
    """The backend's raw vectors for the inputs, in order, its prompt token count, and when the first
    backend call went out (monotonic ns), for ``load_duration``."""

    vectors: list[list[float]]
    prompt_tokens: int | None
    sent_ns: int


class EmbeddingHandler(Handler):
    """What both endpoints share: one backend ``/embeddings`` call per batch."""

    app: App

    async def embed(
        self, request: ProxyRequest, resolved: Resolved, inputs: Sequence[str], *, truncate: bool = True
    ) -> Embedded:
        async def attempt(target: Resolved, last: bool) -> Embedded:
            return await self._embed_on(request, target, inputs, truncate=truncate, retry=last)

        return await on_replicas(request, resolved, attempt)

    async def _embed_on(
        self, request: ProxyRequest, resolved: Resolved, inputs: Sequence[str], *, truncate: bool, retry: bool
    ) -> Embedded:
        client = resolved.client
        request_id = request.exchange.request_id
        request.exchange.backend = client.name
        vectors: list[list[float]] = []
        counts: list[int | None] = []
        sent_ns: int | None = None
        for batch in batches(inputs, self.app.config.embed_batch_size):
            body = embeddings_request(
                resolved.backend_id,
                batch,
                dialect=client.dialect,
                truncate=truncate,
                context_length=resolved.info.context_length,
            )
            try:
                async with client.limit:
                    sent_ns = sent_ns or time.monotonic_ns()
                    data = await client.post_json(
                        "embeddings", body, request_id=request_id, retry=retry, model=resolved.backend_id
                    )
            except BackendRejected as error:
                if error.backend_status in (400, 413, 422, 500) and exceeds_context(error.message):
                    raise BadRequest(CONTEXT_EXCEEDED) from None
                if error.backend_status != 404:
                    raise
                if resolved.info.is_embedding:
                    raise ModelNotFound(resolved.name) from None
                # The backend serves the model (it is in its list) but has no embeddings for it.
                raise BadRequest(f'"{resolved.name}" does not support embeddings') from None
            try:
                found, tokens = parse_embeddings(data, len(batch))
            except ValueError as exc:
                raise BackendError(str(exc)) from None
            vectors.extend(found)
            counts.append(tokens)
        return Embedded(vectors, sum_tokens(counts), sent_ns or time.monotonic_ns())


class EmbedResource(EmbeddingHandler):
    async def on_post(self, request: ProxyRequest) -> None:
        arrived_ns = round(request.exchange.started * 1e9)
        embed = structure(read_json(request), EmbedRequest)
        if not embed.model:
            raise ModelNotFound("")  # Ollama's quirk, as for generate
        try:
            inputs = embed_inputs(embed.input)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        resolved = await self.app.catalog.resolve(embed.model)
        request.exchange.served(resolved.name, resolved.backend_id)
        self.app.recent.touch(resolved, read_keep_alive(embed.keep_alive))
        if not inputs:
            # Ollama's load request: nothing to embed, and no metrics.
            request.send_json({"model": embed.model, "embeddings": []})
            return
        embedded = await self.embed(request, resolved, inputs, truncate=embed.truncate is not False)
        request.exchange.counted(embedded.prompt_tokens, None)
        try:
            vectors = [shape_vector(vector, embed.dimensions) for vector in embedded.vectors]
        except ValueError as exc:
            raise BackendError(str(exc)) from None
        request.send_json(
            embed_reply(
                embed.model,
                vectors,
                total_ns=time.monotonic_ns() - arrived_ns,
                load_ns=embedded.sent_ns - arrived_ns,
                prompt_tokens=embedded.prompt_tokens,
            )
        )


class EmbeddingsResource(EmbeddingHandler):
    async def on_post(self, request: ProxyRequest) -> None:
        legacy = structure(read_json(request), EmbeddingsRequest)
        if not legacy.model:
            raise BadRequest("model is required")
        keep = read_keep_alive(legacy.keep_alive)
        try:
            resolved = await self.app.catalog.resolve(legacy.model)
            request.exchange.served(resolved.name, resolved.backend_id)
            self.app.recent.touch(resolved, keep)
            if not legacy.prompt:
                request.send_json(embeddings_reply([]))
                return
            # Ollama's legacy endpoint does not truncate.
            (vector,) = (await self.embed(request, resolved, [legacy.prompt], truncate=False)).vectors
        except ModelNotFound:
            # The legacy endpoint words it as Ollama's scheduler does.
            raise NotFound(f'model "{legacy.model}" not found, try pulling it first') from None
        request.send_json(embeddings_reply(vector))

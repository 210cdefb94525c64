"""Ollama's model-management calls, answered honestly: the backend owns its models.

``pull`` succeeds when the backend already serves the model (Open WebUI and scripts pull before use), and
404s otherwise.  ``push``, ``create``, ``copy``, ``delete`` and blob uploads cannot be done through an
OpenAI-compatible API, so they get 501 with a message that says so; an unknown model still gets Ollama's
404 first, because that is the more useful answer.
"""

from __future__ import annotations

import re

from ollama_proxy.errors import BadRequest, ManagedByBackend
from ollama_proxy.schemas import CopyRequest, ModelRequest, structure
from ollama_proxy.site import ProxyRequest
from ollama_proxy.translate.models import pull_progress
from ollama_proxy.web import Handler, read_json
from ollama_proxy.wire.answer import Answer
from ollama_proxy.wire.ollama import ndjson_answer

_DIGEST = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")


def _managed(action: str) -> ManagedByBackend:
    return ManagedByBackend(
        f"{action} is not available: models are managed by the backend this proxy serves, not by Ollama"
    )


class PullResource(Handler):
    async def on_post(self, request: ProxyRequest) -> None:
        pull = structure(read_json(request), ModelRequest)
        if not pull.requested:
            raise BadRequest("model is required")
        resolved = await self.app.catalog.resolve(pull.requested)
        if pull.stream:
            request.send(ndjson_answer(pull_progress(resolved.info)))
        else:
            request.send_json({"status": "success"})


class PushResource(Handler):
    async def on_post(self, request: ProxyRequest) -> None:
        push = structure(read_json(request), ModelRequest)
        if not push.requested:
            raise BadRequest("model is required")
        await self.app.catalog.resolve(push.requested)
        raise _managed("push")


class CreateResource(Handler):
    async def on_post(self, request: ProxyRequest) -> None:
        raise _managed("create")


class CopyResource(Handler):
    async def on_post(self, request: ProxyRequest) -> None:
        copy = structure(read_json(request), CopyRequest)
        await self.app.catalog.resolve(copy.source)
        raise _managed("copy")


class DeleteResource(Handler):
    async def on_delete(self, request: ProxyRequest) -> None:
        delete = structure(read_json(request), ModelRequest)
        if not delete.requested:
            raise BadRequest("model is required")
        await self.app.catalog.resolve(delete.requested)
        raise _managed("delete")


class BlobsResource(Handler):
    """``/api/blobs/<digest>``: no blob is ever stored here, so HEAD is 404 and uploads are refused."""

    takes_subpath = True

    def _digest(self, request: ProxyRequest) -> str:
        digest = b"/".join(request.postpath or []).decode("utf-8", "replace")
        if not _DIGEST.match(digest):
            raise BadRequest("invalid digest format")
        return digest

    async def on_head(self, request: ProxyRequest) -> None:
        self._digest(request)
        request.send(Answer(404))

    async def on_post(self, request: ProxyRequest) -> None:
        self._digest(request)
        raise _managed("uploading blobs")

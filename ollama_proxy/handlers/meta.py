"""Ollama's metadata endpoints: ``/``, ``/api/version``, ``/api/tags``, ``/api/show``, ``/api/ps``, and the
account probes ``/api/status``, ``/api/me`` and ``/api/signout``.

These are what clients call first (Copilot: version → tags → show for each model), so they answer from
the cached backend model list and never from canned text.

The account probes answer as an Ollama that is not signed in to ollama.com and has its cloud turned off
would, since this daemon can neither sign in nor reach Ollama's cloud models: ``ollama launch`` and the
VS Code extension then offer only the models served here, and no sign-in that could not work.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import IResource

from ollama_proxy.catalog import ModelCatalog, local_offset
from ollama_proxy.errors import BadRequest, NotSignedIn
from ollama_proxy.schemas import ModelRequest, structure
from ollama_proxy.site import ProxyRequest
from ollama_proxy.translate import models
from ollama_proxy.translate.timestamps import ZERO_TIME, rfc3339_local
from ollama_proxy.web import Handler, JSONResource, NotFoundResource, read_json
from ollama_proxy.wire.answer import json_answer, text_answer


class RootResource(JSONResource):
    """``GET|HEAD /``: the heartbeat the Go CLI, Enchanted and JetBrains clients probe."""

    async def on_get(self, request: ProxyRequest) -> None:
        request.send(text_answer("Ollama is running"))

    def getChild(self, path: bytes, request: ProxyRequest) -> IResource:
        # "/" arrives as the child b"" of the root; anything else unknown is a JSON 404.
        return self if path == b"" else NotFoundResource()


def modified_at(info: models.ModelInfo, fallback: float) -> str:
    """The backend's ``created`` date, else the daemon's start, in Ollama's local-offset form."""
    wall = float(info.created) if info.created else fallback
    if wall <= 0:
        return ZERO_TIME
    return rfc3339_local(wall, local_offset(wall))


class VersionResource(Handler):
    async def on_get(self, request: ProxyRequest) -> None:
        request.send_json({"version": self.app.config.ollama_version})


class StatusResource(Handler):
    """``GET /api/status``: Ollama's cloud switch, off, as an ``OLLAMA_NO_CLOUD`` server reports it."""

    async def on_get(self, request: ProxyRequest) -> None:
        request.send_json({"cloud": {"disabled": True, "source": "config"}})


class MeResource(Handler):
    """``POST /api/me``: who is signed in: nobody, in Ollama's 401 (without its ``signin_url``: there is
    nowhere to sign in)."""

    async def on_post(self, request: ProxyRequest) -> None:
        raise NotSignedIn("unauthorized")


class SignoutResource(Handler):
    """``POST /api/signout``: Ollama's answer when nobody is signed in."""

    async def on_post(self, request: ProxyRequest) -> None:
        raise NotSignedIn("you are not currently signed in")


class TagsResource(Handler):
    """``/api/tags``, the call every client makes first and often: its bytes are made once per model
    list (each refresh, each model-map reload), not once per request."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self._made_from: tuple[object, object] | None = None
        self._answer = json_answer({"models": []})

    async def on_get(self, request: ProxyRequest) -> None:
        catalog: ModelCatalog = self.app.catalog
        snapshot = await catalog.snapshot()
        if (
            self._made_from is None
            or self._made_from[0] is not snapshot
            or self._made_from[1] is not catalog.model_map
        ):
            started = self.app.started_at
            entries = [
                models.tags_entry(name, info, modified_at(info, started))
                for name, info in catalog.listed(snapshot)
            ]
            self._answer = json_answer({"models": entries})
            self._made_from = (snapshot, catalog.model_map)
        request.send(self._answer)


class ShowResource(Handler):
    async def on_post(self, request: ProxyRequest) -> None:
        show = structure(read_json(request), ModelRequest)
        if not show.requested:
            raise BadRequest("model is required")
        resolved = await self.app.catalog.resolve(show.requested)
        user_agent = (request.getHeader(b"user-agent") or b"").decode("latin-1").lower()
        # Copilot shows general.basename as the model's display name; Ollama sets it to the requested name.
        basename = show.requested if user_agent.startswith("githubcopilotchat/") else None
        request.send_json(
            models.show_reply(
                resolved.info, modified_at(resolved.info, self.app.started_at), basename=basename
            ),
        )


class PsResource(Handler):
    async def on_get(self, request: ProxyRequest) -> None:
        entries = []
        for until, resolved in self.app.recent.current():
            expires = rfc3339_local(until, local_offset(until))
            entries.append(models.ps_entry(models.listed_name(resolved.name), resolved.info, expires))
        request.send_json({"models": entries})

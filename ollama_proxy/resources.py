"""The resource tree: which handler answers which path.  Every endpoint's behaviour lives in its handler
module; this file only says where each one hangs."""

from __future__ import annotations

from twisted.web.resource import Resource

from ollama_proxy.app import App
from ollama_proxy.handlers import embed, generation, health, manage, meta, openai
from ollama_proxy.web import Directory, Fallback, OnFirstUse


def build_root(app: App) -> Resource:
    root = meta.RootResource()
    root.putChild(b"health", health.HealthResource(app))
    root.putChild(b"ready", health.ReadyResource(app))
    root.putChild(b"metrics", health.MetricsResource(app))
    api = Directory()
    root.putChild(b"api", api)
    children: dict[bytes, Resource] = {
        b"version": meta.VersionResource(app),
        b"status": meta.StatusResource(app),
        b"me": meta.MeResource(app),
        b"signout": meta.SignoutResource(app),
        b"tags": meta.TagsResource(app),
        b"show": meta.ShowResource(app),
        b"ps": meta.PsResource(app),
        b"chat": generation.ChatResource(app),
        b"generate": generation.GenerateResource(app),
        b"embed": embed.EmbedResource(app),
        b"embeddings": embed.EmbeddingsResource(app),
        b"pull": manage.PullResource(app),
        b"push": manage.PushResource(app),
        b"create": manage.CreateResource(app),
        b"copy": manage.CopyResource(app),
        b"delete": manage.DeleteResource(app),
        b"blobs": manage.BlobsResource(app),
    }
    for name, child in children.items():
        api.putChild(name, child)
    # The OpenAI API, passed through: everything under /v1, and the paths some clients call without it;
    # but the Anthropic Messages API and the Responses API, translated, with and without /v1.
    passthrough = openai.OpenAIResource(app)
    translated: dict[bytes, Resource] = {
        b"messages": OnFirstUse(lambda: _messages(app)),
        b"responses": OnFirstUse(lambda: _responses(app)),
    }
    v1 = Fallback(passthrough)
    root.putChild(b"v1", v1)
    chat = Directory()
    chat.putChild(b"completions", passthrough)
    root.putChild(b"chat", chat)
    for name in (b"completions", b"embeddings", b"models"):
        root.putChild(name, passthrough)
    for name, child in translated.items():
        v1.putChild(name, child)
        root.putChild(name, child)
    return root


def _messages(app: App) -> Resource:
    from ollama_proxy.handlers import anthropic

    return anthropic.MessagesResource(app)


def _responses(app: App) -> Resource:
    from ollama_proxy.handlers import responses

    return responses.ResponsesResource(app)

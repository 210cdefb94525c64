"""The resource tree: which handler answers which path.  Every endpoint's behaviour lives in its handler
module; this file only says where each one hangs."""

from __future__ import annotations

from twisted.web.resource import Resource

from ollama_proxy.app import App
from ollama_proxy.handlers import generation, manage, meta
from ollama_proxy.web import Directory


def build_root(app: App) -> Resource:
    root = meta.RootResource()
    api = Directory()
    root.putChild(b"api", api)
    children: dict[bytes, Resource] = {
        b"version": meta.VersionResource(app),
        b"tags": meta.TagsResource(app),
        b"show": meta.ShowResource(app),
        b"ps": meta.PsResource(app),
        b"chat": generation.ChatResource(app),
        b"generate": generation.GenerateResource(app),
        b"pull": manage.PullResource(app),
        b"push": manage.PushResource(app),
        b"create": manage.CreateResource(app),
        b"copy": manage.CopyResource(app),
        b"delete": manage.DeleteResource(app),
        b"blobs": manage.BlobsResource(app),
    }
    for name, child in children.items():
        api.putChild(name, child)
    return root

"""Shared fixtures: a fake backend on a real socket, the daemon in-process on a real socket, and helpers to
run the blocking SDKs off the reactor thread.

No module-level reactor import (craft.md §4): pytest-twisted installs the reactor first.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import attrs
import pytest_twisted
import treq
from twisted.internet import threads
from twisted.web.client import Agent, HTTPConnectionPool

from ollama_proxy.config import ProxyConfig
from ollama_proxy.service import ProxyService
from ollama_proxy.translate.dialect import Dialect
from tests.fake_backend import FakeBackend

T = TypeVar("T")


def reactor() -> Any:
    from twisted.internet import reactor as installed

    return installed


@attrs.define
class RunningProxy:
    url: str
    service: ProxyService
    backend: FakeBackend


async def start_proxy(backend: FakeBackend, backend_url: str, **settings: Any) -> RunningProxy:
    """The daemon in this process in front of ``backend`` at ``backend_url``; ``settings`` are those of
    ``ProxyConfig.for_backend`` (``api_key``, ``dialect`` and any other field)."""
    settings.setdefault("listen", ("tcp:0:interface=127.0.0.1:backlog=1024",))
    config = ProxyConfig.for_backend(backend_url, **settings)
    service = ProxyService(config, reactor())
    service.startService()
    port = await service.listeners[0].listening
    address: Any = port.getHost()
    return RunningProxy(f"http://127.0.0.1:{address.port}", service, backend)


@pytest_twisted.async_yield_fixture
async def fake_backend() -> AsyncIterator[FakeBackend]:
    backend = FakeBackend("vllm", api_key="sk-test-secret")
    await backend.listen(reactor())
    yield backend
    await backend.stop()


@pytest_twisted.async_yield_fixture
async def proxy(fake_backend: FakeBackend) -> AsyncIterator[RunningProxy]:
    running = await start_proxy(
        fake_backend,
        fake_backend.base_url,
        api_key="sk-test-secret",
        model_map={"qwen": "Qwen/Qwen2.5-7B-Instruct", "ghost": "no/such-model"},
        dialect=Dialect.VLLM,
    )
    yield running
    await running.service.stopService()


@pytest_twisted.async_yield_fixture
async def http() -> AsyncIterator[treq.client.HTTPClient]:
    """A client of the test's own with a private pool, closed at teardown, so no connection leaks."""
    pool = HTTPConnectionPool(reactor(), persistent=False)
    yield treq.client.HTTPClient(Agent(reactor(), pool=pool))
    await pool.closeCachedConnections()


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking SDK call off the reactor thread (the daemon under test runs on that reactor)."""
    result: T = await threads.deferToThread(fn, *args, **kwargs)
    return result


async def read_json(response: Any) -> Any:
    return json.loads(await treq.content(response))

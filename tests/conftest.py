"""Shared fixtures: a fake backend on a real socket, the daemon in-process on a real socket, and helpers to
run the blocking SDKs off the reactor thread.

No module-level reactor import (craft.md §4): pytest-twisted installs the reactor first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import pytest_twisted
import treq
from twisted.web.client import Agent, HTTPConnectionPool

from ollama_proxy.translate.dialect import Dialect
from tests.fake_backend import FakeBackend
from tests.support import RunningProxy, reactor, start_proxy

T = TypeVar("T")


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

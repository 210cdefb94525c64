"""Several backends behind one daemon: routing by model, replicas, failover, per-backend keys and health."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import ollama
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.task import deferLater

from ollama_proxy.config import BackendConfig, ProxyConfig, build_config
from ollama_proxy.errors import ConfigError
from ollama_proxy.service import ProxyService
from ollama_proxy.tap import Options
from ollama_proxy.translate.dialect import Dialect
from tests.fake_backend import ChatScript, FakeBackend
from tests.support import in_thread, reactor, read_json

SHARED = "shared/chat-model"


@attrs.define
class Fleet:
    url: str
    service: ProxyService
    chat: FakeBackend  # serves chat-only and the shared model
    embed: FakeBackend  # serves the embedder and the shared model


@pytest_twisted.async_yield_fixture
async def fleet() -> AsyncIterator[Fleet]:
    chat = FakeBackend("vllm", ["chat/only-model", SHARED], api_key="key-chat")
    embed = FakeBackend("vllm", ["BAAI/bge-small-en-v1.5", SHARED], api_key="key-embed")
    await chat.listen(reactor())
    await embed.listen(reactor())
    config = ProxyConfig(
        listen=("tcp:0:interface=127.0.0.1",),
        backends=(
            BackendConfig(url=chat.base_url, name="chat", api_key="key-chat"),
            BackendConfig(url=embed.base_url, name="embed", api_key="key-embed", dialect=Dialect.LLAMACPP),
        ),
        retries=0,
        breaker_threshold=1,
    )
    service = ProxyService(config, reactor())
    service.startService()
    port: Any = (await service.listeners[0].listening).getHost()
    yield Fleet(f"http://127.0.0.1:{port.port}", service, chat, embed)
    await service.stopService()
    for backend in (chat, embed):
        await backend.stop()


def _calls(backend: FakeBackend, suffix: str) -> int:
    return sum(1 for r in backend.requests if r.path.endswith(suffix))


@pytest_twisted.ensureDeferred
async def test_tags_merge_both_backends(fleet: Fleet) -> None:
    listing = await in_thread(lambda: ollama.Client(host=fleet.url).list())
    assert [m.model for m in listing.models] == [
        "chat/only-model:latest",
        f"{SHARED}:latest",
        "BAAI/bge-small-en-v1.5:latest",
    ]


@pytest_twisted.ensureDeferred
async def test_each_request_reaches_the_backend_that_serves_it(fleet: Fleet) -> None:
    client = ollama.Client(host=fleet.url)
    reply = await in_thread(
        lambda: client.chat(model="chat/only-model", messages=[{"role": "user", "content": "x"}])
    )
    assert reply.message.content == "Hello!"
    vectors = await in_thread(lambda: client.embed(model="BAAI/bge-small-en-v1.5", input="x"))
    assert len(vectors.embeddings) == 1
    assert (_calls(fleet.chat, "/chat/completions"), _calls(fleet.chat, "/embeddings")) == (1, 0)
    assert (_calls(fleet.embed, "/chat/completions"), _calls(fleet.embed, "/embeddings")) == (0, 1)
    # Each backend got its own key, never the other's.
    assert {r.headers.get("authorization") for r in fleet.chat.requests} == {"Bearer key-chat"}
    assert {r.headers.get("authorization") for r in fleet.embed.requests} == {"Bearer key-embed"}


@pytest_twisted.ensureDeferred
async def test_the_openai_api_is_routed_and_listed_across_backends(fleet: Fleet, http: HTTPClient) -> None:
    models = await read_json(await http.get(fleet.url + "/v1/models"))
    assert [m["id"] for m in models["data"]] == ["chat/only-model", SHARED, "BAAI/bge-small-en-v1.5"]
    response = await http.post(
        fleet.url + "/v1/embeddings", json={"model": "BAAI/bge-small-en-v1.5", "input": "x"}
    )
    assert response.code == 200
    await response.content()
    assert _calls(fleet.embed, "/embeddings") == 1


@pytest_twisted.ensureDeferred
async def test_a_shared_model_is_spread_and_survives_a_dead_replica(fleet: Fleet, http: HTTPClient) -> None:
    body = {"model": SHARED, "messages": [{"role": "user", "content": "x"}], "stream": False}
    for _ in range(4):
        assert (await http.post(fleet.url + "/api/chat", json=body)).code == 200
    # Least in flight, ties to the first: with sequential requests the first replica takes them.
    assert _calls(fleet.chat, "/chat/completions") == 4
    # While a slow stream holds the first replica, the next request goes to the idle one.
    fleet.chat.script = ChatScript(event_delay=0.2)
    slow = defer.ensureDeferred(http.post(fleet.url + "/api/chat", json={**body, "stream": True}))
    for _ in range(200):
        if fleet.chat.open_streams:
            break
        await deferLater(reactor(), 0.01)
    assert fleet.chat.open_streams == 1
    assert (await http.post(fleet.url + "/api/chat", json=body)).code == 200
    assert (_calls(fleet.chat, "/chat/completions"), _calls(fleet.embed, "/chat/completions")) == (5, 1)
    await (await slow).content()
    fleet.chat.script = ChatScript()
    await fleet.chat.stop()  # one replica dies
    response = await http.post(fleet.url + "/api/chat", json=body)
    assert (await read_json(response))["message"]["content"] == "Hello!"
    response = await http.post(fleet.url + "/api/chat", json={**body, "stream": True})
    lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == "Hello!"
    assert _calls(fleet.embed, "/chat/completions") == 3
    ready = await http.get(fleet.url + "/ready")
    status = await read_json(ready)
    assert ready.code == 200  # one backend still serves
    assert status["backends"]["embed"]["status"] == "ready"
    assert status["backends"]["chat"]["status"] == "not ready"


def test_repeated_backend_options() -> None:
    options = Options()
    options.parseOptions(["--backend", "http://a:8000/v1", "--backend", "https://api.openai.com/v1"])
    assert options.config is not None
    backends = options.config.backends
    assert [b.url for b in backends] == ["http://a:8000/v1", "https://api.openai.com/v1"]
    assert [b.dialect for b in backends] == [Dialect.VLLM, Dialect.OPENAI]


def test_one_backend_works_as_before() -> None:
    config = build_config({}, {}, backends=("http://a:8000/v1",))
    assert config.backends == (BackendConfig(url="http://a:8000/v1", dialect=Dialect.VLLM),)


def test_a_config_has_at_least_one_backend() -> None:
    with pytest.raises(ValueError, match="backends"):
        ProxyConfig(backends=())
    config = ProxyConfig.for_backend("https://api.openai.com/v1", api_key="sk-x", workers=2)
    assert config.backends == (
        BackendConfig("https://api.openai.com/v1", api_key="sk-x", dialect=Dialect.OPENAI),
    )
    assert config.workers == 2
    assert "sk-x" not in repr(config)


def test_backend_tables_in_toml(tmp_path: Path) -> None:
    key = tmp_path / "or-key"
    key.write_text("sk-or\n")
    toml = tmp_path / "proxy.toml"
    toml.write_text(
        '[[backend]]\nurl = "http://gpu1:8000/v1"\nname = "gpu1"\n'
        '[[backend]]\nurl = "https://openrouter.ai/api/v1"\nname = "openrouter"\n'
        f'api_key_file = "{key}"\nmodels = ["anthropic/*", "openai/gpt-4o"]\n'
        '[[backend]]\nurl = "http://embed:9000/v1"\napi_key_env = "EMBED_KEY"\nprefix = "BAAI/"\n'
        'dialect = "llamacpp"\n'
    )
    config = build_config({}, {"EMBED_KEY": "sk-embed", "OPENAI_API_KEY": "sk-default"}, str(toml))
    first, router, embedder = config.backends
    assert (first.name, first.api_key, first.dialect) == ("gpu1", "sk-default", Dialect.VLLM)
    assert (router.api_key, router.dialect) == ("sk-or", Dialect.OPENROUTER)
    assert router.serves("anthropic/claude-3.5")
    assert router.serves("openai/gpt-4o")
    assert not router.serves("openai/gpt-4o-mini")
    assert (embedder.api_key, embedder.dialect, embedder.label) == (
        "sk-embed",
        Dialect.LLAMACPP,
        "http://embed:9000/v1",
    )
    assert embedder.serves("BAAI/bge-m3")
    assert not embedder.serves("gpt-4o")
    assert "sk-" not in repr(config)


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ('[[backend]]\nname = "x"\n', "needs a url"),
        ('[[backend]]\nurl = "nope"\n', "is not an http"),
        ('[[backend]]\nurl = "http://a/v1"\ncolour = 1\n', "unknown keys: colour"),
        ('[[backend]]\nurl = "http://a/v1"\nmodels = "x"\n', "models must be a list"),
        (
            '[[backend]]\nurl = "http://a/v1"\nname = "n"\n[[backend]]\nurl = "http://b/v1"\nname = "n"\n',
            "share",
        ),
    ],
)
def test_bad_backend_tables(tmp_path: Path, tables: str, message: str) -> None:
    toml = tmp_path / "proxy.toml"
    toml.write_text(tables)
    with pytest.raises(ConfigError, match=r"^--") as caught:
        build_config({}, {}, str(toml))
    assert message in str(caught.value)

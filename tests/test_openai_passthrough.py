"""The OpenAI API through the daemon: the pure pass-through rules, then end to end with the openai SDK."""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import pytest_twisted
import treq
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionMessageParam
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.web.http_headers import Headers

from ollama_proxy.errors import BackendTimeout
from ollama_proxy.translate.openai import (
    PassThrough,
    alias_entry,
    backend_target,
    body_model,
    find_alias,
    is_event_stream,
    mapped_name,
    may_need_rewrite,
    merge_model_list,
    minimal_entry,
    model_path,
    request_headers,
    response_headers,
    with_model,
)
from ollama_proxy.wire.openai import error_body, error_code, error_type, sse_error_event
from tests.fake_backend import ChatScript, FakeBackend
from tests.support import RunningProxy, eventually, in_thread, reactor, read_json, start_proxy

ALIAS = "qwen"  # an alias of Qwen/Qwen2.5-7B-Instruct in the proxy fixture
BACKEND_ID = "Qwen/Qwen2.5-7B-Instruct"
EMBEDDER = "BAAI/bge-small-en-v1.5"
MODEL_MAP = {"qwen": BACKEND_ID, "ghost": "no/such-model"}
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]

# -------------------------------------------------------------------------------------------------------
# The pure rules
# -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            [(b"Content-Type", [b"application/json"]), (b"X-Stainless-Lang", [b"python"])],
            {b"content-type": [b"application/json"], b"x-stainless-lang": [b"python"]},
        ),
        (
            [
                (b"Connection", [b"keep-alive, X-Hop"]),
                (b"Keep-Alive", [b"timeout=5"]),
                (b"X-Hop", [b"1"]),
                (b"TE", [b"trailers"]),
                (b"Transfer-Encoding", [b"chunked"]),
                (b"Upgrade", [b"h2c"]),
                (b"HTTP2-Settings", [b"AAA"]),
                (b"Proxy-Authorization", [b"Basic x"]),
                (b"X-End", [b"2"]),
            ],
            {b"x-end": [b"2"]},
        ),
        (
            [
                (b"Host", [b"127.0.0.1:11434"]),
                (b"Content-Length", [b"12"]),
                (b"Authorization", [b"Bearer client"]),
                (b"Accept-Encoding", [b"br, gzip"]),
                (b"X-Request-ID", [b"abc"]),
                (b"Expect", [b"100-continue"]),
                (b"Accept", [b"text/event-stream"]),
            ],
            {b"accept": [b"text/event-stream"]},
        ),
        ([(b"X-A", [b"1"]), (b"x-a", [b"2"])], {b"x-a": [b"1", b"2"]}),
    ],
)
def test_request_headers(
    headers: list[tuple[bytes, list[bytes]]], expected: dict[bytes, list[bytes]]
) -> None:
    assert request_headers(headers) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            [
                (b"Content-Type", [b"text/event-stream; charset=utf-8"]),
                (b"Cache-Control", [b"no-cache"]),
                (b"Content-Length", [b"99"]),
                (b"Transfer-Encoding", [b"chunked"]),
                (b"Connection", [b"close"]),
                (b"X-Request-ID", [b"backend-id"]),
                (b"Retry-After", [b"3"]),
                (b"Content-Encoding", [b"br"]),  # not decoded by the client, so still true of the body
            ],
            {
                b"content-type": [b"text/event-stream; charset=utf-8"],
                b"cache-control": [b"no-cache"],
                b"retry-after": [b"3"],
                b"content-encoding": [b"br"],
            },
        ),
        ([(b"Connection", [b"X-Trace"]), (b"X-Trace", [b"t"])], {}),
    ],
)
def test_response_headers(
    headers: list[tuple[bytes, list[bytes]]], expected: dict[bytes, list[bytes]]
) -> None:
    assert response_headers(headers) == expected


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/event-stream", True),
        ("text/event-stream; charset=utf-8", True),
        ("Text/Event-Stream ;charset=utf-8", True),
        ("application/json", False),
        ("", False),
        (None, False),
    ],
)
def test_is_event_stream(content_type: str | None, expected: bool) -> None:
    assert is_event_stream(content_type) is expected


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (400, "invalid_request_error", None),
        (401, "authentication_error", None),
        (403, "permission_error", None),
        (404, "invalid_request_error", "model_not_found"),
        (429, "rate_limit_error", None),
        (500, "api_error", None),
        (502, "api_error", "backend_unreachable"),
        (503, "api_error", "backend_unavailable"),
        (504, "api_error", "backend_timeout"),
    ],
)
def test_errors_in_openai_shape(status: int, kind: str, code: str | None) -> None:
    assert error_type(status) == kind
    assert error_code(status) == code
    assert error_body("m", status, code) == {
        "error": {"message": "m", "type": kind, "param": None, "code": code}
    }


@pytest.mark.parametrize(
    ("path", "query", "target"),
    [
        (b"/v1/chat/completions", b"", "chat/completions"),
        (b"/v1/chat/completions", b"x=1&y=%20", "chat/completions?x=1&y=%20"),
        (b"/chat/completions", b"x=1", "chat/completions?x=1"),
        (b"/models", b"", "models"),
        (b"/v1/models/Qwen%2FQwen2.5-7B-Instruct", b"", "models/Qwen%2FQwen2.5-7B-Instruct"),
        (b"/v1/models/Qwen/Qwen2.5-7B-Instruct", b"", "models/Qwen/Qwen2.5-7B-Instruct"),
        (b"/v1", b"", ""),
        (b"/v1/", b"", ""),
        (b"/v1/some/future/thing", b"", "some/future/thing"),
        (b"/v1x/models", b"", "v1x/models"),
    ],
)
def test_backend_target(path: bytes, query: bytes, target: str) -> None:
    assert backend_target(path, query) == target


@pytest.mark.parametrize(
    ("path", "query"),
    [
        (b"/v1/../metrics", b""),
        (b"/v1/%2e%2e/metrics", b""),
        (b"/v1/%2E./metrics", b""),
        (b"/v1/models/./x", b""),
        (b"/v1/models/..", b""),
        (b"/v1/mod\xc3\xa8ls", b""),
        (b"/v1/models", b"q=\xff"),
    ],
)
def test_backend_target_refuses_dot_segments_and_non_ascii(path: bytes, query: bytes) -> None:
    with pytest.raises(ValueError, match=r"dot segment|not ASCII"):
        backend_target(path, query)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("models", (True, None)),
        ("models?limit=2", (True, None)),
        ("models/qwen", (False, "qwen")),
        ("models/Qwen%2FQwen2.5-7B-Instruct", (False, BACKEND_ID)),
        ("models/Qwen/Qwen2.5-7B-Instruct", (False, BACKEND_ID)),
        ("models/", (False, None)),
        ("chat/completions", (False, None)),
        ("modelsx", (False, None)),
    ],
)
def test_model_path(target: str, expected: tuple[bool, str | None]) -> None:
    assert model_path(target) == expected


@pytest.mark.parametrize(
    ("name", "alias", "rewrite", "mapped"),
    [
        ("qwen", ("qwen", BACKEND_ID), True, BACKEND_ID),
        ("QWEN:latest", ("qwen", BACKEND_ID), True, BACKEND_ID),
        (" qwen ", ("qwen", BACKEND_ID), True, BACKEND_ID),
        (BACKEND_ID, None, False, BACKEND_ID),
        (f"{BACKEND_ID}:latest", None, True, BACKEND_ID),
        (f"{BACKEND_ID}:LATEST", None, True, BACKEND_ID),
        (
            "meta-llama/llama-3.2-11b-vision-instruct:free",
            None,
            False,
            "meta-llama/llama-3.2-11b-vision-instruct:free",
        ),
        ("nope", None, False, "nope"),
    ],
)
def test_model_names(name: str, alias: tuple[str, str] | None, rewrite: bool, mapped: str) -> None:
    assert find_alias(name, MODEL_MAP) == alias
    assert may_need_rewrite(name, MODEL_MAP) is rewrite
    assert mapped_name(name, MODEL_MAP) == mapped


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"model": "qwen", "x": 1}', ({"model": "qwen", "x": 1}, "qwen")),
        (b'  \n{"model":"a"}', ({"model": "a"}, "a")),
        (b'{"model": 3}', None),
        (b'{"messages": []}', None),
        (b'[{"model": "qwen"}]', None),
        (b"model=qwen", None),
        (b"{not json", None),
        (b'{"model": "\xff"}', None),
        (b"", None),
    ],
)
def test_body_model_elsewhere_leaves_what_it_cannot_read(
    body: bytes, expected: tuple[dict[str, Any], str] | None
) -> None:
    """Off the model endpoints (files, audio ...) a body is the backend's business."""
    assert body_model("files", body) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model": 3}', "'model' must be a string"),
        (b'{"model": ["x"]}', "'model' must be a string"),
        (b'{"model": {}}', "'model' must be a string"),
        (b'{"messages": []}', "you must provide a model parameter"),
        (b'[{"model": "qwen"}]', "the request body must be a JSON object"),
        (b"3", "the request body must be a JSON object"),
        (b"null", "the request body must be a JSON object"),
        (b'"x"', "the request body must be a JSON object"),
        (b"{not json", "the request body is not valid JSON: Expecting property name"),
        (b'{"model": "a", "temperature": NaN}', "NaN is not a JSON number"),
        (b"[" * 50_000 + b"]" * 50_000, "nested deeper than"),
        (b'{"model": "\xff"}', "not UTF-8"),
        (b"", "not valid JSON"),
    ],
)
@pytest.mark.parametrize("target", ["chat/completions", "completions", "embeddings?x=1"])
def test_body_model_on_model_endpoints_refuses_what_it_cannot_route(
    target: str, body: bytes, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        body_model(target, body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6), st.text(min_size=1), st.text())
def test_with_model_replaces_only_the_model(data: dict[str, Any], old: str, new: str) -> None:
    original = {"model": old, **data} if "model" not in data else {**data, "model": old}
    rewritten = with_model(original, new)
    found = body_model("chat/completions", rewritten)
    assert found is not None
    assert found == ({**original, "model": new}, new)
    assert list(json.loads(rewritten)) == list(original)  # key order kept


QWEN_ENTRY: dict[str, Any] = {
    "id": BACKEND_ID,
    "object": "model",
    "created": 1,
    "owned_by": "vllm",
    "max_model_len": 8192,
}
BGE_ENTRY: dict[str, Any] = {"id": EMBEDDER, "object": "model", "created": 2, "owned_by": "vllm"}
VLLM_LIST: dict[str, Any] = {"object": "list", "data": [QWEN_ENTRY, BGE_ENTRY]}


@pytest.mark.parametrize(
    ("model_map", "added"),
    [
        ({}, []),
        ({"qwen": BACKEND_ID}, [{**QWEN_ENTRY, "id": "qwen"}]),
        ({"qwen": BACKEND_ID.lower()}, [{**QWEN_ENTRY, "id": "qwen"}]),
        ({"ghost": "no/such-model"}, []),
        ({BACKEND_ID: EMBEDDER}, []),  # already a backend id: listed once, as the backend's
        ({"bge": EMBEDDER, "qwen": BACKEND_ID}, [{**BGE_ENTRY, "id": "bge"}, {**QWEN_ENTRY, "id": "qwen"}]),
    ],
)
def test_merge_model_list(model_map: dict[str, str], added: list[dict[str, Any]]) -> None:
    merged = merge_model_list(VLLM_LIST, model_map)
    assert merged["object"] == "list"
    assert merged["data"] == [QWEN_ENTRY, BGE_ENTRY, *added]
    assert (merged is VLLM_LIST) == (not added)  # nothing added: the very reply, to be relayed byte for byte


@pytest.mark.parametrize("body", [{"models": []}, [], {"data": "x"}, None])
def test_merge_model_list_leaves_other_shapes_alone(body: Any) -> None:
    assert merge_model_list(body, MODEL_MAP) is body


def test_alias_entries() -> None:
    assert alias_entry("q", {"id": "x", "object": "model", "owned_by": "o"}) == {
        "id": "q",
        "object": "model",
        "owned_by": "o",
    }
    assert minimal_entry("x", 5, "o") == {"id": "x", "object": "model", "created": 5, "owned_by": "o"}


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_pass_through_transform_changes_no_byte(chunks: list[bytes]) -> None:
    transform = PassThrough(event_stream=True)
    assert b"".join(transform.feed(chunk) for chunk in chunks) + transform.end() == b"".join(chunks)
    assert transform.failed is False


def test_a_broken_event_stream_ends_with_an_error_event() -> None:
    event = PassThrough(event_stream=True).fail("the backend connection broke mid-stream")
    assert event == sse_error_event("the backend connection broke mid-stream")
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    payload = json.loads(event[len(b"data: ") :])
    assert payload["error"]["message"] == "the backend connection broke mid-stream"
    assert PassThrough(event_stream=False).fail("x") == b""


# -------------------------------------------------------------------------------------------------------
# End to end with the openai SDK
# -------------------------------------------------------------------------------------------------------


def sdk(url: str, api_key: str = "sk-client-key", *, prefix: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + prefix, api_key=api_key, max_retries=0)


def backend_posts(backend: FakeBackend, path: str) -> list[dict[str, Any]]:
    return [r.json for r in backend.requests if r.method == "POST" and r.path == path]


def _stream_chat(url: str) -> list[Any]:
    stream = sdk(url).chat.completions.create(
        model=ALIAS, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    return list(stream)


def _raw_stream_chat(url: str) -> tuple[bytes, str]:
    with sdk(url).chat.completions.with_streaming_response.create(
        model=ALIAS, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ) as response:
        return b"".join(response.iter_bytes()), response.headers["content-type"]


@pytest_twisted.ensureDeferred
async def test_sdk_stream_gets_the_usage_chunk_byte_for_byte(proxy: RunningProxy) -> None:
    """Must show: the openai SDK streams a chat completion through the daemon and receives the backend's
    usage chunk, byte for byte the backend's events."""
    backend = proxy.backend
    chunks = await in_thread(_stream_chat, proxy.url)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (12, 3)
    assert usage_chunk.model == BACKEND_ID  # the reply is the backend's, never rewritten

    raw, content_type = await in_thread(_raw_stream_chat, proxy.url)
    assert raw == bytes(backend.sent_streams[-1])
    assert b'"usage":{"prompt_tokens":12' in raw
    assert raw.endswith(b"data: [DONE]\n\n")
    assert content_type == "text/event-stream; charset=utf-8"  # SSE stays SSE

    assert len(backend_posts(backend, "/v1/chat/completions")) == 2
    for sent in backend_posts(backend, "/v1/chat/completions"):
        assert sent["model"] == BACKEND_ID  # the alias became the backend id
        assert sent["stream_options"] == {"include_usage": True}
        assert sent["messages"] == MESSAGES


@pytest_twisted.ensureDeferred
async def test_raw_stream_is_relayed_untouched(proxy: RunningProxy, http: HTTPClient) -> None:
    """Comments, awkward splits and multi-byte characters: the daemon never parses the stream."""
    backend = proxy.backend
    backend.script = ChatScript(content=["a", "é", "🙂"], split_writes=True, comments=True)
    response = await http.post(
        proxy.url + "/v1/chat/completions",
        json={"model": BACKEND_ID, "messages": MESSAGES, "stream": True},
    )
    body = await treq.content(response)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    assert response.headers.getRawHeaders("cache-control") == ["no-cache"]
    assert response.headers.getRawHeaders("content-length") is None
    assert b": OPENROUTER PROCESSING" in body
    assert body == bytes(backend.sent_streams[-1])


@pytest_twisted.ensureDeferred
async def test_sdk_chat_non_stream(proxy: RunningProxy) -> None:
    reply = await in_thread(
        lambda: sdk(proxy.url).chat.completions.create(model=f"{ALIAS}:latest", messages=MESSAGES)
    )
    assert reply.choices[0].message.content == "Hello!"
    assert reply.usage is not None
    assert reply.usage.total_tokens == 15
    assert reply.model == BACKEND_ID
    (sent,) = backend_posts(proxy.backend, "/v1/chat/completions")
    assert sent["model"] == BACKEND_ID


def _completions(url: str) -> tuple[Any, list[Any]]:
    client = sdk(url)
    reply = client.completions.create(model=ALIAS, prompt="Say hi", max_tokens=5)
    streamed = list(
        client.completions.create(
            model=ALIAS, prompt="Say hi", stream=True, stream_options={"include_usage": True}
        )
    )
    return reply, streamed


@pytest_twisted.ensureDeferred
async def test_sdk_completions(proxy: RunningProxy) -> None:
    reply, streamed = await in_thread(_completions, proxy.url)
    assert reply.choices[0].text == "Hello!"
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "Hello!"
    assert streamed[-1].usage is not None
    assert streamed[-1].usage.total_tokens == 15
    first, second = backend_posts(proxy.backend, "/v1/completions")
    assert (first["model"], first["prompt"], first["max_tokens"]) == (BACKEND_ID, "Say hi", 5)
    assert second["stream"] is True


@pytest_twisted.ensureDeferred
async def test_sdk_embeddings(proxy: RunningProxy) -> None:
    reply = await in_thread(lambda: sdk(proxy.url).embeddings.create(model=EMBEDDER, input=["a", "b c"]))
    assert [d.index for d in reply.data] == [0, 1]
    for item, text in zip(reply.data, ["a", "b c"], strict=True):
        want = proxy.backend.embedding_for(text)
        # The SDK asks for base64 (little-endian float32) by default: relayed as the backend sent it.
        assert all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(item.embedding, want, strict=True))
    (sent,) = backend_posts(proxy.backend, "/v1/embeddings")
    assert sent["encoding_format"] == "base64"


def _models(url: str) -> tuple[list[Any], Any, Any]:
    client = sdk(url)
    return list(client.models.list()), client.models.retrieve(ALIAS), client.models.retrieve(BACKEND_ID)


@pytest_twisted.ensureDeferred
async def test_sdk_models_list_and_retrieve(proxy: RunningProxy) -> None:
    listed, alias, direct = await in_thread(_models, proxy.url)
    assert [m.id for m in listed] == [BACKEND_ID, EMBEDDER, ALIAS]  # ghost's target is not served
    qwen = listed[-1]
    assert (qwen.object, qwen.owned_by, qwen.created) == ("model", "vllm", listed[0].created)
    assert qwen.model_extra is not None
    assert qwen.model_extra["max_model_len"] == 8192  # what the backend says of the target holds
    assert alias.id == ALIAS
    assert alias.owned_by == "vllm"
    assert direct.id == BACKEND_ID
    gets = [r.path for r in proxy.backend.requests if r.method == "GET"]
    assert "/v1/models/qwen" not in gets  # the alias was answered by the daemon
    assert "/v1/models/Qwen%2FQwen2.5-7B-Instruct" in gets  # the SDK encodes the slash; kept as sent


@pytest.mark.parametrize("model", ["ghost", "nope"])
@pytest_twisted.ensureDeferred
async def test_sdk_not_found_errors(proxy: RunningProxy, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await in_thread(lambda: sdk(proxy.url).models.retrieve(model))
    assert caught.value.status_code == 404
    with pytest.raises(openai.NotFoundError) as chat_error:
        await in_thread(lambda: sdk(proxy.url).chat.completions.create(model=model, messages=MESSAGES))
    assert f"`{model}` does not exist" in chat_error.value.message
    # An alias whose target the backend does not serve is forwarded as sent: the backend's own 404.
    assert [b["model"] for b in backend_posts(proxy.backend, "/v1/chat/completions")] == [model]


@pytest_twisted.ensureDeferred
async def test_alias_model_answered_locally(proxy: RunningProxy, http: HTTPClient) -> None:
    response = await http.get(proxy.url + "/v1/models/QWEN:latest")
    entry = await read_json(response)
    assert (response.code, entry["id"], entry["root"]) == (200, "qwen", BACKEND_ID)
    response = await http.get(proxy.url + "/v1/models/ghost")
    assert response.code == 404
    assert await read_json(response) == {
        "error": {
            "message": "The model `ghost` does not exist.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }
    response = await http.get(proxy.url + "/v1/models/" + BACKEND_ID)  # an unencoded slash works too
    assert (response.code, (await read_json(response))["id"]) == (200, BACKEND_ID)


def _unprefixed(url: str) -> tuple[Any, list[str], Any]:
    client = sdk(url, prefix="")
    reply = client.chat.completions.create(model=ALIAS, messages=MESSAGES)
    models = [m.id for m in client.models.list()]
    vectors = client.embeddings.create(model=EMBEDDER, input="x", encoding_format="float")
    return reply, models, vectors


@pytest_twisted.ensureDeferred
async def test_paths_without_the_v1_prefix(proxy: RunningProxy, http: HTTPClient) -> None:
    reply, models, vectors = await in_thread(_unprefixed, proxy.url)
    assert reply.choices[0].message.content == "Hello!"
    assert ALIAS in models
    assert vectors.data[0].embedding == proxy.backend.embedding_for("x")
    response = await http.post(proxy.url + "/completions", json={"model": ALIAS, "prompt": "x"})
    assert (await read_json(response))["choices"][0]["text"] == "Hello!"
    paths = [r.path for r in proxy.backend.requests if r.method == "POST"]
    assert paths == ["/v1/chat/completions", "/v1/embeddings", "/v1/completions"]
    response = await http.get(proxy.url + "/chat")
    assert response.code == 404  # only /chat/completions is OpenAI's


@pytest_twisted.ensureDeferred
async def test_method_query_and_body_are_forwarded(proxy: RunningProxy, http: HTTPClient) -> None:
    backend = proxy.backend
    raw = b'{"model": "Qwen/Qwen2.5-7B-Instruct",\n  "messages": [{"role": "user", "content": "Hi"}]}'
    response = await http.post(
        proxy.url + "/v1/chat/completions?api-version=1&x=%2F",
        data=raw,
        headers=Headers({"content-type": ["application/json"]}),
    )
    assert response.code == 200
    await response.content()
    sent = backend.requests[-1]
    assert (sent.method, sent.path, sent.query) == ("POST", "/v1/chat/completions", b"api-version=1&x=%2F")
    assert sent.body == raw  # no model to rewrite: the bytes as they came

    aliased = raw.replace(BACKEND_ID.encode(), b"qwen")
    await (await http.post(proxy.url + "/v1/chat/completions", data=aliased)).content()
    assert backend.requests[-1].json == json.loads(raw)  # only the model changed

    response = await http.put(proxy.url + "/v1/chat/completions", json={"model": ALIAS})
    assert response.code == 405  # the backend's answer, with its Allow header
    assert response.headers.getRawHeaders("allow") == ["POST"]
    assert backend.requests[-1].method == "PUT"
    assert backend.requests[-1].json == {"model": BACKEND_ID}

    response = await http.head(proxy.url + "/v1/models")
    assert response.code == 200
    assert await response.content() == b""
    assert backend.requests[-1].method == "HEAD"


@pytest_twisted.ensureDeferred
async def test_unknown_paths_are_forwarded_and_errors_relayed(proxy: RunningProxy, http: HTTPClient) -> None:
    response = await http.get(proxy.url + "/v1/files?purpose=batch")
    body = await response.content()
    assert response.code == 404
    assert json.loads(body) == {
        "error": {"message": "Not Found: /v1/files", "type": "NotFoundError", "param": None, "code": 404}
    }
    assert proxy.backend.requests[-1].query == b"purpose=batch"

    error = {
        "error": {"message": "context too long", "type": "BadRequestError", "param": "messages", "code": 400}
    }
    proxy.backend.fail_next(400, error, headers={"x-backend-trace": "t-1"})
    response = await http.post(
        proxy.url + "/v1/chat/completions", json={"model": BACKEND_ID, "messages": MESSAGES}
    )
    assert response.code == 400
    assert await response.content() == json.dumps(error, separators=(",", ":")).encode()  # byte for byte
    assert response.headers.getRawHeaders("x-backend-trace") == ["t-1"]
    assert response.headers.getRawHeaders("content-type") == ["application/json"]


@pytest_twisted.ensureDeferred
async def test_sdk_sees_backend_errors_as_its_own_exceptions(proxy: RunningProxy) -> None:
    proxy.backend.fail_next(422, {"error": {"message": "bad temperature", "type": "BadRequestError"}})
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await in_thread(
            lambda: sdk(proxy.url).chat.completions.create(model=BACKEND_ID, messages=MESSAGES, temperature=9)
        )
    assert caught.value.status_code == 422
    assert caught.value.message == "Error code: 422 - bad temperature"


@pytest_twisted.ensureDeferred
async def test_the_configured_key_replaces_the_clients(proxy: RunningProxy, http: HTTPClient) -> None:
    await in_thread(
        lambda: sdk(proxy.url, api_key="sk-client-key").chat.completions.create(
            model=ALIAS, messages=MESSAGES
        )
    )
    await (await http.get(proxy.url + "/v1/models")).content()  # no Authorization at all
    for sent in proxy.backend.requests:
        assert sent.headers["authorization"] == "Bearer sk-test-secret"
    # A backend quoting the key it rejected does not pass it on.
    proxy.backend.fail_next(401, {"error": {"message": "Incorrect API key provided: sk-test-secret."}})
    response = await http.get(proxy.url + "/v1/models")
    body = await response.content()
    assert response.code == 401
    assert b"sk-test-secret" not in body
    assert json.loads(body) == {"error": {"message": "Incorrect API key provided: [redacted]."}}


@pytest_twisted.async_yield_fixture
async def keyless_proxy(fake_backend: FakeBackend) -> AsyncIterator[RunningProxy]:
    """No backend key configured: each client's own key reaches the backend."""
    running = await start_proxy(fake_backend, fake_backend.base_url, api_key=None, model_map=MODEL_MAP)
    yield running
    await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_without_a_configured_key_the_clients_is_forwarded(keyless_proxy: RunningProxy) -> None:
    reply = await in_thread(
        lambda: sdk(keyless_proxy.url, api_key="sk-test-secret").chat.completions.create(
            model=ALIAS, messages=MESSAGES
        )
    )
    assert reply.choices[0].message.content == "Hello!"
    # The model list could not be had without a key, so the alias was mapped from the model map alone.
    chat = [r for r in keyless_proxy.backend.requests if r.path == "/v1/chat/completions"]
    assert [(r.json["model"], r.headers["authorization"]) for r in chat] == [
        (BACKEND_ID, "Bearer sk-test-secret")
    ]
    with pytest.raises(openai.AuthenticationError) as caught:
        await in_thread(lambda: sdk(keyless_proxy.url, api_key="sk-wrong").models.list())
    assert caught.value.status_code == 401
    assert keyless_proxy.backend.requests[-1].headers["authorization"] == "Bearer sk-wrong"


@pytest_twisted.ensureDeferred
async def test_daemon_client_keys_never_reach_the_backend(http: HTTPClient) -> None:
    backend = FakeBackend("vllm")  # a backend without authentication of its own
    await backend.listen(reactor())
    running = await start_proxy(
        backend, backend.base_url, api_key=None, model_map=MODEL_MAP, client_keys=frozenset({"daemon-token"})
    )
    try:
        response = await http.post(
            running.url + "/v1/chat/completions",
            json={"model": ALIAS, "messages": MESSAGES},
            headers=Headers({"authorization": ["Bearer daemon-token"]}),
        )
        assert response.code == 200
        await response.content()
        # The Anthropic SDKs' way of presenting a key is a daemon key too, and stays here as well.
        response = await http.post(
            running.url + "/v1/chat/completions",
            json={"model": ALIAS, "messages": MESSAGES},
            headers=Headers({"x-api-key": ["daemon-token"]}),
        )
        assert response.code == 200
        await response.content()
        assert len(backend.requests) >= 2
        assert all(
            "authorization" not in r.headers and "x-api-key" not in r.headers for r in backend.requests
        )
        response = await http.get(running.url + "/v1/models")
        assert response.code == 401  # the daemon's own gate comes first
        await response.content()
    finally:
        await running.service.stopService()
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_headers_hop_by_hop_dropped_end_to_end_kept(proxy: RunningProxy, http: HTTPClient) -> None:
    backend = proxy.backend
    backend.extra_headers = {
        "x-backend-trace": "abc",
        "keep-alive": "timeout=5",
        "x-request-id": "backend-id",
    }
    headers = Headers(
        {
            "connection": ["keep-alive, x-hop"],
            "x-hop": ["1"],
            "x-end": ["2"],
            "te": ["trailers"],
            "accept-encoding": ["br"],
            "x-request-id": ["client-req-1"],
            "openai-beta": ["assistants=v2"],
        }
    )
    response = await http.get(proxy.url + "/v1/models", headers=headers)
    await response.content()
    sent = backend.requests[-1].headers
    assert (sent["x-end"], sent["openai-beta"]) == ("2", "assistants=v2")
    assert "x-hop" not in sent
    assert "te" not in sent
    assert sent["accept-encoding"] == "gzip"  # what the daemon's client can decode, not the client's br
    assert sent["x-request-id"] == "client-req-1"  # the daemon's request id (taken from the client's)
    assert response.headers.getRawHeaders("x-backend-trace") == ["abc"]
    assert response.headers.getRawHeaders("keep-alive") is None
    assert response.headers.getRawHeaders("x-request-id") == ["client-req-1"]


@pytest.mark.parametrize("path", ["/v1/../metrics", "/v1/%2e%2e/metrics", "/v1/models/%2E%2E"])
@pytest_twisted.ensureDeferred
async def test_dot_segments_are_refused(proxy: RunningProxy, path: str) -> None:
    # treq would normalise "..", so the request line is written by hand.
    status, body = await _raw_request(
        proxy.url, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode()
    )
    assert status == 400
    assert json.loads(body)["error"]["message"] == "the request path has a dot segment"
    assert proxy.backend.requests == []


@pytest_twisted.ensureDeferred
async def test_unreachable_backend_gets_openais_error_shape(
    fake_backend: FakeBackend, http: HTTPClient
) -> None:
    closed = FakeBackend("vllm")
    url = await closed.listen(reactor())
    await closed.stop()  # nothing listens there any more
    running = await start_proxy(fake_backend, url, api_key="sk-test-secret", model_map=MODEL_MAP)
    try:
        response = await http.post(running.url + "/v1/chat/completions", json={"model": BACKEND_ID})
        assert response.code == 502
        assert await read_json(response) == {
            "error": {
                "message": "cannot reach the backend: connection refused",
                "type": "api_error",
                "param": None,
                "code": "backend_unreachable",
            }
        }
        with pytest.raises(openai.InternalServerError) as caught:
            await in_thread(lambda: sdk(running.url).models.list())
        # 502 again, or 503 once the circuit breaker has opened: either way in OpenAI's shape.
        assert caught.value.status_code in (502, 503)
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["type"] == "api_error"
        assert caught.value.body["code"] in ("backend_unreachable", "backend_unavailable")
    finally:
        await running.service.stopService()


@pytest_twisted.ensureDeferred
async def test_backend_timeout_gets_openais_error_shape(
    proxy: RunningProxy, http: HTTPClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def times_out(*args: Any, **kwargs: Any) -> Any:
        raise BackendTimeout("the backend did not answer within 600 seconds")

    monkeypatch.setattr(proxy.service.app.backend, "request", times_out)
    response = await http.post(proxy.url + "/v1/chat/completions", json={"model": BACKEND_ID})
    assert response.code == 504
    assert (await read_json(response))["error"] == {
        "message": "the backend did not answer within 600 seconds",
        "type": "api_error",
        "param": None,
        "code": "backend_timeout",
    }


@pytest_twisted.ensureDeferred
async def test_a_stream_broken_mid_way_ends_with_an_error_event(
    proxy: RunningProxy, http: HTTPClient
) -> None:
    proxy.backend.script = ChatScript(content=["one ", "two ", "three"], drop_after=2)
    response = await http.post(
        proxy.url + "/v1/chat/completions", json={"model": ALIAS, "messages": MESSAGES, "stream": True}
    )
    body = await treq.content(response)
    assert response.code == 200
    relayed = bytes(proxy.backend.sent_streams[-1])
    assert body == relayed + sse_error_event("the backend connection broke mid-stream")

    with pytest.raises(openai.APIError):
        await in_thread(_stream_chat, proxy.url)


@pytest_twisted.ensureDeferred
async def test_backend_silence_mid_stream(fake_backend: FakeBackend, http: HTTPClient) -> None:
    running = await start_proxy(
        fake_backend, fake_backend.base_url, api_key="sk-test-secret", model_map=MODEL_MAP, idle_timeout=0.3
    )
    try:
        fake_backend.script = ChatScript(content=["a", "b"], event_delay=1.0)
        response = await http.post(
            running.url + "/v1/chat/completions",
            json={"model": BACKEND_ID, "messages": MESSAGES, "stream": True},
        )
        body = await treq.content(response)
        first = bytes(fake_backend.sent_streams[-1])
        assert body == first + sse_error_event("the backend sent nothing for 0.3 seconds")
        await eventually(lambda: fake_backend.disconnects == 1)
    finally:
        await running.service.stopService()


class _Reader(Protocol):
    """A raw client: sends one request, counts what comes back."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self.data = b""
        self.first_data: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.first_data.called:
            self.first_data.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


async def _connect(url: str, request: bytes) -> _Reader:
    protocol = _Reader(request)
    port = int(url.rsplit(":", 1)[1])
    reactor().connectTCP("127.0.0.1", port, ClientFactory.forProtocol(lambda: protocol))
    return protocol


async def _raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    client = await _connect(url, request)
    await client.closed
    head, _, body = client.data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return int(head.split(b" ", 2)[1]), body


def _post(path: bytes, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (
            path,
            len(data),
            data,
        )
    )


@pytest_twisted.ensureDeferred
async def test_client_leaving_a_v1_stream_stops_the_backend(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(content=["tok "], endless=True, event_delay=0.005)
    client = await _connect(
        proxy.url, _post(b"/v1/chat/completions", {"model": ALIAS, "messages": MESSAGES, "stream": True})
    )
    await client.first_data
    assert proxy.backend.open_streams == 1
    assert client.transport is not None
    client.transport.loseConnection()
    await eventually(lambda: proxy.backend.disconnects == 1 and proxy.backend.open_streams == 0)


@pytest_twisted.ensureDeferred
async def test_client_leaving_before_the_backend_answers_stops_it(proxy: RunningProxy) -> None:
    proxy.backend.script = ChatScript(header_delay=5.0)
    client = await _connect(proxy.url, _post(b"/responses", {"model": ALIAS, "input": "Hi", "stream": True}))
    await eventually(lambda: proxy.backend.open_streams == 1)
    assert client.transport is not None
    client.transport.loseConnection()
    await eventually(lambda: proxy.backend.disconnects == 1)


@pytest_twisted.ensureDeferred
async def test_a_backend_cookie_is_never_sent_back(proxy: RunningProxy, http: HTTPClient) -> None:
    """One backend client serves every Ollama client: a cookie it kept (a load balancer's affinity cookie,
    say) would ride along with everybody's requests and pin them all to one replica."""
    backend = proxy.backend
    backend.extra_headers = {"set-cookie": "route=replica-2; Path=/"}
    chat = {"model": "qwen", "messages": [{"role": "user", "content": "x"}], "stream": False}
    for _ in range(2):
        response = await http.post(proxy.url + "/api/chat", json=chat)
        assert response.code == 200
        await response.content()
    response = await http.get(proxy.url + "/v1/models")
    assert response.headers.getRawHeaders("set-cookie") == ["route=replica-2; Path=/"]  # the client's own
    await response.content()
    assert [r.headers.get("cookie") for r in backend.requests[-3:]] == [None, None, None]

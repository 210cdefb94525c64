"""/api/embed and /api/embeddings: the pure translation, then end to end with the ollama SDK."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import ollama
import pytest
import pytest_twisted
from hypothesis import assume, given
from hypothesis import strategies as st
from treq.client import HTTPClient

from ollama_proxy.translate.dialect import Dialect
from ollama_proxy.translate.embeddings import (
    batches,
    embed_inputs,
    embed_reply,
    embeddings_reply,
    embeddings_request,
    exceeds_context,
    l2_normalize,
    parse_embeddings,
    shape_vector,
    sum_tokens,
)
from tests.fake_backend import FakeBackend
from tests.support import RunningProxy, in_thread, reactor, read_json, start_proxy

EMBEDDER = "BAAI/bge-small-en-v1.5"
CHAT_ID = "Qwen/Qwen2.5-7B-Instruct"

# -------------------------------------------------------------------------------------------------------
# The pure translation
# -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, []),
        ("", []),
        ("hello", ["hello"]),
        ([], []),
        (["a", "b"], ["a", "b"]),
        (["a", ""], ["a", ""]),  # Ollama keeps empty strings inside a list
    ],
)
def test_embed_inputs(value: Any, expected: list[str]) -> None:
    assert embed_inputs(value) == expected


@pytest.mark.parametrize("value", [3, 1.5, True, {"text": "a"}, ["a", 1], [["a"]], [None]])
def test_embed_inputs_refuses_other_types_with_ollamas_words(value: Any) -> None:
    with pytest.raises(ValueError, match=r"^invalid input type$"):
        embed_inputs(value)


@pytest.mark.parametrize(
    ("items", "size", "expected"),
    [
        ([], 3, []),
        ([1], 3, [[1]]),
        ([1, 2, 3], 3, [[1, 2, 3]]),
        ([1, 2, 3, 4, 5], 2, [[1, 2], [3, 4], [5]]),
        ([1, 2, 3], 1, [[1], [2], [3]]),
    ],
)
def test_batches(items: list[int], size: int, expected: list[list[int]]) -> None:
    assert [list(batch) for batch in batches(items, size)] == expected


def test_batches_refuse_a_size_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(batches([1], 0))


@given(st.lists(st.text(max_size=5), max_size=60), st.integers(min_value=1, max_value=17))
def test_batching_preserves_order_and_bounds_sizes(items: list[str], size: int) -> None:
    parts = [list(batch) for batch in batches(items, size)]
    assert [item for part in parts for item in part] == items
    assert all(1 <= len(part) <= size for part in parts)
    assert len(parts) == math.ceil(len(items) / size)


def test_embeddings_request_always_sends_a_list() -> None:
    for dialect in Dialect:
        body = embeddings_request("m", ("a",), dialect=dialect, truncate=False, context_length=512)
        assert body == {"model": "m", "input": ["a"]}


@pytest.mark.parametrize(
    ("dialect", "truncate", "context_length", "extra"),
    [
        (Dialect.VLLM, True, 512, {"truncate_prompt_tokens": 512}),
        (Dialect.VLLM, False, 512, {}),
        (Dialect.VLLM, True, None, {}),  # no length known: nothing to truncate to
        (Dialect.LLAMACPP, True, 512, {}),
        (Dialect.OPENAI, True, 8191, {}),
        (Dialect.OPENROUTER, True, 8191, {}),
    ],
)
def test_truncation_is_asked_where_the_dialect_has_it(
    dialect: Dialect, truncate: bool, context_length: int | None, extra: dict[str, Any]
) -> None:
    body = embeddings_request("m", ["a"], dialect=dialect, truncate=truncate, context_length=context_length)
    assert body == {"model": "m", "input": ["a"], **extra}


@pytest.mark.parametrize(
    ("message", "too_long"),
    [
        (
            "This model's maximum context length is 512 tokens. However, you requested 600 tokens in the "
            "input for embedding generation. Please reduce the length of the input.",
            True,
        ),
        ("input (600 tokens) is too large to process. increase the physical batch size", True),
        ("Input validation error: `inputs` must have less than 512 tokens. Given: 600", True),
        ("input is too long", True),
        ("dimensions must be a positive integer", False),
        ("The model `x` does not exist.", False),
    ],
)
def test_backends_refusing_an_over_long_input_are_recognised(message: str, too_long: bool) -> None:
    assert exceeds_context(message) is too_long


def _reply(vectors: list[Any], order: list[int] | None = None, usage: Any = None) -> dict[str, Any]:
    indexes = order if order is not None else list(range(len(vectors)))
    data = [{"object": "embedding", "index": i, "embedding": vectors[i]} for i in indexes]
    body: dict[str, Any] = {"object": "list", "data": data, "model": "m"}
    if usage is not None:
        body["usage"] = usage
    return body


@pytest.mark.parametrize(
    ("body", "expected", "tokens"),
    [
        (_reply([[1, 2], [3, 4]], usage={"prompt_tokens": 7}), [[1.0, 2.0], [3.0, 4.0]], 7),
        (_reply([[1, 2], [3, 4]], order=[1, 0], usage={"prompt_tokens": 7}), [[1.0, 2.0], [3.0, 4.0]], 7),
        (_reply([[0.5]]), [[0.5]], None),
        (_reply([[0.5]], usage={"total_tokens": 3}), [[0.5]], None),
        (_reply([[0.5]], usage={"prompt_tokens": True}), [[0.5]], None),
        ({"data": [{"embedding": [1]}, {"embedding": [2]}]}, [[1.0], [2.0]], None),  # no index: in order
    ],
)
def test_parse_embeddings(body: dict[str, Any], expected: list[list[float]], tokens: int | None) -> None:
    assert parse_embeddings(body, len(expected)) == (expected, tokens)


@pytest.mark.parametrize(
    ("body", "expected", "message"),
    [
        ({"data": []}, 1, "0 embeddings for 1 inputs"),
        ({"error": "x"}, 1, "0 embeddings for 1 inputs"),
        ([], 1, "0 embeddings for 1 inputs"),
        (_reply([[1], [2]]), 1, "2 embeddings for 1 inputs"),
        ({"data": ["x"]}, 1, "not an object"),
        ({"data": [{"index": "0", "embedding": [1]}]}, 1, "integer index"),
        ({"data": [{"index": 1, "embedding": [1]}]}, 1, "indexes do not match"),
        (_reply([[1], [2]], order=[0, 0]), 2, "indexes do not match"),
        (_reply(["AAAA"]), 1, "not a list of numbers"),  # base64 was never asked for
        (_reply([[]]), 1, "not a list of numbers"),
        (_reply([[1, "2"]]), 1, "not a list of numbers"),
        (_reply([[True]]), 1, "not a list of numbers"),
        (_reply([[1, float("nan")]]), 1, "NaN or Inf"),
        (_reply([[float("inf")]]), 1, "NaN or Inf"),
    ],
)
def test_parse_embeddings_refuses_malformed_replies(body: Any, expected: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_embeddings(body, expected)


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=64))
def test_normalisation_gives_unit_vectors(vector: list[float]) -> None:
    assume(_norm(vector) > 1e-6)
    result = l2_normalize(vector)
    assert math.isclose(_norm(result), 1.0, rel_tol=1e-9)
    # Same direction: each component is the original's divided by the norm.
    norm = _norm(vector)
    assert all(
        math.isclose(a, b / norm, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(result, vector, strict=True)
    )


def test_normalising_zero_keeps_zero_and_nan_is_refused() -> None:
    assert l2_normalize([0.0, 0.0]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="NaN or Inf"):
        l2_normalize([1.0, float("nan")])


@pytest.mark.parametrize(
    ("dimensions", "length"),
    [(None, 4), (0, 4), (-1, 4), (2, 2), (3, 3), (4, 4), (9, 4)],
)
def test_shape_vector_cuts_only_real_cuts(dimensions: int | None, length: int) -> None:
    shaped = shape_vector([3.0, 4.0, 12.0, 84.0], dimensions)
    assert len(shaped) == length
    assert math.isclose(_norm(shaped), 1.0)


@given(st.lists(finite, min_size=2, max_size=32), st.integers(min_value=1, max_value=31))
def test_dimensions_are_normalise_cut_normalise(vector: list[float], dimensions: int) -> None:
    assume(dimensions < len(vector) and _norm(vector[:dimensions]) > 1e-6)
    shaped = shape_vector(vector, dimensions)
    assert len(shaped) == dimensions
    assert math.isclose(_norm(shaped), 1.0, rel_tol=1e-9)
    expected = l2_normalize(vector[:dimensions])  # scaling first does not change the direction
    assert all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(shaped, expected, strict=True))


@pytest.mark.parametrize(
    ("counts", "total"), [([], None), ([None], None), ([3, None, 4], 7), ([0], 0), ([2, 5], 7)]
)
def test_sum_tokens(counts: list[int | None], total: int | None) -> None:
    assert sum_tokens(counts) == total


@pytest.mark.parametrize(
    ("total_ns", "tokens", "expected"),
    [
        (1234, 5, {"model": "m", "embeddings": [[1.0]], "total_duration": 1234, "prompt_eval_count": 5}),
        (1234, None, {"model": "m", "embeddings": [[1.0]], "total_duration": 1234}),
        (1234, 0, {"model": "m", "embeddings": [[1.0]], "total_duration": 1234}),
        (None, 5, {"model": "m", "embeddings": [[1.0]], "prompt_eval_count": 5}),
    ],
)
def test_embed_reply_leaves_out_unknown_metrics(
    total_ns: int | None, tokens: int | None, expected: dict[str, Any]
) -> None:
    reply = embed_reply("m", [[1.0]], total_ns=total_ns, prompt_tokens=tokens)
    assert reply == expected
    assert list(reply) == list(expected)  # Ollama's key order
    assert "load_duration" not in reply  # not measured: not given


def test_embed_reply_load_duration_sits_in_ollamas_order() -> None:
    reply = embed_reply("m", [[1.0]], total_ns=1000, load_ns=0, prompt_tokens=2)
    assert list(reply) == ["model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"]
    assert reply["load_duration"] == 1  # at least 1 ns, as every duration here


def test_embeddings_reply() -> None:
    assert embeddings_reply([0.5, -2.0]) == {"embedding": [0.5, -2.0]}
    assert embeddings_reply([]) == {"embedding": []}


# -------------------------------------------------------------------------------------------------------
# End to end
# -------------------------------------------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def embed_proxy(fake_backend: FakeBackend) -> AsyncIterator[RunningProxy]:
    """Small batches, so batching shows with a handful of inputs."""
    running = await start_proxy(
        fake_backend,
        fake_backend.base_url,
        api_key="sk-test-secret",
        model_map={"bge": EMBEDDER, "qwen": CHAT_ID},
        embed_batch_size=2,
    )
    yield running
    await running.service.stopService()


def embedding_calls(backend: FakeBackend) -> list[dict[str, Any]]:
    return [r.json for r in backend.requests if r.path == "/v1/embeddings"]


def expected(backend: FakeBackend, text: str, dimensions: int | None = None) -> list[float]:
    return shape_vector(backend.embedding_for(text), dimensions)


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in zip(a, b, strict=True)
    )


def _embed(url: str, **kwargs: Any) -> Any:
    return ollama.Client(host=url).embed(**kwargs)


@pytest_twisted.ensureDeferred
async def test_sdk_embed_returns_unit_vectors_in_order(proxy: RunningProxy) -> None:
    """Must show: embed(model, input=[a, b]) gives two unit vectors, in order, with prompt_eval_count."""
    texts = ["the first text", "second"]
    reply = await in_thread(_embed, proxy.url, model=EMBEDDER, input=texts)
    assert reply.model == EMBEDDER
    assert len(reply.embeddings) == 2
    for vector, text in zip(reply.embeddings, texts, strict=True):
        assert math.isclose(_norm(list(vector)), 1.0, rel_tol=1e-9)
        assert close(list(vector), expected(proxy.backend, text))
    assert reply.prompt_eval_count == 4  # the fake counts words: 3 + 1
    assert reply.total_duration
    assert reply.total_duration > 0
    assert reply.load_duration
    assert reply.total_duration > reply.load_duration > 0
    (sent,) = embedding_calls(proxy.backend)
    # truncate defaults to true, as in Ollama: vLLM is asked to truncate to the model's context.
    assert sent == {"model": EMBEDDER, "input": texts, "truncate_prompt_tokens": 8192}


@pytest_twisted.ensureDeferred
async def test_sdk_embed_a_string_with_dimensions(proxy: RunningProxy) -> None:
    reply = await in_thread(
        _embed,
        proxy.url,
        model=EMBEDDER,
        input="one text",
        dimensions=4,
        truncate=True,
        options={"num_ctx": 512},
        keep_alive="1h",
    )
    (vector,) = reply.embeddings
    assert len(vector) == 4
    assert close(list(vector), expected(proxy.backend, "one text", 4))
    (sent,) = embedding_calls(proxy.backend)
    # dimensions applied here, not by the backend
    assert sent == {"model": EMBEDDER, "input": ["one text"], "truncate_prompt_tokens": 8192}
    ps = await in_thread(lambda: ollama.Client(host=proxy.url).ps())
    assert [m.model for m in ps.models] == [f"{EMBEDDER}:latest"]


@pytest_twisted.ensureDeferred
async def test_large_inputs_are_split_into_batches_and_joined_in_order(embed_proxy: RunningProxy) -> None:
    texts = ["a", "b c", "d e f", "g", "h i"]
    reply = await in_thread(_embed, embed_proxy.url, model="bge", input=texts)
    assert reply.model == "bge"
    assert [
        close(list(v), expected(embed_proxy.backend, t)) for v, t in zip(reply.embeddings, texts, strict=True)
    ] == [True] * 5
    assert [call["input"] for call in embedding_calls(embed_proxy.backend)] == [
        ["a", "b c"],
        ["d e f", "g"],
        ["h i"],
    ]
    assert {call["model"] for call in embedding_calls(embed_proxy.backend)} == {EMBEDDER}
    assert reply.prompt_eval_count == 1 + 2 + 3 + 1 + 2


@pytest.mark.parametrize("body", [{"input": []}, {"input": ""}, {}, {"input": None}])
@pytest_twisted.ensureDeferred
async def test_empty_input_is_answered_without_the_backend(
    proxy: RunningProxy, http: HTTPClient, body: dict[str, Any]
) -> None:
    response = await http.post(proxy.url + "/api/embed", json={"model": "qwen", **body})
    assert response.code == 200
    assert await read_json(response) == {"model": "qwen", "embeddings": []}
    assert embedding_calls(proxy.backend) == []
    ps = await read_json(await http.get(proxy.url + "/api/ps"))
    assert [m["name"] for m in ps["models"]] == ["qwen:latest"]  # a load request, as in Ollama


def _embeddings(url: str, **kwargs: Any) -> Any:
    return ollama.Client(host=url).embeddings(**kwargs)


@pytest_twisted.ensureDeferred
async def test_sdk_legacy_embeddings_are_not_normalised(embed_proxy: RunningProxy) -> None:
    reply = await in_thread(_embeddings, embed_proxy.url, model="bge", prompt="hello world")
    assert list(reply.embedding) == embed_proxy.backend.embedding_for("hello world")
    assert _norm(list(reply.embedding)) > 1.5  # the fake's vectors are far from unit length
    assert embedding_calls(embed_proxy.backend) == [{"model": EMBEDDER, "input": ["hello world"]}]


@pytest_twisted.ensureDeferred
async def test_legacy_empty_prompt_is_an_empty_embedding(proxy: RunningProxy, http: HTTPClient) -> None:
    for body in ({"model": EMBEDDER}, {"model": EMBEDDER, "prompt": ""}, {"model": EMBEDDER, "prompt": None}):
        response = await http.post(proxy.url + "/api/embeddings", json=body)
        assert (response.code, await read_json(response)) == (200, {"embedding": []})
    assert embedding_calls(proxy.backend) == []


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/embed", {"input": "x"}, 404, "model '' not found"),
        ("/api/embed", {"model": "nope", "input": "x"}, 404, "model 'nope' not found"),
        ("/api/embed", {"model": EMBEDDER, "input": 3}, 400, "invalid input type"),
        ("/api/embed", {"model": EMBEDDER, "input": ["a", 1]}, 400, "invalid input type"),
        ("/api/embed", {"model": EMBEDDER, "input": "x", "dimensions": "4"}, 400, None),
        ("/api/embed", {"model": EMBEDDER, "input": "x", "truncate": "yes"}, 400, None),
        (
            "/api/embed",
            {"model": EMBEDDER, "input": "x", "keep_alive": "10"},
            400,
            'time: missing unit in duration "10"',
        ),
        ("/api/embed", [], 400, "request body must be a JSON object"),
        ("/api/embeddings", {"prompt": "x"}, 400, "model is required"),
        (
            "/api/embeddings",
            {"model": "nope", "prompt": "x"},
            404,
            'model "nope" not found, try pulling it first',
        ),
        ("/api/embeddings", {"model": EMBEDDER, "prompt": ["x"]}, 400, None),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests(
    proxy: RunningProxy, http: HTTPClient, path: str, body: Any, status: int, error: str | None
) -> None:
    response = await http.post(proxy.url + path, json=body)
    reply = await read_json(response)
    assert response.code == status
    assert isinstance(reply["error"], str)
    if error is not None:
        assert reply["error"] == error
    assert embedding_calls(proxy.backend) == []


@pytest.mark.parametrize(
    ("model", "path", "status", "error"),
    [
        ("qwen", "/api/embed", 400, '"qwen" does not support embeddings'),
        (EMBEDDER, "/api/embed", 404, f"model '{EMBEDDER}' not found"),
        (EMBEDDER, "/api/embeddings", 404, f'model "{EMBEDDER}" not found, try pulling it first'),
    ],
)
@pytest_twisted.ensureDeferred
async def test_backend_404_names_the_model(
    proxy: RunningProxy, http: HTTPClient, model: str, path: str, status: int, error: str
) -> None:
    await http.get(proxy.url + "/api/tags")  # warm the model list so the failure hits the embeddings call
    proxy.backend.fail_next(404, {"error": {"message": "Not Found", "type": "NotFoundError"}})
    response = await http.post(proxy.url + path, json={"model": model, "input": "x", "prompt": "x"})
    assert (response.code, await read_json(response)) == (status, {"error": error})


@pytest_twisted.ensureDeferred
async def test_backend_errors_keep_their_status_and_message(proxy: RunningProxy, http: HTTPClient) -> None:
    await http.get(proxy.url + "/api/tags")
    proxy.backend.fail_next(400, {"error": {"message": "no such pooling", "type": "BadRequestError"}})
    response = await http.post(proxy.url + "/api/embed", json={"model": EMBEDDER, "input": "x"})
    assert (response.code, await read_json(response)) == (400, {"error": "no such pooling"})


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ({"object": "list", "data": []}, "backend returned 0 embeddings for 1 inputs"),
        (
            {"data": [{"index": 0, "embedding": [1.0, "x"]}]},
            "backend embedding is not a list of numbers",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_backend_replies_are_502(
    proxy: RunningProxy, http: HTTPClient, reply: dict[str, Any], error: str
) -> None:
    await http.get(proxy.url + "/api/tags")
    proxy.backend.fail_next(200, reply)
    response = await http.post(proxy.url + "/api/embed", json={"model": EMBEDDER, "input": "x"})
    assert (response.code, await read_json(response)) == (502, {"error": error})


@pytest_twisted.ensureDeferred
async def test_the_sdk_sees_ollamas_errors(proxy: RunningProxy) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(_embed, proxy.url, model="nope", input="x")
    assert (caught.value.status_code, caught.value.error) == (404, "model 'nope' not found")


@pytest_twisted.ensureDeferred
async def test_truncate_false_gives_ollamas_error_for_an_over_long_input(proxy: RunningProxy) -> None:
    proxy.backend.max_model_len = 5
    with pytest.raises(ollama.ResponseError) as caught:
        await in_thread(
            _embed, proxy.url, model=EMBEDDER, input="one two three four five six", truncate=False
        )
    assert (caught.value.status_code, caught.value.error) == (
        400,
        "the input length exceeds the context length",
    )
    assert "truncate_prompt_tokens" not in embedding_calls(proxy.backend)[-1]


@pytest.mark.parametrize("truncate", [True, None], ids=["true", "default"])
@pytest_twisted.ensureDeferred
async def test_truncate_true_has_vllm_truncate_to_the_models_context(
    proxy: RunningProxy, truncate: bool | None
) -> None:
    proxy.backend.max_model_len = 5
    await proxy.service.app.catalog.snapshot(max_age=0)  # the daemon learns the new max_model_len
    extra = {} if truncate is None else {"truncate": truncate}
    reply = await in_thread(_embed, proxy.url, model=EMBEDDER, input="one two three four five six", **extra)
    (vector,) = reply.embeddings
    assert close(list(vector), expected(proxy.backend, "two three four five six"))  # vLLM keeps the end
    assert embedding_calls(proxy.backend)[-1]["truncate_prompt_tokens"] == 5
    assert reply.prompt_eval_count == 5


@pytest_twisted.ensureDeferred
async def test_an_over_long_input_refused_by_a_backend_that_cannot_truncate_gets_ollamas_words(
    http: HTTPClient,
) -> None:
    backend = FakeBackend("openai", models=["text-embedding-3-small"])
    await backend.listen(reactor())
    backend.max_model_len = 3
    running = await start_proxy(backend, backend.base_url, dialect=Dialect.OPENAI)
    try:
        response = await http.post(
            running.url + "/api/embed", json={"model": "text-embedding-3-small", "input": "a b c d"}
        )
        assert (response.code, await read_json(response)) == (
            400,
            {"error": "the input length exceeds the context length"},
        )
        (sent,) = [r.json for r in backend.requests if r.path == "/v1/embeddings"]
        assert sent == {"model": "text-embedding-3-small", "input": ["a b c d"]}  # OpenAI has no such option
    finally:
        await running.service.stopService()
        await backend.stop()

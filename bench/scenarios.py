"""The benchmark's scenarios: each an Ollama (or ``/v1``) request to the daemon, the equivalent OpenAI request
sent straight to the backend, and the checks that a reply is well formed (a fast error is not a result)."""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import canned
from bench.canned import EMBED_MODEL, MODEL, TEXT

PROMPT = "Say hello to the benchmark."
MESSAGES = [{"role": "user", "content": PROMPT}]
STREAM_OPTIONS = {"stream": True, "stream_options": {"include_usage": True}}


class CheckFailed(Exception):
    pass


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: dict[str, Any] | None = None

    def body_bytes(self) -> bytes | None:
        return None if self.body is None else json.dumps(self.body, separators=(",", ":")).encode()


Check = Callable[[Reply], None]


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    stream: bool
    daemon: Request
    direct: Request
    check: Check
    direct_check: Check


def fetch(port: int, request: Request, timeout: float = 30.0) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if request.body is not None else {}
        conn.request(request.method, request.path, body=request.body_bytes(), headers=headers)
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


# -- checks ------------------------------------------------------------------------------------------------


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _ok(reply: Reply, content_type: str) -> None:
    if reply.status != 200:
        raise CheckFailed(f"HTTP {reply.status}: {reply.body[:200]!r}")
    got = reply.headers.get("content-type", "")
    _expect(got.startswith(content_type), f"content-type {got!r}, expected {content_type}")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise CheckFailed(f"not JSON ({exc}): {body[:200]!r}") from None


def _final_metrics(obj: dict[str, Any]) -> None:
    _expect(obj.get("done") is True, f"done is {obj.get('done')!r}")
    _expect(obj.get("done_reason") == "stop", f"done_reason {obj.get('done_reason')!r}")
    _expect(obj.get("eval_count") == canned.COMPLETION_TOKENS, f"eval_count {obj.get('eval_count')!r}")
    _expect(
        obj.get("prompt_eval_count") == canned.PROMPT_TOKENS,
        f"prompt_eval_count {obj.get('prompt_eval_count')!r}",
    )
    for name in ("total_duration", "eval_duration"):
        _expect(isinstance(obj.get(name), int) and obj[name] > 0, f"{name} {obj.get(name)!r}")


def _text_of(obj: dict[str, Any], kind: str) -> str:
    if kind == "chat":
        message = obj.get("message") or {}
        return str(message.get("content", ""))
    return str(obj.get("response", ""))


def ollama_reply(kind: str) -> Check:
    def check(reply: Reply) -> None:
        _ok(reply, "application/json")
        obj = _json(reply.body)
        _expect(obj.get("model") == MODEL, f"model {obj.get('model')!r}")
        _expect(_text_of(obj, kind) == TEXT, f"text {_text_of(obj, kind)[:60]!r}")
        _final_metrics(obj)

    return check


def ollama_stream(kind: str) -> Check:
    def check(reply: Reply) -> None:
        _ok(reply, "application/x-ndjson")
        lines = [_json(line) for line in reply.body.split(b"\n") if line.strip()]
        _expect(len(lines) >= 2, f"{len(lines)} NDJSON lines")
        for line in lines[:-1]:
            _expect(line.get("done") is False, f"a chunk before the last has done={line.get('done')!r}")
        _final_metrics(lines[-1])
        text = "".join(_text_of(line, kind) for line in lines)
        _expect(text == TEXT, f"streamed text {text[:60]!r}")

    return check


def ollama_embed(reply: Reply) -> None:
    _ok(reply, "application/json")
    obj = _json(reply.body)
    vectors = obj.get("embeddings")
    _expect(isinstance(vectors, list) and len(vectors) == 1, f"embeddings {str(vectors)[:80]}")
    vector = vectors[0]
    _expect(len(vector) == canned.EMBED_DIM, f"{len(vector)} dimensions")
    # Ollama's /api/embed returns unit vectors: the backend's vector, L2-normalised.
    norm = math.sqrt(sum(x * x for x in canned.EMBEDDING))
    expected = [x / norm for x in canned.EMBEDDING]
    _expect(all(abs(a - b) < 1e-6 for a, b in zip(vector, expected, strict=True)), "wrong values")


def ollama_tags(reply: Reply) -> None:
    _ok(reply, "application/json")
    names = {m.get("name") for m in _json(reply.body).get("models", [])}
    _expect(f"{MODEL}:latest" in names or MODEL in names, f"models {sorted(map(str, names))}")


def openai_completion(reply: Reply) -> None:
    from openai.types.chat import ChatCompletion

    _ok(reply, "application/json")
    completion = ChatCompletion.model_validate(_json(reply.body))
    _expect(completion.choices[0].message.content == TEXT, "content")
    _expect(completion.usage is not None and completion.usage.completion_tokens == 50, "usage")


def sse_events(body: bytes) -> list[str]:
    events = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
        if data:
            events.append(b"\n".join(data).decode())
    return events


def openai_stream(reply: Reply) -> None:
    from openai.types.chat import ChatCompletionChunk

    _ok(reply, "text/event-stream")
    events = sse_events(reply.body)
    _expect(bool(events) and events[-1] == "[DONE]", "no [DONE] at the end")
    chunks = [ChatCompletionChunk.model_validate(_json(e.encode())) for e in events[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    _expect(text == TEXT, f"streamed text {text[:60]!r}")
    _expect(any(c.usage is not None and c.usage.completion_tokens == 50 for c in chunks), "no usage chunk")


def openai_embeddings(reply: Reply) -> None:
    from openai.types import CreateEmbeddingResponse

    _ok(reply, "application/json")
    parsed = CreateEmbeddingResponse.model_validate(_json(reply.body))
    _expect(len(parsed.data[0].embedding) == canned.EMBED_DIM, "dimensions")


def openai_models(reply: Reply) -> None:
    from openai.types import Model

    _ok(reply, "application/json")
    ids = [Model.model_validate(m).id for m in _json(reply.body)["data"]]
    _expect(MODEL in ids, f"models {ids}")


def essential(key: str) -> Check:
    """The least a reply must be for its timing to mean anything: HTTP 200 and the whole answer (the text,
    the vector, the model).  Another proxy (the Go peer) is timed when this passes; what the full checks
    find beyond it is reported as a difference, not a failure."""

    def check(reply: Reply) -> None:
        _expect(reply.status == 200, f"HTTP {reply.status}: {reply.body[:200]!r}")
        if key in ("chat", "generate"):
            obj = _json(reply.body)
            _expect(_text_of(obj, key) == TEXT, f"text {_text_of(obj, key)[:60]!r}")
        elif key in ("chat-stream", "generate-stream"):
            kind = key.split("-")[0]
            lines = [_json(line) for line in reply.body.split(b"\n") if line.strip()]
            _expect(bool(lines) and lines[-1].get("done") is True, "the last line is not done: true")
            text = "".join(_text_of(line, kind) for line in lines)
            _expect(text == TEXT, f"streamed text {text[:60]!r}")
        elif key == "embed":
            vectors = _json(reply.body).get("embeddings")
            _expect(isinstance(vectors, list) and len(vectors) == 1, f"embeddings {str(vectors)[:80]}")
            _expect(len(vectors[0]) == canned.EMBED_DIM, f"{len(vectors[0])} dimensions")
        elif key == "tags":
            names = {m.get("name") for m in _json(reply.body).get("models", [])}
            _expect(f"{MODEL}:latest" in names or MODEL in names, f"models {sorted(map(str, names))}")
        elif key == "v1-chat":
            choices = _json(reply.body).get("choices") or [{}]
            content = (choices[0].get("message") or {}).get("content")
            _expect(content == TEXT, f"content {str(content)[:60]!r}")
        elif key == "v1-chat-stream":
            events = sse_events(reply.body)
            _expect(bool(events) and events[-1] == "[DONE]", "no [DONE] at the end")
            chunks = [_json(e.encode()) for e in events[:-1]]
            text = "".join(
                (c["choices"][0].get("delta") or {}).get("content") or "" for c in chunks if c.get("choices")
            )
            _expect(text == TEXT, f"streamed text {text[:60]!r}")
        else:
            raise CheckFailed(f"no essential check for {key}")

    return check


# -- the scenarios -----------------------------------------------------------------------------------------


def _chat_body(stream: bool) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, **(STREAM_OPTIONS if stream else {"stream": False})}


def _scenarios() -> list[Scenario]:
    chat = "/v1/chat/completions"
    return [
        Scenario(
            "chat",
            "/api/chat",
            False,
            Request("POST", "/api/chat", {"model": MODEL, "messages": MESSAGES, "stream": False}),
            Request("POST", chat, _chat_body(False)),
            ollama_reply("chat"),
            openai_completion,
        ),
        Scenario(
            "chat-stream",
            "/api/chat stream",
            True,
            Request("POST", "/api/chat", {"model": MODEL, "messages": MESSAGES, "stream": True}),
            Request("POST", chat, _chat_body(True)),
            ollama_stream("chat"),
            openai_stream,
        ),
        Scenario(
            "generate",
            "/api/generate",
            False,
            Request("POST", "/api/generate", {"model": MODEL, "prompt": PROMPT, "stream": False}),
            Request("POST", chat, _chat_body(False)),
            ollama_reply("generate"),
            openai_completion,
        ),
        Scenario(
            "generate-stream",
            "/api/generate stream",
            True,
            Request("POST", "/api/generate", {"model": MODEL, "prompt": PROMPT, "stream": True}),
            Request("POST", chat, _chat_body(True)),
            ollama_stream("generate"),
            openai_stream,
        ),
        Scenario(
            "embed",
            "/api/embed",
            False,
            Request("POST", "/api/embed", {"model": EMBED_MODEL, "input": PROMPT}),
            Request("POST", "/v1/embeddings", {"model": EMBED_MODEL, "input": PROMPT}),
            ollama_embed,
            openai_embeddings,
        ),
        Scenario(
            "tags",
            "/api/tags",
            False,
            Request("GET", "/api/tags"),
            Request("GET", "/v1/models"),
            ollama_tags,
            openai_models,
        ),
        Scenario(
            "v1-chat",
            "/v1/chat/completions",
            False,
            Request("POST", chat, _chat_body(False)),
            Request("POST", chat, _chat_body(False)),
            openai_completion,
            openai_completion,
        ),
        Scenario(
            "v1-chat-stream",
            "/v1/chat/completions stream",
            True,
            Request("POST", chat, _chat_body(True)),
            Request("POST", chat, _chat_body(True)),
            openai_stream,
            openai_stream,
        ),
    ]


SCENARIOS = _scenarios()
BY_KEY = {s.key: s for s in SCENARIOS}


# -- the same requests through the real client libraries ---------------------------------------------------


def sdk_checks(backend_port: int, daemon_port: int) -> dict[str, list[str]]:
    """Each scenario's failures when driven by the ``openai`` SDK (direct: the canned replies must parse) and
    the ``ollama`` SDK (through the daemon).  An empty list means every check passed."""
    import ollama
    import openai

    direct = openai.OpenAI(base_url=f"http://127.0.0.1:{backend_port}/v1", api_key="bench", max_retries=0)
    proxied = openai.OpenAI(base_url=f"http://127.0.0.1:{daemon_port}/v1", api_key="bench", max_retries=0)
    client = ollama.Client(host=f"http://127.0.0.1:{daemon_port}", timeout=30)
    failures: dict[str, list[str]] = {s.key: [] for s in SCENARIOS}

    def attempt(key: str, what: str, fn: Callable[[], bool]) -> None:
        try:
            ok = fn()
        except Exception as exc:  # any failure is a finding, reported per scenario
            failures[key].append(f"{what}: {type(exc).__name__}: {str(exc)[:160]}")
            return
        if not ok:
            failures[key].append(f"{what}: unexpected result")

    def openai_stream_text(api: openai.OpenAI) -> bool:
        chunks = list(
            api.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": PROMPT}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text == TEXT and any(c.usage is not None for c in chunks)

    def openai_text(api: openai.OpenAI) -> bool:
        completion = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}])
        return completion.choices[0].message.content == TEXT

    for key in ("chat", "generate", "v1-chat"):
        attempt(key, "openai SDK direct", lambda: openai_text(direct))
    for key in ("chat-stream", "generate-stream", "v1-chat-stream"):
        attempt(key, "openai SDK direct stream", lambda: openai_stream_text(direct))
    attempt(
        "embed",
        "openai SDK direct",
        lambda: len(direct.embeddings.create(model=EMBED_MODEL, input=PROMPT).data[0].embedding) == 384,
    )
    attempt("tags", "openai SDK direct", lambda: MODEL in [m.id for m in direct.models.list()])
    attempt(
        "generate",
        "openai SDK direct /completions",
        lambda: direct.completions.create(model=MODEL, prompt=PROMPT).choices[0].text == TEXT,
    )

    attempt("chat", "ollama SDK", lambda: client.chat(MODEL, messages=MESSAGES).message.content == TEXT)
    attempt(
        "chat-stream",
        "ollama SDK",
        lambda: (
            "".join(p.message.content or "" for p in client.chat(MODEL, messages=MESSAGES, stream=True))
            == TEXT
        ),
    )
    attempt("generate", "ollama SDK", lambda: client.generate(MODEL, PROMPT).response == TEXT)
    attempt(
        "generate-stream",
        "ollama SDK",
        lambda: "".join(p.response or "" for p in client.generate(MODEL, PROMPT, stream=True)) == TEXT,
    )
    attempt("embed", "ollama SDK", lambda: len(client.embed(EMBED_MODEL, PROMPT).embeddings[0]) == 384)
    attempt(
        "tags", "ollama SDK", lambda: any((m.model or "").startswith(MODEL) for m in client.list().models)
    )
    attempt("v1-chat", "openai SDK via daemon", lambda: openai_text(proxied))
    attempt("v1-chat-stream", "openai SDK via daemon", lambda: openai_stream_text(proxied))
    return failures

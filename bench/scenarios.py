"""The benchmark's scenarios: each an Ollama (or ``/v1``: OpenAI chat, Anthropic Messages, OpenAI Responses)
request to the daemon, the equivalent OpenAI request sent straight to the backend, and the checks that a
reply is well formed (a fast error is not a result)."""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from bench import canned
from bench.canned import EMBED_MODEL, MODEL, TEXT

PROMPT = "Say hello to the benchmark."
MESSAGES = [{"role": "user", "content": PROMPT}]
STREAM_OPTIONS = {"stream": True, "stream_options": {"include_usage": True}}
# What the anthropic SDK sends besides its key (the daemon has no client keys here) and its own telemetry.
ANTHROPIC_HEADERS = (("anthropic-version", "2023-06-01"),)
ANTHROPIC_MAX_TOKENS = 256


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
    # Sent besides Content-Type (which every request with a body gets), as a client of this API sends them.
    extra_headers: tuple[tuple[str, str], ...] = ()

    def body_bytes(self) -> bytes | None:
        return None if self.body is None else json.dumps(self.body, separators=(",", ":")).encode()

    def headers(self) -> dict[str, str]:
        content = {"Content-Type": "application/json"} if self.body is not None else {}
        return {**content, **dict(self.extra_headers)}


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
        conn.request(request.method, request.path, body=request.body_bytes(), headers=request.headers())
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


def named_sse_events(body: bytes) -> list[tuple[str | None, str]]:
    """Each SSE event's name (its ``event:`` line, None without one) and data."""
    events = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = block.split(b"\n")
        data = [line[5:].strip() for line in lines if line.startswith(b"data:")]
        names = [line[6:].strip().decode() for line in lines if line.startswith(b"event:")]
        if data:
            events.append((names[-1] if names else None, b"\n".join(data).decode()))
    return events


def sse_events(body: bytes) -> list[str]:
    return [data for _, data in named_sse_events(body)]


def openai_stream(reply: Reply) -> None:
    from openai.types.chat import ChatCompletionChunk

    _ok(reply, "text/event-stream")
    events = sse_events(reply.body)
    _expect(bool(events) and events[-1] == "[DONE]", "no [DONE] at the end")
    chunks = [ChatCompletionChunk.model_validate(_json(e.encode())) for e in events[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    _expect(text == TEXT, f"streamed text {text[:60]!r}")
    _expect(any(c.usage is not None and c.usage.completion_tokens == 50 for c in chunks), "no usage chunk")


def _typed_events(reply: Reply) -> list[dict[str, Any]]:
    """The events of an Anthropic or Responses stream: each named by an ``event:`` line that its data's
    ``type`` repeats, as both APIs send them."""
    _ok(reply, "text/event-stream")
    events = []
    for name, data in named_sse_events(reply.body):
        obj = _json(data.encode())
        _expect(isinstance(obj, dict), f"an event's data is not an object: {data[:80]!r}")
        _expect(name is not None, f"an event without an event: line: {data[:80]!r}")
        _expect(obj.get("type") == name, f"event {name!r} carries type {obj.get('type')!r}")
        events.append(obj)
    _expect(bool(events), "no events")
    return events


def _anthropic_text(events: list[dict[str, Any]]) -> str:
    deltas = (e.get("delta") or {} for e in events if e.get("type") == "content_block_delta")
    return "".join(str(d.get("text", "")) for d in deltas if d.get("type") == "text_delta")


def _responses_text(events: list[dict[str, Any]]) -> str:
    return "".join(str(e.get("delta", "")) for e in events if e.get("type") == "response.output_text.delta")


def _validate(events: list[dict[str, Any]], models: dict[str, type[BaseModel]]) -> None:
    """Each event against the SDK's own model of its type; a type a plain text reply has no use for fails."""
    for event in events:
        model = models.get(event["type"])
        if model is None:
            raise CheckFailed(f"unexpected event {event['type']!r}")
        try:
            model.model_validate(event)
        except ValidationError as exc:
            found = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
            raise CheckFailed(f"{event['type']}: {exc.error_count()} errors: {found}") from None


def anthropic_stream(reply: Reply) -> None:
    from anthropic import types

    events = _typed_events(reply)
    # ping is sent as Anthropic's own API sends it, and has no model in the SDK, which skips it.
    _validate(
        [e for e in events if e["type"] != "ping"],
        {
            "message_start": types.RawMessageStartEvent,
            "content_block_start": types.RawContentBlockStartEvent,
            "content_block_delta": types.RawContentBlockDeltaEvent,
            "content_block_stop": types.RawContentBlockStopEvent,
            "message_delta": types.RawMessageDeltaEvent,
            "message_stop": types.RawMessageStopEvent,
        },
    )
    kinds = [e["type"] for e in events]
    _expect(kinds[0] == "message_start", f"the first event is {kinds[0]}")
    _expect(kinds[-1] == "message_stop", f"the last event is {kinds[-1]}")
    model = (events[0].get("message") or {}).get("model")
    _expect(model == MODEL, f"model {model!r}")
    text = _anthropic_text(events)
    _expect(text == TEXT, f"streamed text {text[:60]!r}")
    deltas = [e for e in events if e["type"] == "message_delta"]
    _expect(len(deltas) == 1, f"{len(deltas)} message_delta events")
    delta = deltas[0]
    stop = (delta.get("delta") or {}).get("stop_reason")
    _expect(stop == "end_turn", f"stop_reason {stop!r}")
    usage = delta.get("usage") or {}
    _expect(usage.get("output_tokens") == canned.COMPLETION_TOKENS, f"usage {usage}")


def responses_stream(reply: Reply) -> None:
    from openai.types import responses

    events = _typed_events(reply)
    _validate(
        events,
        {
            "response.created": responses.ResponseCreatedEvent,
            "response.in_progress": responses.ResponseInProgressEvent,
            "response.output_item.added": responses.ResponseOutputItemAddedEvent,
            "response.content_part.added": responses.ResponseContentPartAddedEvent,
            "response.output_text.delta": responses.ResponseTextDeltaEvent,
            "response.output_text.done": responses.ResponseTextDoneEvent,
            "response.content_part.done": responses.ResponseContentPartDoneEvent,
            "response.output_item.done": responses.ResponseOutputItemDoneEvent,
            "response.completed": responses.ResponseCompletedEvent,
        },
    )
    kinds = [e["type"] for e in events]
    _expect(kinds[0] == "response.created", f"the first event is {kinds[0]}")
    _expect(kinds[-1] == "response.completed", f"the last event is {kinds[-1]}")
    text = _responses_text(events)
    _expect(text == TEXT, f"streamed text {text[:60]!r}")
    response = events[-1].get("response") or {}
    _expect(response.get("status") == "completed", f"status {response.get('status')!r}")
    _expect(response.get("model") == MODEL, f"model {response.get('model')!r}")
    usage = response.get("usage") or {}
    counts = (usage.get("input_tokens"), usage.get("output_tokens"))
    _expect(counts == (canned.PROMPT_TOKENS, canned.COMPLETION_TOKENS), f"usage {usage}")


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
        elif key in ("messages-stream", "responses-stream"):
            parsed = [_json(data.encode()) for data in sse_events(reply.body)]
            objects = [e for e in parsed if isinstance(e, dict)]
            text = _anthropic_text(objects) if key == "messages-stream" else _responses_text(objects)
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
        # Claude Code's and Codex's APIs: the daemon translates both onto the backend's chat completions,
        # so the backend alone answers the same 53-event stream (the njs handler looks only for "stream").
        Scenario(
            "messages-stream",
            "/v1/messages stream",
            True,
            Request(
                "POST",
                "/v1/messages",
                {"model": MODEL, "max_tokens": ANTHROPIC_MAX_TOKENS, "messages": MESSAGES, "stream": True},
                ANTHROPIC_HEADERS,
            ),
            Request("POST", chat, _chat_body(True)),
            anthropic_stream,
            openai_stream,
        ),
        Scenario(
            "responses-stream",
            "/v1/responses stream",
            True,
            Request("POST", "/v1/responses", {"model": MODEL, "input": PROMPT, "stream": True}),
            Request("POST", chat, _chat_body(True)),
            responses_stream,
            openai_stream,
        ),
    ]


SCENARIOS = _scenarios()
BY_KEY = {s.key: s for s in SCENARIOS}


# -- the same requests through the real client libraries ---------------------------------------------------


def sdk_checks(backend_port: int, daemon_port: int) -> dict[str, list[str]]:
    """Each scenario's failures when driven by the ``openai`` SDK (direct: the canned replies must parse), and
    through the daemon by the ``ollama``, ``openai`` and ``anthropic`` SDKs.  An empty list means every check
    passed."""
    import anthropic
    import ollama
    import openai

    direct = openai.OpenAI(base_url=f"http://127.0.0.1:{backend_port}/v1", api_key="bench", max_retries=0)
    proxied = openai.OpenAI(base_url=f"http://127.0.0.1:{daemon_port}/v1", api_key="bench", max_retries=0)
    client = ollama.Client(host=f"http://127.0.0.1:{daemon_port}", timeout=30)
    claude = anthropic.Anthropic(base_url=f"http://127.0.0.1:{daemon_port}", api_key="bench", max_retries=0)
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
    for key in ("chat-stream", "generate-stream", "v1-chat-stream", "messages-stream", "responses-stream"):
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

    def anthropic_stream_text() -> bool:
        with claude.messages.stream(
            model=MODEL, max_tokens=ANTHROPIC_MAX_TOKENS, messages=[{"role": "user", "content": PROMPT}]
        ) as stream:
            message = stream.get_final_message()
        blocks = [block.text for block in message.content if block.type == "text"]
        return blocks == [TEXT] and message.stop_reason == "end_turn" and message.usage.output_tokens == 50

    def responses_stream_text() -> bool:
        with proxied.responses.stream(model=MODEL, input=PROMPT) as stream:
            response = stream.get_final_response()
        return response.output_text == TEXT and response.usage is not None and response.status == "completed"

    attempt("messages-stream", "anthropic SDK", anthropic_stream_text)
    attempt("responses-stream", "openai SDK via daemon", responses_stream_text)
    return failures

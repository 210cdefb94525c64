"""The generate ``context``: the daemon's own reversible encoding of a conversation, and its use."""

from __future__ import annotations

import hashlib
import json
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollama_proxy.errors import BadRequest
from ollama_proxy.schemas import GenerateRequest
from ollama_proxy.translate.chat import generate_to_openai
from ollama_proxy.translate.context import (
    CONTEXT_INT_LIMIT,
    CONTEXT_MAGIC,
    MAX_CONTEXT_BYTES,
    MAX_CONTEXT_INTS,
    context_after,
    decode_context,
    earlier_turns,
    encode_context,
)
from ollama_proxy.translate.dialect import Dialect


def made_by_hand(payload: bytes, encoding: int = 1) -> list[int]:
    """A context built from the module docstring's description alone, so the format is what it says."""
    digest = hashlib.sha256(bytes([encoding]) + len(payload).to_bytes(3, "big") + payload).digest()
    padded = payload + bytes(-len(payload) % 3)
    body = [int.from_bytes(padded[i : i + 3], "big") for i in range(0, len(padded), 3)]
    check = [int.from_bytes(digest[:3], "big"), int.from_bytes(digest[3:6], "big")]
    return [CONTEXT_MAGIC, encoding, len(payload), *check, *body]


def deflated(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def generate(**kw: Any) -> tuple[str, dict[str, Any]]:
    kw.setdefault("prompt", "And in winter?")
    return generate_to_openai(GenerateRequest(model="m", **kw), "backend", Dialect.VLLM)


# Any text a client can send, lone surrogates included (JSON's \ud800 escapes decode to them).
TEXT = st.text(st.characters(exclude_categories=()), max_size=200)
CONVERSATIONS = st.builds(
    lambda system, turns: (
        ([{"role": "system", "content": system}] if system is not None else [])
        + [
            {"role": role, "content": text}
            for prompt, answer in turns
            for role, text in (("user", prompt), ("assistant", answer))
        ]
    ),
    st.none() | TEXT,
    st.lists(st.tuples(TEXT, TEXT), max_size=6),
)


# --- the codec ----------------------------------------------------------------------------------------------


@given(CONVERSATIONS)
def test_a_conversation_round_trips(conversation: list[dict[str, str]]) -> None:
    context = encode_context(conversation)
    assert all(isinstance(value, int) and 0 <= value < CONTEXT_INT_LIMIT for value in context)
    assert decode_context(context) == conversation
    # What a client gets back after JSON is what it sends.
    assert decode_context(json.loads(json.dumps(context))) == conversation


def test_no_conversation_is_an_empty_context() -> None:
    assert encode_context([]) == []
    assert decode_context([]) == []
    assert decode_context(None) == []


def test_empty_strings_are_turns_too() -> None:
    conversation = [{"role": "system", "content": ""}, {"role": "user", "content": ""}]
    assert decode_context(encode_context(conversation)) == conversation


def test_the_format_is_the_documented_one() -> None:
    short = [{"role": "user", "content": "hi"}]
    assert encode_context(short) == made_by_hand(b'[["user","hi"]]')
    # Where DEFLATE is shorter, it is used, and packs about three bytes to an integer.
    long = [{"role": "user", "content": "la " * 5000}]
    data = json.dumps([["user", "la " * 5000]], separators=(",", ":")).encode()
    context = encode_context(long)
    assert context == made_by_hand(deflated(data), encoding=2)
    assert len(context) < len(data) // 100
    assert decode_context(made_by_hand(data)) == long


@given(st.lists(st.integers(min_value=-(2**40), max_value=2**40), min_size=1, max_size=300))
def test_a_list_of_ints_the_daemon_did_not_make_is_a_400(context: list[int]) -> None:
    with pytest.raises(BadRequest, match=r"^invalid context: "):
        decode_context(context)


@pytest.mark.parametrize(
    "context",
    [
        [1, 2, 3],  # the shape of real token ids
        [128000, 9906, 11, 1268, 527, 499, 30],
        [CONTEXT_MAGIC],
        [CONTEXT_MAGIC + 1, 1, 2, 0, 0, 1],
        [-1, 2, 3, 4, 5, 6],
        [CONTEXT_INT_LIMIT, 1, 1, 1, 1, 1],
        [True, 1, 1, 1, 1, 1],
    ],
)
def test_foreign_contexts_are_named_as_such(context: list[int]) -> None:
    with pytest.raises(BadRequest, match=r"^invalid context: it was not made by this server"):
        decode_context(context)


CONTEXT = encode_context(
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (CONTEXT[:-1], "cut short"),
        (CONTEXT[:6], "cut short"),
        (CONTEXT[:4], "not made by this server"),
        ([*CONTEXT, 0], "integers after its end"),
        ([*CONTEXT[:5], CONTEXT[5] ^ 1, *CONTEXT[6:]], "damaged"),
        ([*CONTEXT[:3], CONTEXT[3] ^ 1, *CONTEXT[4:]], "damaged"),
        ([CONTEXT[0], 7, *CONTEXT[2:]], "encoding 7 is not one this server knows"),
        (made_by_hand(b'{"role": "user"}'), "malformed"),
        (made_by_hand(b"not json"), "malformed"),
        (made_by_hand(b'[["tool","42"]]'), "malformed"),
        (made_by_hand(b'[["user","a"],["system","b"]]'), "malformed"),
        (made_by_hand(b'[["user","a","b"]]'), "malformed"),
        (made_by_hand(b'[["user",1]]'), "malformed"),
        (made_by_hand(b"\x00\x01garbage", encoding=2), "does not decompress"),
        (made_by_hand(deflated(b'[["user","a"]]')[:-2], encoding=2), "does not decompress"),
        (made_by_hand(deflated(b'[["user","a"]]') + b"x", encoding=2), "does not decompress"),
    ],
)
def test_damaged_contexts_are_a_clear_400(context: list[int], message: str) -> None:
    with pytest.raises(BadRequest, match=f"^invalid context: .*{message}"):
        decode_context(context)


def test_a_context_with_a_tampered_padding_byte_is_damaged() -> None:
    context = made_by_hand(b'[["user","hi"]]')  # 15 bytes: no padding; 16 need two
    padded = made_by_hand(b'[["user","hi!"]]')
    assert len(padded) == len(context) + 1
    with pytest.raises(BadRequest, match="damaged"):
        decode_context([*padded[:-1], padded[-1] | 1])


@pytest.mark.parametrize(
    "context",
    [
        [CONTEXT_MAGIC, 1, 0, 0, 0, *([0] * MAX_CONTEXT_INTS)],
        # Within the list limit, but more than the limit once decompressed: a deflate bomb.
        made_by_hand(deflated(b'[["user","' + b"a" * MAX_CONTEXT_BYTES + b'"]]'), encoding=2),
    ],
)
def test_an_oversized_context_is_a_400_naming_the_limit(context: list[int]) -> None:
    with pytest.raises(BadRequest, match=f"larger than the {MAX_CONTEXT_BYTES} bytes"):
        decode_context(context)


def test_a_conversation_past_the_limit_loses_its_oldest_exchanges() -> None:
    chunk = "x" * (MAX_CONTEXT_BYTES // 8)
    conversation = [{"role": "system", "content": "Be brief."}]
    for turn in range(6):
        conversation += [
            {"role": "user", "content": f"{turn}{chunk}"},
            {"role": "assistant", "content": f"{turn}{chunk}"},
        ]
    kept = decode_context(encode_context(conversation))
    assert kept[0] == {"role": "system", "content": "Be brief."}
    assert kept[1]["role"] == "user"
    assert kept[1:] == conversation[-(len(kept) - 1) :]
    assert 1 < len(kept) < len(conversation)
    assert (
        len(json.dumps([[t["role"], t["content"]] for t in kept], separators=(",", ":"))) <= MAX_CONTEXT_BYTES
    )


def test_turns_too_large_alone_are_not_carried() -> None:
    huge = "y" * (MAX_CONTEXT_BYTES + 1)
    system = {"role": "system", "content": "s"}
    assert decode_context(
        encode_context([system, {"role": "user", "content": huge}, {"role": "assistant", "content": "a"}])
    ) == [system]
    assert encode_context([{"role": "system", "content": huge}]) == []


@pytest.mark.parametrize(
    "conversation",
    [
        [{"role": "tool", "content": "42"}],
        [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}],
        [{"role": "user"}],
    ],
)
def test_turns_the_daemon_does_not_carry_are_the_callers_mistake(conversation: list[dict[str, str]]) -> None:
    with pytest.raises(ValueError, match="turn"):
        encode_context(conversation)


# --- generate requests --------------------------------------------------------------------------------------

EARLIER = encode_context(
    [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Sunny, 22C."},
    ]
)


def test_the_backend_sees_the_earlier_prompt_and_answer() -> None:
    assert generate(context=EARLIER)[1]["messages"] == [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Sunny, 22C."},
        {"role": "user", "content": "And in winter?"},
    ]


def test_the_requests_system_wins_over_the_earlier_one() -> None:
    messages = generate(context=EARLIER, system="Answer in French.")[1]["messages"]
    assert messages[0] == {"role": "system", "content": "Answer in French."}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]


def test_an_empty_context_is_a_fresh_conversation() -> None:
    assert generate(context=[])[1]["messages"] == [{"role": "user", "content": "And in winter?"}]


def test_a_foreign_context_is_a_400_not_a_500() -> None:
    with pytest.raises(BadRequest, match="not made by this server"):
        generate(context=[128000, 9906, 11])
    # Also where the turns are not sent (fill-in-the-middle), the client is told rather than ignored.
    with pytest.raises(BadRequest, match="not made by this server"):
        generate(context=[1, 2, 3], suffix="}")


def test_raw_mode_still_refuses_a_context() -> None:
    with pytest.raises(BadRequest, match=r"^raw mode does not support template, system, or context$"):
        generate(context=EARLIER, raw=True)


def test_a_fill_in_the_middle_request_sends_no_turns_and_keeps_its_context() -> None:
    request = GenerateRequest(model="m", prompt="def f(", suffix="):", context=EARLIER)
    endpoint, body = generate_to_openai(request, "backend", Dialect.VLLM)
    assert endpoint == "completions"
    assert body["prompt"] == "def f("
    assert context_after(request, "x") == EARLIER


def test_a_conversation_goes_on_over_three_requests() -> None:
    first = GenerateRequest(model="m", prompt="Weather in Paris?", system="You are a weather bot.")
    context = context_after(first, "Sunny, 22C.")
    assert context is not None
    second = GenerateRequest(model="m", prompt="And in winter?", context=context, images=["iVBORw0KGgo="])
    context = context_after(second, "Cold, 3C.")
    assert context is not None
    third = GenerateRequest(model="m", prompt="Thanks!", context=context)
    assert earlier_turns(third) == [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Sunny, 22C."},
        # The image is not carried: only text is.
        {"role": "user", "content": "And in winter?"},
        {"role": "assistant", "content": "Cold, 3C."},
    ]
    assert generate_to_openai(third, "backend", Dialect.VLLM)[1]["messages"][-1] == {
        "role": "user",
        "content": "Thanks!",
    }


def test_raw_replies_carry_no_context() -> None:
    assert context_after(GenerateRequest(model="m", prompt="<|im_start|>", raw=True), "x") is None

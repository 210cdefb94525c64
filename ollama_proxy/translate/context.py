"""The ``context`` of ``/api/generate``, carried without token ids.

Ollama's final generate reply has ``context``: the token ids of the conversation so far, which a client sends
back with its next prompt to go on with it (comfyui-ollama and charla fail without the field).  No
OpenAI-compatible backend hands out token ids, so the daemon's ``context`` is its own reversible encoding of
the conversation as chat turns, which :func:`ollama_proxy.translate.chat.generate_to_openai` puts back before
the new prompt, so the backend sees the earlier prompts and answers.

Format, version 1: a list of integers, each in ``0 .. 2**24 - 1`` (exact in every JSON reader, and within the
32-bit token-id types some clients use)::

    [MAGIC, encoding, length, check_high, check_low, *payload]

* ``MAGIC`` (:data:`CONTEXT_MAGIC`) says the daemon made it; ``encoding`` is 1 for UTF-8 JSON, 2 for the same
  compressed with raw DEFLATE (whichever is shorter); ``length`` is the payload's size in bytes.
* ``check_high``/``check_low`` are the first 48 bits of SHA-256 over the encoding, length and payload, so a
  list of ints the daemon did not make (another server's token ids, a typo, a cut-off copy) is refused
  rather than read.  It is a checksum, not a signature: a client could forge a context, but it can send any
  conversation to ``/api/chat`` anyway, so nothing is gained by it.
* ``payload`` packs the bytes three to an integer, big-endian, the last one padded with zero bytes.
* The JSON is ``[[role, content], ...]``: an optional ``system`` turn first, then ``user`` and ``assistant``
  turns.  Only text is kept: a prompt's images and an answer's reasoning are not carried.

Policies:

* ``[]`` (or no ``context``) is no earlier conversation, and an empty conversation encodes as ``[]``.
* At most :data:`MAX_CONTEXT_BYTES` of JSON.  A longer context sent in is a 400; a conversation that has
  grown past it is cut on the way out by dropping its oldest exchanges (the system turn stays), so every
  context the daemon hands out is one it accepts back.  A system turn that alone is too large is dropped too.
* Anything else that is not a context this format describes is a 400 saying so, never a 500.
* The request's ``system`` wins over the earlier one: a client that names a system prompt means it; one that
  sends none goes on with the conversation's.
* ``raw`` requests get no context (Ollama gives none, and refuses ``raw`` with ``context``).  A fill-in-the-
  middle (``suffix``) request's prompt is not a turn: the backend is sent no earlier turns and the context
  comes back as it went in.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Final

from ollama_proxy.errors import BadRequest
from ollama_proxy.schemas import GenerateRequest

#: The first integer of every context the daemon makes ("opx").
CONTEXT_MAGIC: Final = 0x6F7078
CONTEXT_HEADER: Final = 5
#: The most conversation one context carries, in bytes of its UTF-8 JSON.
MAX_CONTEXT_BYTES: Final = 1024 * 1024
#: The longest context list accepted, header included.
MAX_CONTEXT_INTS: Final = CONTEXT_HEADER + -(-MAX_CONTEXT_BYTES // 3)
#: Every integer of a context is below this.
CONTEXT_INT_LIMIT: Final = 1 << 24

_JSON: Final = 1
_DEFLATE: Final = 2
_ROLES: Final = frozenset({"system", "user", "assistant"})

_FOREIGN: Final = (
    "invalid context: it was not made by this server "
    "(send back the context of this server's last reply, or none)"
)
_TOO_LARGE: Final = (
    f"invalid context: larger than the {MAX_CONTEXT_BYTES} bytes of conversation this server carries; "
    "start a new conversation (send no context)"
)


def _check(encoding: int, payload: bytes) -> tuple[int, int]:
    digest = hashlib.sha256(bytes([encoding]) + len(payload).to_bytes(3, "big") + payload).digest()
    return int.from_bytes(digest[:3], "big"), int.from_bytes(digest[3:6], "big")


def _pack(payload: bytes) -> list[int]:
    """Three bytes to an integer, by slicing into a 4-byte-per-int buffer (no Python loop per byte)."""
    count = -(-len(payload) // 3)
    padded = payload + bytes(3 * count - len(payload))
    buffer = bytearray(4 * count)
    for offset in range(3):
        buffer[offset + 1 :: 4] = padded[offset::3]
    return list(struct.unpack(f">{count}I", buffer))


def _unpack(ints: Sequence[int]) -> bytes:
    buffer = bytearray(struct.pack(f">{len(ints)}I", *ints))
    del buffer[::4]
    return bytes(buffer)


def _turns_json(turns: Sequence[tuple[str, str]]) -> bytes:
    # surrogatepass: a client's JSON may hold a lone surrogate escape, and it must come back as it went in.
    text = json.dumps([list(turn) for turn in turns], ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "surrogatepass")


def _checked_turns(messages: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
    turns = []
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES or not isinstance(content, str):
            raise ValueError(f"message {index} is not a system, user or assistant turn with text content")
        if role == "system" and index != 0:
            raise ValueError("only the first turn may be the system's")
        turns.append((role, content))
    return turns


def _fitting(turns: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], bytes]:
    """Drop the oldest exchanges until the JSON fits, and never leave an answer without its prompt."""
    data = _turns_json(turns)
    while len(data) > MAX_CONTEXT_BYTES:
        first = 1 if turns and turns[0][0] == "system" else 0
        if first == len(turns):
            turns = []
        else:
            del turns[first]
            while first < len(turns) and turns[first][0] == "assistant":
                del turns[first]
        data = _turns_json(turns)
    return turns, data


def encode_context(messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The conversation (``{"role", "content"}`` turns) as a context, cut to fit (module docstring).

    Raises ValueError for turns that are not the daemon's to carry (a ``tool`` role, a late system turn):
    those are the caller's mistake, not the client's.
    """
    turns, data = _fitting(_checked_turns(messages))
    if not turns:
        return []
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    compressed = packer.compress(data) + packer.flush()
    encoding, payload = (_DEFLATE, compressed) if len(compressed) < len(data) else (_JSON, data)
    high, low = _check(encoding, payload)
    return [CONTEXT_MAGIC, encoding, len(payload), high, low, *_pack(payload)]


def _inflate(payload: bytes) -> bytes:
    unpacker = zlib.decompressobj(-15)
    try:
        data = unpacker.decompress(payload, MAX_CONTEXT_BYTES + 1)
    except zlib.error:
        raise BadRequest("invalid context: it is damaged (its conversation does not decompress)") from None
    if len(data) > MAX_CONTEXT_BYTES:
        raise BadRequest(_TOO_LARGE)
    if not unpacker.eof or unpacker.unused_data:
        raise BadRequest("invalid context: it is damaged (its conversation does not decompress)")
    return data


def _conversation(data: bytes) -> list[dict[str, str]]:
    malformed = BadRequest("invalid context: its conversation is malformed")
    try:
        turns = json.loads(data.decode("utf-8", "surrogatepass"))
    except ValueError:
        raise malformed from None
    if not isinstance(turns, list):
        raise malformed
    out = []
    for index, turn in enumerate(turns):
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(part, str) for part in turn)):
            raise malformed
        role, content = turn
        if role not in _ROLES or (role == "system" and index != 0):
            raise malformed
        out.append({"role": role, "content": content})
    return out


def decode_context(context: Sequence[int] | None) -> list[dict[str, str]]:
    """The conversation a context carries, ``[]`` for none; a 400 (BadRequest) for anything the daemon did
    not make: foreign, cut short, damaged or too large."""
    if not context:
        return []
    if len(context) > MAX_CONTEXT_INTS:
        raise BadRequest(_TOO_LARGE)
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in context):
        raise BadRequest(_FOREIGN)
    if min(context) < 0 or max(context) >= CONTEXT_INT_LIMIT:
        raise BadRequest(_FOREIGN)
    if len(context) < CONTEXT_HEADER or context[0] != CONTEXT_MAGIC:
        raise BadRequest(_FOREIGN)
    encoding, length, high, low = context[1:CONTEXT_HEADER]
    if encoding not in (_JSON, _DEFLATE):
        raise BadRequest(f"invalid context: encoding {encoding} is not one this server knows")
    expected = CONTEXT_HEADER + -(-length // 3)
    if len(context) < expected:
        raise BadRequest("invalid context: it is cut short (send back the whole list)")
    if len(context) > expected:
        raise BadRequest("invalid context: it has integers after its end")
    packed = _unpack(context[CONTEXT_HEADER:])
    payload, padding = packed[:length], packed[length:]
    if any(padding) or _check(encoding, payload) != (high, low):
        raise BadRequest("invalid context: it is damaged (its checksum does not match)")
    data = _inflate(payload) if encoding == _DEFLATE else payload
    if len(data) > MAX_CONTEXT_BYTES:
        raise BadRequest(_TOO_LARGE)
    return _conversation(data)


def earlier_turns(request: GenerateRequest) -> list[dict[str, str]]:
    """What the backend is sent before a generate request's prompt: the system turn (the request's own
    winning over the conversation's), then the earlier user and assistant turns."""
    history = decode_context(request.context)
    system = request.system
    if history and history[0]["role"] == "system":
        system = system or history[0]["content"]
        history = history[1:]
    return ([{"role": "system", "content": system}] if system else []) + history


def context_after(request: GenerateRequest, response: str) -> list[int] | None:
    """The ``context`` of a generate request's final reply, given the whole answer; None (no field) in raw
    mode.  A fill-in-the-middle request hands back the context it came with."""
    if request.raw:
        return None
    turns = earlier_turns(request)
    if request.suffix:
        return list(request.context or [])
    turns += [{"role": "user", "content": request.prompt}, {"role": "assistant", "content": response}]
    return encode_context(turns)

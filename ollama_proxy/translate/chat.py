"""Ollama ``/api/chat`` and ``/api/generate`` requests as OpenAI request bodies.

The backends differ only in a handful of extras (sampling knobs, how to ask for reasoning, where an old
assistant turn keeps its reasoning), so one mapping serves all of them with a :class:`Dialect` switch.
Nothing is added that the client did not ask for: Ollama's defaults (temperature 0.8, top_k 40, ...) are
Ollama's, and injecting them would change what every backend does by default.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final

from ollama_proxy.errors import BadRequest
from ollama_proxy.schemas import ChatRequest, Format, GenerateRequest, Message, Think, ToolCall
from ollama_proxy.translate.context import earlier_turns
from ollama_proxy.translate.dialect import Dialect
from ollama_proxy.translate.families import FillInTheMiddle
from ollama_proxy.translate.fields import finite_number, json_kind, whole_number

CHAT_ENDPOINT: Final = "chat/completions"
COMPLETIONS_ENDPOINT: Final = "completions"

# ---------------------------------------------------------------------------------------------------------
# Call ids
# ---------------------------------------------------------------------------------------------------------

_ID_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789"


def synthesize_call_id(*seed: object) -> str:
    """An id in Ollama's own shape (``call_`` + 8 of [a-z0-9]) for calls that arrived without one.

    It is a hash of where the call sits in the conversation, not a random draw: the same history sent again
    on the next turn gets the same ids, so backend prefix caches keep hitting and tests stay exact.
    """
    digest = hashlib.sha256("\x1f".join(map(str, seed)).encode()).digest()
    number = int.from_bytes(digest[:8], "big")
    chars = []
    for _ in range(8):
        number, rest = divmod(number, len(_ID_ALPHABET))
        chars.append(_ID_ALPHABET[rest])
    return "call_" + "".join(chars)


# ---------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------

_BASE64: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")
# 16 base64 characters decode to 12 bytes, enough for every signature below (WEBP needs bytes 8..11).
_SNIFF_CHARS: Final = 16
# OpenAI accepts only png/jpeg/gif/webp and checks the declared type; vLLM, llama.cpp and OpenRouter's
# providers decode with an image library that sniffs the bytes itself.  So an unrecognised image is labelled
# with the most common photo type: it keeps the request valid everywhere and the decoder has the last word.
FALLBACK_IMAGE_MIME: Final = "image/jpeg"


def _sniff_mime(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"GIF8"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_data_url(image: str, where: str) -> str:
    """An Ollama image (bare base64) as the data URL OpenAI-style backends want.

    The whole string is checked against the base64 alphabet (a regex pass, fast even for megabytes), but only
    its first characters are decoded, for the type sniff.  A ``data:...;base64,`` prefix, line breaks and
    missing padding are tolerated; Go's Ollama is stricter, but rejecting them helps nobody.
    """
    declared: str | None = None
    text = image
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or ";base64" not in header:
            raise BadRequest(f"invalid image in {where}: only base64 data is supported")
        declared = header[len("data:") :].split(";", 1)[0].strip().lower() or None
    if not _BASE64.fullmatch(text):
        compact = "".join(text.split())
        if compact == text or not _BASE64.fullmatch(compact):
            raise BadRequest(f"invalid image in {where}: not valid base64")
        text = compact
    if not text:
        raise BadRequest(f"invalid image in {where}: empty")
    remainder = len(text) % 4
    if remainder:
        if remainder == 1 or text.endswith("="):
            raise BadRequest(f"invalid image in {where}: not valid base64")
        text += "=" * (4 - remainder)
    try:
        head = binascii.a2b_base64(text[:_SNIFF_CHARS])
    except binascii.Error:
        raise BadRequest(f"invalid image in {where}: not valid base64") from None
    mime = _sniff_mime(head)
    if mime is None:
        mime = declared if declared and declared.startswith("image/") else FALLBACK_IMAGE_MIME
    return f"data:{mime};base64,{text}"


def _content(text: str, images: Sequence[str] | None, where: str) -> str | list[dict[str, Any]]:
    """Plain text, or parts with the images first: Ollama itself puts image tokens before the text."""
    if not images:
        return text
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": image_data_url(image, f"{where}[{j}]")}}
        for j, image in enumerate(images)
    ]
    if text:
        parts.append({"type": "text", "text": text})
    return parts


# ---------------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------------

# Where an earlier assistant turn's reasoning goes back in.  OpenAI has no such field and rejects unknown
# ones.
REASONING_FIELD: Final[Mapping[Dialect, str | None]] = {
    Dialect.VLLM: "reasoning_content",
    Dialect.LLAMACPP: "reasoning_content",
    Dialect.OPENROUTER: "reasoning",
    Dialect.OPENAI: None,
}


def _assistant_calls(index: int, calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id or synthesize_call_id(index, j, call.function.name),
            "type": "function",
            "function": {
                "name": call.function.name,
                "arguments": json.dumps(call.function.arguments, ensure_ascii=False),
            },
        }
        for j, call in enumerate(calls)
    ]


def _answer_id(unanswered: list[tuple[str, str]], message: Message, index: int) -> str:
    """The call a tool result answers.

    The ollama SDK strips ``tool_call_id``, so usually only the tool name is left: take the first
    unanswered call of that name from the last assistant turn, else the next unanswered call of that turn,
    and only then invent an id (the backend will likely object, as it should).
    """
    if message.tool_call_id:
        for k, (call_id, _name) in enumerate(unanswered):
            if call_id == message.tool_call_id:
                del unanswered[k]
                break
        return message.tool_call_id
    if message.tool_name:
        for k, (call_id, name) in enumerate(unanswered):
            if name == message.tool_name:
                del unanswered[k]
                return call_id
    if unanswered:
        return unanswered.pop(0)[0]
    return synthesize_call_id(index, "tool", message.tool_name or "")


def _messages(messages: Sequence[Message], dialect: Dialect) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        role = message.role.lower()
        item: dict[str, Any] = {"role": role}
        text = message.content if message.content is not None else ""
        if role == "assistant":
            calls = _assistant_calls(i, message.tool_calls or [])
            unanswered = [(call["id"], call["function"]["name"]) for call in calls]
            if calls and message.content is None and not message.images:
                item["content"] = None
            else:
                item["content"] = _content(text, message.images, f"messages[{i}].images")
            field = REASONING_FIELD[dialect]
            if field and message.thinking:
                item[field] = message.thinking
            if calls:
                item["tool_calls"] = calls
        elif role == "tool":
            item["tool_call_id"] = _answer_id(unanswered, message, i)
            item["content"] = _content(text, message.images, f"messages[{i}].images")
        else:
            item["content"] = _content(text, message.images, f"messages[{i}].images")
        out.append(item)
    return out


# ---------------------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------------------


def _bad_option(key: str, expected: str, value: object) -> BadRequest:
    return BadRequest(f"invalid value for option '{key}': expected {expected}, got {json_kind(value)}")


def _number(key: str, value: object) -> float | int:
    number = finite_number(value)
    if number is None:
        raise _bad_option(key, "a number", value)
    return number


def _integer(key: str, value: object) -> int:
    number = whole_number(value)
    if number is None:
        raise _bad_option(key, "an integer", value)
    return number


def _stop(key: str, value: object) -> list[str]:
    if isinstance(value, str):
        items: list[object] = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise _bad_option(key, "a string or an array of strings", value)
    if not all(isinstance(item, str) for item in items):
        raise _bad_option(key, "an array of strings", value)
    # An empty stop string would end generation before it starts on some backends and is rejected by others.
    return [item for item in items if isinstance(item, str) and item]


_ALL: Final = tuple(Dialect)
_OPEN: Final = (Dialect.VLLM, Dialect.OPENROUTER, Dialect.LLAMACPP)
_LLAMACPP: Final = (Dialect.LLAMACPP,)

# Ollama option -> (check, backends that take it, the backend's key).  Keys not listed (num_ctx, num_gpu,
# num_thread, use_mmap, legacy ones, typos) are ignored, never rejected, as Ollama does.
_SIMPLE_OPTIONS: Final[Mapping[str, tuple[Callable[[str, object], object], Mapping[Dialect, str]]]] = {
    "temperature": (_number, dict.fromkeys(_ALL, "temperature")),
    "top_p": (_number, dict.fromkeys(_ALL, "top_p")),
    "presence_penalty": (_number, dict.fromkeys(_ALL, "presence_penalty")),
    "frequency_penalty": (_number, dict.fromkeys(_ALL, "frequency_penalty")),
    "min_p": (_number, dict.fromkeys(_OPEN, "min_p")),
    "repeat_penalty": (
        _number,
        {
            Dialect.VLLM: "repetition_penalty",
            Dialect.OPENROUTER: "repetition_penalty",
            Dialect.LLAMACPP: "repeat_penalty",
        },
    ),
    "typical_p": (_number, dict.fromkeys(_LLAMACPP, "typical_p")),
    "repeat_last_n": (_integer, dict.fromkeys(_LLAMACPP, "repeat_last_n")),
    "num_keep": (_integer, dict.fromkeys(_LLAMACPP, "n_keep")),
    "mirostat": (_integer, dict.fromkeys(_LLAMACPP, "mirostat")),
    "mirostat_tau": (_number, dict.fromkeys(_LLAMACPP, "mirostat_tau")),
    "mirostat_eta": (_number, dict.fromkeys(_LLAMACPP, "mirostat_eta")),
}

# OpenAI's chat endpoint rejects ``stop`` lists longer than this.
OPENAI_MAX_STOP: Final = 4


def _options(options: Mapping[str, Any], dialect: Dialect, endpoint: str) -> dict[str, Any]:
    """Sampling options.  ``null`` values count as unset: LangChain and others send them for "default"."""
    out: dict[str, Any] = {}
    for key, (check, targets) in _SIMPLE_OPTIONS.items():
        value = options.get(key)
        if value is None:
            continue
        checked = check(key, value)
        if dialect in targets:
            out[targets[dialect]] = checked

    top_k = options.get("top_k")
    if top_k is not None:
        top_k = _integer("top_k", top_k)
        if dialect in _OPEN:
            # Ollama and llama.cpp read top_k <= 0 as "off"; vLLM spells off as -1 (older releases reject 0).
            out["top_k"] = -1 if dialect is Dialect.VLLM and top_k <= 0 else top_k

    seed = options.get("seed")
    if seed is not None:
        seed = _integer("seed", seed)
        # Ollama's seed -1 means "random"; forwarding it would pin a fixed seed on the backend.
        if seed >= 0:
            out["seed"] = seed

    num_predict = options.get("num_predict")
    if num_predict is not None:
        num_predict = _integer("num_predict", num_predict)
        # -1 (unlimited), -2 (fill the context) and 0 (Ollama's runner treats it as no limit) have no
        # OpenAI spelling other than leaving the field out.
        if num_predict > 0:
            # OpenAI deprecated max_tokens on chat and its reasoning models reject it; the legacy
            # completions endpoint only knows max_tokens.
            key = (
                "max_completion_tokens"
                if dialect is Dialect.OPENAI and endpoint == CHAT_ENDPOINT
                else "max_tokens"
            )
            out[key] = num_predict

    stop = options.get("stop")
    if stop is not None:
        stops = _stop("stop", stop)
        if dialect is Dialect.OPENAI:
            stops = stops[:OPENAI_MAX_STOP]
        if stops:
            out["stop"] = stops
    return out


# ---------------------------------------------------------------------------------------------------------
# format, think, logprobs
# ---------------------------------------------------------------------------------------------------------


def _format(value: Format) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if value == "json":
        return {"response_format": {"type": "json_object"}}
    if isinstance(value, dict):
        # OpenAI requires a name; strict mode would reject the many schemas Ollama clients send that are not
        # in its strict subset (optional properties, no additionalProperties:false).
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": value, "strict": False},
            }
        }
    raise BadRequest(
        f"invalid format: {json.dumps(value, ensure_ascii=False)}; "
        'expected "json" or a valid JSON Schema object'
    )


_THINK_LEVELS: Final = ("high", "medium", "low", "max")


def _think_effort(think: Think) -> str | bool | None:
    """None (not asked), False (off), or an effort every backend understands ("max" becomes "high")."""
    if think is None or think is False:
        return think
    if think is True:
        return "medium"
    if think in _THINK_LEVELS:
        return "high" if think == "max" else think
    raise BadRequest(
        f"invalid think value: {json.dumps(think, ensure_ascii=False)} "
        '(must be "high", "medium", "low", "max", true, or false)'
    )


def effective_think(think: Think, capabilities: Collection[str]) -> Think:
    """The ``think`` a request means: since Ollama 0.12.4 a thinking-capable model asked nothing thinks, as
    if asked ``true``; on any other model an absent ``think`` stays absent (the backend's default)."""
    if think is None and "thinking" in capabilities:
        return True
    return think


def think_fields(think: Think, dialect: Dialect) -> dict[str, Any]:
    effort = _think_effort(think)
    if effort is None:
        return {}
    if effort is False:
        if dialect is Dialect.OPENROUTER:
            return {"reasoning": {"enabled": False}}
        if dialect is Dialect.OPENAI:
            # OpenAI has no reasoning_effort that means "off" on every model: "minimal" is gpt-5's alone
            # (o3 and o4-mini refuse it), and gpt-4o and gpt-4.1 refuse the field, where Ollama accepts
            # think:false for a model that cannot think.  OpenAI never returns the reasoning text, so
            # leaving the model's default changes its cost, not the reply.
            return {}
        return {"chat_template_kwargs": {"enable_thinking": False}}
    if dialect is Dialect.OPENROUTER:
        return {"reasoning": {"effort": effort}}
    if dialect is Dialect.OPENAI:
        return {"reasoning_effort": effort}
    # Qwen3/DeepSeek-style templates switch on enable_thinking; gpt-oss templates read reasoning_effort.
    return {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": effort}


MAX_TOP_LOGPROBS: Final = 20


def _logprobs(logprobs: bool | None, top_logprobs: int | None, endpoint: str) -> dict[str, Any]:
    if top_logprobs is not None and not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise BadRequest(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    if not logprobs:
        return {}
    if endpoint == COMPLETIONS_ENDPOINT:
        # The legacy endpoint's logprobs is the number of alternatives, not a switch.
        return {"logprobs": top_logprobs or 0}
    out: dict[str, Any] = {"logprobs": True}
    if top_logprobs is not None:
        out["top_logprobs"] = top_logprobs
    return out


def _stream(stream: bool) -> dict[str, Any]:
    # Without include_usage the backend never reports token counts, and the final chunk's metrics need them.
    if stream:
        return {"stream": True, "stream_options": {"include_usage": True}}
    return {"stream": False}


#: The backends whose whole (non-streaming) replies are assembled from their stream, as Ollama assembles its
#: own from its runner's: only a stream shows when the first token came, which is what
#: ``prompt_eval_duration`` measures, and vLLM and OpenRouter report no timings of their own.  llama.cpp
#: reports its own (``timings``), and OpenAI refuses to stream some models to unverified organisations, so
#: those are asked for a whole reply.
WHOLE_FROM_STREAM: Final = frozenset({Dialect.VLLM, Dialect.OPENROUTER})


def as_stream(body: Mapping[str, Any]) -> dict[str, Any]:
    """The same request, asked for as a stream (see :data:`WHOLE_FROM_STREAM`)."""
    return {**body, **_stream(True)}


# ---------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------


def chat_to_openai(request: ChatRequest, backend_model: str, dialect: Dialect) -> dict[str, Any]:
    """The ``/v1/chat/completions`` body for an ``/api/chat`` request (``backend_model`` already resolved)."""
    body: dict[str, Any] = {"model": backend_model, "messages": _messages(request.messages, dialect)}
    if request.tools:
        body["tools"] = list(request.tools)
    body.update(_format(request.format))
    body.update(_options(request.options, dialect, CHAT_ENDPOINT))
    body.update(think_fields(request.think, dialect))
    body.update(_logprobs(request.logprobs, request.top_logprobs, CHAT_ENDPOINT))
    body.update(_stream(request.stream))
    return body


def generate_to_openai(
    request: GenerateRequest,
    backend_model: str,
    dialect: Dialect,
    *,
    fim: FillInTheMiddle | None = None,
) -> tuple[str, dict[str, Any]]:
    """The endpoint (relative to the backend's ``/v1/``) and body for an ``/api/generate`` request.

    A templated prompt becomes a chat so the backend applies the model's chat template, as Ollama would: the
    system prompt, the earlier turns the ``context`` carries (see :mod:`ollama_proxy.translate.context`),
    then the prompt.  ``raw`` and ``suffix`` (fill-in-the-middle) need the prompt untouched, which only the
    legacy completions endpoint offers; there ``think`` has no meaning and is only validated, and a context
    only checked.

    Fill-in-the-middle: vLLM refuses ``suffix`` and llama.cpp's server ignores it, so for them the prompt is
    written here with the model's own tokens (``fim``, from its family) and sent as a plain prompt; other
    backends, and models whose tokens are not known, get ``suffix`` as OpenAI's API defines it.  In ``raw``
    mode a ``suffix`` is ignored, as Ollama ignores it.
    """
    if request.raw and (request.template or request.system or request.context):
        raise BadRequest("raw mode does not support template, system, or context")
    earlier = earlier_turns(request)
    think = think_fields(request.think, dialect)
    if request.raw or request.suffix:
        if request.images:
            raise BadRequest("images are not supported with raw or suffix")
        body: dict[str, Any] = {"model": backend_model, "prompt": request.prompt}
        if request.suffix and not request.raw:
            if fim is not None and dialect in _WRITES_FIM_PROMPT:
                body["prompt"] = fim.prompt(request.prompt, request.suffix)
            else:
                body["suffix"] = request.suffix
        body.update(_format(request.format))
        body.update(_options(request.options, dialect, COMPLETIONS_ENDPOINT))
        body.update(_logprobs(request.logprobs, request.top_logprobs, COMPLETIONS_ENDPOINT))
        body.update(_stream(request.stream))
        return COMPLETIONS_ENDPOINT, body

    messages: list[dict[str, Any]] = [dict(turn) for turn in earlier]
    messages.append({"role": "user", "content": _content(request.prompt, request.images, "images")})
    body = {"model": backend_model, "messages": messages}
    body.update(_format(request.format))
    body.update(_options(request.options, dialect, CHAT_ENDPOINT))
    body.update(think)
    body.update(_logprobs(request.logprobs, request.top_logprobs, CHAT_ENDPOINT))
    body.update(_stream(request.stream))
    return CHAT_ENDPOINT, body


# The backends whose completions endpoint takes no ``suffix`` (vLLM refuses it, llama.cpp ignores it).
_WRITES_FIM_PROMPT: Final = frozenset({Dialect.VLLM, Dialect.LLAMACPP})

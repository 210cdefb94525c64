"""The Anthropic Messages API (``POST /v1/messages``) on top of a backend's OpenAI ``/chat/completions``.

Claude Code and the ``anthropic`` SDKs speak it.  Requests become OpenAI chat bodies, whole replies become
Anthropic ``Message`` objects, and stream chunks become Anthropic's named SSE events.  Everything here is a
pure function of its arguments (or a small translator object fed one event at a time).

Policies decided here, because the two APIs do not line up one to one:

* **System prompt.**  The top-level ``system`` (a string or text blocks) and every ``role: "system"``
  message found inside ``messages`` (Claude Code sends one after the user turn) become one leading system
  message, their texts in request order joined with a blank line: many chat templates refuse a system
  message anywhere but first.  Claude Code's ``x-anthropic-billing-header: ...`` line is dropped: it
  changes on every request, and at the very start of the prompt it would defeat every backend prefix
  cache for the whole 50 KB prompt that follows.
* **Turns.**  Consecutive turns of the same role are merged, as Anthropic itself does.  A text-only turn
  becomes one string (blocks joined with a blank line); a turn with images keeps its parts in order.
* **Tool results** become ``role: "tool"`` messages, in block order, ahead of the rest of their user
  turn, so they directly follow the assistant turn that made the calls.  Most backends take only text in
  a tool message, so images in a tool result move to the user message that follows, introduced by a line
  naming the call.  ``is_error: true`` prefixes the text with ``Error: ``.
* **Content a backend cannot take**: PDF and Files-API documents or images become a short bracketed
  placeholder text, so a long agent session goes on (and the model can say what it could not read)
  instead of failing on every later turn.  Blocks only Anthropic's own servers produce
  (``server_tool_use``, ``web_search_tool_result`` ...) are dropped from history; ``redacted_thinking``
  too (it is encrypted).  Blocks of an unknown type are refused with a 400.
* **Reasoning in history** goes back in the dialect's reasoning field (none on OpenAI, where it is
  dropped).
* **thinking**: ``enabled`` becomes the dialect's reasoning switch with an effort from ``budget_tokens``
  (below 4096 low, below 16384 medium, else high; no budget: medium); ``disabled`` switches reasoning
  off as Ollama's ``think: false`` does; ``adaptive``, ``between_tools`` and unknown kinds leave the
  model's default.  ``display`` is ignored: thinking is always returned.
* **output_config**: ``effort`` is ignored.  It governs all of Claude's output, not only thinking, and
  Claude Code sends it on every request next to adaptive thinking: turned into a reasoning switch it would
  switch thinking on where the client never asked, and OpenAI's non-reasoning models refuse the field.  A
  ``format`` of type ``json_schema`` becomes a non-strict ``response_format``.
* **max_tokens** is required, as Anthropic requires it, and must be a positive integer: Anthropic's
  ``0`` (pre-warm the prompt cache) has no OpenAI equivalent.  When it would not fit in the model's
  context window together with the prompt (by the estimate of ``count_tokens``), it is left out
  (:func:`fit_context`): Claude Code asks for 32000 whatever the model, vLLM refuses a prompt and
  ``max_tokens`` larger than the window, and without the field every backend generates until the window
  is full, which is what such a client means.
* **Tools**: custom tools are forwarded (``defer_loading`` ones too: nothing here can load them later);
  Anthropic's server and schema-less tools (``web_search_20250305``, ``bash_20250124`` ...) cannot run on
  the backend and are dropped, their names returned for the caller to log.  ``strict`` is not forwarded:
  OpenAI's strict mode rejects many schemas Anthropic accepts.  A ``tool_choice`` naming a dropped tool is
  left out; one naming no tool at all is a 400.  Without forwarded tools, ``tool_choice`` and
  ``parallel_tool_calls`` are left out (OpenAI rejects them alone).
* **Prefill**: a final assistant turn of text is continued on vLLM (``continue_final_message``);
  llama.cpp and OpenRouter's providers continue it by themselves; OpenAI cannot.
* **Replies.**  Blocks come in the order thinking, text, tool calls.  Thinking blocks carry an empty
  ``signature``: the SDKs need a string, nothing here can sign, and no ``signature_delta`` is sent because
  no client needs one.  Tool-call ids are the backend's, or ``toolu_`` plus a hash of the message id and
  position.  Tool-call arguments that are not a JSON object are a backend failure, as for Ollama replies.
* **stop_reason**: ``stop`` -> ``end_turn``, or ``tool_use`` if the reply holds a tool call (some
  backends say ``stop`` after calls); ``length`` -> ``max_tokens``; ``tool_calls`` -> ``tool_use``;
  ``content_filter`` (and an OpenAI ``refusal``) -> ``refusal``.  OpenAI does not say which stop sequence
  matched; vLLM does (its ``stop_reason`` string), and then the reply says ``stop_sequence`` with it.
* **Usage**: ``input_tokens`` excludes the backend's cached prompt tokens, which are reported as
  ``cache_read_input_tokens``, as Anthropic counts them.  ``message_start`` says 0 for both counts
  (nothing is known before the end); the closing ``message_delta`` always carries ``usage``, since the
  Python SDK's accumulator breaks without it.
* **Stream framing**: every event has its ``event:`` line (the SDKs drop events without one); a ``ping``
  follows ``message_start``.  Tool arguments are forwarded fragment by fragment as ``input_json_delta``
  and checked as a whole when their block closes; a stream that breaks that check, or that continues a
  tool call after the next block began, ends with an ``error`` event.
* **count_tokens** without a backend tokenizer: characters / 4 over the system prompt, the messages'
  text and the tools' JSON, plus 1600 per image (about what Anthropic charges for a large image), at
  least 1.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from ollama_proxy.errors import BackendError, BadRequest
from ollama_proxy.json_codec import compact_json
from ollama_proxy.translate.chat import OPENAI_MAX_STOP, REASONING_FIELD, image_data_url, think_fields
from ollama_proxy.translate.dialect import Dialect
from ollama_proxy.translate.fields import finite_number, json_kind, whole_number
from ollama_proxy.translate.replies import (
    Instant,
    StreamState,
    ThinkTagSplitter,
    completion_choice,
    error_text,
    first_choice,
    reasoning,
    tool_arguments,
)
from ollama_proxy.wire.anthropic import sse_event, stream_error_event

# Only a string is required by the SDKs; nothing here can produce a real signature.
THINKING_SIGNATURE: Final = ""

# The budget_tokens bounds of the effort levels (Anthropic's minimum budget is 1024).
_LOW_BUDGET_BELOW: Final = 4096
_MEDIUM_BUDGET_BELOW: Final = 16384

_BILLING_HEADER: Final = "x-anthropic-billing-header:"
_BLOCK_SEPARATOR: Final = "\n\n"
_ERROR_PREFIX: Final = "Error: "

# Blocks that only Anthropic's servers produce (results of its hosted tools): a backend model cannot make
# sense of them, and no client can ask for them to be run again.
_SERVER_BLOCKS: Final = frozenset(
    {
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    }
)

_TOP_K_DIALECTS: Final = (Dialect.VLLM, Dialect.OPENROUTER, Dialect.LLAMACPP)


# ---------------------------------------------------------------------------------------------------------
# Reading untrusted request JSON
# ---------------------------------------------------------------------------------------------------------


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _expected(where: str, expected: str, value: object) -> BadRequest:
    return BadRequest(f"{where}: expected {expected}, got {json_kind(value)}")


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _expected(where, "an object", value)
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _expected(where, "a string", value)
    return value


def _array(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _expected(where, "an array", value)
    return value


def _number(value: object, where: str) -> float | int:
    number = finite_number(value)
    if number is None:
        raise _expected(where, "a number", value)
    return number


def _integer(value: object, where: str) -> int:
    number = whole_number(value)
    if number is None:
        raise _expected(where, "an integer", value)
    return number


def _positive_integer(value: object, where: str) -> int:
    number = _integer(value, where)
    if number < 1:
        raise BadRequest(f"{where}: must be a positive integer, got {number}")
    return number


# ---------------------------------------------------------------------------------------------------------
# System prompt
# ---------------------------------------------------------------------------------------------------------


def _without_billing_header(text: str) -> str:
    if not text.startswith(_BILLING_HEADER):
        return text
    return text.partition("\n")[2].lstrip("\n")


def _system_texts(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        texts = []
        for j, block in enumerate(value):
            block = _object(block, f"{where}.{j}")
            if block.get("type") != "text":
                raise BadRequest(f"{where}.{j}: a system prompt takes only text blocks")
            texts.append(_string(block.get("text"), f"{where}.{j}.text"))
    else:
        raise _expected(where, "a string or an array of text blocks", value)
    return [text for text in map(_without_billing_header, texts) if text]


# ---------------------------------------------------------------------------------------------------------
# Content blocks
# ---------------------------------------------------------------------------------------------------------

Part = dict[str, Any]


def _text_part(text: str) -> Part:
    return {"type": "text", "text": text}


def _image_part(block: Mapping[str, Any], where: str) -> Part:
    source = _object(block.get("source"), f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        data = _string(source.get("data"), f"{where}.source.data")
        media_type = source.get("media_type")
        # image_data_url sniffs the real type from the bytes; the declared one only labels what it cannot.
        if isinstance(media_type, str) and media_type.startswith("image/") and "," not in media_type:
            data = f"data:{media_type};base64,{data}"
        url = image_data_url(data, f"{where}.source.data")
    elif kind == "url":
        url = _string(source.get("url"), f"{where}.source.url")
    elif kind == "file":
        return _text_part("[image omitted: files uploaded to Anthropic's Files API cannot be read here]")
    else:
        raise BadRequest(f'{where}.source.type: expected "base64", "url" or "file", got {kind!r}')
    return {"type": "image_url", "image_url": {"url": url}}


def _texts_of(blocks: object, where: str) -> list[str]:
    """The text blocks of a search result or content document."""
    return [
        _string(block.get("text"), f"{where}.{j}.text")
        for j, block in enumerate(_array(blocks, where))
        if isinstance(block, Mapping) and block.get("type") == "text"
    ]


def _document_parts(block: Mapping[str, Any], where: str) -> list[Part]:
    source = _object(block.get("source"), f"{where}.source")
    kind = source.get("type")
    title = block.get("title")
    heading = [_text_part(title)] if isinstance(title, str) and title else []
    if kind == "text":
        return [*heading, _text_part(_string(source.get("data"), f"{where}.source.data"))]
    if kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            return [*heading, _text_part(content)]
        parts = list(heading)
        for j, inner in enumerate(_array(content, f"{where}.source.content")):
            inner = _object(inner, f"{where}.source.content.{j}")
            if inner.get("type") == "image":
                parts.append(_image_part(inner, f"{where}.source.content.{j}"))
            else:
                parts.append(_text_part(_string(inner.get("text"), f"{where}.source.content.{j}.text")))
        return parts
    if kind in ("base64", "url", "file"):
        name = f" '{title}'" if isinstance(title, str) and title else ""
        return [_text_part(f"[document{name} omitted: PDF and file documents cannot be read here]")]
    raise BadRequest(f"{where}.source.type: unknown document source {kind!r}")


def _search_result_parts(block: Mapping[str, Any], where: str) -> list[Part]:
    title, source = block.get("title"), block.get("source")
    heading = " ".join(
        text for text in (_text(title), f"({source})" if isinstance(source, str) and source else "") if text
    )
    texts = _texts_of(block.get("content"), f"{where}.content")
    return [_text_part(text) for text in ([heading] if heading else []) + texts]


def _user_parts(block: Mapping[str, Any], where: str) -> list[Part]:
    """The parts of a user content block, or of a tool result's."""
    kind = block.get("type")
    if kind == "text":
        return [_text_part(_string(block.get("text"), f"{where}.text"))]
    if kind == "image":
        return [_image_part(block, where)]
    if kind == "document":
        return _document_parts(block, where)
    if kind == "search_result":
        return _search_result_parts(block, where)
    raise BadRequest(f"{where}.type: unexpected content block type {kind!r}")


def _content(parts: Sequence[Part]) -> str | list[Part]:
    """A string when there is only text: older backends and many chat templates take nothing else."""
    if all(part["type"] == "text" for part in parts):
        return _BLOCK_SEPARATOR.join(part["text"] for part in parts)
    return list(parts)


# ---------------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------------


@attrs.define
class _Turn:
    role: Literal["user", "assistant"]
    # Each block with where it was found, for error messages that point into the request.
    blocks: list[tuple[str, Mapping[str, Any]]]


def _blocks(content: object, where: str) -> list[tuple[str, Mapping[str, Any]]]:
    if isinstance(content, str):
        return [(where, {"type": "text", "text": content})]
    blocks = []
    for j, block in enumerate(_array(content, where)):
        block = _object(block, f"{where}.{j}")
        _string(block.get("type"), f"{where}.{j}.type")
        blocks.append((f"{where}.{j}", block))
    return blocks


def _turns(messages: list[Any], system: list[str]) -> list[_Turn]:
    """The conversation without its system messages (added to ``system``), same-role turns merged."""
    turns: list[_Turn] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        message = _object(message, where)
        role = message.get("role")
        if "content" not in message:
            raise BadRequest(f"{where}.content: field required")
        content = message.get("content")
        if role == "system":
            system.extend(_system_texts(content, f"{where}.content"))
            continue
        if role not in ("user", "assistant"):
            raise BadRequest(f'{where}.role: expected "user", "assistant" or "system", got {role!r}')
        if not isinstance(content, (str, list)):
            raise _expected(f"{where}.content", "a string or an array of content blocks", content)
        blocks = _blocks(content, f"{where}.content")
        if turns and turns[-1].role == role:
            turns[-1].blocks.extend(blocks)
        else:
            turns.append(_Turn(role, blocks))
    return turns


def _tool_result(block: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[Part]]:
    """The tool message, and the images it returned (they go to the next user message)."""
    call_id = _string(block.get("tool_use_id"), f"{where}.tool_use_id")
    content = block.get("content")
    texts: list[str] = []
    images: list[Part] = []
    if isinstance(content, str):
        texts.append(content)
    elif content is not None:
        for j, inner in enumerate(_array(content, f"{where}.content")):
            inner_where = f"{where}.content.{j}"
            inner = _object(inner, inner_where)
            if inner.get("type") == "tool_reference":
                # Tool search found a deferred tool; every tool is already on the backend's list.
                name = _string(inner.get("tool_name"), f"{inner_where}.tool_name")
                texts.append(f"Tool available: {name}")
                continue
            for part in _user_parts(inner, inner_where):
                if part["type"] == "text":
                    texts.append(part["text"])
                else:
                    images.append(part)
    text = _BLOCK_SEPARATOR.join(texts)
    if block.get("is_error") is True:
        text = _ERROR_PREFIX + text if text else _ERROR_PREFIX.rstrip(": ")
    if images:
        images.insert(0, _text_part(f"Images returned by tool call {call_id}:"))
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _user_messages(turn: _Turn) -> list[dict[str, Any]]:
    """Tool messages first: OpenAI backends want them right after the assistant turn that made the calls."""
    tool_messages: list[dict[str, Any]] = []
    tool_images: list[Part] = []
    parts: list[Part] = []
    for where, block in turn.blocks:
        kind = block["type"]
        if kind == "tool_result":
            message, images = _tool_result(block, where)
            tool_messages.append(message)
            tool_images.extend(images)
        elif kind in _SERVER_BLOCKS:
            continue
        elif kind in ("tool_use", "thinking", "redacted_thinking"):
            raise BadRequest(f"{where}: a {kind} block belongs in an assistant turn")
        else:
            parts.extend(_user_parts(block, where))
    parts = tool_images + parts
    if tool_messages and all(part == _text_part("") for part in parts):
        return tool_messages
    return [*tool_messages, {"role": "user", "content": _content(parts)}]


def _tool_call(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = _string(block.get("id"), f"{where}.id")
    name = _string(block.get("name"), f"{where}.name")
    arguments = _object(block.get("input", {}), f"{where}.input")
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def _assistant_message(turn: _Turn, dialect: Dialect) -> dict[str, Any]:
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for where, block in turn.blocks:
        kind = block["type"]
        if kind == "text":
            texts.append(_string(block.get("text"), f"{where}.text"))
        elif kind == "tool_use":
            calls.append(_tool_call(block, where))
        elif kind == "thinking":
            thoughts.append(_string(block.get("thinking"), f"{where}.thinking"))
        elif kind == "redacted_thinking" or kind in _SERVER_BLOCKS:
            continue
        elif kind in ("tool_result", "image", "document", "search_result"):
            raise BadRequest(f"{where}: a {kind} block belongs in a user turn")
        else:
            raise BadRequest(f"{where}.type: unexpected content block type {kind!r}")
    text = _BLOCK_SEPARATOR.join(text for text in texts if text)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    field = REASONING_FIELD[dialect]
    thinking = _BLOCK_SEPARATOR.join(thought for thought in thoughts if thought)
    if field and thinking:
        message[field] = thinking
    if calls:
        message["tool_calls"] = calls
    return message


def _messages(body: Mapping[str, Any], dialect: Dialect) -> list[dict[str, Any]]:
    if "messages" not in body:
        raise BadRequest("messages: field required")
    messages = _array(body["messages"], "messages")
    if not messages:
        raise BadRequest("messages: at least one message is required")
    system = _system_texts(body.get("system"), "system")
    turns = _turns(messages, system)
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": _BLOCK_SEPARATOR.join(system)})
    for turn in turns:
        if turn.role == "user":
            out.extend(_user_messages(turn))
        else:
            out.append(_assistant_message(turn, dialect))
    return out


def _prefill(messages: list[dict[str, Any]], dialect: Dialect) -> dict[str, Any]:
    """A final assistant turn is text for the model to continue; an empty one is no turn at all."""
    last = messages[-1] if messages else None
    if last is None or last["role"] != "assistant" or "tool_calls" in last:
        return {}
    if not last["content"]:
        messages.pop()
        return {}
    if dialect is Dialect.VLLM:
        return {"continue_final_message": True, "add_generation_prompt": False}
    return {}


# ---------------------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------------------


def _tools(value: object) -> tuple[list[dict[str, Any]], list[str]]:
    """The backend's function tools, and the names of the tools that cannot run there."""
    forwarded: list[dict[str, Any]] = []
    dropped: list[str] = []
    if value is None:
        return forwarded, dropped
    for j, tool in enumerate(_array(value, "tools")):
        where = f"tools.{j}"
        tool = _object(tool, where)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            name = tool.get("name")
            dropped.append(name if isinstance(name, str) and name else str(kind))
            continue
        name = _string(tool.get("name"), f"{where}.name")
        if not name:
            raise BadRequest(f"{where}.name: must not be empty")
        function: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if description is not None:
            function["description"] = _string(description, f"{where}.description")
        function["parameters"] = dict(_object(tool.get("input_schema"), f"{where}.input_schema"))
        forwarded.append({"type": "function", "function": function})
    return forwarded, dropped


def _tool_choice(value: object, forwarded: Sequence[str], dropped: Sequence[str]) -> dict[str, Any]:
    if value is None:
        return {}
    choice = _object(value, "tool_choice")
    kind = choice.get("type")
    out: dict[str, Any] = {}
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = _string(choice.get("name"), "tool_choice.name")
        if name in forwarded:
            out["tool_choice"] = {"type": "function", "function": {"name": name}}
        elif name not in dropped:
            raise BadRequest(f"tool_choice.name: no tool named {name!r} in tools")
    else:
        raise BadRequest(f'tool_choice.type: expected "auto", "any", "tool" or "none", got {kind!r}')
    if not forwarded:
        return {}
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False
    return out


# ---------------------------------------------------------------------------------------------------------
# Sampling, thinking, output format
# ---------------------------------------------------------------------------------------------------------


def _sampling(body: Mapping[str, Any], dialect: Dialect) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "max_tokens" not in body:
        raise BadRequest("max_tokens: field required")
    max_tokens = _positive_integer(body["max_tokens"], "max_tokens")
    # OpenAI deprecated max_tokens on chat and its reasoning models reject it.
    out["max_completion_tokens" if dialect is Dialect.OPENAI else "max_tokens"] = max_tokens
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = _number(body[key], key)
    if body.get("top_k") is not None:
        top_k = _integer(body["top_k"], "top_k")
        if dialect in _TOP_K_DIALECTS:
            # vLLM spells "off" as -1 (older releases reject 0).
            out["top_k"] = -1 if dialect is Dialect.VLLM and top_k <= 0 else top_k
    if body.get("stop_sequences") is not None:
        stops = [
            _string(stop, f"stop_sequences.{j}")
            for j, stop in enumerate(_array(body["stop_sequences"], "stop_sequences"))
        ]
        # An empty stop string would end generation before it starts on some backends.
        stops = [stop for stop in stops if stop]
        if dialect is Dialect.OPENAI:
            stops = stops[:OPENAI_MAX_STOP]
        if stops:
            out["stop"] = stops
    return out


def budget_effort(budget_tokens: int | None) -> str:
    """The reasoning effort closest to an Anthropic thinking budget."""
    if budget_tokens is None:
        return "medium"
    if budget_tokens < _LOW_BUDGET_BELOW:
        return "low"
    if budget_tokens < _MEDIUM_BUDGET_BELOW:
        return "medium"
    return "high"


def _thinking(value: object, dialect: Dialect) -> dict[str, Any]:
    if value is None:
        return {}
    thinking = _object(value, "thinking")
    kind = thinking.get("type")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        effort = budget_effort(
            None if budget is None else _positive_integer(budget, "thinking.budget_tokens")
        )
        return think_fields(effort, dialect)
    if kind == "disabled":
        return think_fields(False, dialect)
    return {}


def _output_format(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        return {}
    output_format = value.get("format")
    if not isinstance(output_format, Mapping) or output_format.get("type") != "json_schema":
        return {}
    schema = output_format.get("schema")
    if not isinstance(schema, Mapping):
        return {}
    # OpenAI requires a name; strict mode would reject schemas outside its strict subset.
    return {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": dict(schema), "strict": False},
        }
    }


def _stream(value: object) -> dict[str, Any]:
    if value is None or value is False:
        return {"stream": False}
    if value is True:
        # Without include_usage the backend never reports token counts, and message_delta needs them.
        return {"stream": True, "stream_options": {"include_usage": True}}
    raise _expected("stream", "a boolean", value)


# ---------------------------------------------------------------------------------------------------------
# Request entry point
# ---------------------------------------------------------------------------------------------------------


@attrs.frozen
class TranslatedRequest:
    """The backend body, and the tools left out of it because only Anthropic's servers can run them."""

    body: dict[str, Any]
    dropped_tools: tuple[str, ...] = ()


def messages_to_openai(body: Mapping[str, Any], backend_model: str, dialect: Dialect) -> TranslatedRequest:
    """The ``/chat/completions`` body for a ``/v1/messages`` request (``backend_model`` already resolved).

    Fields that mean nothing to a backend (``metadata``, ``cache_control``, ``context_management``,
    ``service_tier``, ``container``, ``mcp_servers``, unknown keys) are accepted and ignored.
    """
    if not isinstance(body, Mapping):
        raise BadRequest("request body must be a JSON object")
    messages = _messages(body, dialect)
    out: dict[str, Any] = {"model": backend_model, "messages": messages}
    tools, dropped = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
    out.update(_tool_choice(body.get("tool_choice"), [tool["function"]["name"] for tool in tools], dropped))
    out.update(_sampling(body, dialect))
    out.update(_thinking(body.get("thinking"), dialect))
    out.update(_output_format(body.get("output_config")))
    out.update(_prefill(messages, dialect))
    out.update(_stream(body.get("stream")))
    return TranslatedRequest(out, tuple(dropped))


_MAX_TOKENS_FIELDS: Final = ("max_tokens", "max_completion_tokens")


def fit_context(body: Mapping[str, Any], context_length: int | None, prompt_tokens: int) -> dict[str, Any]:
    """The backend body without its token limit when that limit and ``prompt_tokens`` (an estimate of the
    prompt) exceed the model's ``context_length``; unchanged when the window is unknown."""
    out = dict(body)
    limit = next((out[key] for key in _MAX_TOKENS_FIELDS if isinstance(out.get(key), int)), None)
    if context_length and limit is not None and limit + prompt_tokens > context_length:
        for key in _MAX_TOKENS_FIELDS:
            out.pop(key, None)
    return out


# ---------------------------------------------------------------------------------------------------------
# Reading untrusted backend JSON
# ---------------------------------------------------------------------------------------------------------


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _tool_use_id(message_id: str, position: int) -> str:
    """An id in Anthropic's shape (``toolu_`` + 24 characters) for a call the backend sent without one.

    A hash of the message id and the block's position rather than a random draw, so the stream and the
    whole reply agree and tests stay exact.
    """
    digest = hashlib.sha256(f"{message_id}\x1f{position}".encode()).hexdigest()
    return "toolu_" + digest[:24]


@attrs.frozen
class _Usage:
    prompt: int | None = None
    completion: int | None = None
    cached: int | None = None

    @classmethod
    def read(cls, usage: object, timings: object = None, base: _Usage | None = None) -> _Usage:
        """OpenAI's ``usage`` (llama.cpp's ``timings`` when it has none), over what was known before."""
        base = base or cls()
        usage = usage if isinstance(usage, Mapping) else {}
        timings = timings if isinstance(timings, Mapping) else {}
        details = usage.get("prompt_tokens_details")
        details = details if isinstance(details, Mapping) else {}

        def pick(*values: object) -> int | None:
            return next((v for v in map(_count, values) if v is not None), None)

        return cls(
            prompt=pick(usage.get("prompt_tokens"), timings.get("prompt_n"), base.prompt),
            completion=pick(usage.get("completion_tokens"), timings.get("predicted_n"), base.completion),
            cached=pick(details.get("cached_tokens"), base.cached),
        )

    def anthropic(self, *, with_input: bool = True) -> dict[str, int]:
        """Anthropic counts cached prompt tokens apart from ``input_tokens``."""
        cached = min(self.cached or 0, self.prompt or 0)
        out: dict[str, int] = {}
        if with_input or self.prompt is not None:
            out["input_tokens"] = (self.prompt or 0) - cached
        if cached:
            out["cache_read_input_tokens"] = cached
        out["output_tokens"] = self.completion or 0
        return out


def _stop_reason(
    finish_reason: object, matched_stop: object, *, used_tools: bool, refused: bool = False
) -> tuple[str, str | None]:
    """``(stop_reason, stop_sequence)``; ``matched_stop`` is vLLM's ``stop_reason`` (the stop string)."""
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason in ("tool_calls", "function_call") or used_tools:
        return "tool_use", None
    if finish_reason == "content_filter" or refused:
        return "refusal", None
    if finish_reason == "stop" and isinstance(matched_stop, str) and matched_stop:
        return "stop_sequence", matched_stop
    return "end_turn", None


# ---------------------------------------------------------------------------------------------------------
# Whole replies
# ---------------------------------------------------------------------------------------------------------


def _tool_use_block(call: object, position: int, message_id: str) -> dict[str, Any]:
    if not isinstance(call, Mapping) or not isinstance(call.get("function"), Mapping):
        raise BackendError("backend returned a malformed tool call")
    function = call["function"]
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise BackendError("backend returned a tool call without a function name")
    arguments = function.get("arguments")
    if isinstance(arguments, Mapping):
        tool_input = dict(arguments)
    elif isinstance(arguments, str) or arguments is None:
        tool_input = tool_arguments(name, arguments or "")
    else:
        raise BackendError(f"backend returned non-object arguments for tool call '{name}'")
    call_id = call.get("id")
    return {
        "type": "tool_use",
        "id": call_id if isinstance(call_id, str) and call_id else _tool_use_id(message_id, position),
        "name": name,
        "input": tool_input,
    }


def completion_to_message(
    body: Mapping[str, Any], *, model: str, message_id: str, split_think_tags: bool = False
) -> dict[str, Any]:
    """A non-stream ``chat.completion`` as Anthropic's ``Message``, named after the client's ``model``."""
    choice = completion_choice(body)
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise BackendError("backend reply has no message")
    content, thinking = _text(message.get("content")), reasoning(message)
    if split_think_tags:
        splitter = ThinkTagSplitter()
        tag_thinking, content = splitter.feed(content)
        rest_thinking, rest_content = splitter.flush()
        thinking, content = thinking + tag_thinking + rest_thinking, content + rest_content
    refusal = "" if content.strip() else _text(message.get("refusal"))

    blocks: list[dict[str, Any]] = []
    if thinking.strip():
        blocks.append({"type": "thinking", "thinking": thinking, "signature": THINKING_SIGNATURE})
    if content.strip() or refusal:
        blocks.append({"type": "text", "text": content if content.strip() else refusal})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        blocks.append(_tool_use_block(call, len(blocks), message_id))
    stop_reason, stop_sequence = _stop_reason(
        choice.get("finish_reason"),
        choice.get("stop_reason"),
        used_tools=any(block["type"] == "tool_use" for block in blocks),
        refused=bool(refusal),
    )
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _Usage.read(body.get("usage"), body.get("timings")).anthropic(),
    }


# ---------------------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------------------

BlockKind = Literal["thinking", "text", "tool_use"]


@attrs.define
class _StreamedCall:
    """One tool call of a stream, keyed by its OpenAI ``index``."""

    id: str | None = None
    name: str = ""
    # The content index of its tool_use block, once the name is known and the block started.
    block: int | None = None
    closed: bool = False
    # Argument text not sent yet: everything until the name is known, and while the text so far could
    # still be "null" (which must not reach the client: it would become the tool input).
    held: list[str] = attrs.Factory(list)
    sent_any: bool = False
    # All argument text, checked once the block closes.
    parts: list[str] = attrs.Factory(list)


def _may_be_null(text: str) -> bool:
    stripped = text.strip()
    return "null".startswith(stripped)


class AnthropicStream(StreamState):
    """OpenAI ``chat.completion.chunk`` events -> Anthropic's SSE event bytes.

    Content, thinking and tool arguments pass through as they arrive, each kind in its own content block,
    a block closing when the next kind (or the next tool call) begins.  Only :meth:`finish` says how the
    message ended, because the usage chunk may still follow the ``finish_reason``.  After a backend error
    the stream carries one ``error`` event and then stays silent.
    """

    def __init__(self, *, model: str, message_id: str, split_think_tags: bool = False) -> None:
        self._model = model
        self._message_id = message_id
        self._splitter = ThinkTagSplitter() if split_think_tags else None
        self._started = False
        self._failed = False
        self._finished = False
        self._blocks = 0
        self._open: BlockKind | None = None
        self._calls: dict[int, _StreamedCall] = {}
        self._open_call: _StreamedCall | None = None
        # Whitespace that would open a block of its own ("\n\n" before a tool call), held until text of
        # the same kind follows; dropped if another kind of block comes first.
        self._space_kind: BlockKind | None = None
        self._space = ""
        self._finish_reason: object = None
        self._matched_stop: object = None
        self._refused = False
        self._usage = _Usage()
        self._first: Instant | None = None

    @property
    def usage(self) -> tuple[int | None, int | None]:
        """The backend's prompt and completion token counts (cached prompt tokens included)."""
        return self._usage.prompt, self._usage.completion

    def start(self, at: Instant) -> bytes:
        """``message_start`` and a ``ping``; written once, even if called again or left to :meth:`feed`."""
        if self._started or self._failed or self._finished:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return sse_event("message_start", {"type": "message_start", "message": message}) + sse_event(
            "ping", {"type": "ping"}
        )

    def feed(self, event: Mapping[str, Any], at: Instant) -> bytes:
        if self._failed or self._finished:
            return b""
        out = [self.start(at)]
        try:
            self._feed(event, at, out)
        except BackendError as exc:
            out.append(self._break(exc.message))
        return b"".join(out)

    def finish(self, at: Instant) -> bytes:
        """The backend stream ended normally: the open block closes and the message ends."""
        if self._failed or self._finished:
            return b""
        out = [self.start(at)]
        try:
            if self._splitter is not None:
                thinking, content = self._splitter.flush()
                out.append(self._text_like("thinking", thinking))
                out.append(self._text_like("text", content))
            out.append(self._close_open())
            if any(call.block is None for call in self._calls.values()):
                raise BackendError("backend returned a tool call without a function name")
        except BackendError as exc:
            out.append(self._break(exc.message))
            return b"".join(out)
        self._finished = True
        stop_reason, stop_sequence = _stop_reason(
            self._finish_reason, self._matched_stop, used_tools=bool(self._calls), refused=self._refused
        )
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": self._usage.anthropic(with_input=False),
        }
        out.append(sse_event("message_delta", delta))
        out.append(sse_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def fail(self, message: str) -> bytes:
        """The backend stream broke after the reply began: clients must not take it for a whole message."""
        if self._failed or self._finished:
            return b""
        return self._break(message)

    def _break(self, message: str) -> bytes:
        self._failed = True
        return stream_error_event(message)

    def _feed(self, event: Mapping[str, Any], at: Instant, out: list[bytes]) -> None:
        if event.get("error"):
            out.append(self._break(error_text(event["error"])))
            return
        if "usage" in event or "timings" in event:
            self._usage = _Usage.read(event.get("usage"), event.get("timings"), self._usage)
        choice = first_choice(event)
        if choice is None:
            return
        delta = choice.get("delta")
        delta = delta if isinstance(delta, Mapping) else {}
        content, thinking = _text(delta.get("content")), reasoning(delta)
        refusal = _text(delta.get("refusal"))
        if refusal:
            # OpenAI's refusal text takes the place of the content.
            self._refused = True
            content += refusal
        fragments = delta.get("tool_calls")
        fragments = [f for f in fragments if isinstance(f, Mapping)] if isinstance(fragments, list) else []
        if content or thinking or fragments:
            self._first = self._first or at
        if self._splitter is not None and content:
            tag_thinking, content = self._splitter.feed(content)
            thinking += tag_thinking
        out.append(self._text_like("thinking", thinking))
        out.append(self._text_like("text", content))
        for fragment in fragments:
            out.append(self._fragment(fragment))
        if choice.get("finish_reason") is not None:
            self._finish_reason = choice["finish_reason"]
            self._matched_stop = choice.get("stop_reason")

    # -- blocks -------------------------------------------------------------------------------------------

    def _start_block(self, kind: BlockKind, content_block: Mapping[str, Any]) -> bytes:
        self._space_kind, self._space = None, ""
        out = self._close_open()
        index = self._blocks
        self._blocks += 1
        self._open = kind
        start = {"type": "content_block_start", "index": index, "content_block": content_block}
        return out + sse_event("content_block_start", start)

    def _close_open(self) -> bytes:
        if self._open is None:
            return b""
        call, self._open_call = self._open_call, None
        if call is not None:
            call.closed = True
            # Raises BackendError for arguments that are not a JSON object.
            tool_arguments(call.name, "".join(call.parts))
        self._open = None
        return sse_event("content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1})

    def _delta(self, delta: Mapping[str, Any]) -> bytes:
        payload = {"type": "content_block_delta", "index": self._blocks - 1, "delta": delta}
        return sse_event("content_block_delta", payload)

    def _text_like(self, kind: Literal["thinking", "text"], text: str) -> bytes:
        if not text:
            return b""
        out = b""
        if self._open != kind:
            if self._space_kind == kind:
                text = self._space + text
            if not text.strip():
                self._space_kind, self._space = kind, text
                return b""
            block = {"type": "thinking", "thinking": "", "signature": THINKING_SIGNATURE}
            out = self._start_block(kind, block if kind == "thinking" else {"type": "text", "text": ""})
        if kind == "thinking":
            return out + self._delta({"type": "thinking_delta", "thinking": text})
        return out + self._delta({"type": "text_delta", "text": text})

    # -- tool calls ---------------------------------------------------------------------------------------

    def _fragment_key(self, fragment: Mapping[str, Any], fragment_id: str | None) -> int:
        """The call a fragment belongs to: its ``index``, or for backends that leave it out, a new call for
        a new id and the last call otherwise."""
        index = fragment.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            return index
        known = next((k for k, call in self._calls.items() if fragment_id and call.id == fragment_id), None)
        if known is not None:
            return known
        if fragment_id or not self._calls:
            return max(self._calls, default=-1) + 1
        return max(self._calls)

    def _fragment(self, fragment: Mapping[str, Any]) -> bytes:
        raw_id = fragment.get("id")
        fragment_id = raw_id if isinstance(raw_id, str) and raw_id else None
        call = self._calls.setdefault(self._fragment_key(fragment, fragment_id), _StreamedCall())
        function = fragment.get("function")
        function = function if isinstance(function, Mapping) else {}
        raw_name = function.get("name")
        name = raw_name if isinstance(raw_name, str) else ""
        arguments = function.get("arguments")
        text = ""
        if isinstance(arguments, str):
            text = arguments
        elif isinstance(arguments, Mapping) and not call.parts:
            # Arguments already decoded, as some backends send a whole call.
            text = compact_json(arguments).decode("utf-8")
        if call.closed:
            # A closing chunk may repeat a call's name or add empty arguments; anything more is a call
            # that can no longer be streamed.
            if text or (name and name != call.name):
                raise BackendError("backend continued a tool call after the next content block began")
            return b""
        if fragment_id and not call.id:
            call.id = fragment_id
        if name and name != call.name and call.block is None:
            # The first fragment carries the name; some backends repeat it, a few split it.
            call.name = call.name + name
        if text:
            call.parts.append(text)
            call.held.append(text)
        out = b""
        if call.block is None:
            if not call.name:
                return b""
            tool_use_id = call.id or _tool_use_id(self._message_id, self._blocks)
            block = {"type": "tool_use", "id": tool_use_id, "name": call.name, "input": {}}
            out = self._start_block("tool_use", block)
            call.block = self._blocks - 1
            self._open_call = call
        if not call.held:
            return out
        pending = "".join(call.held)
        if not call.sent_any and _may_be_null(pending):
            return out
        call.held = []
        call.sent_any = True
        return out + self._delta({"type": "input_json_delta", "partial_json": pending})


# ---------------------------------------------------------------------------------------------------------
# count_tokens
# ---------------------------------------------------------------------------------------------------------

CHARS_PER_TOKEN: Final = 4
IMAGE_TOKENS: Final = 1600


def _block_texts(block: object) -> Iterator[str]:
    """The text a block puts in front of the model (leniently: an estimate must not fail on odd blocks)."""
    if not isinstance(block, Mapping):
        return
    kind = block.get("type")
    if kind == "text":
        yield _text(block.get("text"))
    elif kind == "thinking":
        yield _text(block.get("thinking"))
    elif kind == "tool_use":
        yield _text(block.get("name"))
        yield compact_json(block.get("input", {})).decode("utf-8")
    elif kind == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for inner in content:
                yield from _block_texts(inner)
    elif kind == "document":
        source = block.get("source")
        if isinstance(source, Mapping):
            yield _text(source.get("data"))
            content = source.get("content")
            yield from [content] if isinstance(content, str) else []
            for inner in content if isinstance(content, list) else []:
                yield from _block_texts(inner)
    elif kind == "search_result":
        for inner in block.get("content") or []:
            yield from _block_texts(inner)


def _images(value: object) -> int:
    if isinstance(value, list):
        return sum(map(_images, value))
    if not isinstance(value, Mapping):
        return 0
    if value.get("type") == "image":
        return 1
    return _images(value.get("content")) + _images(value.get("source"))


def _counted_body(body: object) -> tuple[Mapping[str, Any], list[Any]]:
    if not isinstance(body, Mapping):
        raise BadRequest("request body must be a JSON object")
    if "messages" not in body:
        raise BadRequest("messages: field required")
    return body, _array(body["messages"], "messages")


def tokenize_text(body: Mapping[str, Any]) -> str:
    """The request flattened to plain text, for a backend ``/tokenize`` endpoint; images are not in it."""
    body, messages = _counted_body(body)
    pieces: list[str] = []
    system = body.get("system")
    pieces.extend(_system_texts(system, "system") if isinstance(system, (str, list)) else [])
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            pieces.append(content)
        elif isinstance(content, list):
            for block in content:
                pieces.extend(_block_texts(block))
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, Mapping):
            described = {key: tool[key] for key in ("name", "description", "input_schema") if key in tool}
            pieces.append(compact_json(described).decode("utf-8"))
    return _BLOCK_SEPARATOR.join(piece for piece in pieces if piece)


def tokenizer_count(reply: object) -> int | None:
    """The number of tokens in a backend ``/tokenize`` reply: vLLM's ``count``, else the length of
    llama.cpp's (and vLLM's) ``tokens`` list; None for anything else."""
    if not isinstance(reply, Mapping):
        return None
    count = _count(reply.get("count"))
    if count is not None:
        return count
    tokens = reply.get("tokens")
    return len(tokens) if isinstance(tokens, list) else None


def counted_input_tokens(body: Mapping[str, Any], tokenized: int) -> int:
    """``count_tokens`` from a backend tokenizer's count of :func:`tokenize_text`, which leaves images
    out: each counts as :data:`IMAGE_TOKENS`."""
    _, messages = _counted_body(body)
    return max(1, tokenized + IMAGE_TOKENS * _images(messages))


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """A stated estimate for ``/v1/messages/count_tokens`` when the backend has no tokenizer to ask."""
    body, messages = _counted_body(body)
    characters = len(tokenize_text(body))
    return max(1, math.ceil(characters / CHARS_PER_TOKEN) + IMAGE_TOKENS * _images(messages))

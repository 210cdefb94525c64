"""The OpenAI Responses API (``POST /v1/responses``) served from a backend's ``/chat/completions``.

llama.cpp's server and older vLLM have no ``/v1/responses``, while Codex CLI (``--oss``) and the openai SDK's
``responses.create``/``responses.stream`` speak nothing else, so requests are rewritten as chat completions
and replies and stream chunks as Responses objects and events.  Errors answered over HTTP take OpenAI's shape
(:func:`ollama_proxy.wire.openai.error_body`); :func:`stream_error_events` covers a stream already
under way.  Time is an argument everywhere, so every output is a function of the inputs.

Policies decided here, because the Responses API assumes a server that OpenAI runs:

* **No server state.**  ``previous_response_id``, ``conversation``, ``item_reference`` items, ``background:
  true`` and stored ``prompt`` templates are refused with a 400 that says so: answering without the context
  the client thinks it supplied would be a wrong answer that looks right.  ``store`` is accepted, and every
  response says ``store: false``.
* **System text.**  ``instructions``, then every ``developer`` and ``system`` message in order, become one
  system message at the start: many chat templates refuse a system message anywhere else.  A developer
  message in the middle of a conversation therefore moves to the front; that costs one backend prefix-cache
  miss on the turn it appears, where a late system message would cost the whole request on those templates.
* **Text parts** of one message are joined with ``\\n`` into a string (as vLLM does for templates that take
  strings); only a user message with images keeps a list of parts.
* **Namespace tools** are offered to the backend as ``<namespace>__<member>`` functions: unique next to the
  top-level tools, and a valid name on every backend (OpenAI refuses dots).  Calls come back as the
  Responses API reports them, ``name: <member>`` with ``namespace: <namespace>``, which is how Codex routes
  them; a call to the bare member name or ``<namespace>.<member>`` is read the same way when unambiguous.
  ``function_call`` history items with a namespace are qualified again on the way in.
* **Hosted and custom tools** (``web_search``, ``file_search``, ``mcp``, ``custom``, ...) are left out and
  their types reported (:class:`Translated`), never refused: Codex always sends ``web_search``.  A
  ``tool_choice`` naming one becomes ``auto``; ``tool_choice`` and ``parallel_tool_calls`` are only sent
  along with tools, since OpenAI refuses them alone.  Only ``strict: true`` is forwarded on a function.
* **Unknown input items and content parts** are left out and reported, so a client sending item kinds newer
  than this module still works.  ``input_file`` and ``input_audio`` are refused: chat backends cannot take
  them and the client should know its file was not read.
* **Images in tool output** go into a user message after the run of tool results: chat tool messages take
  text only, and nothing may come between an assistant's tool calls and their results.
* **Reasoning** is reported as a ``reasoning`` item with one ``summary_text`` part, as Ollama's own
  Responses API does: Codex shows summaries (raw ``reasoning_text`` only behind an option) and the SDK takes
  either.  Reasoning items in the history (their ``reasoning_text`` content, else their summary) go into the
  dialect's reasoning field of the next assistant message, and are dropped where the dialect has none, when
  a user message comes first, or at the end.  ``encrypted_content`` is opaque and ignored.
* **reasoning.effort** reaches OpenAI verbatim (it is OpenAI's own vocabulary); other backends get the Ollama
  translation's switch, ``none`` meaning off, ``minimal`` low and ``xhigh`` the highest level.
* **Tool-call arguments** are relayed exactly as the backend streams them, fragment by fragment: a Responses
  client parses them itself, and buffering them to check would hold back the stream.  No arguments become
  ``{}``, arguments sent as an object become compact JSON.  Ids are the backend's call ids, else synthesized
  from the response id; item ids derive from the response id and the item's position.
* **Output order** is arrival order.  A text or reasoning item closes when something else starts; function
  calls stay open until the end, so a backend interleaving two calls' fragments still works.  A reply with
  neither text nor tool calls still gets an (empty) message item, the answer clients look for.
* **Stopping early.**  ``finish_reason`` ``length`` gives status ``incomplete`` with reason
  ``max_output_tokens`` (``content_filter`` likewise), the last item marked incomplete, and a stream ending
  in ``response.incomplete`` instead of ``response.completed``, as OpenAI does.
* **Failure** mid-stream is ``response.failed`` (error code ``server_error``) and then an ``error`` event
  that also carries OpenAI's error object: the SDKs raise on that, where a stream without a terminal event
  would only say "no response.completed".
* **Timestamps** are whole seconds, as OpenAI sends them and typed clients declare them.  **Usage** is null
  when the backend reported none; cache writes are unknown and reported as 0.  **Log probabilities** are
  neither asked for nor reported (``logprobs: []``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from ollama_proxy.errors import BackendError, BadRequest
from ollama_proxy.json_codec import compact_json
from ollama_proxy.schemas import Think
from ollama_proxy.translate.chat import REASONING_FIELD, image_data_url, synthesize_call_id, think_fields
from ollama_proxy.translate.dialect import Dialect
from ollama_proxy.translate.fields import finite_number, json_kind, whole_number
from ollama_proxy.translate.replies import (
    Instant,
    PendingCall,
    StreamState,
    ThinkTagSplitter,
    completion_choice,
    error_text,
    first_choice,
    merge_fragment,
    reasoning,
)
from ollama_proxy.wire.responses import error_event_object

NAMESPACE_SEPARATOR: Final = "__"
STATELESS: Final = "this server keeps no state between requests; send the whole conversation in 'input'"

# ---------------------------------------------------------------------------------------------------------
# Reading the client's JSON
# ---------------------------------------------------------------------------------------------------------


def _invalid(where: str, expected: str, value: object) -> BadRequest:
    return BadRequest(f"invalid type for '{where}': expected {expected}, got {json_kind(value)}")


def _number(body: Mapping[str, Any], key: str) -> float | int | None:
    value = body.get(key)
    if value is None:
        return None
    number = finite_number(value)
    if number is None:
        raise _invalid(key, "a number", value)
    return number


def _flag(body: Mapping[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise _invalid(key, "a boolean", value)


def _string(body: Mapping[str, Any], key: str, where: str) -> str | None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _invalid(where, "a string", value)


def _required_string(body: Mapping[str, Any], key: str, where: str) -> str:
    value = _string(body, key, where)
    if not value:
        raise BadRequest(f"missing required parameter: '{where}'")
    return value


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


# ---------------------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------------------


def qualified_name(namespace: str, name: str) -> str:
    """The backend's name for a namespace member (an already qualified member keeps its name)."""
    prefix = namespace + NAMESPACE_SEPARATOR
    return name if name.startswith(prefix) else prefix + name


@attrs.frozen
class _Tools:
    """The function tools offered to the backend, and how to read the names it calls them by."""

    chat: tuple[dict[str, Any], ...] = ()
    dropped: tuple[str, ...] = ()
    # backend name -> (name, namespace) as the client declared it
    origins: Mapping[str, tuple[str, str | None]] = attrs.field(factory=dict)
    # other spellings a model may use for a namespace member: bare member name, "<namespace>.<member>"
    aliases: Mapping[str, tuple[str, str | None]] = attrs.field(factory=dict)

    def origin(self, backend_name: str) -> tuple[str, str | None]:
        """(name, namespace) of the function a backend's call names."""
        found = self.origins.get(backend_name) or self.aliases.get(backend_name)
        return found if found is not None else (backend_name, None)

    def backend_name(self, name: str) -> str | None:
        """The backend's name for a function the client names, or None if no such tool was offered."""
        if name in self.origins:
            return name
        alias = self.aliases.get(name)
        if alias is None or alias[1] is None:
            return None
        return qualified_name(alias[1], alias[0])


def _chat_function(tool: Mapping[str, Any], where: str, backend_name: str) -> dict[str, Any]:
    function: dict[str, Any] = {"name": backend_name}
    description = _string(tool, "description", f"{where}.description")
    if description:
        function["description"] = description
    parameters = tool.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, Mapping):
            raise _invalid(f"{where}.parameters", "an object", parameters)
        function["parameters"] = parameters
    # Responses defaults strict to true where chat defaults it to false; forwarding only an explicit true
    # keeps schemas outside OpenAI's strict subset (most of Codex's) working on every backend.
    if tool.get("strict") is True:
        function["strict"] = True
    return {"type": "function", "function": function}


def _tools(raw: object) -> _Tools:
    if raw is None:
        return _Tools()
    if not isinstance(raw, list):
        raise _invalid("tools", "an array", raw)
    chat: list[dict[str, Any]] = []
    dropped: list[str] = []
    origins: dict[str, tuple[str, str | None]] = {}
    members: dict[str, list[tuple[str, str]]] = {}

    def add(tool: Mapping[str, Any], where: str, namespace: str | None) -> None:
        name = _required_string(tool, "name", f"{where}.name")
        backend_name = name if namespace is None else qualified_name(namespace, name)
        if backend_name in origins:
            raise BadRequest(f"duplicate tool name '{backend_name}' in '{where}'")
        origins[backend_name] = (name, namespace)
        if namespace is not None:
            members.setdefault(name, []).append((name, namespace))
        chat.append(_chat_function(tool, where, backend_name))

    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise _invalid(where, "an object", tool)
        kind = _required_string(tool, "type", f"{where}.type")
        if kind == "function":
            add(tool, where, None)
        elif kind == "namespace":
            namespace = _required_string(tool, "name", f"{where}.name")
            inner = tool.get("tools")
            if not isinstance(inner, list):
                raise _invalid(f"{where}.tools", "an array", inner)
            for j, member in enumerate(inner):
                member_where = f"{where}.tools[{j}]"
                if not isinstance(member, Mapping):
                    raise _invalid(member_where, "an object", member)
                member_kind = _required_string(member, "type", f"{member_where}.type")
                if member_kind == "function":
                    add(member, member_where, namespace)
                else:
                    dropped.append(member_kind)
        else:
            dropped.append(kind)

    aliases: dict[str, tuple[str, str | None]] = {}
    for name, owners in members.items():
        for member, namespace in owners:
            aliases.setdefault(f"{namespace}.{member}", (member, namespace))
        if len(owners) == 1 and name not in origins:
            aliases.setdefault(name, owners[0])
    return _Tools(tuple(chat), tuple(dropped), origins, aliases)


def _declared_tools(request: Mapping[str, Any]) -> _Tools:
    """The reply side's reading of the request's tools: the request was checked already, so anything
    unreadable here only means no names need translating."""
    try:
        return _tools(request.get("tools"))
    except BadRequest:
        return _Tools()


def _tool_choice(value: object, tools: _Tools) -> str | dict[str, Any] | None:
    if value is None:
        return None
    if value in ("auto", "none", "required"):
        return str(value)
    if isinstance(value, Mapping):
        if value.get("type") == "function":
            name = _required_string(value, "name", "tool_choice.name")
            namespace = _string(value, "namespace", "tool_choice.namespace")
            backend_name = tools.backend_name(qualified_name(namespace, name) if namespace else name)
            if backend_name is None:
                raise BadRequest(f"tool_choice names the function '{name}', which is not among the tools")
            return {"type": "function", "function": {"name": backend_name}}
        # allowed_tools and hosted tools: the model still picks among what it has.
        return "auto"
    raise BadRequest(
        f"invalid value for 'tool_choice': {json.dumps(value, ensure_ascii=False)}; "
        'expected "auto", "none", "required" or a tool object'
    )


# ---------------------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------------------

_TEXT_PARTS: Final = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
_UNSUPPORTED_PARTS: Final = frozenset({"input_file", "input_audio", "file"})
_ROLES: Final = frozenset({"user", "assistant", "system", "developer"})


def _image(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    url = part.get("image_url")
    if isinstance(url, Mapping):  # the chat completions spelling, {"url": ...}
        url = url.get("url")
    if url is None and part.get("file_id") is not None:
        raise BadRequest(f"'{where}': images by file_id are not supported (this server stores no files)")
    if not isinstance(url, str) or not url:
        raise BadRequest(f"missing required parameter: '{where}.image_url'")
    if url.startswith("data:"):
        url = image_data_url(url, where)
    elif not url[:8].lower().startswith(("http://", "https://")):
        raise BadRequest(f"invalid '{where}.image_url': expected a data URL or an http(s) URL")
    image: dict[str, Any] = {"url": url}
    if part.get("detail") in ("low", "high"):
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _parts(
    content: object, where: str, dropped: list[str], *, images: bool
) -> tuple[list[str], list[dict[str, Any]]]:
    """The texts, and the images as chat parts (in order among themselves), of a message's content."""
    if content is None:
        return [], []
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list):
        raise _invalid(where, "a string or an array of content parts", content)
    texts: list[str] = []
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        part_where = f"{where}[{j}]"
        if not isinstance(part, Mapping):
            raise _invalid(part_where, "an object", part)
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            text = _string(part, "text", f"{part_where}.text") or ""
            texts.append(text)
            parts.append({"type": "text", "text": text})
        elif kind == "refusal":
            refusal = _string(part, "refusal", f"{part_where}.refusal") or ""
            texts.append(refusal)
            parts.append({"type": "text", "text": refusal})
        elif kind in ("input_image", "image_url"):
            if not images:
                raise BadRequest(
                    f"'{part_where}': images are only supported in user messages and tool output"
                )
            parts.append(_image(part, part_where))
        elif kind in _UNSUPPORTED_PARTS:
            raise BadRequest(f"'{part_where}': {kind} content is not supported by this server")
        elif isinstance(kind, str):
            dropped.append(kind)
        else:
            raise BadRequest(f"missing or invalid 'type' in '{part_where}'")
    return texts, parts


class _Conversation:
    """Chat messages being assembled from input items, for the rules that span several items."""

    def __init__(self, dialect: Dialect) -> None:
        self._reasoning_field = REASONING_FIELD[dialect]
        self.system: list[str] = []
        self.messages: list[dict[str, Any]] = []
        self._reasoning: list[str] = []
        self._images: list[dict[str, Any]] = []

    def user(self, content: str | list[dict[str, Any]]) -> None:
        self._flush_images()
        self._reasoning = []
        self.messages.append({"role": "user", "content": content})

    def assistant(self, text: str) -> None:
        self._flush_images()
        message: dict[str, Any] = {"role": "assistant", "content": text}
        self._attach_reasoning(message)
        self.messages.append(message)

    def call(self, call: dict[str, Any]) -> None:
        """A function call joins the assistant message right before it, as chat keeps one turn's calls."""
        self._flush_images()
        last = self.messages[-1] if self.messages else None
        if last is None or last["role"] != "assistant":
            last = {"role": "assistant", "content": None}
            self.messages.append(last)
        last.setdefault("tool_calls", []).append(call)
        self._attach_reasoning(last)

    def tool_result(self, call_id: str, text: str, images: list[dict[str, Any]]) -> None:
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        self._images.extend(images)

    def reasoning(self, text: str) -> None:
        if self._reasoning_field and text:
            self._reasoning.append(text)

    def finish(self) -> list[dict[str, Any]]:
        self._flush_images()
        head = [{"role": "system", "content": "\n\n".join(self.system)}] if self.system else []
        return head + self.messages

    def _attach_reasoning(self, message: dict[str, Any]) -> None:
        if not self._reasoning or not self._reasoning_field:
            return
        earlier = message.get(self._reasoning_field)
        message[self._reasoning_field] = "\n\n".join(
            [earlier, *self._reasoning] if earlier else self._reasoning
        )
        self._reasoning = []

    def _flush_images(self) -> None:
        if self._images:
            self.messages.append({"role": "user", "content": self._images})
            self._images = []


def _message_item(
    item: Mapping[str, Any], where: str, conversation: _Conversation, dropped: list[str]
) -> None:
    role = item.get("role")
    if role not in _ROLES:
        raise BadRequest(
            f"invalid value for '{where}.role': {json.dumps(role, ensure_ascii=False)}; "
            "expected 'user', 'assistant', 'system' or 'developer'"
        )
    texts, parts = _parts(item.get("content"), f"{where}.content", dropped, images=role == "user")
    text = "\n".join(texts)
    if role in ("system", "developer"):
        if text:
            conversation.system.append(text)
    elif role == "assistant":
        conversation.assistant(text)
    elif any(part["type"] != "text" for part in parts):
        conversation.user(parts)
    else:
        conversation.user(text)


def _call_item(item: Mapping[str, Any], where: str, conversation: _Conversation) -> None:
    call_id = _required_string(item, "call_id", f"{where}.call_id")
    name = _required_string(item, "name", f"{where}.name")
    namespace = _string(item, "namespace", f"{where}.namespace")
    arguments = item.get("arguments")
    if isinstance(arguments, Mapping):
        arguments = compact_json(arguments).decode()
    elif arguments is not None and not isinstance(arguments, str):
        raise _invalid(f"{where}.arguments", "a string", arguments)
    conversation.call(
        {
            "id": call_id,
            "type": "function",
            "function": {
                "name": qualified_name(namespace, name) if namespace else name,
                # Templates parse the arguments (llama.cpp's refuse ""); "{}" says "none" everywhere.
                "arguments": arguments or "{}",
            },
        }
    )


def _result_item(
    item: Mapping[str, Any], where: str, conversation: _Conversation, dropped: list[str]
) -> None:
    call_id = _required_string(item, "call_id", f"{where}.call_id")
    texts, parts = _parts(item.get("output"), f"{where}.output", dropped, images=True)
    images = [part for part in parts if part["type"] != "text"]
    conversation.tool_result(call_id, "\n".join(texts), images)


def _reasoning_item(item: Mapping[str, Any], where: str, conversation: _Conversation) -> None:
    ignored: list[str] = []
    texts, _ = _parts(item.get("content"), f"{where}.content", ignored, images=False)
    if not any(texts):
        texts, _ = _parts(item.get("summary"), f"{where}.summary", ignored, images=False)
    conversation.reasoning("\n\n".join(text for text in texts if text))


def _messages(body: Mapping[str, Any], dialect: Dialect) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    conversation = _Conversation(dialect)
    instructions = _string(body, "instructions", "instructions")
    if instructions:
        conversation.system.append(instructions)
    dropped: list[str] = []
    raw = body.get("input")
    if raw is None:
        raise BadRequest("missing required parameter: 'input'")
    if isinstance(raw, str):
        conversation.user(raw)
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            where = f"input[{i}]"
            if not isinstance(item, Mapping):
                raise _invalid(where, "an object", item)
            kind = item.get("type")
            if kind is None and "role" in item:
                kind = "message"
            if kind == "message":
                _message_item(item, where, conversation, dropped)
            elif kind == "function_call":
                _call_item(item, where, conversation)
            elif kind == "function_call_output":
                _result_item(item, where, conversation, dropped)
            elif kind == "reasoning":
                _reasoning_item(item, where, conversation)
            elif kind == "item_reference":
                raise BadRequest(f"'{where}': item references are not supported: {STATELESS}")
            elif isinstance(kind, str):
                dropped.append(kind)
            else:
                raise BadRequest(f"missing or invalid 'type' in '{where}'")
    else:
        raise _invalid("input", "a string or an array of input items", raw)
    messages = conversation.finish()
    if all(message["role"] == "system" for message in messages):
        raise BadRequest("'input' holds no user, assistant or tool content")
    return messages, tuple(dropped)


# ---------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------

# Responses efforts as the Ollama translation's think values ("max" is its highest level).
_EFFORT_AS_THINK: Final[Mapping[str, Think]] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "max",
    "max": "max",
}


def _reasoning_switch(raw: object, dialect: Dialect) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _invalid("reasoning", "an object", raw)
    effort = raw.get("effort")
    if effort is None:
        return {}
    if not isinstance(effort, str) or effort not in _EFFORT_AS_THINK:
        raise BadRequest(
            f"invalid value for 'reasoning.effort': {json.dumps(effort, ensure_ascii=False)}; "
            f"expected one of {', '.join(_EFFORT_AS_THINK)}"
        )
    if dialect is Dialect.OPENAI:
        return {"reasoning_effort": effort}
    return think_fields(_EFFORT_AS_THINK[effort], dialect)


def _text_format(raw: object, dialect: Dialect) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _invalid("text", "an object", raw)
    out: dict[str, Any] = {}
    verbosity = raw.get("verbosity")
    if dialect is Dialect.OPENAI and verbosity in ("low", "medium", "high"):
        out["verbosity"] = verbosity
    form = raw.get("format")
    if form is None:
        return out
    if not isinstance(form, Mapping):
        raise _invalid("text.format", "an object", form)
    kind = form.get("type")
    if kind == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        schema = form.get("schema")
        if not isinstance(schema, Mapping):
            raise _invalid("text.format.schema", "an object", schema)
        # OpenAI requires a name; the Responses API lets it be left out.
        json_schema: dict[str, Any] = {"name": _string(form, "name", "text.format.name") or "response"}
        description = _string(form, "description", "text.format.description")
        if description:
            json_schema["description"] = description
        json_schema["schema"] = schema
        if isinstance(form.get("strict"), bool):
            json_schema["strict"] = form["strict"]
        out["response_format"] = {"type": "json_schema", "json_schema": json_schema}
    elif kind != "text":
        raise BadRequest(
            f"invalid value for 'text.format.type': {json.dumps(kind, ensure_ascii=False)}; "
            "expected 'text', 'json_schema' or 'json_object'"
        )
    return out


def _max_tokens(body: Mapping[str, Any], dialect: Dialect) -> dict[str, Any]:
    value = body.get("max_output_tokens")
    if value is None:
        return {}
    tokens = whole_number(value)
    if tokens is None:
        raise _invalid("max_output_tokens", "an integer", value)
    if tokens < 1:
        raise BadRequest("invalid value for 'max_output_tokens': expected at least 1")
    # OpenAI deprecated max_tokens on chat and its reasoning models refuse it.
    return {"max_completion_tokens" if dialect is Dialect.OPENAI else "max_tokens": tokens}


def _refuse_state(body: Mapping[str, Any]) -> None:
    if body.get("previous_response_id") is not None:
        raise BadRequest(f"previous_response_id is not supported: {STATELESS}")
    if body.get("conversation") is not None:
        raise BadRequest(f"conversation is not supported: {STATELESS}")
    if body.get("background") is True:
        raise BadRequest(f"background responses are not supported: {STATELESS}")
    if body.get("prompt") is not None:
        raise BadRequest(
            "stored prompts ('prompt') are not supported: send 'instructions' and 'input' instead"
        )


@attrs.frozen
class Translated:
    """The chat completions body, and what the backend could not be given (for the caller to log).

    ``dropped_tools`` holds the types of the tools left out (``web_search``, ``custom``, ...),
    ``dropped_input`` the types of the input items and content parts left out.
    """

    body: dict[str, Any]
    dropped_tools: tuple[str, ...] = ()
    dropped_input: tuple[str, ...] = ()


def responses_to_openai(body: Mapping[str, Any], backend_model: str, dialect: Dialect) -> Translated:
    """The ``/chat/completions`` request for a ``/v1/responses`` body (``backend_model`` already resolved).

    Raises :class:`BadRequest` for input this server cannot honour.  ``user``, ``metadata``, ``include``,
    ``store``, ``prompt_cache_key``, ``client_metadata``, ``truncation``, ``service_tier``,
    ``reasoning.summary`` and other fields without a chat counterpart are ignored.
    """
    if not isinstance(body, Mapping):
        raise BadRequest("the request body must be a JSON object")
    _refuse_state(body)
    messages, dropped_input = _messages(body, dialect)
    tools = _tools(body.get("tools"))
    out: dict[str, Any] = {"model": backend_model, "messages": messages}
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    parallel = _flag(body, "parallel_tool_calls")
    if tools.chat:
        out["tools"] = list(tools.chat)
        if tool_choice is not None:
            out["tool_choice"] = tool_choice
        if parallel is not None:
            out["parallel_tool_calls"] = parallel
    for key in ("temperature", "top_p"):
        value = _number(body, key)
        if value is not None:
            out[key] = value
    out.update(_max_tokens(body, dialect))
    out.update(_text_format(body.get("text"), dialect))
    out.update(_reasoning_switch(body.get("reasoning"), dialect))
    # Without include_usage the backend never reports token counts, and response.completed needs them.
    out.update({"stream": True, "stream_options": {"include_usage": True}} if _flag(body, "stream") else {})
    if "stream" not in out:
        out["stream"] = False
    return Translated(out, tools.dropped, dropped_input)


# ---------------------------------------------------------------------------------------------------------
# Response objects
# ---------------------------------------------------------------------------------------------------------

Status = Literal["completed", "incomplete", "failed", "in_progress"]
_INCOMPLETE_REASONS: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _seconds(wall: float) -> int:
    return math.floor(wall)


def _item_id(prefix: str, response_id: str, index: int) -> str:
    return f"{prefix}_{response_id.removeprefix('resp_')}_{index}"


@attrs.frozen
class _Usage:
    prompt: int | None = None
    completion: int | None = None
    cached: int = 0
    reasoning: int = 0

    def update(self, raw: object) -> _Usage:
        """A usage report read over this one: what a later report states replaces what was known."""
        if not isinstance(raw, Mapping):
            return self
        prompt, completion = _tokens(raw.get("prompt_tokens")), _tokens(raw.get("completion_tokens"))
        return _Usage(
            self.prompt if prompt is None else prompt,
            self.completion if completion is None else completion,
            _detail(raw.get("prompt_tokens_details"), "cached_tokens", self.cached),
            _detail(raw.get("completion_tokens_details"), "reasoning_tokens", self.reasoning),
        )

    def body(self) -> dict[str, Any] | None:
        if self.prompt is None and self.completion is None:
            return None
        prompt, completion = self.prompt or 0, self.completion or 0
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": self.cached, "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": self.reasoning},
            "total_tokens": prompt + completion,
        }


def _tokens(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _detail(details: object, key: str, default: int) -> int:
    if isinstance(details, Mapping):
        value = _tokens(details.get(key))
        if value is not None:
            return value
    return default


@attrs.frozen
class _Echo:
    """What a response repeats of its request, read leniently: the request was checked already."""

    model: str
    response_id: str
    created_at: int
    request: Mapping[str, Any]

    def response(
        self,
        status: Status,
        output: Sequence[Mapping[str, Any]],
        usage: _Usage,
        *,
        completed_at: int | None = None,
        error: Mapping[str, Any] | None = None,
        incomplete_reason: str | None = None,
    ) -> dict[str, Any]:
        request = self.request
        reasoning_request = request.get("reasoning")
        reasoning_echo = reasoning_request if isinstance(reasoning_request, Mapping) else {}
        text = request.get("text")
        tools = request.get("tools")
        tool_choice = request.get("tool_choice")
        metadata = request.get("metadata")
        truncation = request.get("truncation")
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "completed_at": completed_at,
            "error": dict(error) if error is not None else None,
            "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
            "instructions": _echo(request, "instructions", str),
            "max_output_tokens": _echo(request, "max_output_tokens", int),
            "model": self.model,
            "output": [dict(item) for item in output],
            "parallel_tool_calls": _echo(request, "parallel_tool_calls", bool, True),
            "previous_response_id": None,
            "reasoning": {"effort": reasoning_echo.get("effort"), "summary": reasoning_echo.get("summary")},
            "store": False,
            "temperature": _echo(request, "temperature", (int, float)),
            "text": dict(text) if isinstance(text, Mapping) else {"format": {"type": "text"}},
            "tool_choice": tool_choice if isinstance(tool_choice, (str, Mapping)) else "auto",
            "tools": [tool for tool in tools if isinstance(tool, Mapping)] if isinstance(tools, list) else [],
            "top_p": _echo(request, "top_p", (int, float)),
            "truncation": truncation if isinstance(truncation, str) else "disabled",
            "usage": usage.body(),
            "metadata": dict(metadata) if isinstance(metadata, Mapping) else {},
        }


def _echo(request: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: object = None) -> Any:
    value = request.get(key)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    return default


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _refusal_part(text: str) -> dict[str, Any]:
    return {"type": "refusal", "refusal": text}


def _reasoning_output(item_id: str, text: str | None) -> dict[str, Any]:
    summary = [] if text is None else [{"type": "summary_text", "text": text}]
    return {"id": item_id, "type": "reasoning", "summary": summary}


def _message_output(item_id: str, status: Status, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _call_output(
    item_id: str, status: Status, call_id: str, origin: tuple[str, str | None], arguments: str
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": origin[0],
    }
    if origin[1] is not None:
        item["namespace"] = origin[1]
    return item


def _whole_arguments(call: PendingCall) -> str:
    return compact_json(call.whole).decode() if call.whole is not None else "".join(call.parts)


def completion_to_response(
    body: Mapping[str, Any],
    *,
    model: str,
    response_id: str,
    created_at: float,
    request: Mapping[str, Any],
    completed_at: float | None = None,
    split_think_tags: bool = False,
) -> dict[str, Any]:
    """A non-stream ``chat.completion`` as a whole ``Response`` object.

    ``request`` is the client's own body: the response repeats its settings and reads namespace members'
    names through its tools.  ``completed_at`` defaults to ``created_at``.
    """
    choice = completion_choice(body)
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise BackendError("backend reply has no message")
    content, thinking, refusal = (
        _text(message.get("content")),
        reasoning(message),
        _text(message.get("refusal")),
    )
    if split_think_tags:
        splitter = ThinkTagSplitter()
        tag_thinking, content = splitter.feed(content)
        rest_thinking, rest_content = splitter.flush()
        thinking, content = thinking + tag_thinking + rest_thinking, content + rest_content
    calls: dict[int, PendingCall] = {}
    raw_calls = message.get("tool_calls")
    for position, entry in enumerate(raw_calls if isinstance(raw_calls, list) else []):
        if isinstance(entry, Mapping):
            merge_fragment(calls, {**entry, "index": position})

    tools = _declared_tools(request)
    output: list[dict[str, Any]] = []
    if thinking:
        output.append(_reasoning_output(_item_id("rs", response_id, len(output)), thinking))
    parts = ([_text_part(content)] if content else []) + ([_refusal_part(refusal)] if refusal else [])
    if parts or not calls:
        output.append(
            _message_output(_item_id("msg", response_id, len(output)), "completed", parts or [_text_part("")])
        )
    for position in sorted(calls):
        call = calls[position]
        if not call.name:
            raise BackendError("backend returned a tool call without a function name")
        call_id = call.id or synthesize_call_id(response_id, position, call.name)
        arguments = _whole_arguments(call) or "{}"
        output.append(
            _call_output(
                _item_id("fc", response_id, len(output)),
                "completed",
                call_id,
                tools.origin(call.name),
                arguments,
            )
        )

    incomplete = _incomplete_reason(choice.get("finish_reason"))
    if incomplete:  # the last item is the message or a call: the reasoning item never comes last here
        output[-1]["status"] = "incomplete"
    usage = _Usage().update(body.get("usage"))
    timings = body.get("timings")
    if usage.prompt is None and usage.completion is None and isinstance(timings, Mapping):
        # llama.cpp's own counts, for a server that leaves usage out
        usage = _Usage(_tokens(timings.get("prompt_n")), _tokens(timings.get("predicted_n")))
    echo = _Echo(model, response_id, _seconds(created_at), request)
    if incomplete:
        return echo.response("incomplete", output, usage, incomplete_reason=incomplete)
    finished = _seconds(completed_at if completed_at is not None else created_at)
    return echo.response("completed", output, usage, completed_at=finished)


# ---------------------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------------------

Event = dict[str, Any]
PartKind = Literal["output_text", "refusal"]


class _ReasoningItem:
    def __init__(self, item_id: str, index: int) -> None:
        self.id, self.index = item_id, index
        self.status: Status = "in_progress"
        self._text: list[str] = []

    def added(self) -> list[Event]:
        return [
            {"type": "response.output_item.added", "output_index": self.index, "item": self.output()},
            {"type": "response.reasoning_summary_part.added", **self._where(), "part": _summary_part("")},
        ]

    def delta(self, text: str) -> list[Event]:
        self._text.append(text)
        return [{"type": "response.reasoning_summary_text.delta", **self._where(), "delta": text}]

    def done(self, status: Status) -> list[Event]:
        self.status = status
        text = "".join(self._text)
        return [
            {"type": "response.reasoning_summary_text.done", **self._where(), "text": text},
            {"type": "response.reasoning_summary_part.done", **self._where(), "part": _summary_part(text)},
            {"type": "response.output_item.done", "output_index": self.index, "item": self.output()},
        ]

    def output(self) -> dict[str, Any]:
        """Reasoning items carry no status (OpenAI's do not either); the summary is there once begun."""
        return _reasoning_output(self.id, None if self.status == "in_progress" else "".join(self._text))

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.id, "output_index": self.index, "summary_index": 0}


def _summary_part(text: str) -> dict[str, Any]:
    return {"type": "summary_text", "text": text}


class _MessageItem:
    def __init__(self, item_id: str, index: int) -> None:
        self.id, self.index = item_id, index
        self.status: Status = "in_progress"
        self._parts: list[tuple[PartKind, list[str]]] = []
        self._part_open = False

    def added(self) -> list[Event]:
        return [{"type": "response.output_item.added", "output_index": self.index, "item": self.output()}]

    def delta(self, kind: PartKind, text: str) -> list[Event]:
        events: list[Event] = []
        if not self._part_open or self._parts[-1][0] != kind:
            events += self._close_part()
            events += self._open_part(kind)
        self._parts[-1][1].append(text)
        if kind == "output_text":
            events.append(
                {"type": "response.output_text.delta", **self._where(), "delta": text, "logprobs": []}
            )
        else:
            events.append({"type": "response.refusal.delta", **self._where(), "delta": text})
        return events

    def done(self, status: Status) -> list[Event]:
        # An answer without text still has its (empty) text part, where clients look for the text.
        events = [] if self._parts else self._open_part("output_text")
        events += self._close_part()
        self.status = status
        events.append(
            {"type": "response.output_item.done", "output_index": self.index, "item": self.output()}
        )
        return events

    def output(self) -> dict[str, Any]:
        content = [
            _text_part("".join(texts)) if kind == "output_text" else _refusal_part("".join(texts))
            for kind, texts in self._parts
        ]
        return _message_output(self.id, self.status, content if self.status != "in_progress" else [])

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.id, "output_index": self.index, "content_index": len(self._parts) - 1}

    def _open_part(self, kind: PartKind) -> list[Event]:
        self._parts.append((kind, []))
        self._part_open = True
        part = _text_part("") if kind == "output_text" else _refusal_part("")
        return [{"type": "response.content_part.added", **self._where(), "part": part}]

    def _close_part(self) -> list[Event]:
        if not self._part_open:
            return []
        self._part_open = False
        kind, texts = self._parts[-1]
        text = "".join(texts)
        if kind == "output_text":
            return [
                {"type": "response.output_text.done", **self._where(), "text": text, "logprobs": []},
                {"type": "response.content_part.done", **self._where(), "part": _text_part(text)},
            ]
        return [
            {"type": "response.refusal.done", **self._where(), "refusal": text},
            {"type": "response.content_part.done", **self._where(), "part": _refusal_part(text)},
        ]


class _CallItem:
    """One function call, fed from the backend's fragments as :func:`merge_fragment` assembles them."""

    def __init__(self, item_id: str, index: int, call_id: str, call: PendingCall, tools: _Tools) -> None:
        self.id, self.index, self.call_id = item_id, index, call_id
        self.status: Status = "in_progress"
        self._call = call
        self._tools = tools
        self._sent_parts = 0
        self._arguments: list[str] = []

    def added(self) -> list[Event]:
        return [{"type": "response.output_item.added", "output_index": self.index, "item": self.output()}]

    def catch_up(self) -> list[Event]:
        """Deltas for whatever the backend added to the call since the last look."""
        call = self._call
        if call.whole is not None and not self._arguments:
            fresh = [compact_json(call.whole).decode()]
        else:
            fresh = [part for part in call.parts[self._sent_parts :] if part]
        self._sent_parts = len(call.parts)
        return [self._delta(text) for text in fresh]

    def done(self, status: Status) -> list[Event]:
        events = self.catch_up()
        if not self._arguments:
            events.append(self._delta("{}"))
        self.status = status
        arguments = "".join(self._arguments)
        where = {"item_id": self.id, "output_index": self.index}
        events.append({"type": "response.function_call_arguments.done", **where, "arguments": arguments})
        events.append(
            {"type": "response.output_item.done", "output_index": self.index, "item": self.output()}
        )
        return events

    def output(self) -> dict[str, Any]:
        arguments = "".join(self._arguments) if self.status != "in_progress" else ""
        # The name as it stands: a backend may have spread it over fragments.
        return _call_output(
            self.id, self.status, self.call_id, self._tools.origin(self._call.name), arguments
        )

    def _delta(self, text: str) -> Event:
        self._arguments.append(text)
        return {
            "type": "response.function_call_arguments.delta",
            "item_id": self.id,
            "output_index": self.index,
            "delta": text,
        }


_Item = _ReasoningItem | _MessageItem | _CallItem


def _incomplete_reason(finish_reason: object) -> str | None:
    return _INCOMPLETE_REASONS.get(finish_reason) if isinstance(finish_reason, str) else None


def _sse(event: Event) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + compact_json(event) + b"\n\n"


class ResponsesStream(StreamState):
    """OpenAI ``chat.completion.chunk`` events (decoded JSON) -> Responses SSE bytes.

    The stream plumbing calls :meth:`start` when the backend answered, :meth:`feed` per chunk, then
    :meth:`finish` at the end or :meth:`fail` when the backend broke off.  Any of them may come first:
    ``response.created`` always leads, as ``responses.stream()`` insists.  After a failure or the end,
    everything returns ``b""``.
    """

    def __init__(
        self,
        *,
        model: str,
        response_id: str,
        created_at: float,
        request: Mapping[str, Any],
        split_think_tags: bool = False,
    ) -> None:
        self._echo = _Echo(model, response_id, _seconds(created_at), request)
        self._tools = _declared_tools(request)
        self._splitter = ThinkTagSplitter() if split_think_tags else None
        self._sequence = 0
        self._items: list[_Item] = []
        self._current: _ReasoningItem | _MessageItem | None = None
        self._calls: dict[int, PendingCall] = {}
        self._call_items: dict[int, _CallItem] = {}
        self._usage = _Usage()
        self._finish_reason: object = None
        self._first: Instant | None = None
        self._started = False
        self._failed = False
        self._finished = False

    @property
    def usage(self) -> tuple[int | None, int | None]:
        return self._usage.prompt, self._usage.completion

    def start(self, at: Instant) -> bytes:
        return self._emit(self._begin())

    def feed(self, event: Mapping[str, Any], at: Instant) -> bytes:
        if self._failed or self._finished:
            return b""
        events = self._begin()
        if event.get("error"):
            return self._emit(events + self._failure(error_text(event["error"])))
        self._usage = self._usage.update(event.get("usage"))
        choice = first_choice(event)
        if choice is None:
            return self._emit(events)
        raw_delta = choice.get("delta")
        delta: Mapping[str, Any] = raw_delta if isinstance(raw_delta, Mapping) else {}
        content, thinking, refusal = (
            _text(delta.get("content")),
            reasoning(delta),
            _text(delta.get("refusal")),
        )
        raw_fragments = delta.get("tool_calls")
        fragments = (
            [f for f in raw_fragments if isinstance(f, Mapping)] if isinstance(raw_fragments, list) else []
        )
        if content or thinking or refusal or fragments:
            self._first = self._first or at
        if self._splitter is not None and content:
            tag_thinking, content = self._splitter.feed(content)
            thinking += tag_thinking
        events += self._texts(thinking, content, refusal)
        for fragment in fragments:
            merge_fragment(self._calls, fragment)
        if fragments:
            events += self._catch_up_calls()
        finish_reason = choice.get("finish_reason")
        if finish_reason is not None:
            self._finish_reason = finish_reason
            events += self._flush_splitter()
        return self._emit(events)

    def finish(self, at: Instant) -> bytes:
        """The end of the backend stream: every open item closed, then the whole response."""
        if self._failed or self._finished:
            return b""
        events = self._begin() + self._flush_splitter()
        if any(not call.name for call in self._calls.values()):
            return self._emit(events + self._failure("backend returned a tool call without a function name"))
        events += self._catch_up_calls()
        if not any(isinstance(item, (_MessageItem, _CallItem)) for item in self._items):
            events += self._open_message()[0]
        incomplete = _incomplete_reason(self._finish_reason)
        last = self._items[-1]
        for item in self._items:
            if item.status == "in_progress":
                events += item.done("incomplete" if incomplete and item is last else "completed")
        self._current = None
        self._finished = True
        output = [item.output() for item in self._items]
        if incomplete:
            response = self._echo.response("incomplete", output, self._usage, incomplete_reason=incomplete)
            events.append({"type": "response.incomplete", "response": response})
        else:
            response = self._echo.response("completed", output, self._usage, completed_at=_seconds(at.wall))
            events.append({"type": "response.completed", "response": response})
        return self._emit(events)

    def fail(self, message: str) -> bytes:
        """The backend broke off: ``response.failed`` with what was produced, then the ``error`` event."""
        if self._failed or self._finished:
            return b""
        return self._emit(self._begin() + self._failure(message))

    # --- internals -----------------------------------------------------------------------------------

    def _begin(self) -> list[Event]:
        if self._started:
            return []
        self._started = True
        response = self._echo.response("in_progress", [], _Usage())
        return [
            {"type": "response.created", "response": response},
            {"type": "response.in_progress", "response": response},
        ]

    def _emit(self, events: list[Event]) -> bytes:
        out = []
        for event in events:
            event["sequence_number"] = self._sequence
            self._sequence += 1
            out.append(_sse(event))
        return b"".join(out)

    def _failure(self, message: str) -> list[Event]:
        self._failed = True
        for item in self._items:
            if item.status == "in_progress":
                item.status = "incomplete"
        error = {"code": "server_error", "message": message}
        output = [item.output() for item in self._items]
        response = self._echo.response("failed", output, self._usage, error=error)
        return [{"type": "response.failed", "response": response}, error_event_object(message)]

    def _texts(self, thinking: str, content: str, refusal: str) -> list[Event]:
        events: list[Event] = []
        if thinking:
            reasoning_item = self._current
            if not isinstance(reasoning_item, _ReasoningItem):
                events += self._close_current()
                reasoning_item = _ReasoningItem(self._next_id("rs"), len(self._items))
                events += self._open(reasoning_item)
            events += reasoning_item.delta(thinking)
        if content:
            opened, message = self._message()
            events += opened + message.delta("output_text", content)
        if refusal:
            opened, message = self._message()
            events += opened + message.delta("refusal", refusal)
        return events

    def _message(self) -> tuple[list[Event], _MessageItem]:
        """The message item text goes to, opened if need be."""
        if isinstance(self._current, _MessageItem):
            return [], self._current
        return self._open_message()

    def _open_message(self) -> tuple[list[Event], _MessageItem]:
        events = self._close_current()
        message = _MessageItem(self._next_id("msg"), len(self._items))
        return events + self._open(message), message

    def _open(self, item: _ReasoningItem | _MessageItem) -> list[Event]:
        self._items.append(item)
        self._current = item
        return item.added()

    def _next_id(self, prefix: str) -> str:
        return _item_id(prefix, self._echo.response_id, len(self._items))

    def _close_current(self) -> list[Event]:
        if self._current is None:
            return []
        events = self._current.done("completed")
        self._current = None
        return events

    def _catch_up_calls(self) -> list[Event]:
        events: list[Event] = []
        for index in sorted(self._calls):
            call = self._calls[index]
            item = self._call_items.get(index)
            if item is None:
                if not call.name:
                    continue  # nothing can be announced before the name arrives
                events += self._close_current()
                call_id = call.id or synthesize_call_id(self._echo.response_id, index, call.name)
                item = _CallItem(self._next_id("fc"), len(self._items), call_id, call, self._tools)
                self._items.append(item)
                self._call_items[index] = item
                events += item.added()
            events += item.catch_up()
        return events

    def _flush_splitter(self) -> list[Event]:
        if self._splitter is None:
            return []
        thinking, content = self._splitter.flush()
        return self._texts(thinking, content, "")


def stream_error_events(
    message: str, *, model: str, response_id: str, created_at: float, request: Mapping[str, Any]
) -> bytes:
    """A whole failed Responses stream, for a request that fails after the event stream was promised but
    before a :class:`ResponsesStream` said anything: ``response.created``, ``response.in_progress``,
    ``response.failed`` and the ``error`` event."""
    return ResponsesStream(model=model, response_id=response_id, created_at=created_at, request=request).fail(
        message
    )

"""Request schemas of the Ollama API, and the one cattrs converter that builds them.

Ollama clients send extra keys freely (the SDK, Open WebUI, LangChain each add their own), so unknown keys
are ignored, as Ollama does.  What *is* modelled is checked strictly: a number where a string belongs is a
400 naming the field, not a silent ``str(3)``.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from functools import partial
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from ollama_proxy.errors import BadRequest

T = TypeVar("T")

JSONObject = dict[str, Any]


@attrs.frozen
class ToolCallFunction:
    """The function part of a tool call; ``arguments`` is an object on the Ollama side, never a string."""

    name: str
    arguments: JSONObject = attrs.Factory(dict)
    index: int | None = None


@attrs.frozen
class ToolCall:
    function: ToolCallFunction
    id: str | None = None


@attrs.frozen
class Message:
    role: str
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


# ``format``: "json", a JSON-schema object, or ""/null for none.
Format = str | JSONObject | None
# ``keep_alive``: seconds as a number, or a Go duration string ("5m", "1h30m", "0", "-1").
KeepAlive = str | int | float | None
# ``think``: a bool, or a level "low" | "medium" | "high" | "max".
Think = bool | str | None


@attrs.frozen
class ChatRequest:
    model: str
    messages: list[Message] = attrs.Factory(list)
    tools: list[JSONObject] = attrs.Factory(list)
    format: Format = None
    options: JSONObject = attrs.Factory(dict)
    stream: bool = True
    keep_alive: KeepAlive = None
    think: Think = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


@attrs.frozen
class GenerateRequest:
    model: str = ""  # missing is Ollama's 404 "model '' not found", not a 400
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None
    format: Format = None
    options: JSONObject = attrs.Factory(dict)
    stream: bool = True
    keep_alive: KeepAlive = None
    think: Think = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


@attrs.frozen
class ModelRequest:
    """``/api/show``, ``/api/pull``, ``/api/push``, ``/api/delete``; Ollama still takes legacy ``name``."""

    model: str = ""
    name: str = ""
    verbose: bool = False
    stream: bool = True
    insecure: bool = False

    @property
    def requested(self) -> str:
        return self.model or self.name


@attrs.frozen
class CopyRequest:
    source: str
    destination: str


@attrs.frozen
class EmbedRequest:
    """``/api/embed``.  ``input`` (a string or a list of strings) is checked by the handler, which answers
    Ollama's own ``invalid input type``; ``truncate`` and ``options`` are accepted and not forwarded."""

    model: str = ""  # missing is Ollama's 404 "model '' not found", as for generate
    input: Any = None
    truncate: bool | None = None
    dimensions: int | None = None
    options: JSONObject = attrs.Factory(dict)
    keep_alive: KeepAlive = None


@attrs.frozen
class EmbeddingsRequest:
    """``/api/embeddings``, the legacy single-prompt form."""

    model: str = ""
    prompt: str | None = None
    options: JSONObject = attrs.Factory(dict)
    keep_alive: KeepAlive = None


def _strict(kind: type[Any] | tuple[type[Any], ...], what: str) -> Any:
    """A structure hook that accepts only ``kind`` (bool is not an int here, as in Go's decoder)."""

    def hook(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise TypeError(f"expected {what}, got a boolean")
        if not isinstance(value, kind):
            raise TypeError(f"expected {what}, got {type(value).__name__}")
        return value

    return hook


def _format_hook(value: Any, _type: Any) -> Format:
    if value is None or isinstance(value, (str, dict)):
        return value
    raise TypeError('expected "json" or a JSON schema object')


def _keep_alive_hook(value: Any, _type: Any) -> KeepAlive:
    if value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool)):
        return value
    raise TypeError("expected a duration string or a number of seconds")


def _think_hook(value: Any, _type: Any) -> Think:
    if value is None or isinstance(value, (bool, str)):
        return value
    raise TypeError('expected true, false, "low", "medium", "high" or "max"')


def _tool_arguments_hook(value: Any, _type: Any) -> JSONObject:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise TypeError("expected an object")


def _build_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=False)
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(bool, _strict(bool, "a boolean"))
    converter.register_structure_hook(int, _strict(int, "an integer"))
    converter.register_structure_hook(float, _strict((int, float), "a number"))
    # Generic aliases and unions are matched by equality, which functools' class dispatch cannot do.
    for alias, hook in (
        (JSONObject, _strict(dict, "an object")),
        (Format, _format_hook),
        (KeepAlive, _keep_alive_hook),
        (Think, _think_hook),
    ):
        converter.register_structure_hook_func(partial(operator.eq, alias), hook)
    converter.register_structure_hook(
        ToolCallFunction,
        make_dict_structure_fn(
            ToolCallFunction,
            converter,
            arguments=override(struct_hook=_tool_arguments_hook),
        ),
    )
    return converter


converter = _build_converter()


def _path(exc: BaseException) -> str:
    """The first failing field of a cattrs error as ``messages[0].role``."""
    messages = cattrs.transform_error(exc, path="$")
    first = messages[0] if messages else "invalid request"
    return first


def structure(data: Any, cls: type[T]) -> T:
    """Build ``cls`` from decoded JSON, turning any mismatch into a 400 that names the field."""
    if not isinstance(data, Mapping):
        raise BadRequest("request body must be a JSON object")
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        raise BadRequest(_describe(exc)) from None


def _describe(exc: BaseException) -> str:
    """Render a cattrs failure as Ollama-ish text: ``invalid value for field 'messages[0].role': ...``."""
    if not isinstance(exc, cattrs.BaseValidationError):
        return str(exc)
    text = _path(exc)
    # transform_error gives e.g. "expected str @ $.messages[0].role" or "required field missing @ $.model"
    reason, _, where = text.partition(" @ ")
    field = where.removeprefix("$").removeprefix(".") or "body"
    if reason == "required field missing":
        return f"{field} is required"
    reason = reason.removeprefix("invalid value for type, ")
    return f"invalid value for '{field}': {reason}"

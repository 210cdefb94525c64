"""The OpenAI API passed through: what the daemon changes on the way, and nothing else.

A ``/v1/*`` request goes to the same path under the backend base URL with its method, query and body.
The decisions, all pure functions of their inputs:

* **Paths** keep their percent-encoding (a model id such as ``Qwen%2FQwen2.5-7B`` stays one segment);
  dot segments (``..``, also encoded) are refused, so no client reaches a backend path outside the base.
* **The body** is forwarded byte for byte, except that a JSON object whose ``model`` names a model-map alias
  (or ``NAME:latest``) is re-serialised with the backend id in its place.
* **Headers**: hop-by-hop ones (RFC 9110 §7.6.1, and any the ``Connection`` header names) never cross.
  Toward the backend the daemon also sets its own ``Host``, ``Content-Length``, ``Accept-Encoding`` (the
  HTTP client decodes gzip itself, and no other coding could be relayed), ``X-Request-ID`` and
  ``Authorization``; toward the client it drops ``Content-Length`` (the body is relayed chunked, so a body
  cut short by a broken backend is visible as such) and keeps its own ``X-Request-ID``.
* **Errors the daemon itself produces** take OpenAI's shape ``{"error": {"message", "type", "param",
  "code"}}``; the backend's own error replies are relayed with their status and body.
* **/v1/models** is the backend's list with one entry per model-map alias whose target it serves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote

from ollama_proxy.json_codec import compact_json, parse_json
from ollama_proxy.translate.models import lookup_key
from ollama_proxy.wire.openai import sse_error_event

# RFC 9110 §7.6.1, plus the pre-standard names still seen in the wild.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    }
)
# Set by the daemon (or its HTTP client) on the way to the backend.
DAEMON_REQUEST_HEADERS: Final = frozenset(
    {b"host", b"content-length", b"authorization", b"accept-encoding", b"x-request-id", b"expect"}
)
# Set by the daemon on the way back to the client.
DAEMON_RESPONSE_HEADERS: Final = frozenset({b"content-length", b"x-request-id"})

EVENT_STREAM: Final = "text/event-stream"

RawHeaders = Iterable[tuple[bytes, Sequence[bytes]]]


# ---------------------------------------------------------------------------------------------------------
# Headers
# ---------------------------------------------------------------------------------------------------------


def _connection_listed(headers: Sequence[tuple[bytes, Sequence[bytes]]]) -> set[bytes]:
    """Header names a ``Connection`` header declares hop-by-hop (``Connection: close, X-Foo``)."""
    listed: set[bytes] = set()
    for name, values in headers:
        if name.lower() == b"connection":
            for value in values:
                listed.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return listed


def _filtered(headers: RawHeaders, drop: frozenset[bytes]) -> dict[bytes, list[bytes]]:
    pairs = [(name, list(values)) for name, values in headers]
    excluded = HOP_BY_HOP | drop | _connection_listed(pairs)
    out: dict[bytes, list[bytes]] = {}
    for name, values in pairs:
        key = name.lower()
        if key not in excluded:
            out.setdefault(key, []).extend(values)
    return out


def request_headers(headers: RawHeaders) -> dict[bytes, list[bytes]]:
    """The client's end-to-end request headers to send on to the backend (names lower-cased)."""
    return _filtered(headers, DAEMON_REQUEST_HEADERS)


def response_headers(headers: RawHeaders) -> dict[bytes, list[bytes]]:
    """The backend's end-to-end response headers to relay to the client (names lower-cased)."""
    return _filtered(headers, DAEMON_RESPONSE_HEADERS)


def is_event_stream(content_type: str | None) -> bool:
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == EVENT_STREAM


class PassThrough:
    """The stream relay's transform for ``/v1``: the backend's bytes exactly as they arrive.

    Only a broken stream adds anything: an error event if it is an event stream (OpenAI's, unless the
    API family has its own: ``event_ending``), nothing otherwise (a JSON body cut short is already
    unreadable as JSON).
    """

    def __init__(self, *, event_stream: bool, event_ending: Callable[[str], bytes] = sse_error_event) -> None:
        self._event_stream = event_stream
        self._event_ending = event_ending

    @property
    def failed(self) -> bool:
        return False

    def start(self) -> bytes:
        return b""

    def feed(self, data: bytes) -> bytes:
        return data

    def end(self) -> bytes:
        return b""

    def fail(self, message: str) -> bytes:
        return self._event_ending(message) if self._event_stream else b""


# ---------------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------------


def backend_target(path: bytes, query: bytes, *, prefix: bytes = b"/v1") -> str:
    """The request's path and query relative to the backend base URL, encoding untouched.

    ``/v1/chat/completions`` and ``/chat/completions`` both give ``chat/completions``.  Raises ValueError
    for a path that is not ASCII or has a dot segment.
    """
    if prefix and (path == prefix or path.startswith(prefix + b"/")):
        path = path[len(prefix) :]
    try:
        text = path.decode("ascii")
        query_text = query.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("the request path is not ASCII") from None
    # Segments are checked after decoding the whole path, so "..%2F" and "%2e%2e" are refused like "../".
    if any(segment in (".", "..") for segment in re.split(r"[/\\]", unquote(text))):
        raise ValueError("the request path has a dot segment")
    target = text.lstrip("/")
    return f"{target}?{query_text}" if query_text else target


def model_path(target: str) -> tuple[bool, str | None]:
    """For a target: (is it the model list, the model id of ``models/{id}`` if it is one).

    The id is percent-decoded; it may hold ``/`` either encoded or not (``models/Qwen/Qwen2.5-7B``).
    """
    path = target.split("?", 1)[0]
    if path == "models":
        return True, None
    if path.startswith("models/") and len(path) > len("models/"):
        return False, unquote(path[len("models/") :])
    return False, None


# ---------------------------------------------------------------------------------------------------------
# Model names
# ---------------------------------------------------------------------------------------------------------


def find_alias(name: str, model_map: Mapping[str, str]) -> tuple[str, str] | None:
    """(alias as the map spells it, its backend id) when ``name`` is an alias, by the catalog's rules."""
    key = lookup_key(name)
    for alias, target in model_map.items():
        if lookup_key(alias) == key:
            return alias, target
    return None


def may_need_rewrite(name: str, model_map: Mapping[str, str]) -> bool:
    """Whether a ``model`` could name a backend model under another name: an alias, or ``NAME:latest``.

    Anything else is forwarded as sent without consulting the model list.
    """
    return lookup_key(name) != name.strip().lower() or find_alias(name, model_map) is not None


def mapped_name(name: str, model_map: Mapping[str, str]) -> str:
    """Where a name points by the model map alone (no model list at hand): an alias's target, else the
    name without ``:latest``."""
    alias = find_alias(name, model_map)
    if alias is not None:
        return alias[1]
    stripped = name.strip()
    return stripped[: -len(":latest")] if stripped.lower().endswith(":latest") else name


# Endpoints whose request body is a JSON object naming the model: the daemon routes by that model and
# rewrites aliases in it, so it reads them, and a body it cannot read there is the client's 400.
MODEL_BODIES: Final = frozenset({"chat/completions", "completions", "embeddings"})


def body_model(target: str, body: bytes) -> tuple[dict[str, Any], str] | None:
    """The JSON object and its ``model``, for a body that names one; None for a body the daemon leaves
    alone (another endpoint's, such as a multipart upload, or one without a ``model``).

    On the model endpoints (:data:`MODEL_BODIES`) the body must be a JSON object, strictly parsed
    (``json_codec.parse_json``), whose ``model`` is a string: anything else raises ``ValueError`` with the
    client's message, and the backend never sees it.
    """
    strict = target.split("?", 1)[0] in MODEL_BODIES
    if not strict and body.lstrip()[:1] != b"{":
        return None
    try:
        data = parse_json(body)
    except UnicodeDecodeError:
        if strict:
            raise ValueError("the request body is not UTF-8") from None
        return None
    except json.JSONDecodeError as exc:
        if strict:
            raise ValueError(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno}") from None
        return None
    except ValueError as exc:  # JSONRejected: too deep, NaN, a huge number
        if strict:
            raise ValueError(f"the request body is not valid JSON: {exc}") from None
        return None
    if not isinstance(data, dict):
        if strict:
            raise ValueError("the request body must be a JSON object")
        return None
    model = data.get("model")
    if isinstance(model, str):
        return data, model
    if strict and model is not None:
        raise ValueError("'model' must be a string")
    if strict:
        raise ValueError("you must provide a model parameter")
    return None


def with_model(data: Mapping[str, Any], model: str) -> bytes:
    """The body re-serialised with ``model`` replaced (key order kept)."""
    return compact_json({**data, "model": model})


# ---------------------------------------------------------------------------------------------------------
# /v1/models
# ---------------------------------------------------------------------------------------------------------


def alias_entry(alias: str, target: Mapping[str, Any]) -> dict[str, Any]:
    """An alias listed as a model of its own: its target's entry under the alias's id, so what the backend
    says about the model (``max_model_len``, ``context_length``, ``owned_by`` ...) holds for the alias."""
    return {**target, "id": alias}


def minimal_entry(model_id: str, created: int, owned_by: str) -> dict[str, Any]:
    """OpenAI's model object with nothing but its required fields."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def _target_entry(entries: Sequence[Mapping[str, Any]], target: str) -> Mapping[str, Any] | None:
    for entry in entries:
        if entry.get("id") == target:
            return entry
    key = lookup_key(target)
    for entry in entries:
        if isinstance(entry.get("id"), str) and lookup_key(entry["id"]) == key:
            return entry
    return None


def merge_model_list(body: Any, model_map: Mapping[str, str]) -> Any:
    """The backend's ``/models`` reply with one entry appended per alias whose target it lists.

    An alias that is already a backend id, or whose target the backend does not serve, adds nothing; a
    reply that is not OpenAI's list shape, or that gains nothing, is returned as the same object.
    """
    if not isinstance(body, Mapping) or not isinstance(body.get("data"), list):
        return body
    entries = [entry for entry in body["data"] if isinstance(entry, Mapping)]
    ids = {entry.get("id") for entry in entries}
    added = []
    for alias, target in model_map.items():
        if alias in ids:
            continue
        found = _target_entry(entries, target)
        if found is not None:
            added.append(alias_entry(alias, found))
            ids.add(alias)
    if not added:
        return body  # the backend's reply as it is (the handler then relays its very bytes)
    return {**body, "data": [*body["data"], *added]}

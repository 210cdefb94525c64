"""OpenAI replies and stream events as Ollama replies and NDJSON chunks.

Time is an argument everywhere (:class:`Instant`), so every output here is a function of its inputs.

Policies decided here, because the OpenAI side leaves them open:

* **Tool-call arguments** that are not a JSON object (unparseable text, an array, a string...) are a backend
  failure: the stream ends with ``{"error": ...}`` and :func:`completion_to_reply` raises
  :class:`BackendError`.  A tool call is an action; running it with invented arguments (``{}``) could do
  something the model never asked for, while an error is visible and retryable.  ``""`` and ``null`` are
  the documented way of saying "no arguments" and become ``{}``.
* **load_duration** is the daemon's own wait before the backend call went out (finding the model,
  waiting for a concurrency slot), given as ``arrived``: what stands between a request and its model being
  ready, as Ollama's own is.  Without ``arrived`` it is left out, and ``total_duration`` starts at the
  backend call.
* **Durations** are integers in nanoseconds and at least 1 when present, so clients computing tokens per
  second never divide by zero.  Without a first token, ``eval_duration`` is the whole request and
  ``prompt_eval_duration`` is left out.
* **Reasoning** reaches the client as :class:`Reasoning` says: relayed as ``thinking`` when the client did
  not ask, split out of the content too when thinking is on, and not at all after ``think: false``.  Either
  way the translator notes whether the model reasoned (:attr:`StreamTranslator.saw_reasoning`,
  :func:`carries_reasoning`): a reasoning field with text, or content that opens with ``<think>``.
* **Generate replies** carry ``tool_calls`` as chat replies do, and their final reply the ``context``
  the caller computes from the whole answer (``context_for``).
* **Log probabilities** of ``-inf`` (which some backends emit as ``-Infinity``, invalid JSON for Go
  clients) are reported as -9999.0, OpenAI's own stand-in.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from ollama_proxy.errors import BackendError
from ollama_proxy.json_codec import parse_json
from ollama_proxy.translate.chat import synthesize_call_id
from ollama_proxy.translate.timestamps import rfc3339_utc

Kind = Literal["chat", "generate"]

# ---------------------------------------------------------------------------------------------------------
# Time and framing
# ---------------------------------------------------------------------------------------------------------


@attrs.frozen
class Instant:
    """One reading of both clocks: the wall clock dates chunks, the monotonic one measures durations."""

    wall: float
    mono_ns: int


def ollama_reply(
    model: str,
    kind: Kind,
    at: Instant,
    *,
    content: str = "",
    thinking: str = "",
    tool_calls: list[dict[str, Any]] | None = None,
    done_reason: str | None = None,
    context: list[int] | None = None,
    metrics: Mapping[str, int] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The one builder of Ollama's reply shape, for chat and generate alike: a stream chunk (no
    ``done_reason``) or a final reply (with one), in the key order of Ollama's own structs.

    Chat puts the text in ``message`` (``content`` always present, ``thinking`` and ``tool_calls`` only
    when there are some), then ``logprobs`` before the metrics; generate puts it in ``response`` with
    ``thinking`` beside it, then ``context``, the metrics, ``tool_calls`` and ``logprobs``.
    """
    reply: dict[str, Any] = {"model": model, "created_at": rfc3339_utc(at.wall)}
    if kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if tool_calls:
            message["tool_calls"] = tool_calls
        reply["message"] = message
    else:
        reply["response"] = content
        if thinking:
            reply["thinking"] = thinking
    reply["done"] = done_reason is not None
    if done_reason is not None:
        reply["done_reason"] = done_reason
    if kind == "chat":
        if logprobs:
            reply["logprobs"] = logprobs
        if metrics:
            reply.update(metrics)
        return reply
    if context:  # Ollama's omitempty: an empty context is no field
        reply["context"] = context
    reply.update(metrics or {})
    if tool_calls:
        reply["tool_calls"] = tool_calls
    if logprobs:
        reply["logprobs"] = logprobs
    return reply


def _duration(start_ns: int, end_ns: int) -> int:
    return max(1, end_ns - start_ns)


# ---------------------------------------------------------------------------------------------------------
# Small readers for untrusted backend JSON
# ---------------------------------------------------------------------------------------------------------


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def reasoning(container: Mapping[str, Any]) -> str:
    """vLLM moved from ``reasoning_content`` to ``reasoning`` and for a while sent both with the same text;
    llama.cpp and DeepSeek use ``reasoning_content``.  Take one, never both."""
    return _text(container.get("reasoning")) or _text(container.get("reasoning_content"))


def first_choice(event: Mapping[str, Any]) -> Mapping[str, Any] | None:
    # Decoded JSON: a dict is the only mapping there is (an ABC isinstance costs per event).
    choices = event.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def completion_choice(body: object) -> Mapping[str, Any]:
    """The first choice of a whole (non-stream) backend reply; a reply that is not one, or that carries
    an ``error``, is the backend's failure (``BackendError``)."""
    if not isinstance(body, Mapping):
        raise BackendError("backend reply is not a JSON object")
    if body.get("error"):
        raise BackendError(error_text(body["error"]))
    choice = first_choice(body)
    if choice is None:
        raise BackendError("backend reply has no choices")
    return choice


_DONE_REASONS: Final = {"stop": "stop", "length": "length"}


def done_reason(finish_reason: object) -> str:
    """Ollama says ``stop`` after tool calls too; it has no words for content filters or unknown reasons."""
    return _DONE_REASONS.get(finish_reason, "stop") if isinstance(finish_reason, str) else "stop"


def error_text(error: object) -> str:
    """The string Ollama clients need: the SDK raises ``TypeError`` on an object-valued ``error``."""
    if isinstance(error, str):
        return error or "backend error"
    if isinstance(error, Mapping):
        message = error.get("message")
        if isinstance(message, str) and message:
            return message
    return "backend error: " + json.dumps(error, ensure_ascii=False, default=str)


# ---------------------------------------------------------------------------------------------------------
# Log probabilities
# ---------------------------------------------------------------------------------------------------------

_NEG_INF_LOGPROB: Final = -9999.0


def _logprob_value(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else _NEG_INF_LOGPROB
    return None


def _token_logprob(entry: object) -> dict[str, Any] | None:
    if not isinstance(entry, Mapping):
        return None
    token, logprob = entry.get("token"), _logprob_value(entry.get("logprob"))
    if not isinstance(token, str) or logprob is None:
        return None
    out: dict[str, Any] = {"token": token, "logprob": logprob}
    raw_bytes = entry.get("bytes")
    if isinstance(raw_bytes, list) and raw_bytes and all(isinstance(b, int) for b in raw_bytes):
        out["bytes"] = raw_bytes
    return out


def convert_logprobs(raw: object) -> list[dict[str, Any]]:
    """``choices[i].logprobs`` in either OpenAI shape (chat ``content[]`` or legacy completions columns)."""
    if not isinstance(raw, Mapping):
        return []
    out: list[dict[str, Any]] = []
    content = raw.get("content")
    if isinstance(content, list):
        for entry in content:
            converted = _token_logprob(entry)
            if converted is None:
                continue
            top = entry.get("top_logprobs")
            alternatives = [alt for alt in map(_token_logprob, top if isinstance(top, list) else []) if alt]
            if alternatives:
                converted["top_logprobs"] = alternatives
            out.append(converted)
        return out
    tokens, values, tops = raw.get("tokens"), raw.get("token_logprobs"), raw.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list):
        return out
    for i, (token, value) in enumerate(zip(tokens, values, strict=False)):
        logprob = _logprob_value(value)
        if not isinstance(token, str) or logprob is None:
            continue
        column: dict[str, Any] = {"token": token, "logprob": logprob}
        top = tops[i] if isinstance(tops, list) and i < len(tops) else None
        if isinstance(top, Mapping):
            alternatives = []
            for alt_token, alt_value in top.items():
                alt_logprob = _logprob_value(alt_value)
                if isinstance(alt_token, str) and alt_logprob is not None:
                    alternatives.append({"token": alt_token, "logprob": alt_logprob})
            if alternatives:
                column["top_logprobs"] = alternatives
        out.append(column)
    return out


# ---------------------------------------------------------------------------------------------------------
# Tool calls
# ---------------------------------------------------------------------------------------------------------


@attrs.define
class PendingCall:
    id: str | None = None
    name: str = ""
    parts: list[str] = attrs.Factory(list)
    # Some backends send the arguments already decoded, as an object.
    whole: Mapping[str, Any] | None = None


def tool_arguments(name: str, text: str) -> dict[str, Any]:
    if not text.strip() or text.strip() == "null":
        return {}
    try:
        value = parse_json(text)
    except ValueError:
        raise BackendError(f"backend returned invalid JSON arguments for tool call '{name}'") from None
    if not isinstance(value, dict):
        raise BackendError(f"backend returned non-object arguments for tool call '{name}'")
    return value


def _ollama_calls(calls: Sequence[PendingCall], *, first: int = 0) -> list[dict[str, Any]]:
    """Ollama's tool calls: whole, arguments as an object, ``index`` as the position in the reply's list
    (which starts at ``first`` when earlier calls of the same reply were sent already)."""
    out = []
    for position, call in enumerate(calls, start=first):
        if not call.name:
            raise BackendError("backend returned a tool call without a function name")
        text = "".join(call.parts)
        arguments = dict(call.whole) if call.whole is not None else tool_arguments(call.name, text)
        out.append(
            {
                "id": call.id or synthesize_call_id("reply", position, call.name, text),
                "function": {"index": position, "name": call.name, "arguments": arguments},
            }
        )
    return out


def merge_fragment(calls: dict[int, PendingCall], fragment: Mapping[str, Any]) -> None:
    """Fold one ``delta.tool_calls[]`` entry into the calls being assembled.

    Fragments are keyed by ``index``; a backend that leaves it out gets the usual reading: a new ``id``
    starts a call, anything else continues the last one.
    """
    index = fragment.get("index")
    fragment_id = fragment.get("id") if isinstance(fragment.get("id"), str) else None
    if not isinstance(index, int) or isinstance(index, bool):
        known = next((k for k, call in calls.items() if fragment_id and call.id == fragment_id), None)
        if known is not None:
            index = known
        elif fragment_id or not calls:
            index = max(calls, default=-1) + 1
        else:
            index = max(calls)
    call = calls.setdefault(index, PendingCall())
    if fragment_id and not call.id:
        call.id = fragment_id
    function = fragment.get("function")
    if not isinstance(function, Mapping):
        return
    name = function.get("name")
    # The first fragment carries the name; some backends repeat it on every fragment.
    if isinstance(name, str) and name and name != call.name:
        call.name = name if not call.name else call.name + name
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        call.parts.append(arguments)
    elif isinstance(arguments, Mapping):
        call.whole = arguments


def _calls_from_message(raw: object) -> list[PendingCall]:
    calls: dict[int, PendingCall] = {}
    if isinstance(raw, list):
        for position, entry in enumerate(raw):
            if isinstance(entry, Mapping):
                merge_fragment(calls, {**entry, "index": position})
    return [calls[k] for k in sorted(calls)]


# ---------------------------------------------------------------------------------------------------------
# Inline <think> tags
# ---------------------------------------------------------------------------------------------------------

_OPEN_TAG: Final = "<think>"
_CLOSE_TAG: Final = "</think>"


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that could be the start of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ThinkTagSplitter:
    """Moves a leading ``<think>...</think>`` block of streamed content into thinking.

    For backends that run without a reasoning parser: the model's raw text then starts with the tag.  Only a
    block at the very start counts (a later ``<think>`` is content the model wrote); whitespace around the
    block is dropped, as Ollama's own parser does.  Text that might be a split tag is held back until the
    next delta decides, so any split of the stream gives the same result as the whole.
    """

    def __init__(self) -> None:
        self._state: Literal["start", "opened", "inside", "after", "content"] = "start"
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        """Returns ``(thinking, content)`` that can be emitted now."""
        text = self._held + text
        self._held = ""
        thinking = ""
        if self._state == "start":
            stripped = text.lstrip()
            if stripped.startswith(_OPEN_TAG):
                self._state = "opened"
                text = stripped[len(_OPEN_TAG) :]
            elif _OPEN_TAG.startswith(stripped):
                self._held = text
                return "", ""
            else:
                self._state = "content"
                return "", text
        if self._state == "opened":
            text = text.lstrip()
            if not text:
                return "", ""
            self._state = "inside"
        if self._state == "inside":
            end = text.find(_CLOSE_TAG)
            if end < 0:
                # Hold back trailing whitespace (dropped if the tag follows) and a possible split tag.
                keep = _partial_suffix(text, _CLOSE_TAG)
                body = text[: len(text) - keep]
                trimmed = body.rstrip()
                self._held = body[len(trimmed) :] + text[len(text) - keep :]
                return trimmed, ""
            thinking = text[:end].rstrip()
            text = text[end + len(_CLOSE_TAG) :]
            self._state = "after"
        if self._state == "after":
            text = text.lstrip()
            if not text:
                return thinking, ""
            self._state = "content"
        return thinking, text

    @property
    def passing(self) -> bool:
        """Whether content now passes through unchanged: the leading block (if any) is behind, nothing is
        held back."""
        return self._state == "content" and not self._held

    def flush(self) -> tuple[str, str]:
        """End of content: held-back text is what it looked like (an unclosed block stays thinking)."""
        held, self._held = self._held, ""
        state, self._state = self._state, "content"
        if state == "start":
            return "", held
        if state == "inside":
            return held.rstrip(), ""
        return "", ""


# ---------------------------------------------------------------------------------------------------------
# Reasoning
# ---------------------------------------------------------------------------------------------------------


class Reasoning(enum.Enum):
    """What of a model's reasoning reaches the client, after the request's (effective) ``think``."""

    #: ``think`` not given, on a model not known to think: reasoning fields are relayed as ``thinking``,
    #: and the content is left as it came.
    RELAY = "relay"
    #: Thinking on (``true`` or a level): reasoning fields, and a leading ``<think>…</think>`` split out of
    #: the content, become ``thinking``.
    SPLIT = "split"
    #: ``think: false``: no reasoning reaches the client, neither the fields nor a leading block.
    DROP = "drop"

    @classmethod
    def after(cls, think: bool | str | None) -> Reasoning:
        if think is None:
            return cls.RELAY
        return cls.DROP if think is False else cls.SPLIT


def _opens_with_think(content: str) -> bool:
    return content.lstrip().startswith(_OPEN_TAG)


def carries_reasoning(body: Mapping[str, Any]) -> bool:
    """Whether a whole backend reply shows the model reasoning: a reasoning field with text, or content
    that opens with ``<think>`` (a reasoning model served without a reasoning parser)."""
    choice = first_choice(body)
    message = choice.get("message") if choice is not None else None
    if not isinstance(message, Mapping):
        return False
    return bool(reasoning(message)) or _opens_with_think(_text(message.get("content")))


# ---------------------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------------------


class StreamState:
    """What every family's stream translator tells the relay: whether the backend's stream carried an
    error (``_failed``), whether it said why it stopped (``_finish_reason``), and when its first token
    came (``_first``).  Subclasses set those, and give ``usage``."""

    _failed: bool = False
    _finish_reason: object = None
    _first: Instant | None = None

    @property
    def failed(self) -> bool:
        return self._failed

    @property
    def saw_finish(self) -> bool:
        """Whether the backend said why it stopped (a ``finish_reason``): a stream that ends without one
        and without ``[DONE]`` was cut short."""
        return self._finish_reason is not None

    @property
    def first_token_at(self) -> Instant | None:
        return self._first


# The delta keys of a plain content event; any other with a value (tool calls, reasoning) is not plain.
_PLAIN_DELTA: Final = frozenset({"content", "role"})

#: Computes a generate reply's ``context`` from its whole answer; None for no ``context``.
ContextFor = Callable[[str], list[int] | None]


class StreamTranslator(StreamState):
    """OpenAI ``chat.completion.chunk`` / ``text_completion`` events -> Ollama chunk dicts.

    Content and thinking pass through delta by delta.  Tool calls arrive as argument fragments but Ollama
    clients (the SDK included) need each call whole, so they are buffered until a ``finish_reason`` or the
    end and then sent as one chunk.  Backend errors become one ``{"error": "<string>"}`` chunk, after which
    the translator stays silent (no ``done`` chunk follows an error in Ollama's protocol).

    With ``whole``, nothing is emitted until the end, and ``finish`` gives the one reply a non-streaming
    client gets: the stream folded, as Ollama folds its own (the texts joined, every tool call, every log
    probability), measured like a stream.
    """

    def __init__(
        self,
        *,
        model: str,
        kind: Kind,
        started: Instant,
        think: Reasoning = Reasoning.RELAY,
        arrived: Instant | None = None,
        context_for: ContextFor | None = None,
        whole: bool = False,
    ) -> None:
        self._model = model
        self._kind: Kind = kind
        self._started = started
        self._arrived = arrived
        self._think = think
        self._context_for = context_for
        self._whole = whole
        self._first: Instant | None = None
        self._calls: dict[int, PendingCall] = {}
        self._finish_reason: object = None
        self._prompt_tokens: int | None = None
        self._completion_tokens: int | None = None
        self._logprobs: list[dict[str, Any]] = []
        self._splitter = ThinkTagSplitter() if think is not Reasoning.RELAY else None
        # What the client has been given (or, whole, will be): the answer's text, for ``context`` too.
        self._content: list[str] = []
        self._thinking: list[str] = []
        self._tool_calls: list[dict[str, Any]] = []
        # The first characters of the content as the backend sent it, to see a leading <think>.
        self._head = ""
        self._head_open = True  # until the head is long enough to tell
        self._reasoned = False
        self._failed = False
        self._finished = False

    @property
    def usage(self) -> tuple[int | None, int | None]:
        return self._prompt_tokens, self._completion_tokens

    @property
    def saw_reasoning(self) -> bool:
        """Whether the model reasoned, whatever reached the client: a reasoning field with text, or
        content that opened with ``<think>``."""
        return self._reasoned or _opens_with_think(self._head)

    @property
    def model(self) -> str:
        return self._model

    @property
    def kind(self) -> Kind:
        return self._kind

    def plain_content(self, event: Mapping[str, Any], at: Instant) -> str | None:
        """The text of an event that is nothing but a content delta, as most of a stream's events are,
        with the state :meth:`feed` keeps for it; None for any other event, which :meth:`feed` takes.

        Streaming, :meth:`feed` makes exactly one chunk of such an event, ``ollama_reply(content=text)``,
        which the wire writes from a template (``wire.ollama.ContentLines``) with no dict in between;
        whole, it keeps the text.  The general path cost 4 us an event, a third of the pure translation of
        a 53-event stream (bench/results/callprofile-chat-stream.txt).
        """
        if self._failed or self._finished or self._logprobs or event.get("error"):
            return None
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices:
            return None
        choice = choices[0]
        if not isinstance(choice, dict) or choice.get("finish_reason") is not None or choice.get("logprobs"):
            return None
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return None
        if not _PLAIN_DELTA.issuperset(delta) and any(
            value is not None for key, value in delta.items() if key not in _PLAIN_DELTA
        ):
            return None
        content = delta.get("content")
        if not isinstance(content, str) or not content:
            return None
        if self._splitter is not None and not self._splitter.passing:
            return None
        usage = event.get("usage")
        if usage is not None:
            self._note_usage(usage)
        if self._first is None:
            self._first = at
        if self._head_open:
            self._keep_head(content)
        self._content.append(content)
        return content

    def _keep_head(self, content: str) -> None:
        self._head += content
        self._head_open = len(self._head.lstrip()) < len(_OPEN_TAG)

    def _note_usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            self._prompt_tokens = _count(usage.get("prompt_tokens")) or self._prompt_tokens
            self._completion_tokens = _count(usage.get("completion_tokens")) or self._completion_tokens

    def feed(self, event: Mapping[str, Any], at: Instant) -> list[dict[str, Any]]:
        if self._failed or self._finished:
            return []
        if event.get("error"):
            return self._fail(error_text(event["error"]))
        self._note_usage(event.get("usage"))
        choice = first_choice(event)
        if choice is None:
            return []
        out: list[dict[str, Any]] = []
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content, thinking = _text(delta.get("content")), reasoning(delta)
            fragments = delta.get("tool_calls")
        else:
            content, thinking, fragments = _text(choice.get("text")), "", None
        if content or thinking or fragments:
            self._first = self._first or at
        self._reasoned = self._reasoned or bool(thinking)
        if content and self._head_open:
            self._keep_head(content)
        logprobs = choice.get("logprobs")
        if logprobs:
            self._logprobs.extend(convert_logprobs(logprobs))
        if self._splitter is not None and content:
            tag_thinking, content = self._splitter.feed(content)
            thinking += tag_thinking
        if content or thinking:
            self._text_out(out, at, content, thinking)
        if isinstance(fragments, list):
            for fragment in fragments:
                if isinstance(fragment, dict):
                    merge_fragment(self._calls, fragment)
        finish_reason = choice.get("finish_reason")
        if finish_reason is not None:
            self._finish_reason = finish_reason
            out.extend(self._flush(at))
        return out

    def finish(self, at: Instant) -> list[dict[str, Any]]:
        """The end of the backend stream: pending text and tool calls, then the ``done`` chunk (whole: the
        one reply)."""
        if self._failed or self._finished:
            return []
        out = self._flush(at)
        if self._failed:
            return out
        self._finished = True
        answer = "".join(self._content)
        final = ollama_reply(
            self._model,
            self._kind,
            at,
            content=answer if self._whole else "",
            thinking="".join(self._thinking),
            tool_calls=self._tool_calls if self._whole else None,
            done_reason=done_reason(self._finish_reason),
            context=self._context_for(answer) if self._context_for else None,
            metrics=_metrics(
                self._started,
                self._first,
                at,
                self._prompt_tokens,
                self._completion_tokens,
                arrived=self._arrived,
            ),
            logprobs=self._take_logprobs(),
        )
        out.append(final)
        return out

    def _fail(self, message: str) -> list[dict[str, Any]]:
        self._failed = True
        return [{"error": message}]

    def _flush(self, at: Instant) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self._splitter is not None:
            thinking, content = self._splitter.flush()
            self._text_out(out, at, content, thinking)
        if self._calls:
            calls = [self._calls[k] for k in sorted(self._calls)]
            self._calls = {}
            try:
                converted = _ollama_calls(calls, first=len(self._tool_calls))
            except BackendError as exc:
                return [*out, *self._fail(exc.message)]
            self._tool_calls.extend(converted)
            if not self._whole:
                out.append(ollama_reply(self._model, self._kind, at, tool_calls=converted))
        return out

    def _text_out(self, out: list[dict[str, Any]], at: Instant, content: str, thinking: str) -> None:
        """Content and thinking as the client gets them: a chunk now (added to ``out``), or (whole) kept
        for the end."""
        if self._think is Reasoning.DROP:
            thinking = ""
        if not content and not thinking:
            return
        self._content.append(content)
        if self._whole:
            self._thinking.append(thinking)
            return
        out.append(
            ollama_reply(
                self._model,
                self._kind,
                at,
                content=content,
                thinking=thinking,
                logprobs=self._take_logprobs(),
            )
        )

    def _take_logprobs(self) -> list[dict[str, Any]] | None:
        """The log probabilities gathered since the last chunk, for the one being built."""
        if not self._logprobs:
            return None
        taken, self._logprobs = self._logprobs, []
        return taken


def _metrics(
    started: Instant,
    first: Instant | None,
    ended: Instant,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    *,
    arrived: Instant | None = None,
    prompt_ns: int | None = None,
    eval_ns: int | None = None,
) -> dict[str, int]:
    """Ollama's metric block, in its key order, with unknown and zero values left out.

    ``arrived`` is when the request reached the daemon: ``total_duration`` is counted from there, and the
    wait until ``started`` (the backend call) is ``load_duration``.
    """
    backend_ns = _duration(started.mono_ns, ended.mono_ns)
    if prompt_ns is None and eval_ns is None and first is not None:
        prompt_ns = _duration(started.mono_ns, first.mono_ns)
        eval_ns = _duration(first.mono_ns, ended.mono_ns)
    if eval_ns is None:
        eval_ns = max(1, backend_ns - (prompt_ns or 0))
    out: dict[str, int] = {}
    if arrived is None:
        out["total_duration"] = backend_ns
    else:
        out["total_duration"] = _duration(arrived.mono_ns, ended.mono_ns)
        out["load_duration"] = _duration(arrived.mono_ns, started.mono_ns)
    if prompt_tokens:
        out["prompt_eval_count"] = prompt_tokens
    if prompt_ns:
        out["prompt_eval_duration"] = prompt_ns
    if completion_tokens:
        out["eval_count"] = completion_tokens
    if eval_ns:
        out["eval_duration"] = eval_ns
    return out


# ---------------------------------------------------------------------------------------------------------
# Non-streaming
# ---------------------------------------------------------------------------------------------------------


def _timing_ns(timings: object, key: str) -> int | None:
    """llama.cpp's non-standard ``timings`` (milliseconds) are the backend's own measure, better than ours."""
    if not isinstance(timings, Mapping):
        return None
    value = timings.get(key)
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    ):
        return max(1, round(value * 1_000_000))
    return None


def completion_to_reply(
    body: Mapping[str, Any],
    *,
    model: str,
    kind: Kind,
    started: Instant,
    ended: Instant,
    think: Reasoning = Reasoning.RELAY,
    arrived: Instant | None = None,
    context_for: ContextFor | None = None,
) -> dict[str, Any]:
    """A non-stream ``chat.completion`` / ``text_completion`` body as Ollama's one final object."""
    choice = completion_choice(body)
    message = choice.get("message")
    if isinstance(message, Mapping):
        content, thinking = _text(message.get("content")), reasoning(message)
        calls = _calls_from_message(message.get("tool_calls"))
    elif "text" in choice:
        content, thinking, calls = _text(choice.get("text")), "", []
    else:
        raise BackendError("backend reply has neither a message nor text")
    if think is not Reasoning.RELAY:
        splitter = ThinkTagSplitter()
        tag_thinking, content = splitter.feed(content)
        rest_thinking, rest_content = splitter.flush()
        thinking = thinking + tag_thinking + rest_thinking
        content += rest_content
    if think is Reasoning.DROP:
        thinking = ""

    usage = body.get("usage")
    usage = usage if isinstance(usage, Mapping) else {}
    timings = body.get("timings")
    timings = timings if isinstance(timings, Mapping) else {}
    prompt_tokens = _count(usage.get("prompt_tokens")) or _count(timings.get("prompt_n"))
    completion_tokens = _count(usage.get("completion_tokens")) or _count(timings.get("predicted_n"))
    return ollama_reply(
        model,
        kind,
        ended,
        content=content,
        thinking=thinking,
        tool_calls=_ollama_calls(calls) if calls else None,
        done_reason=done_reason(choice.get("finish_reason")),
        context=context_for(content) if context_for else None,
        metrics=_metrics(
            started,
            None,
            ended,
            prompt_tokens,
            completion_tokens,
            arrived=arrived,
            prompt_ns=_timing_ns(timings, "prompt_ms"),
            eval_ns=_timing_ns(timings, "predicted_ms"),
        ),
        logprobs=convert_logprobs(choice.get("logprobs")) or None,
    )

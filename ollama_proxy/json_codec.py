"""The daemon's one JSON encoder and decoder, so that the choice of library and its rules live in one place.

Everything the daemon writes as JSON (replies, stream lines, backend request bodies, logs excepted) goes
through :func:`compact_json`; everything it reads goes through :func:`parse_json`.

What a client sends is read strictly (:func:`parse_json` with its defaults), because whatever parses is
then walked, translated and re-encoded by code that must not fail on it:

* ``NaN``, ``Infinity`` and ``-Infinity`` are refused: they are not JSON, Python's decoder accepts them,
  and forwarding them would send the backend invalid JSON.
* Nesting deeper than :data:`MAX_DEPTH` is refused: deep enough for any real schema or tool definition,
  shallow enough that no recursive walk or re-encoding (which adds a few levels of its own) can reach
  Python's recursion limit.
* Integers of more digits than Python converts (4,300) are refused with the decoder's own complaint.
* More than :data:`MAX_VALUES` values in one body are refused: a value costs Python 30 to 70 bytes, so a
  body of tiny values (``[{},{},...]``) would otherwise cost some 30 times its size in memory, where a body
  of long strings (prompts, images) costs a few times its size.

What a backend sends may carry ``-Infinity`` (log probabilities); it is read with ``allow_constants``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Final

import orjson

MAX_DEPTH: Final = 128
MAX_VALUES: Final = 1_000_000
# JSON strings, for counting the values outside them.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


class JSONRejected(ValueError):
    """Parsed as JSON would be, but refused; the message says why, for the client."""


def compact_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON, by orjson (some ten times faster than the standard library, and what the
    stream path spends its time on).  What orjson refuses goes through the standard library instead: a
    lone surrogate (a backend splitting an emoji's escape pair), which cannot be UTF-8 and is written with
    ASCII escapes, which every JSON reader accepts; an integer beyond 64 bits; a key that is not a
    string."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        pass
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


def json_line(obj: Any) -> bytes:
    """:func:`compact_json` and a newline: one NDJSON line (orjson writes both at once)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return compact_json(obj) + b"\n"


def _no_constants(name: str) -> Any:
    raise JSONRejected(f"{name} is not a JSON number")


def parse_json(
    data: bytes | str,
    *,
    allow_constants: bool = False,
    max_depth: int = MAX_DEPTH,
    max_values: int | None = MAX_VALUES,
) -> Any:
    """Decoded JSON.  Raises ``ValueError``: ``json.JSONDecodeError`` for what is not JSON (with its
    position), :class:`JSONRejected` for JSON refused by the rules above, ``UnicodeDecodeError`` for
    bytes that are not UTF-8.  A backend's replies are read with ``allow_constants`` and no value limit
    (a batch of embeddings is a million numbers)."""
    if max_values is not None and _too_many_values(data, max_values):
        raise JSONRejected(f"JSON with more than {max_values} values")
    # orjson reads an integer beyond 64 bits as a float, silently losing digits.
    exact = _long_digits(data)
    return _decoded(data, allow_constants=allow_constants, max_depth=max_depth, standard=exact)


def parse_event(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """One event of a backend's stream, read on the hot path (once per generated token): as
    :func:`parse_json` with ``allow_constants`` and no value limit, except that an integer beyond 64
    bits may come back as a float (the fields read from events are texts, counts and ids; tool-call
    arguments, which are text inside an event, are read exactly by :func:`parse_json`)."""
    return _decoded(data, allow_constants=True, max_depth=max_depth, standard=False)


def _decoded(data: bytes | str, *, allow_constants: bool, max_depth: int, standard: bool) -> Any:
    """orjson's reading (the standard library's where asked, or where orjson refuses), nesting checked."""
    if standard:
        value = _standard_loads(data, allow_constants=allow_constants, max_depth=max_depth)
    else:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            value = _standard_loads(data, allow_constants=allow_constants, max_depth=max_depth)
    # Nesting deeper than max_depth takes twice that many brackets: short texts (events) skip the count.
    if len(data) > 2 * max_depth and _brackets(data) > max_depth and _depth(value) > max_depth:
        raise JSONRejected(f"JSON nested deeper than {max_depth} levels")
    return value


def _standard_loads(data: bytes | str, *, allow_constants: bool, max_depth: int) -> Any:
    """The standard library's reading, for what orjson refuses: its error messages say where JSON went
    wrong, and it reads what orjson does not (``NaN`` where allowed, lone surrogate escapes), and reads
    integers beyond 64 bits exactly, under the rules above."""
    try:
        return json.loads(data, parse_constant=None if allow_constants else _no_constants)
    except RecursionError:
        raise JSONRejected(f"JSON nested deeper than {max_depth} levels") from None
    except JSONRejected:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise
    except ValueError as exc:  # the int-digits limit
        raise JSONRejected(str(exc)) from None


_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19}")


def _long_digits(data: bytes | str) -> bool:
    """Whether a run of 19 digits (an integer that may not fit 64 bits) appears anywhere."""
    found = _LONG_DIGITS.search(data) if isinstance(data, bytes) else _LONG_DIGITS_TEXT.search(data)
    return found is not None


def _too_many_values(data: bytes | str, limit: int) -> bool:
    """Whether ``data`` holds more than ``limit`` values, counting separators in C: commas bound the
    count from above (with depth bounded, a container holds at most one value without a comma), and only
    a body with that many commas is looked at again without its strings (whose commas are text)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b",") < limit:
        return False
    return _STRING.sub(b"", raw).count(b",") >= limit


def _brackets(data: bytes | str) -> int:
    """An upper bound on the nesting depth, counted in C: most bodies need no walk at all."""
    if isinstance(data, bytes):
        return data.count(b"[") + data.count(b"{")
    return data.count("[") + data.count("{")


def _children(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        return iter(value.values())
    if isinstance(value, list):
        return iter(value)
    return iter(())


def _depth(value: Any) -> int:
    """The nesting depth of decoded JSON, walked without recursion."""
    deepest = 0
    stack: list[tuple[Iterator[Any], int]] = [(_children(value), 1)]
    while stack:
        children, depth = stack[-1]
        deepest = max(deepest, depth)
        child = next(children, _END)
        if child is _END:
            stack.pop()
        elif isinstance(child, (dict, list)):
            stack.append((_children(child), depth + 1))
    return deepest


_END: Final = object()

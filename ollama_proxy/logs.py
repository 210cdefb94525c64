"""Log output: twistd's text lines by default, or one compact JSON object per line (``--log-format json``)
for journald, Loki or Elasticsearch.

The JSON form carries the event's own keys (request id, status, model, tokens ...) as fields, not only
the rendered message, so log queries can filter on them.  Twisted's bookkeeping keys (``log_*``) are left
out, except the failure, which becomes a ``traceback`` field.

A string a client (or a backend) chose goes into an event as :func:`untrusted`: the text format shows it
with its control characters escaped, so a newline or an ANSI sequence in a model name cannot forge a
second line or repaint a terminal, while the JSON format keeps the raw value (JSON escapes it).
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import IO, Any, overload

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)

# JSON leaves these raw (they are not control characters to it), but ``str.splitlines`` and some log
# shippers end a line at each of them.
_JSON_LINE_BREAKS = ("\x85", "\u2028", "\u2029")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape_controls(text: str) -> str:
    """``text`` with every character Python does not count as printable (C0 and C1 controls, ESC, DEL,
    line and paragraph separators, bidirectional overrides ...) and the backslash written as an escape:
    ``\\n``, ``\\x1b``, ``\\u2028``.  The backslash is escaped too, so an escape is never ambiguous."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(char if char.isprintable() and char != "\\" else _escape(char) for char in text)


def _escape(char: str) -> str:
    special = _SHORT_ESCAPES.get(char)
    if special is not None:
        return special
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class Untrusted(str):
    """A string from outside the daemon in a log event: escaped where it is formatted into text (Twisted's
    text observers format events with ``format()``), itself everywhere else (``json.dumps`` writes the
    raw value, comparisons see the raw value)."""

    __slots__ = ()

    def __format__(self, spec: str) -> str:
        return format(escape_controls(str.__str__(self)), spec)

    def __str__(self) -> str:
        return escape_controls(str.__str__(self))


@overload
def untrusted(value: str) -> Untrusted: ...


@overload
def untrusted(value: None) -> None: ...


def untrusted(value: str | None) -> Untrusted | None:
    """What a log event carries for a client- or backend-supplied string (the model, the path ...)."""
    return None if value is None else Untrusted(value)


def literal_format(text: str) -> str:
    """A line already rendered, as an event's format: its braces doubled, so the observer's formatting
    (Twisted's, pure Python) leaves it as it is and does no lookup at all."""
    return text.replace("{", "{{").replace("}", "}}")


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return repr(value)


def event_as_json(event: LogEvent) -> str:
    """One compact line: ``ts`` (UTC, ms), ``level``, ``ns``, ``msg``, then the event's own fields."""
    stamp = event.get("log_time") or time.time()
    seconds = int(stamp)
    record: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        + f".{int((stamp - seconds) * 1000):03d}Z",
        "level": getattr(event.get("log_level"), "name", "info"),
        "ns": event.get("log_namespace", "-"),
        "msg": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in record:
            record[key] = _plain(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    line = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
    for separator in _JSON_LINE_BREAKS:
        if separator in line:
            line = line.replace(separator, f"\\u{ord(separator):04x}")
    return line + "\n"


def json_observer(stream: IO[str] | None = None) -> ILogObserver:
    """The factory ``twistd --logger=ollama_proxy.logs.json_observer`` calls (``--log-format json``)."""
    return FileLogObserver(stream or sys.stdout, event_as_json)


_LAST_MICROSECOND = 0.999_999


def text_observer(stream: IO[str] | None = None) -> ILogObserver:
    """twistd's own text lines, on standard output (``twistd -n`` without ``--logfile``: the foreground,
    systemd's and a container's case), with each second's timestamp formatted once.

    Twisted formats every line's time from scratch (a time zone and a ``datetime`` built, then
    ``strftime``): 11 µs, as much as the rest of an access line, on every request.  The text is the same
    for every line within a second (its format stops at seconds, and a zone's offset changes only on a
    second), so the last one is kept.
    """
    last_second: int | None = None
    last_text = ""

    def stamp(when: float | None) -> str:
        nonlocal last_second, last_text
        if when is None:
            return formatTime(when)
        second = math.floor(when)  # before 1970 too: the second a time falls in, not toward zero
        if when - second >= _LAST_MICROSECOND:
            # datetime rounds a time to the microsecond, so this one may print as the next second.
            return formatTime(when)
        if second != last_second:
            last_second, last_text = second, formatTime(when)
        return last_text

    def line(event: LogEvent) -> str | None:
        return formatEventAsClassicLogText(event, formatTime=stamp)

    return FileLogObserver(stream or sys.stdout, line)

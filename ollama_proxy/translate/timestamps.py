"""Ollama's timestamp and duration spellings.

Go prints RFC 3339 with up to nine fraction digits (we print six) and trims trailing zeros; clients such
as OllamaKit parse that form strictly, and the ollama SDK needs ``created_at`` to be a string.
``modified_at``/``expires_at`` carry the local offset (``Z`` when it is zero), as Ollama's are.
"""

from __future__ import annotations

import functools
import re
import time
from datetime import datetime, timedelta, timezone

# Ollama's "zero time", used where a model has no known date.
ZERO_TIME = "0001-01-01T00:00:00Z"


def _fraction(wall: float) -> tuple[int, str]:
    """Whole seconds and the fraction text.  A float of epoch seconds holds about microsecond precision,
    so that is what is printed; more digits would be float noise, not time."""
    seconds, micros = divmod(round(wall * 1_000_000), 1_000_000)
    digits = f"{micros:06d}".rstrip("0")
    return seconds, f".{digits}" if digits else ""


@functools.lru_cache(maxsize=1)
def rfc3339_utc(wall: float) -> str:
    """``created_at``: UTC with ``Z``, e.g. ``2025-06-01T10:00:00.123456789Z``.

    Every streamed chunk carries one, and the chunks of one backend read share their clock reading: the
    last one is kept, and the date and time of day are formatted once per second (``_utc_second``)."""
    seconds, fraction = _fraction(wall)
    return _utc_second(seconds) + fraction + "Z"


@functools.lru_cache(maxsize=4)
def _utc_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def rfc3339_local(wall: float, offset_seconds: int) -> str:
    """``modified_at``/``expires_at``: the wall time at a fixed UTC offset (``Z`` when the offset is 0)."""
    seconds, fraction = _fraction(wall)
    zone = timezone(timedelta(seconds=offset_seconds))
    stamp = datetime.fromtimestamp(seconds, zone).strftime("%Y-%m-%dT%H:%M:%S") + fraction
    if offset_seconds == 0:
        return stamp + "Z"
    sign = "+" if offset_seconds > 0 else "-"
    hours, minutes = divmod(abs(offset_seconds) // 60, 60)
    return f"{stamp}{sign}{hours:02d}:{minutes:02d}"


_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


# The longest duration text looked at: "2562047h47m16.854775807s" (Go's maximum) is 24 characters.
MAX_DURATION_TEXT = 64
MAX_GO_DURATION_SECONDS = (2**63 - 1) / 1e9


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration (``"5m"``, ``"1h30m"``, ``"-1s"``, ``"0"``), as ``keep_alive`` takes it.

    Raises ValueError with Go's wording, which Ollama returns as a 400.
    """
    if len(text) > MAX_DURATION_TEXT:
        raise ValueError(f"time: invalid duration (longer than {MAX_DURATION_TEXT} characters)")
    body = text.strip()
    sign = -1.0 if body.startswith("-") else 1.0
    body = body.lstrip("+-")
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f'time: invalid duration "{text}"')
    position = 0
    total = 0.0
    while position < len(body):
        match = _GO_DURATION_PART.match(body, position)
        if match is None:
            if re.fullmatch(r"\d+(\.\d*)?", body[position:]):
                raise ValueError(f'time: missing unit in duration "{text}"')
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if total > MAX_GO_DURATION_SECONDS:
        # Go's time.Duration holds at most 2**63 ns (about 292 years) and refuses more.
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total

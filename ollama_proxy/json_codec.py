"""The daemon's one JSON encoder and decoder, so that the choice of library and its rules live in one place.

Everything the daemon writes as JSON (replies, stream lines, backend request bodies, logs excepted) goes
through :func:`compact_json`; everything it reads goes through :func:`parse_json`.
"""

from __future__ import annotations

import json
from typing import Any


def compact_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON.  A lone surrogate (a backend splitting an emoji's escape pair) cannot be
    encoded as UTF-8; such a value is written with ASCII escapes instead, which every JSON reader accepts."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


def parse_json(data: bytes | str) -> Any:
    """Decoded JSON; ``ValueError`` (``json.JSONDecodeError`` or ``UnicodeDecodeError``) when it is not."""
    return json.loads(data)

"""Reading the untrusted JSON clients send: what kind of value something is, in the words error messages
use, and the number checks every request translation shares.

Each API family words its own 400s around these (Ollama names the option, Anthropic the path, OpenAI the
parameter); what counts as a number or an integer is the same for all of them, and decided here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def json_kind(value: object) -> str:
    """``null``, ``a boolean``, ``a string``, ``an array`` or ``an object``; a number as itself (``1.5``),
    which says more than "a number" where an integer or a finite number was expected."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def finite_number(value: object) -> float | int | None:
    """The value if it is a finite JSON number (a boolean is not one), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def whole_number(value: object) -> int | None:
    """The value if it is an integer, else None.  ``40.0`` is one (Go's Ollama decodes JSON numbers as
    float64, and JavaScript clients send ``1024.0``); ``40.5`` is not."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None

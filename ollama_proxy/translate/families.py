"""What well-known model families can do, read from the model id when the backend does not say.

Ollama knows a model's capabilities from its template and files; an OpenAI-compatible backend mostly gives
an id.  The ids of the popular open families are regular enough (``Qwen/Qwen3-8B``, ``qwen3:8b``,
``deepseek-ai/DeepSeek-R1-Distill-Qwen-7B``, ``google/gemma-3-27b-it``) to say what Ollama's own library
says of the same family.  (A family here is a line of models, not ``details.family``, which is the GGUF
architecture that :mod:`ollama_proxy.translate.models` guesses for the ``model_info`` keys.)

Policies:

* The table answers for ``tools``, ``insert``, ``thinking`` and ``vision`` only, and for a family it knows it
  answers for all four: a capability missing from a row means "this family does not", so ``llava`` has no
  ``tools`` even though the daemon assumes ``tools`` for ids it cannot place.
* The first matching row wins.  Rows are ordered so that a name embedding another family's name is caught
  by its own row first: ``DeepSeek-R1-Distill-Llama`` is a reasoning model before it is a Llama,
  ``llava-v1.6-mistral`` a vision model before it is a Mistral, ``qwen2.5-coder`` a coder before a Qwen2.5.
* Where the family's rows differ by variant, the variant is in the pattern (``Qwen3-*-Instruct-2507`` does
  not think; ``Qwen3-VL-*-Thinking`` does), and for Gemma 3 by size: the 270M and 1B models read no images.
* Deliberately tools-less, as in Ollama's library: the LLaVA family, Llama 3.2 Vision, MiniCPM-V, Gemma 3,
  Qwen2-VL/Qwen2.5-VL and the fill-in-the-middle code models other than the Qwen coders.
* This is the weakest evidence there is: per-model config overrides win over it, and so does anything the
  backend states (see :func:`ollama_proxy.translate.models.model_info` for the order).
* Every row with ``insert`` says how its models are prompted to fill in the middle (:class:`FillInTheMiddle`,
  their own special tokens, as the model cards and Ollama's templates for them give them): vLLM refuses
  ``suffix`` on ``/v1/completions`` ("suffix is not currently supported") and llama.cpp's server ignores it,
  so for those backends the daemon writes the prompt itself, and a family whose prompt it could not write
  would not be advertised as ``insert``.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

#: The capabilities this table speaks for.
INFERRED_CAPABILITIES: Final = frozenset({"tools", "insert", "thinking", "vision"})

_SIZE: Final = re.compile(r"^(\d+(?:\.\d+)?)([MB])$")


@attrs.frozen
class FillInTheMiddle:
    """How a code model is asked to fill in the middle: the code before the cursor and the code after it,
    each behind the model's own special token, then the token after which it writes the middle."""

    prefix: str
    suffix: str
    middle: str
    # Mistral's Codestral reads the code after the cursor first.
    suffix_first: bool = False

    def prompt(self, before: str, after: str) -> str:
        if self.suffix_first:
            return f"{self.suffix}{after}{self.prefix}{before}{self.middle}"
        return f"{self.prefix}{before}{self.suffix}{after}{self.middle}"


#: StarCoder's tokens, shared by the models trained on its tokenizer (StarCoder2, CodeQwen1.5, Granite Code,
#: Stable Code).
STARCODER_FIM: Final = FillInTheMiddle("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
#: Qwen2.5-Coder's and Qwen3-Coder's, and CodeGemma's.
QWEN_FIM: Final = FillInTheMiddle("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
CODELLAMA_FIM: Final = FillInTheMiddle("<PRE> ", " <SUF>", " <MID>")
DEEPSEEK_FIM: Final = FillInTheMiddle(
    "<\uff5cfim\u2581begin\uff5c>", "<\uff5cfim\u2581hole\uff5c>", "<\uff5cfim\u2581end\uff5c>"
)
CODESTRAL_FIM: Final = FillInTheMiddle("[PREFIX]", "[SUFFIX]", "", suffix_first=True)


@attrs.frozen
class Family:
    """One row: ids matching ``pattern`` (see :func:`normalized_name`) have exactly ``capabilities``;
    ``fim`` is how the row's ``insert`` models are prompted."""

    name: str
    pattern: re.Pattern[str]
    capabilities: frozenset[str]
    # Smaller models of the family (in billions of parameters) lack ``vision``.
    text_only_below: float | None = None
    fim: FillInTheMiddle | None = None


def _row(
    name: str,
    pattern: str,
    *capabilities: str,
    text_only_below: float | None = None,
    fim: FillInTheMiddle | None = None,
) -> Family:
    return Family(name, re.compile(pattern), frozenset(capabilities), text_only_below, fim)


FAMILIES: Final[tuple[Family, ...]] = (
    # Reasoning families first: their distills carry the base family's name too.
    _row("gpt-oss", r"gpt-?oss", "thinking", "tools"),
    _row("deepseek-r1", r"deepseek-r1", "thinking", "tools"),
    _row("deepseek-v3.1+", r"deepseek-v3\.[1-9]", "thinking", "tools"),
    _row("qwq", r"(?<![a-z])qwq", "thinking", "tools"),
    _row("qvq", r"(?<![a-z])qvq", "thinking", "vision"),
    _row("magistral", r"magistral", "thinking", "tools"),
    # Vision.
    _row("qwen3-vl thinking", r"qwen-?3-?vl.*thinking", "vision", "tools", "thinking"),
    _row("qwen3-vl", r"qwen-?3-?vl", "vision", "tools"),
    _row("qwen-vl, qwen2-vl, qwen2.5-vl", r"qwen(-?2(\.5)?)?-?vl", "vision"),
    _row("llava", r"llava", "vision"),
    _row("llama3.2-vision", r"llama-?3\.2-(.*-)?vision", "vision"),
    _row("llama4", r"llama-?4(?![\d.])", "vision", "tools"),
    _row("minicpm-v", r"minicpm-?[vo](?![a-z])", "vision"),
    _row("pixtral", r"pixtral", "vision", "tools"),
    _row("mistral-small3.1+", r"mistral-small-?3\.[1-9]", "vision", "tools"),
    _row("gemma3", r"gemma-?3(?![n\d.])", "vision", text_only_below=4.0),
    # Fill-in-the-middle code models.
    _row("qwen3-coder", r"qwen-?3-?coder", "tools", "insert", fim=QWEN_FIM),
    _row("qwen2.5-coder", r"qwen-?2\.5-?coder", "tools", "insert", fim=QWEN_FIM),
    _row("codeqwen", r"codeqwen", "insert", fim=STARCODER_FIM),
    _row("starcoder", r"starcoder", "insert", fim=STARCODER_FIM),
    _row("codellama", r"code-?llama", "insert", fim=CODELLAMA_FIM),
    _row("deepseek-coder", r"deepseek-coder", "insert", fim=DEEPSEEK_FIM),
    _row("codestral", r"codestral", "insert", fim=CODESTRAL_FIM),
    _row("granite-code", r"granite(-\d+(\.\d+)?b)?-code", "insert", fim=STARCODER_FIM),
    _row("codegemma", r"codegemma", "insert", fim=QWEN_FIM),
    _row("stable-code", r"stable-?code", "insert", fim=STARCODER_FIM),
    # Text families.
    _row("qwen3.5+", r"qwen-?3\.[5-9]", "thinking", "tools", "vision"),
    _row("qwen3 instruct", r"qwen-?3(?![\d.]).*instruct", "tools"),
    _row("qwen3", r"qwen-?3(?![\d.])", "thinking", "tools"),
    _row("qwen2.5", r"qwen-?2\.5", "tools"),
    _row("qwen2", r"qwen-?2(?![\d.])", "tools"),
    _row("llama3.1, 3.2, 3.3", r"llama-?3\.[123](?!\d)", "tools"),
    _row("mistral, mixtral", r"mi[sx]tral", "tools"),
)


def normalized_name(model_id: str) -> str:
    """The part of an id that names the model, in one spelling: ``hf.co/unsloth/Qwen3-8B-GGUF:Q4_K_M`` →
    ``qwen3-8b-gguf-q4-k-m``.  The namespace is dropped (``meta-llama/``, ``qwen/``) because it names the
    publisher, and the tag kept (``gemma3:1b``) because it often names the variant."""
    name = model_id.strip().lower().rsplit("/", 1)[-1].removesuffix(".gguf")
    return re.sub(r"[\s_:]+", "-", name)


def _billions(parameter_size: str) -> float | None:
    match = _SIZE.match(parameter_size.strip().upper())
    if match is None:
        return None
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "M" else value


def family_of(model_id: str) -> Family | None:
    """The first row whose pattern the id matches."""
    name = normalized_name(model_id)
    for family in FAMILIES:
        if family.pattern.search(name):
            return family
    return None


def family_capabilities(model_id: str, parameter_size: str = "") -> frozenset[str] | None:
    """What the id's family can do, among :data:`INFERRED_CAPABILITIES`; None for an id no row places.

    ``parameter_size`` is the Ollama-style size (``"1B"``, ``"270M"``) where known: an unknown size is taken
    as the family's usual, larger, model.
    """
    family = family_of(model_id)
    if family is None:
        return None
    capabilities = family.capabilities
    size = _billions(parameter_size)
    if family.text_only_below is not None and size is not None and size < family.text_only_below:
        capabilities = capabilities - {"vision"}
    return capabilities

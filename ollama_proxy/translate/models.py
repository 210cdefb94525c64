"""What the backend says about its models, turned into what Ollama clients read from ``/api/tags``,
``/api/show`` and ``/api/ps``.

Backends describe their models very differently: vLLM gives ``max_model_len``, OpenRouter a rich record
(``context_length``, ``architecture.input_modalities``, ``supported_parameters``), llama.cpp a ``meta`` block,
OpenAI nothing but the id.  Everything discovered here can be overridden per model in the config, and
where nothing is known the answer says so honestly (no invented context window).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ollama_proxy.translate.timestamps import ZERO_TIME

EMBEDDING_CAPABILITIES = ("embedding",)
KNOWN_CAPABILITIES = frozenset(
    {"completion", "tools", "insert", "vision", "embedding", "thinking", "image", "audio"}
)

# Substrings of a model id that name an architecture, most specific first.  Ollama reports the GGUF
# architecture (``qwen2``, ``llama``, ...); clients only use it as the key prefix for ``context_length``.
_FAMILIES: tuple[tuple[str, str], ...] = (
    ("qwen3", "qwen3"),
    ("qwen2", "qwen2"),
    ("qwen", "qwen2"),
    ("llama", "llama"),
    ("mixtral", "llama"),
    ("mistral", "llama"),
    ("gemma3", "gemma3"),
    ("gemma2", "gemma2"),
    ("gemma", "gemma"),
    ("phi3", "phi3"),
    ("phi-3", "phi3"),
    ("phi", "phi3"),
    ("deepseek", "deepseek2"),
    ("smollm", "llama"),
    ("granite", "granite"),
    ("command-r", "command-r"),
    ("gpt-oss", "gptoss"),
    ("bert", "bert"),
    ("bge", "bert"),
    ("e5", "bert"),
    ("minilm", "bert"),
    ("nomic", "nomic-bert"),
)
_EMBEDDING_HINTS = re.compile(r"embed|(^|[/_-])(bge|gte|e5|minilm|mxbai|arctic-embed)", re.IGNORECASE)
_PARAMETER_SIZE = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.IGNORECASE)
_QUANTIZATION = re.compile(
    r"(?<![a-z0-9])(q\d(?:_k)?(?:_[a-z0-9]+)?|iq\d_[a-z0-9]+|awq|gptq|fp8|fp16|bf16|int4|int8|mlx-?\d?bit)(?![a-z0-9])",
    re.IGNORECASE,
)


@attrs.frozen
class ModelOverride:
    """Per-model settings from the config file, for backends that do not describe their models."""

    context_length: int | None = None
    embedding_length: int | None = None
    capabilities: tuple[str, ...] | None = None
    family: str | None = None
    parameter_size: str | None = None
    quantization_level: str | None = None
    size: int | None = None

    def merged_over(self, other: ModelOverride) -> ModelOverride:
        """This override's set fields win over ``other``'s."""
        values = {
            field.name: getattr(self, field.name)
            if getattr(self, field.name) is not None
            else getattr(other, field.name)
            for field in attrs.fields(ModelOverride)
        }
        return ModelOverride(**values)


@attrs.frozen
class ModelInfo:
    """Everything the daemon knows about one backend model."""

    id: str
    created: int | None
    capabilities: tuple[str, ...]
    family: str
    context_length: int | None = None
    embedding_length: int | None = None
    parameter_size: str = ""
    quantization_level: str = ""
    size: int = 0

    @property
    def digest(self) -> str:
        """Stable per backend id, 64 hex characters as Ollama prints them (no ``sha256:`` prefix)."""
        return hashlib.sha256(self.id.encode()).hexdigest()

    @property
    def is_embedding(self) -> bool:
        return "embedding" in self.capabilities


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, float) and value > 0 and value.is_integer():
        return int(value)
    return None


def _family(model_id: str) -> str:
    lowered = model_id.lower().rsplit("/", 1)[-1]
    for needle, family in _FAMILIES:
        if needle in lowered:
            return family
    stem = re.match(r"[a-z]+", lowered)
    return stem.group(0) if stem else "unknown"


def _human_count(count: int) -> str:
    """``134515008`` → ``"134.52M"``, ``7615616512`` → ``"7.6B"``, as Ollama prints parameter sizes."""
    if count >= 1_000_000_000:
        return f"{count / 1_000_000_000:.1f}B".replace(".0B", "B")
    if count >= 1_000_000:
        return f"{count / 1_000_000:.2f}M".rstrip("0").rstrip(".").replace(".M", "M")
    return str(count)


def _parameter_size_from_id(model_id: str) -> str:
    match = _PARAMETER_SIZE.search(model_id.rsplit("/", 1)[-1])
    if match is None:
        return ""
    return f"{match.group(1)}{match.group(2).upper()}"


def _quantization_from_id(model_id: str) -> str:
    match = _QUANTIZATION.search(model_id)
    return match.group(1).upper() if match else ""


def _discovered_capabilities(entry: Mapping[str, Any], model_id: str) -> tuple[str, ...]:
    """Capabilities from backend metadata, with id heuristics where the backend is silent."""
    architecture = entry.get("architecture")
    outputs: Sequence[Any] = ()
    inputs: Sequence[Any] = ()
    if isinstance(architecture, Mapping):
        outputs = architecture.get("output_modalities") or ()
        inputs = architecture.get("input_modalities") or ()
    if "embeddings" in outputs or "embedding" in outputs or _EMBEDDING_HINTS.search(model_id):
        return EMBEDDING_CAPABILITIES
    declared = entry.get("capabilities")
    if isinstance(declared, list) and declared and all(isinstance(c, str) for c in declared):
        # LM Studio-style / llama.cpp-style lists already speak Ollama's vocabulary.
        known = tuple(c for c in declared if c in KNOWN_CAPABILITIES)
        if known:
            return known
    capabilities = ["completion"]
    supported = entry.get("supported_parameters")
    if isinstance(supported, list):
        if "tools" in supported:
            capabilities.append("tools")
        if "reasoning" in supported or "include_reasoning" in supported:
            capabilities.append("thinking")
    else:
        # No metadata: the daemon forwards tools, and every OpenAI-compatible chat server accepts the field.
        capabilities.append("tools")
    if "image" in inputs:
        capabilities.append("vision")
    return tuple(capabilities)


def _context_length(entry: Mapping[str, Any]) -> int | None:
    for key in ("max_model_len", "context_length", "max_context_length", "context_window"):
        found = _int(entry.get(key))
        if found:
            return found
    top_provider = entry.get("top_provider")
    if isinstance(top_provider, Mapping):
        found = _int(top_provider.get("context_length"))
        if found:
            return found
    meta = entry.get("meta")
    if isinstance(meta, Mapping):
        return _int(meta.get("n_ctx")) or _int(meta.get("n_ctx_train"))
    return None


def model_info(entry: Mapping[str, Any], override: ModelOverride | None = None) -> ModelInfo | None:
    """One entry of the backend's ``/models`` list (any flavour) → ModelInfo; None if it has no usable id."""
    model_id = entry.get("id")
    if not isinstance(model_id, str) or not model_id:
        return None
    override = override or ModelOverride()
    raw_meta = entry.get("meta")
    meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
    capabilities = override.capabilities or _discovered_capabilities(entry, model_id)
    n_params = _int(meta.get("n_params"))
    parameter_size = override.parameter_size or (
        _human_count(n_params) if n_params else _parameter_size_from_id(model_id)
    )
    embedding_length = override.embedding_length or (
        _int(meta.get("n_embd")) if "embedding" in capabilities else None
    )
    return ModelInfo(
        id=model_id,
        created=_int(entry.get("created")),
        capabilities=tuple(capabilities),
        family=override.family or _family(model_id),
        context_length=override.context_length or _context_length(entry),
        embedding_length=embedding_length,
        parameter_size=parameter_size,
        quantization_level=override.quantization_level or _quantization_from_id(model_id),
        size=override.size or _int(meta.get("size")) or 0,
    )


def split_tag(name: str) -> tuple[str, str | None]:
    """``"a/b:free"`` → (``"a/b"``, ``"free"``); the tag is after the last ``:`` of the last path segment."""
    head, slash, last = name.rpartition("/")
    base, colon, tag = last.partition(":")
    if not colon:
        return name, None
    return f"{head}{slash}{base}", tag


def listed_name(model_id: str) -> str:
    """How ``/api/tags`` names a model: Ollama always shows a tag, so an untagged id gains ``:latest``.

    Ids that already carry a tag (OpenRouter's ``...:free``) are listed as they are.
    """
    return model_id if split_tag(model_id)[1] is not None else f"{model_id}:latest"


def lookup_key(name: str) -> str:
    """The form under which names are compared: case-insensitive, ``:latest`` meaning no tag."""
    lowered = name.strip().lower()
    return lowered.removesuffix(":latest")


def details(info: ModelInfo) -> dict[str, Any]:
    result: dict[str, Any] = {
        "parent_model": "",
        "format": "gguf",
        "family": info.family,
        "families": [info.family],
        "parameter_size": info.parameter_size,
        "quantization_level": info.quantization_level,
    }
    if info.context_length:
        result["context_length"] = info.context_length
    if info.embedding_length:
        result["embedding_length"] = info.embedding_length
    return result


def tags_entry(name: str, info: ModelInfo, modified_at: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": modified_at,
        "size": info.size,
        "digest": info.digest,
        "details": details(info),
        "capabilities": list(info.capabilities),
    }


def show_reply(
    info: ModelInfo, modified_at: str, *, basename: str | None = None, parameters: str = ""
) -> dict[str, Any]:
    """The ``/api/show`` body.  ``model_info`` is always present (the SDK requires the key)."""
    arch = info.family
    model_info: dict[str, Any] = {
        "general.architecture": arch,
        "general.basename": basename or info.id.rsplit("/", 1)[-1],
    }
    if info.context_length:
        model_info[f"{arch}.context_length"] = info.context_length
    if info.embedding_length:
        model_info[f"{arch}.embedding_length"] = info.embedding_length
    return {
        "modelfile": f"# Served by ollama-proxy from the backend model {info.id}\nFROM {info.id}\n",
        "parameters": parameters,
        "template": "",
        "details": details(info),
        "model_info": model_info,
        "capabilities": list(info.capabilities),
        "modified_at": modified_at or ZERO_TIME,
    }


def ps_entry(name: str, info: ModelInfo, expires_at: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "model": name,
        "size": info.size,
        "digest": info.digest,
        "details": details(info),
        "expires_at": expires_at,
        "size_vram": 0,
    }
    if info.context_length:
        entry["context_length"] = info.context_length
    return entry


def pull_progress(info: ModelInfo) -> list[dict[str, Any]]:
    """Ollama's pull progress lines, honest about there being nothing to download."""
    return [
        {"status": "pulling manifest"},
        {
            "status": f"pulling {info.digest[:12]}",
            "digest": f"sha256:{info.digest}",
            "total": info.size,
            "completed": info.size,
        },
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]

"""What the backend says about its models, turned into what Ollama clients read from ``/api/tags``,
``/api/show`` and ``/api/ps``.

Backends describe their models very differently: vLLM gives ``max_model_len``, OpenRouter a rich record
(``context_length``, ``architecture.input_modalities``, ``supported_parameters``), llama.cpp a ``meta`` block
and, on ``/props``, its modalities, slot context and chat template; OpenAI nothing but the id.  Everything
discovered here can be overridden per model in the config, and where nothing is known the answer says so
honestly (no invented context window).

Policies for capabilities (``tools``, ``insert``, ``thinking``, ``vision``, ``audio``), strongest first:

1. a ``[models]`` override's ``capabilities`` list, taken whole;
2. an embedding model (by its output modality or its name) is ``embedding`` only;
3. a backend's own capability list in Ollama's words (LM Studio style), taken whole;
4. then each capability separately, from the first source that states it either way: llama.cpp's
   ``/props`` (:func:`props_facts`), the ``/models`` entry (OpenRouter's ``supported_parameters`` and
   ``input_modalities``), the family table of :mod:`ollama_proxy.translate.families` (matched on the id,
   then on vLLM's ``root`` when the id is a served alias), and last the default: ``tools`` yes (the daemon
   forwards tools and every OpenAI-compatible chat server takes the field), the others no;
5. at run time, a model seen answering with reasoning gains ``thinking`` (:meth:`ModelInfo.with_capability`),
   unless an override fixed its capabilities.

The context window is the override's, else what ``/props`` says of the running slot (``n_ctx``: what a
request can really use), else the ``/models`` entry's.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs

from ollama_proxy.translate.families import (
    INFERRED_CAPABILITIES,
    FillInTheMiddle,
    family_capabilities,
    family_of,
)
from ollama_proxy.translate.templates import modelfile_for, parameters_for, template_for
from ollama_proxy.translate.timestamps import ZERO_TIME

EMBEDDING_CAPABILITIES = ("embedding",)
KNOWN_CAPABILITIES = frozenset(
    {"completion", "tools", "insert", "vision", "embedding", "thinking", "image", "audio"}
)
# The order capabilities are listed in when the daemon assembles the list itself.
_CAPABILITY_ORDER = ("completion", "embedding", "tools", "insert", "thinking", "vision", "audio", "image")
# What the sources of step 4 (see the module docstring) can state, yes or no.
_STATED = ("tools", "insert", "thinking", "vision", "audio")

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


def _readonly(options: Mapping[str, Any]) -> Mapping[str, Any]:
    """A copy nobody can change behind the frozen class's back."""
    return MappingProxyType(dict(options))


def _readonly_or_none(options: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return None if options is None else _readonly(options)


def _ordered(capabilities: set[str] | frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(capabilities, key=_CAPABILITY_ORDER.index))


@attrs.frozen
class ModelOverride:
    """Per-model settings from the config file, for backends that do not describe their models.

    ``options`` are Ollama options (``temperature``, ``stop``, ``num_ctx``, ...) shown as the model's
    ``parameters`` in ``/api/show``, as a Modelfile's ``PARAMETER`` lines would be.  They describe the
    model to clients (Continue and the VS Code extension read ``num_ctx`` and ``stop`` from there); the
    daemon does not add them to requests.
    """

    context_length: int | None = None
    embedding_length: int | None = None
    capabilities: tuple[str, ...] | None = None
    family: str | None = None
    parameter_size: str | None = None
    quantization_level: str | None = None
    size: int | None = None
    options: Mapping[str, Any] | None = attrs.field(default=None, converter=_readonly_or_none, hash=False)

    def merged_over(self, other: ModelOverride) -> ModelOverride:
        """This override's set fields win over ``other``'s; ``options`` merge key by key, so an exact entry
        can change one option of what a glob pattern set."""
        values = {
            field.name: getattr(self, field.name)
            if getattr(self, field.name) is not None
            else getattr(other, field.name)
            for field in attrs.fields(ModelOverride)
        }
        if self.options is not None and other.options is not None:
            values["options"] = {**other.options, **self.options}
        return ModelOverride(**values)


@attrs.frozen
class BackendFacts:
    """What a backend said about one model beyond its ``/models`` entry, ready to fold into ModelInfo.

    ``has`` and ``lacks`` are explicit statements either way; a capability in neither is not spoken for.
    """

    has: frozenset[str] = frozenset()
    lacks: frozenset[str] = frozenset()
    context_length: int | None = None
    chat_template: str | None = None
    stop: tuple[str, ...] = ()


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
    # The backend's own chat template (llama.cpp's /props), shown by /api/show where it tells the truth.
    chat_template: str | None = None
    # Stop sequences the backend reported, shown as ``stop`` parameters.
    stop: tuple[str, ...] = ()
    # The config override's Ollama options, shown as parameters.
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=_readonly, hash=False)
    # True when a config override listed the capabilities: then nothing learnt at run time changes them.
    capabilities_configured: bool = False
    # How the model is prompted to fill in the middle, where its family is known (for backends that
    # take no ``suffix``).
    fim: FillInTheMiddle | None = None

    def with_capability(self, capability: str) -> ModelInfo:
        """This model, now known to have ``capability``: a model that answered with reasoning can think.

        The catalog calls it on evidence seen at run time; a model whose capabilities the config fixed, or
        an embedding model, is left as it is (the operator's word wins, and an embedder does not chat).
        """
        if capability not in KNOWN_CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}")
        if capability in self.capabilities or self.capabilities_configured or self.is_embedding:
            return self
        return attrs.evolve(self, capabilities=_ordered({*self.capabilities, capability}))

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


def _family_names(entry: Mapping[str, Any], model_id: str) -> list[str]:
    """The names to look the family up by: the id, then vLLM's ``root`` (the model path behind an alias
    given with ``--served-model-name``)."""
    names = [model_id]
    root = entry.get("root")
    if isinstance(root, str) and root and root != model_id:
        names.append(root)
    return names


def _discovered_capabilities(
    entry: Mapping[str, Any], model_id: str, parameter_size: str, facts: BackendFacts | None
) -> tuple[str, ...]:
    """Capabilities from backend metadata, then the family table, then the defaults (module docstring)."""
    architecture = entry.get("architecture")
    outputs: Sequence[Any] = ()
    inputs: Any = None
    if isinstance(architecture, Mapping):
        outputs = architecture.get("output_modalities") or ()
        inputs = architecture.get("input_modalities")
    if "embeddings" in outputs or "embedding" in outputs or _EMBEDDING_HINTS.search(model_id):
        return EMBEDDING_CAPABILITIES
    declared = entry.get("capabilities")
    if isinstance(declared, list) and declared and all(isinstance(c, str) for c in declared):
        # LM Studio-style / llama.cpp-style lists already speak Ollama's vocabulary.
        known = tuple(c for c in declared if c in KNOWN_CAPABILITIES)
        if known:
            return known
    stated: dict[str, bool] = {}
    if facts is not None:
        stated.update(dict.fromkeys(facts.lacks, False))
        stated.update(dict.fromkeys(facts.has, True))
    supported = entry.get("supported_parameters")
    if isinstance(supported, list):
        stated.setdefault("tools", "tools" in supported)
        stated.setdefault("thinking", "reasoning" in supported or "include_reasoning" in supported)
    if isinstance(inputs, list):
        stated.setdefault("vision", "image" in inputs)
        stated.setdefault("audio", "audio" in inputs)
    for name in _family_names(entry, model_id):
        family = family_capabilities(name, parameter_size)
        if family is not None:
            for capability in INFERRED_CAPABILITIES:
                stated.setdefault(capability, capability in family)
            break
    stated.setdefault("tools", True)
    return ("completion", *(c for c in _STATED if stated.get(c)))


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


def model_info(
    entry: Mapping[str, Any], override: ModelOverride | None = None, facts: BackendFacts | None = None
) -> ModelInfo | None:
    """One entry of the backend's ``/models`` list (any flavour) → ModelInfo; None if it has no usable id.

    ``facts`` is what the backend said of the model elsewhere (llama.cpp's ``/props``, see
    :func:`props_facts`); the override wins over both.
    """
    model_id = entry.get("id")
    if not isinstance(model_id, str) or not model_id:
        return None
    override = override or ModelOverride()
    raw_meta = entry.get("meta")
    meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
    n_params = _int(meta.get("n_params"))
    parameter_size = override.parameter_size or (
        _human_count(n_params) if n_params else _parameter_size_from_id(model_id)
    )
    capabilities = override.capabilities or _discovered_capabilities(entry, model_id, parameter_size, facts)
    embedding_length = override.embedding_length or (
        _int(meta.get("n_embd")) if "embedding" in capabilities else None
    )
    return ModelInfo(
        id=model_id,
        created=_int(entry.get("created")),
        capabilities=tuple(capabilities),
        family=override.family or _family(model_id),
        context_length=override.context_length
        or (facts.context_length if facts else None)
        or _context_length(entry),
        embedding_length=embedding_length,
        parameter_size=parameter_size,
        quantization_level=override.quantization_level or _quantization_from_id(model_id),
        size=override.size or _int(meta.get("size")) or 0,
        chat_template=facts.chat_template if facts else None,
        stop=facts.stop if facts else (),
        options=override.options or {},
        capabilities_configured=bool(override.capabilities),
        fim=_fill_in_the_middle(entry, model_id),
    )


def _fill_in_the_middle(entry: Mapping[str, Any], model_id: str) -> FillInTheMiddle | None:
    """The fill-in-the-middle prompt of the first family row the id (or vLLM's ``root``) matches."""
    for name in _family_names(entry, model_id):
        row = family_of(name)
        if row is not None:
            return row.fim
    return None


def _note(value: Any, capability: str, has: set[str], lacks: set[str]) -> None:
    """Only a real boolean is a statement; anything else leaves the capability unspoken for."""
    if isinstance(value, bool):
        (has if value else lacks).add(capability)


def props_facts(props: Mapping[str, Any]) -> BackendFacts:
    """What llama.cpp's ``GET /props`` says of the model it serves.

    * ``modalities.vision`` / ``.audio``: whether a multimodal projector is loaded, so a ``false`` is a real
      "no", even for a vision family: without the projector the server refuses images.
    * ``chat_template_caps`` (what llama.cpp found by running the template): ``supports_tools`` and
      ``supports_tool_calls`` both needed for ``tools``; either false means the model's own template cannot
      show it tools, so it was not trained to call them.  ``supports_reasoning_effort`` true means
      ``thinking``.  ``supports_preserve_reasoning`` and ``<think>`` in the template are *not* taken as
      thinking: Qwen3's non-thinking Instruct-2507 models keep Qwen3's reasoning handling in their template.
    * ``default_generation_settings.n_ctx``: a slot's context, what one request can use.
    * ``chat_template``, ``default_generation_settings.params.stop`` and ``eos_token`` (a stop sequence
      too: generation ends there).
    """
    has: set[str] = set()
    lacks: set[str] = set()
    modalities = props.get("modalities")
    if isinstance(modalities, Mapping):
        _note(modalities.get("vision"), "vision", has, lacks)
        _note(modalities.get("audio"), "audio", has, lacks)
    caps = props.get("chat_template_caps")
    if isinstance(caps, Mapping):
        tool_flags = [caps.get(key) for key in ("supports_tools", "supports_tool_calls")]
        if False in tool_flags:
            lacks.add("tools")
        elif True in tool_flags:
            has.add("tools")
        if caps.get("supports_reasoning_effort") is True:
            has.add("thinking")
    settings = props.get("default_generation_settings")
    settings = settings if isinstance(settings, Mapping) else {}
    params = settings.get("params")
    params = params if isinstance(params, Mapping) else {}
    stops: list[str] = []
    raw_stops = params.get("stop")
    for stop in [*(raw_stops if isinstance(raw_stops, list) else ()), props.get("eos_token")]:
        if isinstance(stop, str) and stop and stop not in stops:
            stops.append(stop)
    template = props.get("chat_template")
    return BackendFacts(
        has=frozenset(has),
        lacks=frozenset(lacks),
        context_length=_int(settings.get("n_ctx")) or _int(props.get("n_ctx")),
        chat_template=template if isinstance(template, str) and template.strip() else None,
        stop=tuple(stops),
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


def show_reply(info: ModelInfo, modified_at: str, *, basename: str | None = None) -> dict[str, Any]:
    """The ``/api/show`` body.  ``model_info`` is always present (the SDK requires the key).

    ``template`` and ``parameters`` are read by clients (LiteLLM: tools; Continue: fill-in-the-middle and
    ``num_ctx``), so they are made to tell the truth: see :mod:`ollama_proxy.translate.templates`.
    """
    arch = info.family
    model_info: dict[str, Any] = {
        "general.architecture": arch,
        "general.basename": basename or info.id.rsplit("/", 1)[-1],
    }
    if info.context_length:
        model_info[f"{arch}.context_length"] = info.context_length
    if info.embedding_length:
        model_info[f"{arch}.embedding_length"] = info.embedding_length
    template = template_for(info)
    return {
        "modelfile": modelfile_for(info, template),
        "parameters": parameters_for(info),
        "template": template,
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

"""Backend model metadata → Ollama listing fields, for each backend flavour."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ollama._types import ListResponse, ProcessResponse, ShowResponse

from ollama_proxy.translate.families import FAMILIES, INFERRED_CAPABILITIES, family_of
from ollama_proxy.translate.models import (
    BackendFacts,
    ModelOverride,
    details,
    listed_name,
    lookup_key,
    model_info,
    props_facts,
    ps_entry,
    pull_progress,
    show_reply,
    split_tag,
    tags_entry,
)
from ollama_proxy.translate.timestamps import parse_go_duration, rfc3339_local, rfc3339_utc

VLLM = {"id": "Qwen/Qwen2.5-7B-Instruct", "object": "model", "created": 1700000000, "max_model_len": 32768}
OPENAI = {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"}
OPENAI_EMBED = {
    "id": "text-embedding-3-small",
    "object": "model",
    "created": 1705948997,
    "owned_by": "system",
}
OPENROUTER = {
    "id": "meta-llama/llama-3.2-11b-vision-instruct:free",
    "created": 1727222400,
    "context_length": 131072,
    "architecture": {"input_modalities": ["text", "image"], "output_modalities": ["text"]},
    "supported_parameters": ["tools", "tool_choice", "reasoning", "max_tokens"],
}
LLAMACPP = {
    "id": "smollm2",
    "object": "model",
    "owned_by": "llamacpp",
    "meta": {"n_ctx_train": 8192, "n_embd": 576, "n_params": 134515008, "size": 100000000},
}


@pytest.mark.parametrize(
    ("entry", "capabilities", "context", "family", "parameter_size"),
    [
        (VLLM, ("completion", "tools"), 32768, "qwen2", "7B"),
        (OPENAI, ("completion", "tools"), None, "gpt", ""),
        (OPENAI_EMBED, ("embedding",), None, "text", ""),
        (OPENROUTER, ("completion", "tools", "thinking", "vision"), 131072, "llama", "11B"),
        (LLAMACPP, ("completion", "tools"), 8192, "llama", "134.52M"),
        ({"id": "BAAI/bge-small-en-v1.5"}, ("embedding",), None, "bert", ""),
        ({"id": "x", "top_provider": {"context_length": 4096}}, ("completion", "tools"), 4096, "x", ""),
        (
            {"id": "lm", "capabilities": ["completion", "vision", "made-up"]},
            ("completion", "vision"),
            None,
            "lm",
            "",
        ),
    ],
)
def test_discovery_per_flavour(
    entry: dict[str, object],
    capabilities: tuple[str, ...],
    context: int | None,
    family: str,
    parameter_size: str,
) -> None:
    info = model_info(entry)
    assert info is not None
    assert info.capabilities == capabilities
    assert info.context_length == context
    assert info.family == family
    assert info.parameter_size == parameter_size


def test_entries_without_an_id_are_skipped() -> None:
    assert model_info({"object": "model"}) is None
    assert model_info({"id": ""}) is None
    assert model_info({"id": 3}) is None


def test_overrides_win_over_discovery() -> None:
    override = ModelOverride(
        context_length=1000,
        capabilities=("completion", "thinking"),
        family="qwen3",
        parameter_size="30B",
        quantization_level="Q8_0",
        size=42,
    )
    info = model_info(VLLM, override)
    assert info is not None
    assert (info.context_length, info.capabilities, info.family) == (
        1000,
        ("completion", "thinking"),
        "qwen3",
    )
    assert (info.parameter_size, info.quantization_level, info.size) == ("30B", "Q8_0", 42)


def test_quantization_and_embedding_length() -> None:
    info = model_info({"id": "TheBloke/Mistral-7B-Instruct-v0.2-AWQ"})
    assert info is not None
    assert info.quantization_level == "AWQ"
    embed = model_info({"id": "nomic-embed-text", "meta": {"n_embd": 768}})
    assert embed is not None
    assert embed.embedding_length == 768
    assert details(embed)["embedding_length"] == 768


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("llama3", ("llama3", None)),
        ("llama3:8b", ("llama3", "8b")),
        ("meta-llama/llama-3.2-3b-instruct:free", ("meta-llama/llama-3.2-3b-instruct", "free")),
        ("host:5000/ns/model", ("host:5000/ns/model", None)),
    ],
)
def test_split_tag(name: str, split: tuple[str, str | None]) -> None:
    assert split_tag(name) == split


def test_listed_names_carry_a_tag_and_match_their_bare_form() -> None:
    assert listed_name("gpt-4o") == "gpt-4o:latest"
    assert listed_name("a/b:free") == "a/b:free"
    assert lookup_key("GPT-4o:latest") == lookup_key("gpt-4o") == "gpt-4o"
    assert lookup_key("a/b:free") == "a/b:free"


def test_listing_shapes_validate_with_the_ollama_sdk() -> None:
    info = model_info(VLLM)
    assert info is not None
    stamp = rfc3339_local(1700000000.5, 3600)
    listing = ListResponse.model_validate({"models": [tags_entry("qwen:latest", info, stamp)]})
    assert listing.models[0].model == "qwen:latest"
    assert re.fullmatch(r"[0-9a-f]{64}", listing.models[0].digest or "")
    assert listing.models[0].details is not None
    assert listing.models[0].details.family == "qwen2"
    shown = ShowResponse.model_validate(show_reply(info, stamp))
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo is not None
    assert shown.modelinfo["qwen2.context_length"] == 32768
    assert shown.modelinfo["general.architecture"] == "qwen2"
    ps = ProcessResponse.model_validate({"models": [ps_entry("qwen:latest", info, stamp)]})
    assert ps.models[0].context_length == 32768
    assert ps.models[0].expires_at == datetime.fromisoformat("2023-11-14T23:13:20.5+01:00")


def test_show_without_a_known_context_has_no_invented_one() -> None:
    info = model_info(OPENAI)
    assert info is not None
    reply = show_reply(info, "", basename="gpt-4o-mini:latest")
    assert reply["model_info"] == {"general.architecture": "gpt", "general.basename": "gpt-4o-mini:latest"}
    assert reply["modified_at"] == "0001-01-01T00:00:00Z"


def test_pull_progress_ends_in_success() -> None:
    info = model_info(VLLM)
    assert info is not None
    lines = pull_progress(info)
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-1] == {"status": "success"}
    assert lines[1]["digest"] == "sha256:" + info.digest


@pytest.mark.parametrize(
    ("wall", "text"),
    [
        (0.0, "1970-01-01T00:00:00Z"),
        (1748772000.123456789, "2025-06-01T10:00:00.123457Z"),
        (1748772000.5, "2025-06-01T10:00:00.5Z"),
        (1748772000.9999999999, "2025-06-01T10:00:01Z"),
    ],
)
def test_rfc3339_utc(wall: float, text: str) -> None:
    assert rfc3339_utc(wall) == text


def test_rfc3339_local_offsets() -> None:
    assert rfc3339_local(1748772000.0, 0) == "2025-06-01T10:00:00Z"
    assert rfc3339_local(1748772000.25, -7 * 3600) == "2025-06-01T03:00:00.25-07:00"
    assert rfc3339_local(1748772000.0, 5 * 3600 + 1800) == "2025-06-01T15:30:00+05:30"


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_timestamps_are_go_shaped_and_exact(wall: float) -> None:
    text = rfc3339_utc(wall)
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{0,5}[1-9])?Z", text)
    assert match is not None, text
    whole = datetime.fromisoformat(match.group(1) + "+00:00").timestamp()
    assert whole + float(match.group(2) or 0) == pytest.approx(wall, abs=1e-6)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("0", 0.0),
        ("-1", None),
        ("-1s", -1.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
    ],
)
def test_go_durations(text: str, seconds: float | None) -> None:
    if seconds is None:
        with pytest.raises(ValueError, match="missing unit"):
            parse_go_duration(text)
    else:
        assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"), [("10", "missing unit"), ("5x", "invalid duration"), ("", "invalid")]
)
def test_bad_go_durations(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_go_duration(text)


# --- capabilities from the family table, backend facts and overrides -----------------------------------


@pytest.mark.parametrize(
    ("model_id", "capabilities"),
    [
        ("Qwen/Qwen3-8B", ("completion", "tools", "thinking")),
        ("qwen3:8b", ("completion", "tools", "thinking")),
        ("hf.co/unsloth/Qwen3-8B-GGUF:Q4_K_M", ("completion", "tools", "thinking")),
        ("Qwen/Qwen3-30B-A3B-Instruct-2507", ("completion", "tools")),
        ("Qwen/Qwen3-235B-A22B-Thinking-2507", ("completion", "tools", "thinking")),
        ("Qwen/QwQ-32B", ("completion", "tools", "thinking")),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", ("completion", "tools", "thinking")),
        ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", ("completion", "tools", "thinking")),
        ("deepseek-r1:7b", ("completion", "tools", "thinking")),
        ("openai/gpt-oss-20b", ("completion", "tools", "thinking")),
        ("gpt-oss:120b", ("completion", "tools", "thinking")),
        ("mistralai/Magistral-Small-2506", ("completion", "tools", "thinking")),
        ("Qwen/Qwen2.5-VL-7B-Instruct", ("completion", "vision")),
        ("qwen2.5vl:7b", ("completion", "vision")),
        ("Qwen/Qwen2-VL-7B-Instruct", ("completion", "vision")),
        ("Qwen/Qwen-VL-Chat", ("completion", "vision")),
        ("Qwen/Qwen3-VL-8B-Instruct", ("completion", "tools", "vision")),
        ("Qwen/Qwen3-VL-8B-Thinking", ("completion", "tools", "thinking", "vision")),
        ("google/gemma-3-27b-it", ("completion", "vision")),
        ("gemma3:4b", ("completion", "vision")),
        ("gemma3:1b", ("completion",)),
        ("google/gemma-3-270m-it", ("completion",)),
        ("llava-hf/llava-1.5-7b-hf", ("completion", "vision")),
        ("llava-hf/llava-v1.6-mistral-7b-hf", ("completion", "vision")),
        ("meta-llama/Llama-3.2-11B-Vision-Instruct", ("completion", "vision")),
        ("llama3.2-vision:11b", ("completion", "vision")),
        ("openbmb/MiniCPM-V-2_6", ("completion", "vision")),
        ("minicpm-v:8b", ("completion", "vision")),
        ("mistralai/Pixtral-12B-2409", ("completion", "tools", "vision")),
        ("mistralai/Mistral-Small-3.1-24B-Instruct-2503", ("completion", "tools", "vision")),
        ("mistral-small3.2:24b", ("completion", "tools", "vision")),
        ("meta-llama/Llama-3.1-8B-Instruct", ("completion", "tools")),
        ("llama3.2:3b", ("completion", "tools")),
        ("meta-llama/Llama-3.3-70B-Instruct", ("completion", "tools")),
        ("mistralai/Mistral-7B-Instruct-v0.3", ("completion", "tools")),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", ("completion", "tools")),
        ("Qwen/Qwen2.5-7B-Instruct", ("completion", "tools")),
        ("Qwen/Qwen2.5-Coder-7B-Instruct", ("completion", "tools", "insert")),
        ("qwen2.5-coder:1.5b-base", ("completion", "tools", "insert")),
        ("bigcode/starcoder2-15b", ("completion", "insert")),
        ("codellama/CodeLlama-7b-hf", ("completion", "insert")),
        ("deepseek-ai/deepseek-coder-6.7b-base", ("completion", "insert")),
        ("mistralai/Codestral-22B-v0.1", ("completion", "insert")),
        ("ibm-granite/granite-8b-code-instruct-4k", ("completion", "insert")),
        ("granite-code:3b", ("completion", "insert")),
        # No row: the daemon's default, which lets the client try tools.
        ("smollm2", ("completion", "tools")),
        ("gpt-4o-mini", ("completion", "tools")),
    ],
)
def test_capabilities_of_well_known_families(model_id: str, capabilities: tuple[str, ...]) -> None:
    info = model_info({"id": model_id})
    assert info is not None
    assert info.capabilities == capabilities


# One id per row of the family table, each reaching its own row: a new row needs an example here, and a row
# that an earlier one shadows fails.
FAMILY_EXAMPLES = {
    "gpt-oss": "openai/gpt-oss-20b",
    "deepseek-r1": "deepseek-ai/DeepSeek-R1-0528",
    "deepseek-v3.1+": "deepseek-ai/DeepSeek-V3.1",
    "qwq": "Qwen/QwQ-32B",
    "qvq": "Qwen/QVQ-72B-Preview",
    "magistral": "magistral:24b",
    "qwen3-vl thinking": "Qwen/Qwen3-VL-30B-A3B-Thinking",
    "qwen3-vl": "qwen3-vl:8b",
    "qwen-vl, qwen2-vl, qwen2.5-vl": "Qwen/Qwen2.5-VL-3B-Instruct",
    "llava": "llava:13b",
    "llama3.2-vision": "meta-llama/Llama-3.2-90B-Vision-Instruct",
    "llama4": "meta-llama/Llama-4-Scout-17B-16E-Instruct",
    "minicpm-v": "openbmb/MiniCPM-o-2_6",
    "pixtral": "mistralai/Pixtral-Large-Instruct-2411",
    "mistral-small3.1+": "mistral-small3.1:24b",
    "gemma3": "google/gemma-3-12b-it",
    "qwen3-coder": "qwen3-coder:30b",
    "qwen2.5-coder": "qwen2.5-coder:7b",
    "codeqwen": "Qwen/CodeQwen1.5-7B",
    "starcoder": "bigcode/starcoder",
    "codellama": "codellama:7b-code",
    "deepseek-coder": "deepseek-coder-v2:16b",
    "codestral": "codestral:22b",
    "granite-code": "granite-code:8b",
    "codegemma": "codegemma:7b",
    "stable-code": "stabilityai/stable-code-3b",
    "qwen3.5+": "Qwen/Qwen3.5-27B",
    "qwen3 instruct": "Qwen/Qwen3-Next-80B-A3B-Instruct",
    "qwen3": "Qwen/Qwen3-0.6B",
    "qwen2.5": "qwen2.5:14b",
    "qwen2": "Qwen/Qwen2-7B-Instruct",
    "llama3.1, 3.2, 3.3": "llama3.3:70b",
    "mistral, mixtral": "mistral-nemo:12b",
}


def test_every_family_row_is_reachable_and_speaks_only_for_what_the_table_infers() -> None:
    assert sorted(FAMILY_EXAMPLES) == sorted(family.name for family in FAMILIES)
    for family in FAMILIES:
        assert family.capabilities <= INFERRED_CAPABILITIES, family.name
        found = family_of(FAMILY_EXAMPLES[family.name])
        assert found is family, (family.name, found)


@pytest.mark.parametrize(
    ("model_id", "family"),
    [
        # A name holding another family's name is caught by its own row first.
        ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "deepseek-r1"),
        ("llava-hf/llava-v1.6-mistral-7b-hf", "llava"),
        ("Qwen/Qwen2.5-Coder-7B", "qwen2.5-coder"),
        ("Qwen/Qwen3-Coder-30B-A3B-Instruct", "qwen3-coder"),
        ("google/codegemma-7b", "codegemma"),
        ("mistralai/Magistral-Small-2506", "magistral"),
        ("google/gemma-3n-E4B-it", None),
        ("Qwen3.5-27B", "qwen3.5+"),
    ],
)
def test_family_rows_are_tried_most_specific_first(model_id: str, family: str | None) -> None:
    found = family_of(model_id)
    assert (found.name if found else None) == family


def test_every_insert_family_says_how_to_prompt_it_and_no_other_does() -> None:
    """vLLM and llama.cpp take no ``suffix``: a family advertised as ``insert`` needs its own prompt."""
    for family in FAMILIES:
        assert ("insert" in family.capabilities) is (family.fim is not None), family.name


def test_the_fill_in_the_middle_prompt_comes_with_the_family() -> None:
    coder = model_info({"id": "coder", "root": "Qwen/Qwen2.5-Coder-7B-Instruct"})
    assert coder is not None
    assert coder.fim is not None
    assert coder.fim.prompt("a", "b") == "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>"
    chat = model_info({"id": "Qwen/Qwen2.5-7B-Instruct"})
    assert chat is not None
    assert chat.fim is None


def test_a_vllm_alias_is_placed_by_its_root() -> None:
    info = model_info({"id": "assistant", "root": "Qwen/Qwen3-8B", "max_model_len": 40960})
    assert info is not None
    assert info.capabilities == ("completion", "tools", "thinking")


def test_overrides_win_over_the_family_table() -> None:
    info = model_info({"id": "Qwen/Qwen3-8B"}, ModelOverride(capabilities=("completion",)))
    assert info is not None
    assert info.capabilities == ("completion",)
    assert info.capabilities_configured


def test_backend_metadata_wins_over_the_family_table_capability_by_capability() -> None:
    # OpenRouter lists no tools and no reasoning for this Qwen3, and no image input for this Gemma 3.
    qwen = model_info({"id": "qwen/qwen3-8b:free", "supported_parameters": ["max_tokens"]})
    gemma = model_info(
        {
            "id": "google/gemma-3-27b-it",
            "architecture": {"input_modalities": ["text"]},
            "supported_parameters": [],
        }
    )
    assert qwen is not None
    assert gemma is not None
    assert qwen.capabilities == ("completion",)
    assert gemma.capabilities == ("completion",)
    # Where OpenRouter says nothing of a capability (fill-in-the-middle), the table still answers.
    coder = model_info({"id": "qwen/qwen-2.5-coder-32b-instruct", "supported_parameters": ["tools"]})
    assert coder is not None
    assert coder.capabilities == ("completion", "tools", "insert")


LLAMACPP_PROPS = {
    "default_generation_settings": {
        "id": 0,
        "n_ctx": 4096,
        "params": {"n_predict": -1, "temperature": 0.8, "stop": [], "max_tokens": -1},
    },
    "total_slots": 1,
    "model_path": "/models/Qwen3-VL-8B-Instruct-Q4_K_M.gguf",
    "chat_template": "{%- if tools %}...{%- endif %}",
    "chat_template_caps": {
        "supports_tools": True,
        "supports_tool_calls": True,
        "supports_system_role": True,
        "supports_parallel_tool_calls": True,
        "supports_preserve_reasoning": True,
    },
    "modalities": {"vision": False, "audio": False},
    "eos_token": "<|im_end|>",
    "build_info": "b6000-abcdef0",
}


def test_props_facts_from_llama_cpp() -> None:
    facts = props_facts(LLAMACPP_PROPS)
    assert facts == BackendFacts(
        has=frozenset({"tools"}),
        lacks=frozenset({"vision", "audio"}),
        context_length=4096,
        chat_template="{%- if tools %}...{%- endif %}",
        stop=("<|im_end|>",),
    )


@pytest.mark.parametrize(
    ("props", "facts"),
    [
        ({}, BackendFacts()),
        ({"modalities": {"vision": True, "audio": True}}, BackendFacts(has=frozenset({"vision", "audio"}))),
        # Only real booleans are statements.
        ({"modalities": {"vision": "yes", "audio": None}}, BackendFacts()),
        ({"chat_template_caps": {"supports_tools": False}}, BackendFacts(lacks=frozenset({"tools"}))),
        (
            {"chat_template_caps": {"supports_tools": True, "supports_tool_calls": False}},
            BackendFacts(lacks=frozenset({"tools"})),
        ),
        (
            {"chat_template_caps": {"supports_reasoning_effort": True}},
            BackendFacts(has=frozenset({"thinking"})),
        ),
        # A template that keeps reasoning is not proof of a reasoning model (Qwen3 Instruct-2507 keeps it).
        ({"chat_template_caps": {"supports_preserve_reasoning": True}}, BackendFacts()),
        ({"chat_template": "  ", "default_generation_settings": {"n_ctx": 0}}, BackendFacts()),
        ({"default_generation_settings": "junk", "n_ctx": 2048}, BackendFacts(context_length=2048)),
        (
            {
                "default_generation_settings": {"params": {"stop": ["</s>", "", 3, "</s>"]}},
                "eos_token": "</s>",
            },
            BackendFacts(stop=("</s>",)),
        ),
    ],
)
def test_props_facts_take_only_what_is_stated(props: dict[str, object], facts: BackendFacts) -> None:
    assert props_facts(props) == facts


def test_props_facts_win_over_the_table_and_the_models_entry() -> None:
    entry = {"id": "Qwen3-VL-8B-Instruct-Q4_K_M.gguf", "meta": {"n_ctx_train": 262144}}
    without = model_info(entry)
    assert without is not None
    assert without.capabilities == ("completion", "tools", "vision")
    assert without.context_length == 262144
    info = model_info(entry, facts=props_facts(LLAMACPP_PROPS))
    assert info is not None
    # No projector loaded: llama.cpp refuses images, whatever the family could do.
    assert info.capabilities == ("completion", "tools")
    assert info.context_length == 4096
    assert info.chat_template == LLAMACPP_PROPS["chat_template"]
    assert info.stop == ("<|im_end|>",)
    overridden = model_info(entry, ModelOverride(context_length=8192), facts=props_facts(LLAMACPP_PROPS))
    assert overridden is not None
    assert overridden.context_length == 8192


def test_a_model_seen_reasoning_becomes_thinking_capable() -> None:
    info = model_info({"id": "some-new-model", "max_model_len": 4096})
    assert info is not None
    assert info.capabilities == ("completion", "tools")
    learnt = info.with_capability("thinking")
    assert learnt.capabilities == ("completion", "tools", "thinking")
    assert learnt.with_capability("thinking") is learnt
    assert "thinking" in learnt.with_capability("vision").capabilities
    # The operator's list wins over what is seen, and an embedder does not chat.
    fixed = model_info({"id": "some-new-model"}, ModelOverride(capabilities=("completion",)))
    assert fixed is not None
    assert fixed.with_capability("thinking") is fixed
    embedder = model_info({"id": "nomic-embed-text"})
    assert embedder is not None
    assert embedder.with_capability("thinking") is embedder
    with pytest.raises(ValueError, match="unknown capability"):
        info.with_capability("flying")


def test_override_options_merge_key_by_key() -> None:
    pattern = ModelOverride(options={"temperature": 0.6, "stop": ["<|im_end|>"]}, context_length=4096)
    exact = ModelOverride(options={"temperature": 0.2})
    merged = exact.merged_over(pattern)
    assert dict(merged.options or {}) == {"temperature": 0.2, "stop": ["<|im_end|>"]}
    assert merged.context_length == 4096
    assert dict(ModelOverride().merged_over(pattern).options or {}) == dict(pattern.options or {})
    assert ModelOverride().merged_over(ModelOverride()).options is None


def test_options_cannot_be_changed_behind_the_frozen_classes() -> None:
    source = {"temperature": 0.6}
    override = ModelOverride(options=source)
    source["temperature"] = 1.0
    assert override.options == {"temperature": 0.6}
    info = model_info({"id": "m"}, override)
    assert info is not None
    with pytest.raises(TypeError):
        info.options["temperature"] = 2.0  # type: ignore[index]

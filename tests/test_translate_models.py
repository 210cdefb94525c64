"""Backend model metadata → Ollama listing fields, for each backend flavour."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ollama._types import ListResponse, ProcessResponse, ShowResponse

from ollama_proxy.translate.models import (
    ModelOverride,
    details,
    listed_name,
    lookup_key,
    model_info,
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

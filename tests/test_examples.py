"""The shipped example configuration must load as it is."""

from __future__ import annotations

from pathlib import Path

from ollama_proxy.config import build_config

ROOT = Path(__file__).resolve().parent.parent


def test_example_toml_loads() -> None:
    config = build_config({}, {}, str(ROOT / "etc" / "ollama-proxy.toml"))
    assert config.backend == "http://127.0.0.1:8000/v1"
    assert config.models["gpt-4o*"].context_length == 128000

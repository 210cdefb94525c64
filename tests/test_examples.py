"""The shipped example configuration must load as it is."""

from __future__ import annotations

from pathlib import Path

from ollama_proxy.config import build_config

ROOT = Path(__file__).resolve().parent.parent


def test_example_toml_loads() -> None:
    config = build_config({}, {}, str(ROOT / "etc" / "ollama-proxy.toml"))
    assert [backend.url for backend in config.backends] == ["http://127.0.0.1:8000/v1"]
    assert config.models["gpt-4o*"].context_length == 128000


def test_readme_documents_every_setting() -> None:
    from ollama_proxy.config import SETTINGS

    readme = (ROOT / "README.md").read_text()
    missing = [s.name for s in SETTINGS if f"`--{s.name}" not in readme or s.env not in readme]
    assert missing == []


def test_grafana_dashboard_queries_only_series_we_export() -> None:
    import json
    import re

    from ollama_proxy.metrics import Metrics

    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exported = Metrics().exposition().decode()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            pattern = r"\b(ollama_proxy_\w+?|process_\w+?)(?:_bucket|_total)?\b"
            for name in re.findall(pattern, target["expr"]):
                assert name in exported or name.endswith(("_in_flight", "_streams", "_breaker_state")), name

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

    from twisted.internet.task import Clock

    from ollama_proxy.config import ProxyConfig
    from ollama_proxy.service import ProxyService

    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    # A daemon's own registry, with the scrape-time gauges its site and backends add (not started).
    service = ProxyService(ProxyConfig.for_backend("http://backend.test/v1", listen=()), Clock())
    exported = service.app.metrics.exposition().decode()
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", exported, re.MULTILINE))
    queried = 0
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for series in re.findall(r"\b(?:ollama_proxy|process)_\w+", target["expr"]):
                queried += 1
                histogram = (
                    series.endswith("_bucket") and families.get(series[: -len("_bucket")]) == "histogram"
                )
                assert series in families or histogram, series
    assert queried >= 10

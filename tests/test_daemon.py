"""The daemon as an operator runs it: ``twistd -n ollamaproxy ...`` in its own process."""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

from tests.support import ROOT, Child, child_env
from tests.twistd_measured import twistd_command

TWISTD = Path(sys.executable).with_name("twistd")


def test_wheel_carries_the_plugin_and_twistd_lists_it(tmp_path: Path) -> None:
    """What `pip install .` puts in site-packages: the plugin module, and no __init__.py under twisted/."""
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("ollama_proxy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/ollamaproxy.py" in names
    assert "ollama_proxy/py.typed" in names
    assert not {"twisted/__init__.py", "twisted/plugins/__init__.py"} & names
    assert not any(name.startswith("tests/") for name in names)
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    listed = subprocess.run(
        [str(TWISTD), "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert re.search(r"^\s+ollamaproxy\s", listed.stdout, re.MULTILINE), listed.stdout


def test_plugin_is_discoverable() -> None:
    assert "ollamaproxy" in {plugin.tapname for plugin in getPlugins(IServiceMaker)}


def test_no_init_files_under_twisted() -> None:
    """An __init__.py there would hide our plugin directory or overwrite Twisted's own on install."""
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()


@pytest.fixture
def backend_process() -> Iterator[str]:
    child = Child(
        [sys.executable, "-m", "tests.fake_backend", "--flavour", "vllm", "--port", "0"], child_env()
    )
    url = child.wait_for(r"listening on (\S+)").group(1)
    yield url
    child.stop()


def test_twistd_serves_the_ollama_sdk(backend_process: str, tmp_path: Path) -> None:
    model_map = tmp_path / "map.json"
    model_map.write_text(json.dumps({"qwen": "Qwen/Qwen2.5-7B-Instruct"}))
    daemon = Child(
        twistd_command(
            "--backend",
            backend_process,
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--model-map",
            str(model_map),
        ),
        child_env(OPENAI_API_KEY="sk-never-logged"),
    )
    try:
        # The daemon's own reactor (ollama_proxy/reactor.py), installed by its option parsing.
        assert daemon.wait_for(r"reactor class: (\S+)\.").group(1) == "ollama_proxy.reactor.SendingReactor"
        url = daemon.wait_for(r"listening on (http://\S+)").group(1)
        client = ollama.Client(host=url)
        assert "qwen:latest" in [m.model for m in client.list().models]
        shown = client.show("qwen")
        assert shown.capabilities == ["completion", "tools"]
        assert shown.modelinfo is not None
        assert shown.modelinfo["qwen2.context_length"] == 8192
        assert client.ps().models == []
        with pytest.raises(ollama.ResponseError) as caught:
            client.show("unknown")
        assert caught.value.status_code == 404
        head = urllib.request.urlopen(urllib.request.Request(url + "/", method="HEAD"), timeout=10)  # noqa: S310
        assert head.status == 200

        # SIGHUP reloads the model map; a broken file keeps the old one.
        model_map.write_text(json.dumps({"other": "Qwen/Qwen2.5-7B-Instruct"}))
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for(r"model map reloaded")
        assert client.show("other").capabilities == ["completion", "tools"]
        model_map.write_text("{broken")
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for(r"model map not reloaded, keeping the previous one")
        assert client.show("other").capabilities == ["completion", "tools"]
    finally:
        daemon.stop()
    assert "sk-never-logged" not in "".join(daemon.seen) + "".join(daemon.lines.queue)


def test_twistd_rejects_a_bad_backend_in_one_line() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [str(TWISTD), "-n", "--pidfile=", "ollamaproxy", "--backend", "not a url"],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert time.monotonic() - started < 30
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines() == [
        "ollamaproxy: --backend: 'not a url' is not an http:// or https:// URL (e.g. http://gpu1:8000/v1)"
    ]


def test_make_service_and_model_map_reload_in_process(tmp_path: Path) -> None:
    """makeService wires the config into a service and settles the garbage collector; reloads swap the map
    and survive a broken file."""
    from ollama_proxy.service import GC_THRESHOLDS
    from ollama_proxy.tap import Options, makeService

    model_map = tmp_path / "map.json"
    model_map.write_text(json.dumps({"a": "model-a"}))
    options = Options()
    options.parseOptions(["--backend", "http://127.0.0.1:9/v1", "--model-map", str(model_map), "-l", "tcp:0"])
    thresholds = gc.get_threshold()
    try:
        service = makeService(options)  # the reactor runs under pytest-twisted: settled at once
        assert gc.get_freeze_count() > 10_000  # start-up objects, out of the collector's way
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    catalog = service.app.catalog
    assert catalog.model_map == {"a": "model-a"}
    model_map.write_text(json.dumps({"b": "model-b"}))
    service.reload_model_map()
    assert catalog.model_map == {"b": "model-b"}
    model_map.write_text("[]")
    service.reload_model_map()
    assert catalog.model_map == {"b": "model-b"}

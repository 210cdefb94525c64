"""What ships for deployment: the systemd units (checked by ``systemd-analyze verify``), the Dockerfile, the
example files under ``etc/`` (loaded by the real parsers) and the configuration reference (checked against
``SETTINGS``, so that it cannot drift)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import tomllib

from ollama_proxy.config import SETTINGS, build_config, load_model_map
from tests.configuration_doc import BEGIN, current, render
from tests.support import RunningProxy, in_thread

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
ETC = ROOT / "etc"
TWISTD = Path(sys.executable).with_name("twistd")
INSTALLED_TWISTD = "/opt/ollama-proxy/venv/bin/twistd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


# -- systemd ----------------------------------------------------------------------------------------------


def _unit(name: str) -> str:
    return (SYSTEMD / name).read_text()


def _values(unit: str, key: str) -> list[str]:
    """Every value of ``key`` (continuation lines joined)."""
    joined = unit.replace("\\\n", " ")
    return [m.group(1).strip() for m in re.finditer(rf"^{key}=(.*)$", joined, re.MULTILINE)]


def test_unit_files_are_there() -> None:
    assert sorted(p.name for p in SYSTEMD.iterdir()) == [
        "ollama-proxy-activated.service",
        "ollama-proxy.service",
        "ollama-proxy.socket",
    ]


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian: systemd)")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify also checks that ExecStart's program exists: the copies point at this venv's twistd."""
    assert SYSTEMD_ANALYZE is not None
    for unit in SYSTEMD.iterdir():
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED_TWISTD, str(TWISTD)))
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *sorted(p.name for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    # verify exits 0 on many problems (unknown keys, bad values are only warnings): none may be printed.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("name", ["ollama-proxy.service", "ollama-proxy-activated.service"])
def test_service_units_notify_harden_and_take_the_key_as_a_credential(name: str) -> None:
    unit = _unit(name)
    for key, value in {
        "Type": "notify",
        "NotifyAccess": "main",
        "KillMode": "mixed",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "EnvironmentFile": "-/etc/ollama-proxy/ollama-proxy.env",
        "LoadCredential": "api-key:/etc/ollama-proxy/api-key",
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet": "",
        "SystemCallFilter": "@system-service",
        "RuntimeDirectory": "ollama-proxy",
    }.items():
        assert _values(unit, key) == [value], key
    assert _values(unit, "WatchdogSec")
    (exec_start,) = _values(unit, "ExecStart")
    assert "--api-key-file %d/api-key" in exec_start
    assert "--config /etc/ollama-proxy/ollama-proxy.toml" in exec_start
    assert exec_start.startswith(f"{INSTALLED_TWISTD} --nodaemon --pidfile= ollamaproxy ")


def test_socket_unit_names_its_socket_for_the_activated_service() -> None:
    socket_unit = _unit("ollama-proxy.socket")
    assert _values(socket_unit, "ListenStream") == ["127.0.0.1:11434"]
    (name,) = _values(socket_unit, "FileDescriptorName")
    assert _values(socket_unit, "Service") == ["ollama-proxy-activated.service"]
    activated = _unit("ollama-proxy-activated.service")
    assert f"--listen systemd:domain=INET:name={name}" in _values(activated, "ExecStart")[0]
    assert _values(activated, "Requires") == ["ollama-proxy.socket"]
    assert "--listen" not in _values(_unit("ollama-proxy.service"), "ExecStart")[0]


def _as_installed(tmp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """/etc/ollama-proxy/* and %d/api-key as the examples in etc/ would be installed: path substitutions, and
    the environment the unit's EnvironmentFile= gives."""
    key = tmp_path / "api-key"
    key.write_text("sk-from-a-credential\n")
    paths = {
        "/etc/ollama-proxy/ollama-proxy.toml": str(ETC / "ollama-proxy.toml"),
        "/etc/ollama-proxy/model-map.json": str(ETC / "model-map.json"),
        "%d/api-key": str(key),
    }
    environ = {name: value for name, value, _active in _env_file() if _active}
    environ = {name: paths.get(value, value) for name, value in environ.items()}
    return paths, environ


@pytest.mark.parametrize("name", ["ollama-proxy.service", "ollama-proxy-activated.service"])
def test_service_command_lines_are_accepted_by_the_daemon(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ollama_proxy.tap import Options

    paths, environ = _as_installed(tmp_path)
    for variable in [v for v in __import__("os").environ if v.startswith(("OLLAMA_", "OPENAI_"))]:
        monkeypatch.delenv(variable)
    for variable, value in environ.items():
        monkeypatch.setenv(variable, value)
    words = shlex.split(_values(_unit(name), "ExecStart")[0])
    args = [paths.get(word, word) for word in words[words.index("ollamaproxy") + 1 :]]
    if "systemd:domain=INET:name=ollamaproxy" in args:
        args[args.index("systemd:domain=INET:name=ollamaproxy")] = "tcp:0"  # no systemd socket here
    options = Options()
    options.parseOptions(args)
    config = options.config
    assert config is not None
    assert config.backends[0].api_key == "sk-from-a-credential"
    assert config.model_map == load_model_map(str(ETC / "model-map.json"))
    assert config.log_format == "json"


# -- the container image ----------------------------------------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs: continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            found.append((instruction.upper(), arguments.strip()))
    return found


def _only(instruction: str) -> str:
    (value,) = [arguments for name, arguments in _instructions() if name == instruction]
    return value


def test_dockerfile_builds_in_two_stages_from_slim_python() -> None:
    instructions = _instructions()
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in instructions
    stages = [arguments for name, arguments in instructions if name == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS run"]
    copies = [arguments for name, arguments in instructions if name == "COPY"]
    assert "--from=build /opt/ollama-proxy /opt/ollama-proxy" in copies
    runs = [arguments for name, arguments in instructions if name == "RUN"]
    assert any("pip install ." in run for run in runs)
    # The plugin cache is written at build time, before the switch to the unprivileged user.
    names = [name for name, _ in instructions]
    cache = next(i for i, (n, a) in enumerate(instructions) if n == "RUN" and "getPlugins(IPlugin)" in a)
    assert cache > names.index("COPY", names.index("FROM", 1))
    assert cache < names.index("USER")


def test_dockerfile_runs_unprivileged_listens_on_every_interface_and_checks_health() -> None:
    user = _only("USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user)  # numeric and not root, for runAsNonRoot
    assert _only("EXPOSE") == "11434"
    entrypoint = json.loads(_only("ENTRYPOINT"))
    assert entrypoint[:4] == ["twistd", "--nodaemon", "--pidfile=", "ollamaproxy"]
    assert entrypoint[4:] == ["--listen", "tcp:11434:interface=0.0.0.0:backlog=1024"]
    health = _only("HEALTHCHECK")
    assert "curl" not in health
    assert "wget" not in health
    command = json.loads(health.partition("CMD ")[2])
    assert command[0] == "python"
    assert "urllib.request" in command[2]
    assert "http://127.0.0.1:11434/health" in command[2]


def test_dockerfile_entrypoint_is_accepted_by_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    from ollama_proxy.tap import Options

    monkeypatch.setenv("OLLAMA_PROXY_BACKEND", "http://gpu1:8000/v1")
    entrypoint = json.loads(_only("ENTRYPOINT"))
    options = Options()
    options.parseOptions([*entrypoint[4:], "--workers", "2"])
    assert options.config is not None
    assert options.config.listen == ("tcp:11434:interface=0.0.0.0:backlog=1024",)


@pytest_twisted.ensureDeferred
async def test_dockerfile_healthcheck_command_passes_on_a_live_daemon_and_fails_on_a_dead_one(
    proxy: RunningProxy,
) -> None:
    command = json.loads(_only("HEALTHCHECK").partition("CMD ")[2])

    def check(url: str) -> int:
        script = command[2].replace("http://127.0.0.1:11434", url)
        return subprocess.run(
            [sys.executable, "-c", script], capture_output=True, timeout=30, check=False
        ).returncode

    assert await in_thread(check, proxy.url) == 0
    assert await in_thread(check, "http://127.0.0.1:9") != 0


def test_dockerignore_sends_only_the_package() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "**"  # everything out (.venv, .git, tests, caches, dropin.cache) ...
    assert set(patterns[1:]) >= {"!pyproject.toml", "!README.md", "!ollama_proxy/**", "!twisted/plugins/*.py"}
    copied = {
        arguments.split()[0]
        for name, arguments in _instructions()
        if name == "COPY" and "--from" not in arguments
    }
    assert copied == {"pyproject.toml", "ollama_proxy", "twisted"}


# -- etc/: the examples load with the real parsers ---------------------------------------------------------


def _env_file() -> list[tuple[str, str, bool]]:
    """(name, value, active) for each ``VAR=value`` line and each commented-out ``# VAR=value`` example."""
    found = []
    for line in (ETC / "ollama-proxy.env").read_text().splitlines():
        match = re.fullmatch(r"(# )?([A-Z][A-Z0-9_]*)=(\S*)", line)
        if match:
            found.append((match.group(2), match.group(3), match.group(1) is None))
        else:
            assert not line or line.startswith("#"), f"not a VAR=value line: {line!r}"
    return found


def test_environment_file_names_only_real_variables_with_valid_values() -> None:
    by_env = {setting.env: setting for setting in SETTINGS}
    entries = _env_file()
    assert entries
    for name, value, _active in entries:
        assert '"' not in value
        assert "'" not in value
        if name in by_env:
            by_env[name].parse(value)  # raises on a bad example
        else:
            assert name in {"OLLAMA_PROXY_LISTEN", "OLLAMA_HOST", "OLLAMA_ORIGINS"}, name


def test_environment_file_and_toml_load_together(tmp_path: Path) -> None:
    _paths, environ = _as_installed(tmp_path)
    config = build_config({}, environ, str(ETC / "ollama-proxy.toml"))
    assert config.model_map == load_model_map(str(ETC / "model-map.json"))
    assert config.log_format == "json"
    assert [backend.url for backend in config.backends] == ["http://127.0.0.1:8000/v1"]


def test_example_toml_shows_every_setting_with_a_valid_value() -> None:
    text = (ETC / "ollama-proxy.toml").read_text()
    top = text.split("\n[", 1)[0]  # the top-level keys come before the first table
    shown: dict[str, Any] = {}
    for line in top.splitlines():
        match = re.fullmatch(r"(?:# )?([a-z_]+) = (.+?)(\s+#.*)?", line)
        if match:
            shown.update(tomllib.loads(f"{match.group(1)} = {match.group(2)}"))
    by_key = {setting.key: setting for setting in SETTINGS}
    assert set(by_key) <= set(shown), set(by_key) - set(shown)
    for key, value in shown.items():
        if key != "listen":
            by_key[key].parse(str(value))
    # The commented [[backend]] example, uncommented, is accepted too.
    backends = text[text.index("# [[backend]]") :].splitlines()
    example = "\n".join(line.removeprefix("#").strip().split("   #")[0] for line in backends)
    tables = tomllib.loads(example)["backend"]
    assert [t["name"] for t in tables] == ["gpu1", "openrouter"]


def test_model_map_example_loads() -> None:
    model_map = load_model_map(str(ETC / "model-map.json"))
    assert model_map["llama3.1"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert all(name == name.strip() and "/" not in name for name in model_map)


# -- docs -------------------------------------------------------------------------------------------------

CONFIGURATION = ROOT / "docs" / "configuration.md"


def test_configuration_reference_lists_every_setting_with_its_default() -> None:
    text = CONFIGURATION.read_text()
    assert BEGIN in text
    assert current(text) == render(), "run `python -m tests.configuration_doc` to regenerate the table"


def test_configuration_reference_covers_every_variable_the_code_reads_and_every_table_key() -> None:
    from ollama_proxy.config import _BACKEND_KEYS
    from ollama_proxy.translate.models import ModelOverride

    text = CONFIGURATION.read_text()
    read = set()
    for path in (ROOT / "ollama_proxy").rglob("*.py"):
        if path.name == "demo.py":
            continue
        source = path.read_text()
        read |= set(re.findall(r"environ(?:\.get)?[(\[]\"([A-Z][A-Z0-9_]+)\"", source))
        read |= set(re.findall(r"\"([A-Z][A-Z0-9_]+)\" in environ", source))
    assert read, "the pattern no longer finds environment reads"
    assert sorted(name for name in read if f"`{name}`" not in text) == []
    assert sorted(key for key in _BACKEND_KEYS if f"| `{key}` |" not in text) == []
    assert sorted(f.name for f in attrs.fields(ModelOverride) if f"| `{f.name}` |" not in text) == []
    for option in ("--config", "--listen", "OLLAMA_PROXY_CONFIG", "OLLAMA_PROXY_LISTEN", "inherit:fd=3"):
        assert option in text


def test_docs_exist_and_are_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "## Deployment" in readme
    for doc in ("architecture.md", "configuration.md", "compatibility.md", "operations.md"):
        assert (ROOT / "docs" / doc).exists()
        assert f"docs/{doc}" in readme
    operations = (ROOT / "docs" / "operations.md").read_text()
    for heading in ("## systemd", "## Container", "## Kubernetes", "## Scaling", "## Upgrades"):
        assert heading in operations


def test_operations_kubernetes_manifests_are_valid_yaml_shapes() -> None:
    """The manifests in operations.md: a Deployment and a Service, probes on /health and /ready."""
    operations = (ROOT / "docs" / "operations.md").read_text()
    (manifest,) = re.findall(r"```yaml\n(.*?)```", operations, re.DOTALL)
    documents = manifest.split("\n---\n")
    kinds = [re.search(r"^kind: (\w+)", doc, re.MULTILINE).group(1) for doc in documents]  # type: ignore[union-attr]
    assert kinds == ["Deployment", "Service"]
    deployment = documents[0]
    for needle in ("path: /health", "path: /ready", "runAsNonRoot: true", "containerPort: 11434", "preStop"):
        assert needle in deployment
    assert "terminationGracePeriodSeconds" in deployment


def test_architecture_module_map_names_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    modules = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "ollama_proxy").glob("*.py")
        if p.name != "__init__.py"
    ]
    modules += [p.relative_to(ROOT).as_posix() for p in (ROOT / "twisted" / "plugins").glob("*.py")]
    assert sorted(m for m in modules if f"`{m}`" not in text) == []
    for package in ("ollama_proxy/handlers/", "ollama_proxy/translate/"):
        assert f"`{package}`" in text

"""The Go peer, K0IN/openai-ollama-proxy, measured beside the daemon in the same run (``make bench``).

Its source is never part of this repository.  The benchmark looks for a bare git directory of it, as the
workplace's ``fetch`` brings it (``--peer-git DIR``, else ``$BENCH_PEER_GIT``, else
``../.mirror/K0IN+openai-ollama-proxy*`` beside the checkout, or under ``/work/.mirror``), and builds it with
the build script kept outside the repository beside it (``--peer-build FILE``, else ``$BENCH_PEER_BUILD``,
else ``../shared/peers/k0in-build.sh``), which installs Debian's Go 1.19 and adapts a scratch copy of the
source to it.  The binary is cached per peer commit in ``$TMPDIR/olpbench-cache/`` (``--peer-cache DIR``),
next to the benchmark's own scratch directories, so later runs skip the build.

Whenever any of this is missing or fails, the peer is skipped with a one-line reason in the report: the
benchmark never fails for it, and ``make test`` never needs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import REPO, Processes, free_port, port_open, wait_for

NAME = "K0IN/openai-ollama-proxy"
MIRROR_GLOB = "K0IN+openai-ollama-proxy*"
GIT_ENV = "BENCH_PEER_GIT"
BUILD_ENV = "BENCH_PEER_BUILD"
BUILD_SCRIPT = REPO.parent / "shared" / "peers" / "k0in-build.sh"
# The benchmark scenarios whose endpoints the peer serves (its internal/handlers/server.go): all but
# /v1/responses, to which it answers 404.
SERVES = frozenset(
    {
        "chat",
        "chat-stream",
        "generate",
        "generate-stream",
        "embed",
        "tags",
        "v1-chat",
        "v1-chat-stream",
        "messages-stream",
    }
)
BUILD_TIMEOUT = 900
GO_LOG_PREFIX = re.compile(r"^(\d{4}/\d\d/\d\d )?\d\d:\d\d:\d\d(\.\d+)? ")


def mirror_roots() -> list[Path]:
    roots = [REPO.parent / ".mirror", Path("/work/.mirror")]
    unique: list[Path] = []
    for root in roots:
        if root.resolve() not in [r.resolve() for r in unique]:
            unique.append(root)
    return unique


def is_bare_git(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def find_git_dir(explicit: str | None = None) -> tuple[Path | None, str]:
    """The peer's bare git directory and where it came from, or None and why there is none."""
    given = explicit or os.environ.get(GIT_ENV)
    if given:
        path = Path(given)
        if is_bare_git(path):
            return path, "given"
        if is_bare_git(path / "repo"):
            return path / "repo", "given"
        return None, f"{given} (from --peer-git or ${GIT_ENV}) is not a git directory"
    for root in mirror_roots():
        for candidate in sorted(root.glob(MIRROR_GLOB)):
            for path in (candidate, candidate / "repo", *sorted(candidate.glob("*"))):
                if path.is_dir() and is_bare_git(path):
                    return path, "found"
    where = " or ".join(str(root / MIRROR_GLOB) for root in mirror_roots())
    return None, (
        f"no source of {NAME}: none at {where}, and neither --peer-git nor ${GIT_ENV} given "
        f"(the workplace's fetch of github:{NAME} brings it)"
    )


def find_build_script(explicit: str | None = None) -> tuple[Path | None, str]:
    given = explicit or os.environ.get(BUILD_ENV)
    path = Path(given) if given else BUILD_SCRIPT
    if path.is_file():
        return path, ""
    return None, f"its build script {path} is missing (it lives outside the repository, in shared/peers/)"


def default_cache() -> Path:
    return Path(tempfile.gettempdir()) / "olpbench-cache"


@dataclass
class Build:
    binary: Path | None
    note: str = ""  # why there is no binary
    commit: str = ""
    git_dir: str = ""
    cached: bool = False
    seconds: float = 0.0
    go: str = ""
    log: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": NAME,
            "binary": str(self.binary) if self.binary else None,
            "commit": self.commit,
            "git_dir": self.git_dir,
            "cached": self.cached,
            "build_seconds": round(self.seconds, 1),
            "go": self.go,
            **({"skipped": self.note} if self.binary is None else {}),
        }


def _git_head(git_dir: Path) -> str:
    done = subprocess.run(
        ["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def _go_version(binary: Path) -> str:
    for go in ("/usr/lib/go-1.19/bin/go", "go"):
        try:
            done = subprocess.run([go, "version", str(binary)], capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if done.returncode == 0 and ":" in done.stdout:
            return done.stdout.split(":", 1)[1].strip()
    return "?"


def build(git_option: str | None, script_option: str | None, cache: Path | None) -> Build:
    """Build the peer (or take the cached binary).  Never raises: a Build without binary says why."""
    git_dir, why = find_git_dir(git_option)
    if git_dir is None:
        return Build(None, why)
    script, why = find_build_script(script_option)
    if script is None:
        return Build(None, why, git_dir=str(git_dir))
    commit = _git_head(git_dir)
    if not commit:
        return Build(None, f"{git_dir} has no HEAD commit", git_dir=str(git_dir))
    root = cache or default_cache()
    out = root / f"k0in-{commit[:12]}"
    binary = out / "proxy"
    marker = out / ".built-from"
    if binary.is_file() and os.access(binary, os.X_OK) and marker.is_file() and marker.read_text() == commit:
        return Build(binary, commit=commit, git_dir=str(git_dir), cached=True, go=_go_version(binary))
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"k0in-{commit[:12]}.build.log"
    started = time.monotonic()
    try:
        with log.open("w") as sink:
            done = subprocess.run(
                ["bash", str(script), str(git_dir), str(out)],
                stdout=subprocess.PIPE,
                stderr=sink,
                text=True,
                timeout=BUILD_TIMEOUT,
                check=False,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Build(None, f"its build did not finish: {exc}", commit, str(git_dir), log=str(log))
    seconds = time.monotonic() - started
    printed = done.stdout.strip().splitlines()
    built = Path(printed[-1]) if printed else binary
    if done.returncode != 0 or not built.is_file():
        text = log.read_text(errors="replace")
        tail = [line for line in text.splitlines() if line.strip()][-1:]
        why = f"its build failed (exit {done.returncode}): {(tail or ['no output'])[0][:200]}; log {log}"
        if not Path("/usr/lib/go-1.19/bin/go").exists():
            why = "Go 1.19 could not be installed with apt-get: " + why
        return Build(None, why, commit, str(git_dir), seconds=seconds, log=str(log))
    marker.write_text(commit)
    return Build(
        built, commit=commit, git_dir=str(git_dir), seconds=seconds, go=_go_version(built), log=str(log)
    )


def config_toml(port: int, backend_root: str, models: list[str]) -> str:
    """The peer's configuration: listening on loopback, in front of one backend (its root URL, without
    ``/v1``: the peer appends ``/v1/...`` itself), each model served under its own name."""
    lines = [
        "# Written by bench/peer.py for one benchmark run.",
        f'listen_addr = "127.0.0.1:{port}"',
        'ollama_version = "0.13.5"',
        "model_context_length = 32768",
        'upstream_startup_wait = "30s"',
        'http_request_timeout = "30s"',
        'http_stream_timeout = "5m"',
        "",
        "[[upstream]]",
        f'url = "{backend_root}"',
        'api_key = "bench-key"',
    ]
    for model in models:
        lines += ["", "[[upstream.models]]", f'upstream = "{model}"', f'local = "{model}"']
    return "\n".join(lines) + "\n"


class Peer:
    """The peer's binary in front of one backend, on its own loopback port, pinned like the daemon."""

    def __init__(
        self,
        procs: Processes,
        name: str,
        binary: Path,
        backend_root: str,
        models: list[str],
        cpu: int | None,
    ) -> None:
        self.procs = procs
        self.name = name
        self.port = free_port()
        workdir = procs.workdir
        config = workdir / f"peer-{name}.toml"
        config.write_text(config_toml(self.port, backend_root, models))
        self.log = workdir / f"peer-{name}.log"
        self.command = [str(binary)]
        self.proc = procs.spawn(
            f"peer-{name}", self.command, cpu, self.log, env={"CONFIG_FILE": str(config)}, cwd=workdir
        )
        try:
            wait_for(lambda: port_open(self.port), 30, f"peer {name}", self.proc)
        except RuntimeError as exc:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-10:])
            procs.stop(self.proc)
            raise RuntimeError(f"{exc}; its log ends:\n{tail}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def problems(self, since: int = 0) -> list[str]:
        """Lines the peer logged after byte ``since`` that look like errors (it logs with Go's log package:
        no levels)."""
        if not self.log.exists():
            return []
        with self.log.open("rb") as source:
            source.seek(since)
            text = source.read().decode(errors="replace")
        marks = ("error", "panic", "failed", "upstream returned")
        # Go's log prefix (date and time) is left out, so that the same message counts as one.
        return [
            GO_LOG_PREFIX.sub("", line.strip())[:200]
            for line in text.splitlines()
            if any(m in line.lower() for m in marks)
        ]

    def stop(self) -> None:
        self.procs.stop(self.proc)

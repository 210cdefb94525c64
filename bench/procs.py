"""Starting and stopping the processes the benchmark runs: nginx, the daemon, the slow backend.

Every process is started here, remembered, and stopped by its own pid at the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import canned

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {timeout:g} s")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def clean_env() -> dict[str, str]:
    """The environment without settings that would change what the daemon does, and with this checkout first
    on ``PYTHONPATH``: a venv made in another checkout (an editable install points at that one) must still
    run this checkout's daemon."""
    drop = ("OLLAMA_PROXY_", "OLLAMA_HOST", "OPENAI_", "COVERAGE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def pin(pid: int, cpu: int | None) -> None:
    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {cpu})


def split_cpus() -> tuple[int | None, int | None]:
    """The load's CPU and the daemon's, this process moved to the load's (what it starts inherits it);
    ``(None, None)``, and nothing moved, on a machine with one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    os.sched_setaffinity(0, {cpus[0]})
    return cpus[0], cpus[1]


class Processes:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(
        self,
        name: str,
        command: list[str],
        cpu: int | None,
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path = REPO,
    ) -> subprocess.Popen[bytes]:
        """Start ``command`` with its output in ``log``.  With ``cpu`` it runs under ``taskset``, so that it
        is pinned from its first instruction: a runtime that starts threads at once (Go's) or sizes itself
        by the CPUs it may use would otherwise see both.  ``taskset`` execs the command: same pid."""
        if cpu is not None and which("taskset"):
            command = ["taskset", "-c", str(cpu), *command]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**clean_env(), **(env or {})},
                cwd=cwd,
                close_fds=True,
            )
        pin(proc.pid, cpu)
        self._procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self._procs)):
            self.stop(proc)


def which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def start_canned_nginx(
    procs: Processes, nginx_bin: str, cpu: int | None
) -> tuple[int, subprocess.Popen[bytes]]:
    """nginx serving the canned replies (``canned.py``) from the work directory, on a free loopback port."""
    port = free_port()
    workdir = procs.workdir
    os.chmod(workdir, 0o755)  # noqa: S103 -- nginx's workers (user nobody) read it
    conf = canned.write_nginx_config(workdir, port)
    command = [nginx_bin, "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(conf)]
    proc = procs.spawn("nginx", command, cpu, workdir / "nginx.out")
    wait_for(lambda: port_open(port), 15, "nginx", proc)
    return port, proc


class Daemon:
    """``twistd -n ollamaproxy`` in front of one backend, on its own loopback port (``env``: say, the
    ``PYTHONPATH`` of another checkout's code)."""

    def __init__(
        self,
        procs: Processes,
        name: str,
        backend: str,
        cpu: int | None,
        extra: list[str] | None = None,
        *,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.log = procs.workdir / f"daemon-{name}.log"
        command = [
            str(VENV_BIN / "twistd"),
            "-n",
            "--pidfile=",
            "ollamaproxy",
            "--backend",
            backend,
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            *(extra or []),
        ]
        self.command = command
        self._procs = procs
        self.proc = procs.spawn(f"daemon-{name}", command, cpu, self.log, env=env)
        # Read through one open handle: the log stays readable even if a /tmp cleaner removes the file.
        self._reader = self.log.open("rb")
        try:
            wait_for(lambda: "listening on" in self.log_text(), 30, f"daemon {name}", self.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log ends:\n{self.log_tail()}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self, since: int = 0) -> str:
        self._reader.seek(since)
        return self._reader.read().decode(errors="replace")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_size(self) -> int:
        return os.fstat(self._reader.fileno()).st_size

    def problems(self, since: int = 0) -> list[str]:
        """Warnings and errors the daemon logged after byte ``since``, each with the exception
        that ends its traceback, if any (Twisted indents traceback lines with a tab)."""
        found = []
        lines = self.log_text(since).splitlines()
        for number, line in enumerate(lines):
            if not any(mark in line for mark in ("#critical]", "#error]", "#warn]", "Unhandled")):
                continue
            end = number + 1
            while end < len(lines) and lines[end].startswith("\t"):
                end += 1
            exception = lines[end - 1].strip() if end > number + 1 else ""
            if not exception and end - 2 > number:
                exception = lines[end - 2].strip()
            found.append(" ".join(part for part in (line.strip()[:160], exception[:160]) if part))
        return found

    def stop(self) -> None:
        self._procs.stop(self.proc)
        self._reader.close()


def supports_option(option: str) -> bool:
    """Whether ``twistd ollamaproxy`` knows a command-line option (for ``--workers`` when it exists)."""
    done = subprocess.run(
        [str(VENV_BIN / "twistd"), "ollamaproxy", "--help"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=REPO,
        timeout=60,
        check=False,
    )
    return option in done.stdout

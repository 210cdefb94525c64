"""``--workers N``: one port served by N processes, workers replaced when they die, SIGTERM drained by all,
``/metrics`` that covers the whole daemon; and socket activation, with one process and with workers."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ollama
import psutil
import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure

from ollama_proxy.errors import ConfigError
from ollama_proxy.supervisor import (
    STOP_GRACE,
    WORKER_MODULE,
    Backoff,
    Supervisor,
    WorkerArguments,
    check_shareable,
    exit_description,
)
from ollama_proxy.worker import worker_observer
from tests.support import ROOT, Child, NotifySocket, child_env
from tests.twistd_measured import twistd_command

MODEL = "Qwen/Qwen2.5-7B-Instruct"
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


def reactor() -> Any:
    from twisted.internet import reactor as installed

    return installed


# -- units ------------------------------------------------------------------------------------------------


def test_backoff_doubles_resets_after_a_healthy_life_and_gives_up_on_workers_that_never_start() -> None:
    backoff = Backoff()
    assert [backoff.next_start(1.0, ready=True) for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.next_start(60.0, ready=True) == 0.0  # a long healthy life: at once, and forgiven
    assert backoff.deaths == 0
    assert [backoff.next_start(0.2, ready=False) for _ in range(5)] == [0.5, 1, 2, 4, None]
    backoff = Backoff()
    backoff.next_start(0.2, ready=False)
    backoff.next_start(5.0, ready=True)  # became ready in between: the count of unready deaths restarts
    assert backoff.unready == 0


def test_only_plain_stream_endpoints_can_be_shared() -> None:
    check_shareable(["tcp:11434:interface=127.0.0.1", "unix:/run/x.sock", "systemd:domain=INET:index=0"])
    check_shareable(["tcp6:11434", "inherit:fd=3", "11434"])
    with pytest.raises(ConfigError, match=r"--workers: 'ssl:443' cannot be shared"):
        check_shareable(["ssl:443"])


def test_exit_descriptions() -> None:
    from twisted.internet.error import ProcessDone, ProcessTerminated

    assert exit_description(Failure(ProcessDone(0))) == "exited with status 0"
    assert exit_description(Failure(ProcessTerminated(exitCode=3))) == "exited with status 3"
    assert exit_description(Failure(ProcessTerminated(signal=9))) == "was killed by SIGKILL"
    assert exit_description(Failure(ProcessTerminated(signal=200))) == "was killed by 200"


def test_worker_arguments() -> None:
    argv = ["--index=1", "--parent=42", "--sockets=2", "--board=/run/x=y/connections", "--workers=3"]
    argv += ["--", "--backend", "http://b/v1", "--", "x"]
    arguments = WorkerArguments(
        index=1,
        parent=42,
        sockets=2,
        board="/run/x=y/connections",
        workers=3,
        plugin_argv=["--backend", "http://b/v1", "--", "x"],
    )
    assert WorkerArguments.parse(argv) == arguments
    assert arguments.argv() == argv  # what the supervisor writes is what the worker reads


def test_the_worker_module_is_what_the_supervisor_starts() -> None:
    import importlib.util

    spec = importlib.util.find_spec(WORKER_MODULE)
    assert spec is not None
    assert spec.origin is not None
    assert spec.origin.endswith("ollama_proxy/worker.py")


def test_worker_log_lines_name_the_worker(capsys: pytest.CaptureFixture[str]) -> None:
    from twisted.logger import LogLevel

    event = {"log_namespace": "ollama_proxy.access", "log_level": LogLevel.info, "log_format": "hello {x}"}
    worker_observer("text", 3)({**event, "x": 1, "log_time": 0.0})
    worker_observer("json", 3)({**event, "x": 2, "log_time": 0.0})
    text, line = capsys.readouterr().out.splitlines()
    assert "[ollama_proxy.access#info worker=3] hello 1" in text
    record = json.loads(line)
    assert (record["msg"], record["worker"], record["pid"]) == ("hello 2", 3, os.getpid())


def test_inherit_endpoint_strings() -> None:
    from twisted.internet.endpoints import serverFromString

    endpoint: Any = serverFromString(reactor(), "inherit:fd=7")
    assert endpoint.fd == 7
    endpoint = serverFromString(reactor(), "inherit:8")
    assert endpoint.fd == 8
    for bad in ("inherit:", "inherit:fd=x", "inherit:fd=3:family=INET", "inherit:3:4"):
        with pytest.raises(ValueError, match="inherit:"):
            serverFromString(reactor(), bad)


@pytest_twisted.ensureDeferred
async def test_inherit_endpoint_adopts_a_listening_socket_and_refuses_anything_else() -> None:
    from twisted.internet.protocol import Factory, Protocol

    from ollama_proxy.endpoints import InheritedEndpoint

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    fd = os.dup(listener.fileno())
    listener.close()
    port = await InheritedEndpoint(reactor(), fd).listen(Factory.forProtocol(Protocol))
    try:
        assert port.getHost().host == "127.0.0.1"  # type: ignore[attr-defined]
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)  # adopted: the original descriptor is closed
    finally:
        await defer.maybeDeferred(port.stopListening)

    unconnected = socket.socket()
    try:
        with pytest.raises(ValueError, match="is not a listening stream socket"):
            await InheritedEndpoint(reactor(), unconnected.fileno()).listen(Factory.forProtocol(Protocol))
    finally:
        unconnected.close()
    with pytest.raises(ValueError, match="no such socket"):
        await InheritedEndpoint(reactor(), 987).listen(Factory.forProtocol(Protocol))


# -- the supervisor in this process, with real workers ----------------------------------------------------


async def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await deferLater(reactor(), 0.05)


def _count(exposition: str, series: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(re.escape(series) + r" (\S+)", exposition))


@pytest_twisted.ensureDeferred
async def test_supervisor_serves_from_workers_replaces_a_dead_one_and_drains(
    fake_backend: Any, tmp_path: Path
) -> None:
    from ollama_proxy.tap import Options

    key = tmp_path / "key"
    key.write_text("sk-test-secret\n")
    options = Options()
    options.parseOptions(
        ["--backend", fake_backend.base_url, "--api-key-file", str(key), "--workers", "2", "-l", "tcp:0"]
    )
    assert options.config is not None
    supervisor = Supervisor(options.config, reactor(), options.argv, environ=child_env())
    supervisor.startService()
    (port,) = await supervisor.listening
    url = f"http://127.0.0.1:{port.getHost().port}"
    try:
        await eventually(lambda: supervisor.ready.called, timeout=30)
        first_pids = {worker.pid for worker in supervisor.workers}
        assert len(first_pids) == 2
        assert all(psutil.Process(pid).ppid() == os.getpid() for pid in first_pids)
        for _ in range(6):
            response = await treq.get(url + "/api/tags", persistent=False)
            assert response.code == 200
            await response.content()

        # A worker that dies is replaced; the counts of the dead one stay in the daemon's totals.
        victim = supervisor.workers[0]
        old_pid = victim.pid
        os.kill(old_pid, signal.SIGKILL)
        await eventually(lambda: victim.pid != old_pid and victim.ready)
        assert psutil.Process(victim.pid).ppid() == os.getpid()
        response = await treq.get(url + "/metrics", persistent=False)
        exposition = (await response.content()).decode()
        assert (
            _count(
                exposition,
                'ollama_proxy_requests_total{api="ollama",endpoint="/api/tags",method="GET",status="200"}',
            )
            == 6
        )
        live = set(re.findall(r'ollama_proxy_process_threads\{pid="(\d+)"\}', exposition))
        assert live == {str(w.pid) for w in supervisor.workers}  # the dead worker's gauges are gone

        supervisor.reload()  # SIGHUP to each worker: they reload (nothing to reload here) and keep serving
        response = await treq.get(url + "/api/version", persistent=False)
        assert response.code == 200
        await response.content()
    finally:
        processes = [psutil.Process(w.pid) for w in supervisor.workers if w.process is not None]
        await supervisor.stopService()
    assert all(w.process is None for w in supervisor.workers)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)
    assert not Path(supervisor.directory).exists()  # noqa: ASYNC240 -- after the reactor work is done
    assert supervisor.exit_code == 0


# -- twistd --workers 2, as an operator runs it -----------------------------------------------------------


def _backend(*extra: str) -> tuple[Child, str]:
    child = Child([sys.executable, "-m", "tests.fake_backend", "--port", "0", *extra], child_env())
    return child, child.wait_for(r"listening on (\S+)").group(1)


def _chat(url: str, stream: bool = True, connection: http.client.HTTPConnection | None = None) -> list[Any]:
    """One chat, on a new connection or on ``connection`` (left open)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    own = connection is None
    connection = connection or http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": stream}
        connection.request("POST", "/api/chat", body=json.dumps(body))
        response = connection.getresponse()
        assert response.status == 200
        return [json.loads(line) for line in response.read().splitlines()]
    finally:
        if own:
            connection.close()


def _get(url: str, path: str) -> str:
    with urllib_open(url + path) as response:
        return str(response.read().decode())


def urllib_open(url: str) -> Any:
    import urllib.request

    return urllib.request.urlopen(url, timeout=10)  # noqa: S310 -- a loopback URL built by the test


def _output(child: Child) -> str:
    return "".join(child.seen) + "".join(child.lines.queue)


def _access_pids(child: Child) -> dict[int, int]:
    pids: dict[int, int] = {}
    for line in _output(child).splitlines():
        if line.startswith("{") and '"ns":"ollama_proxy.access"' in line:
            pid = json.loads(line)["pid"]
            pids[pid] = pids.get(pid, 0) + 1
    return pids


@pytest.fixture(scope="module")
def slow_backend() -> Iterator[str]:
    child, url = _backend("--event-delay", "0.05")
    yield url
    child.stop()


def test_two_workers_answer_on_one_port_a_killed_one_comes_back_and_sigterm_drains(
    slow_backend: str, tmp_path: Path
) -> None:
    model_map = tmp_path / "map.json"
    model_map.write_text(json.dumps({"qwen": MODEL}))
    daemon = Child(
        twistd_command(
            "--backend",
            slow_backend,
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--workers",
            "2",
            "--log-format",
            "json",
            "--model-map",
            str(model_map),
        ),
        child_env(),
    )
    try:
        url = daemon.wait_for(r"listening on (http://[\d.:]+) with 2 workers").group(1)
        for _ in range(2):
            daemon.wait_for(r"worker \d ready")
        parent = psutil.Process(daemon.process.pid)
        workers = {child.pid for child in parent.children()}
        assert len(workers) == 2

        # Ten keep-alive connections opened in one burst, as wrk or a client's connection pool opens them,
        # then a stream on each and another on each: they are shared out evenly (a worker with more open
        # connections stands back for its sibling, balance.py), where the kernel alone gave 10/0 or 8/2.
        host, port = url.removeprefix("http://").rsplit(":", 1)
        connections = [http.client.HTTPConnection(host, int(port), timeout=30) for _ in range(10)]
        for connection in connections:
            connection.connect()
        for _ in range(2):
            threads = [threading.Thread(target=_chat, args=(url, True, c)) for c in connections]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        sent = 2 * len(connections)
        deadline = time.monotonic() + 10
        while sum(_access_pids(daemon).values()) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        for connection in connections:
            connection.close()
        served = _access_pids(daemon)
        assert set(served) == workers, served  # two processes answered on the one port
        assert sum(served.values()) == sent
        assert sorted(served.values()) in ([10, 10], [8, 12]), served
        for path in ("/metrics", "/metrics", "/metrics"):  # whichever worker answers, the totals agree
            counted = _count(
                _get(url, path),
                'ollama_proxy_requests_total{api="ollama",endpoint="/api/chat",method="POST",status="200"}',
            )
            assert counted == sent

        # A killed worker comes back, with a new pid, and serves.
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        daemon.wait_for(rf"worker \d \(pid {victim}\) was killed by SIGKILL")
        daemon.wait_for(r"worker \d ready")
        now = {child.pid for child in parent.children()}
        assert len(now) == 2
        assert victim not in now
        assert _chat(url, stream=False)[-1]["done"] is True

        # SIGHUP reaches every worker: each reloads the model map.
        model_map.write_text(json.dumps({"qwen": MODEL, "other": MODEL}))
        daemon.process.send_signal(signal.SIGHUP)
        reloaded = {json.loads(daemon.wait_for(r"model map reloaded").string)["pid"] for _ in range(2)}
        assert reloaded == now

        # SIGTERM: the stream in flight finishes, the daemon exits 0, the port is closed.
        lines: list[Any] = []
        streaming = threading.Thread(target=lambda: lines.extend(_chat(url)))
        streaming.start()
        time.sleep(0.15)
        daemon.process.send_signal(signal.SIGTERM)
        streaming.join(30)
        assert daemon.process.wait(timeout=60) == 0
        assert "".join(line["message"]["content"] for line in lines) == "Hello!"
        assert lines[-1]["done"] is True
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5)
        assert not any(
            psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in now
        )
    finally:
        daemon.stop()


@pytest.fixture
def receiver() -> Iterator[NotifySocket]:
    made = NotifySocket()
    yield made
    made.close()


def test_workers_report_to_the_parent_which_kills_one_that_misses_its_watchdog(
    slow_backend: str, receiver: NotifySocket
) -> None:
    daemon = Child(
        twistd_command("--backend", slow_backend, "--listen", "tcp:0:interface=127.0.0.1", "--workers", "2"),
        child_env(NOTIFY_SOCKET=receiver.path, WATCHDOG_USEC="1000000"),
    )
    try:
        pid, ready = receiver.wait_for("READY=1")
        assert pid == daemon.process.pid  # only the parent talks to systemd (NotifyAccess=main)
        assert re.search(r"STATUS=serving on http://127\.0\.0\.1:\d+: 2 of 2 workers ready", ready)
        assert receiver.wait_for("WATCHDOG=1")[0] == daemon.process.pid
        stuck = min(child.pid for child in psutil.Process(daemon.process.pid).children())
        os.kill(stuck, signal.SIGSTOP)  # a worker whose reactor no longer turns
        daemon.wait_for(rf"worker \d \(pid {stuck}\) missed its watchdog", timeout=10)
        daemon.wait_for(r"worker \d ready")
        assert receiver.wait_for("2 of 2 workers ready")[0] == daemon.process.pid
        daemon.process.send_signal(signal.SIGTERM)
        assert receiver.wait_for("STOPPING=1")[0] == daemon.process.pid
        assert daemon.process.wait(timeout=60) == 0
        assert all(sender == daemon.process.pid for sender, _ in receiver.messages)
    finally:
        daemon.stop()


# -- socket activation ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.skipif(
    SOCKET_ACTIVATE is None, reason="systemd-socket-activate is not installed (Debian: systemd)"
)
@pytest.mark.parametrize("workers", [1, 2])
def test_socket_activation_serves_the_ollama_sdk(slow_backend: str, workers: int) -> None:
    """The command from the issue: no --fdname, so the socket comes without LISTEN_FDNAMES (listen_fds.py)."""
    assert SOCKET_ACTIVATE is not None
    port = _free_port()
    runtime = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # what a killed parent leaves stays here
    env = child_env(RUNTIME_DIRECTORY=runtime)
    # systemd-socket-activate gives the program only the variables named with -E.
    passed = [f"-E{name}" for name in env if name not in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")]
    daemon = Child(
        [
            SOCKET_ACTIVATE,
            *passed,
            "-l",
            f"127.0.0.1:{port}",
            *twistd_command(
                "--backend",
                slow_backend,
                "--listen",
                "systemd:domain=INET:index=0",
                "--workers",
                str(workers),
            ),
        ],
        env,
    )
    try:
        daemon.wait_for(rf"Listening on 127\.0\.0\.1:{port} as 3")
        client = ollama.Client(host=f"http://127.0.0.1:{port}")  # the first connection starts twistd
        assert MODEL + ":latest" in [m.model for m in client.list().models]
        reply = client.chat(model=MODEL, messages=[{"role": "user", "content": "x"}])
        assert reply.message.content == "Hello!"
        assert (
            "".join(
                part.message.content or ""
                for part in client.chat(model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True)
            )
            == "Hello!"
        )
        if workers == 1:
            daemon.process.send_signal(signal.SIGTERM)
            assert daemon.process.wait(timeout=60) == 0
            return
        children = psutil.Process(daemon.process.pid).children()
        assert len(children) == 2
        # Workers never outlive their parent, however it dies: they get SIGTERM, drain and exit.
        daemon.process.kill()
        _gone, alive = psutil.wait_procs(children, timeout=20)
        assert alive == []
    finally:
        daemon.stop()
        shutil.rmtree(runtime, ignore_errors=True)


def test_unnamed_systemd_sockets_get_names() -> None:
    from ollama_proxy.listen_fds import name_unnamed_sockets

    environ = {"LISTEN_FDS": "2", "LISTEN_PID": "7"}
    assert name_unnamed_sockets(environ, pid=7)
    assert environ["LISTEN_FDNAMES"] == "unknown:unknown"
    assert not name_unnamed_sockets({"LISTEN_FDS": "1", "LISTEN_PID": "8"}, pid=7)  # another process's
    named = {"LISTEN_FDS": "1", "LISTEN_PID": "7", "LISTEN_FDNAMES": "ollamaproxy"}
    assert not name_unnamed_sockets(named, pid=7)
    assert named["LISTEN_FDNAMES"] == "ollamaproxy"


def test_twistd_refuses_workers_on_an_endpoint_it_cannot_share() -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("twistd")),
            "-n",
            "--pidfile=",
            "ollamaproxy",
            "--backend",
            "http://127.0.0.1:9/v1",
            "--workers",
            "2",
            "--listen",
            "stdio:",
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--workers: 'stdio:' cannot be shared by worker processes" in result.stderr


class _FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:  # noqa: N802 -- Twisted's name
        self.signals.append(name)


class _FakeReactor(Clock):
    """A clock that spawns nothing: what the supervisor decides, without processes."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[str, str], dict[int, int]]] = []
        self.refuse = False

    def spawnProcess(  # noqa: N802 -- Twisted's name
        self, protocol: Any, executable: str, args: list[str], **options: Any
    ) -> _FakeProcess:
        if self.refuse:
            raise OSError("Resource temporarily unavailable")
        self.spawned.append((protocol, args, options["env"], options["childFDs"]))
        return _FakeProcess(1000 + len(self.spawned))

    def removeReader(self, reader: Any) -> None:  # noqa: N802 -- Twisted's name
        """The notify socket's reader, at the end of a stop."""


def _supervisor(tmp_path: Path) -> tuple[Supervisor, _FakeReactor]:
    from types import SimpleNamespace

    from ollama_proxy.config import ProxyConfig

    fake = _FakeReactor()
    config = ProxyConfig.for_backend("http://127.0.0.1:9/v1", workers=1)
    environ = {"NOTIFY_SOCKET": "/nonexistent", "LISTEN_FDS": "1", "WATCHDOG_USEC": "2000000", "KEEP": "me"}
    supervisor = Supervisor(config, fake, ["--backend", "http://127.0.0.1:9/v1"], environ=environ)
    supervisor.directory = str(tmp_path)
    supervisor._receiver = SimpleNamespace(path="/run/notify", close=lambda: None)  # type: ignore[assignment]
    return supervisor, fake


def test_supervisor_restarts_with_backoff_and_gives_up_on_workers_that_never_start(tmp_path: Path) -> None:
    from twisted.internet.error import ProcessTerminated

    supervisor, fake = _supervisor(tmp_path)
    (worker,) = supervisor.workers
    supervisor._spawn(worker)
    _protocol, args, env, fds = fake.spawned[0]
    assert args[1:6] == ["-m", "ollama_proxy.worker", "--index=0", f"--parent={os.getpid()}", "--sockets=0"]
    assert args[-2:] == ["--backend", "http://127.0.0.1:9/v1"]
    assert env["KEEP"] == "me"
    assert "LISTEN_FDS" not in env  # the parent's, not the worker's
    assert env["NOTIFY_SOCKET"] == "/run/notify"
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "metrics")
    assert env["WATCHDOG_USEC"] == "2000000"
    assert set(fds) <= {0, 1, 2}

    delays = []
    for _ in range(5):
        protocol = fake.spawned[-1][0]
        before = len(fake.spawned)
        protocol.processEnded(Failure(ProcessTerminated(exitCode=2)))
        if worker.restart is None:
            break
        delays.append(worker.restart.getTime() - fake.seconds())
        fake.advance(delays[-1])
        assert len(fake.spawned) == before + 1
    assert delays == [0.5, 1, 2, 4]
    assert supervisor.exit_code == 1  # the fifth death before READY: given up
    fake.advance(60)
    assert len(fake.spawned) == 5


def test_supervisor_counts_ready_workers_retries_a_failed_spawn_and_kills_a_silent_worker(
    tmp_path: Path,
) -> None:
    supervisor, fake = _supervisor(tmp_path)
    (worker,) = supervisor.workers
    fake.refuse = True
    supervisor._spawn(worker)  # fork failed: treated as a worker that died before it was ready
    assert worker.process is None
    assert worker.restart is not None
    fake.refuse = False
    fake.advance(0.5)
    assert worker.process is not None
    supervisor._notified(worker.pid + 1, {"READY": "1"})  # not one of ours
    assert not worker.ready
    supervisor._notified(worker.pid, {"READY": "1"})
    assert worker.ready
    assert supervisor.ready.called
    fake.advance(1.0)
    supervisor._notified(worker.pid, {"WATCHDOG": "1"})
    supervisor._check_watchdogs()
    assert worker.process.signals == []
    fake.advance(2.5)  # more than WATCHDOG_USEC without a ping
    supervisor._check_watchdogs()
    assert worker.process.signals == ["KILL"]
    supervisor.reload()
    assert worker.process.signals == ["KILL", "HUP"]


@pytest.mark.parametrize("stops_in_time", [True, False])
def test_supervisor_stop_waits_for_the_drain_and_kills_workers_still_running_after_it(
    tmp_path: Path, stops_in_time: bool
) -> None:
    from twisted.internet.error import ProcessDone, ProcessTerminated

    supervisor, fake = _supervisor(tmp_path)
    (worker,) = supervisor.workers
    supervisor._spawn(worker)
    process, protocol = worker.process, fake.spawned[-1][0]
    stopped = supervisor.stopService()
    assert process.signals == ["TERM"]
    fake.advance(supervisor.config.drain_timeout + STOP_GRACE - 0.1)
    assert not stopped.called
    if stops_in_time:
        protocol.processEnded(Failure(ProcessDone(0)))
        assert stopped.called
        assert process.signals == ["TERM"]
        assert fake.getDelayedCalls() == []  # the timeout went with the wait
        return
    fake.advance(0.1)
    assert process.signals == ["TERM", "KILL"]
    assert not stopped.called
    protocol.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
    assert stopped.called
    assert not tmp_path.exists()  # the supervisor's directory is gone once it has stopped


def test_twistd_with_workers_exits_1_when_it_cannot_listen() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            twistd_command(
                "--backend", "http://127.0.0.1:9/v1", "--listen", f"tcp:{port}:interface=127.0.0.1", "-w", "2"
            ),
            capture_output=True,
            text=True,
            env=child_env(),
            cwd=ROOT,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert re.search(
        rf"cannot listen: Couldn't listen on 127\.0\.0\.1:{port}: .*Address already in use", result.stdout
    )
    assert "worker" not in result.stdout.replace("ollama_proxy.supervisor#error", "")  # none was started

"""``--workers N``: a parent process that binds the listening sockets once and supervises N worker processes
that serve them, so the daemon uses N cores behind one port with no load balancer of its own.  This module is
the parent (``twistd ollamaproxy --workers N``, the :class:`Supervisor` service); ``worker.py`` is each
worker.

The parent:

* binds every ``--listen`` endpoint (``systemd:`` ones are adopted from systemd), stops accepting on them
  itself, and hands them to each worker as descriptors 3, 4, ...; each new connection goes to one of the
  workers waiting on the shared socket, the one with the fewest open connections where it can
  (``balance.py``);
* starts the workers as ``python -m ollama_proxy.worker`` (:class:`WorkerArguments`, then the same plugin
  arguments) with the same environment (minus the parent's own systemd variables), so each builds the same
  configuration, its own backend pool, and listens on ``inherit:fd=3`` ...;
* hears from them over the notify protocol on a private socket (``sdnotify.py``): ``READY=1`` from every
  worker makes the parent send its own ``READY=1`` to systemd; ``WATCHDOG=1`` pings, when systemd set a
  watchdog on the parent, let it kill a worker that stopped answering;
* starts a worker that died again, at once after a healthy life and otherwise after a delay that doubles
  from 0.5 s to 30 s; after five workers in a row died before becoming ready it gives up and exits 1, so
  systemd's ``Restart=`` (or the container runtime) takes over;
* on SIGTERM (or SIGINT) closes its copies of the sockets, forwards SIGTERM so every worker drains as a
  single daemon would, waits for them (killing any still running ``drain_timeout`` + 10 s later) and exits
  0; forwards SIGHUP (reload the model map and client keys).

Metrics: every worker keeps its series in a directory the parent owns (prometheus-client's multiprocess
mode, ``shared_metrics.py``), so ``/metrics`` answered by any worker covers the whole daemon.

Nothing here imports the worker: the parent names it only by :data:`WORKER_MODULE`, and the worker imports
what both must agree on (:class:`WorkerArguments`, :data:`FIRST_FD`) from here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from prometheus_client.multiprocess import mark_process_dead
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, gatherResults, maybeDeferred
from twisted.internet.error import ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ollama_proxy.balance import ConnectionBoard, board_path
from ollama_proxy.config import ProxyConfig
from ollama_proxy.errors import ConfigError
from ollama_proxy.sdnotify import NotifyReceiver, describe, sd_notify, watchdog_period
from ollama_proxy.signals import install_when_running

log = Logger(namespace="ollama_proxy.supervisor")

# What each worker runs: ``python -m WORKER_MODULE``.
WORKER_MODULE = "ollama_proxy.worker"
# Endpoint types whose listening socket can be handed to another process as it is.
SHAREABLE = frozenset({"tcp", "tcp6", "unix", "systemd", "inherit"})
# The workers' first inherited socket, as in systemd's protocol.
FIRST_FD = 3
# What only the parent may use: the sockets systemd passed it, and its own conversation with systemd.
PARENT_ONLY = frozenset(
    {"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
)
# A stopping worker gets the drain timeout plus this long before it is killed.
STOP_GRACE = 10.0


def check_shareable(endpoints: Sequence[str]) -> None:
    """ConfigError unless every endpoint is one whose socket workers can share (TLS ones cannot)."""
    for description in endpoints:
        prefix = description.split(":", 1)[0].strip().lower()
        if prefix not in SHAREABLE and not prefix.isdigit():
            raise ConfigError(
                f"--workers: {description!r} cannot be shared by worker processes "
                "(use a tcp:, tcp6:, unix:, systemd: or inherit: endpoint)"
            )


@attrs.define
class Backoff:
    """When a worker that died is started again.

    At once after a healthy life (ready, and up for ``healthy`` seconds); otherwise after a delay that
    doubles with each death in a row, from ``first`` up to ``cap``.  None (give up) once ``give_up``
    workers in a row died before they were ready: a fault that restarting will not fix.
    """

    first: float = 0.5
    cap: float = 30.0
    healthy: float = 10.0
    give_up: int = 5
    deaths: int = 0
    unready: int = 0

    def next_start(self, lived: float, ready: bool) -> float | None:
        if ready and lived >= self.healthy:
            self.deaths = self.unready = 0
            return 0.0
        self.deaths += 1
        self.unready = 0 if ready else self.unready + 1
        if self.unready >= self.give_up:
            return None
        return float(min(self.cap, self.first * 2 ** (self.deaths - 1)))


@attrs.define(eq=False)
class Worker:
    """One worker slot; the process in it changes when a worker is replaced."""

    index: int
    backoff: Backoff = attrs.Factory(Backoff)
    process: Any = None  # IProcessTransport while running
    pid: int = 0
    started: float = 0.0
    ready: bool = False
    last_ping: float = 0.0
    restart: Any = None  # IDelayedCall of a pending restart


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, supervisor: Supervisor, worker: Worker) -> None:
        self._supervisor = supervisor
        self._worker = worker

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 -- Twisted's name
        self._supervisor.worker_ended(self._worker, reason)


class WorkerSockets(Factory):
    """The parent's listening ports never accept (their reading is stopped): the workers do."""

    noisy = False


def exit_description(reason: Failure) -> str:
    value = reason.value
    signum = getattr(value, "signal", None)
    if isinstance(value, ProcessTerminated) and signum:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return f"was killed by {name}"
    return f"exited with status {getattr(value, 'exitCode', None)}"


def _standard_fds() -> dict[int, int]:
    fds = {}
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            continue
        fds[fd] = fd
    return fds


class Supervisor(Service):
    """The ``--workers`` parent (see the module docstring)."""

    def __init__(
        self,
        config: ProxyConfig,
        reactor: Any,
        argv: Sequence[str],
        *,
        handle_signals: bool = False,
        environ: Mapping[str, str] = os.environ,
        executable: str = sys.executable,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self._argv = list(argv)
        self._handle_signals = handle_signals
        self._environ = environ
        self._executable = executable
        self.workers = [Worker(index) for index in range(config.workers)]
        self.ports: list[Any] = []
        self.listening: Deferred[list[Any]] = Deferred()  # the bound ports
        self.ready: Deferred[None] = Deferred()  # every worker has reported READY=1
        self.exit_code = 0
        self.directory = ""
        self._receiver: NotifyReceiver | None = None
        self.board: ConnectionBoard | None = None
        self._period = watchdog_period(environ)
        self._loops: list[LoopingCall] = []
        self._stopping = False
        self._stop_requested = False
        self._exit_waiters: list[Deferred[None]] = []

    @property
    def metrics_directory(self) -> str:
        return os.path.join(self.directory, "metrics")

    # -- start -----------------------------------------------------------------------------------------

    def startService(self) -> None:
        from twisted.internet.endpoints import serverFromString  # after leave_tls_out (tap.py)

        super().startService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        self.directory = tempfile.mkdtemp(
            prefix="ollama-proxy-workers-", dir=self._environ.get("RUNTIME_DIRECTORY") or None
        )
        os.mkdir(self.metrics_directory)
        self.board = ConnectionBoard.create(board_path(self.directory), len(self.workers))
        self._receiver = NotifyReceiver(os.path.join(self.directory, "notify"), self._notified)
        self.reactor.addReader(self._receiver)
        listening = [
            serverFromString(self.reactor, description).listen(WorkerSockets())
            for description in self.config.listen
        ]
        gatherResults(listening, consumeErrors=True).addCallbacks(self._bound, self._cannot_listen)

    def _bound(self, ports: list[Any]) -> None:
        self.ports = ports
        for port, description in zip(ports, self.config.listen, strict=True):
            port.stopReading()
            # Shared with the workers, so never blocking (see endpoints.py); systemd's sockets may be.
            port.socket.setblocking(False)
            log.info(
                "ollama-proxy listening on {address} with {workers} workers",
                address=describe(port.getHost()),
                workers=len(self.workers),
                endpoint=description,
            )
        self.listening.callback(ports)
        self.reactor.callWhenRunning(self._running)

    def _cannot_listen(self, failure: Failure) -> None:
        first = getattr(failure.value, "subFailure", failure)  # gatherResults wraps it in a FirstError
        log.error("cannot listen: {why}", why=first.getErrorMessage())
        self.listening.errback(failure)
        self.exit_code = 1
        self.reactor.callWhenRunning(self._give_up)

    def _running(self) -> None:
        if self._stopping:
            return
        if self._handle_signals:
            stop = self._stop_on_signal
            install_when_running(
                self.reactor, {signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGHUP: self.reload}
            )
        if self._period is not None:
            self._loop(lambda: sd_notify("WATCHDOG=1", self._environ), self._period, now=True)
            self._loop(self._check_watchdogs, self._period, now=False)
        for worker in self.workers:
            self._spawn(worker)

    def _loop(self, call: Any, interval: float, *, now: bool) -> None:
        loop = LoopingCall(call)
        loop.clock = self.reactor
        loop.start(interval, now=now)
        self._loops.append(loop)

    # -- workers ---------------------------------------------------------------------------------------

    def _spawn(self, worker: Worker) -> None:
        worker.restart = None
        if self._stopping:
            return
        arguments = WorkerArguments(
            index=worker.index,
            parent=os.getpid(),
            sockets=len(self.ports),
            board=board_path(self.directory),
            workers=len(self.workers),
            plugin_argv=self._argv,
        )
        args = [self._executable, "-m", WORKER_MODULE, *arguments.argv()]
        child_fds = _standard_fds()
        child_fds.update({FIRST_FD + n: port.fileno() for n, port in enumerate(self.ports)})
        worker.started = worker.last_ping = self.reactor.seconds()
        worker.ready = False
        try:
            worker.process = self.reactor.spawnProcess(
                _WorkerProtocol(self, worker),
                self._executable,
                args,
                env=self.worker_environ(),
                childFDs=child_fds,
            )
        except OSError as exc:
            log.error("worker {index} could not be started: {why}", index=worker.index, why=str(exc))
            self._schedule_restart(worker, f"could not be started ({exc})")
            return
        worker.pid = worker.process.pid
        log.info("worker {index} started (pid {pid})", index=worker.index, pid=worker.pid)

    def worker_environ(self) -> dict[str, str]:
        """The parent's environment without its systemd variables, plus the workers' own."""
        assert self._receiver is not None  # noqa: S101 -- set by startService
        env = {key: value for key, value in self._environ.items() if key not in PARENT_ONLY}
        env["NOTIFY_SOCKET"] = self._receiver.path
        env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_directory
        if self._period is not None:
            env["WATCHDOG_USEC"] = str(round(self._period * 2e6))
        return env

    def _notified(self, pid: int, fields: dict[str, str]) -> None:
        worker = next((w for w in self.workers if w.pid == pid and w.process is not None), None)
        if worker is None:
            return
        worker.last_ping = self.reactor.seconds()
        if fields.get("READY") == "1" and not worker.ready:
            worker.ready = True
            log.info("worker {index} ready (pid {pid})", index=worker.index, pid=pid)
            self._report()

    def _report(self) -> None:
        """Tell systemd: READY=1 once every worker is ready, the count of ready workers afterwards."""
        ready = sum(worker.ready for worker in self.workers)
        where = ", ".join(describe(port.getHost()) for port in self.ports)
        status = f"STATUS=serving on {where}: {ready} of {len(self.workers)} workers ready"
        if not self.ready.called and ready == len(self.workers):
            sd_notify(f"READY=1\n{status}", self._environ)
            self.ready.callback(None)
        else:
            sd_notify(status, self._environ)

    def _check_watchdogs(self) -> None:
        """Kill a ready worker that sent no ``WATCHDOG=1`` for a whole watchdog interval (its reactor is
        stuck); it is then replaced like any worker that dies."""
        assert self._period is not None  # noqa: S101 -- only looping when set
        now = self.reactor.seconds()
        for worker in self.workers:
            if worker.process is not None and worker.ready and now - worker.last_ping > 2 * self._period:
                log.error(
                    "worker {index} (pid {pid}) missed its watchdog for {seconds:.1f} s: killing it",
                    index=worker.index,
                    pid=worker.pid,
                    seconds=now - worker.last_ping,
                )
                worker.last_ping = now
                _signal(worker, "KILL")

    def worker_ended(self, worker: Worker, reason: Failure) -> None:
        how = exit_description(reason)
        worker.process = None
        if self.board is not None:
            self.board.clear(worker.index)
        with contextlib.suppress(OSError):  # its gauges go; its counters stay
            mark_process_dead(worker.pid, self.metrics_directory)  # type: ignore[no-untyped-call]
        if self._stopping:
            log.info("worker {index} (pid {pid}) stopped: {how}", index=worker.index, pid=worker.pid, how=how)
            if all(w.process is None for w in self.workers):
                waiters, self._exit_waiters = self._exit_waiters, []
                for waiter in waiters:
                    waiter.callback(None)
            return
        self._schedule_restart(worker, how)

    def _schedule_restart(self, worker: Worker, how: str) -> None:
        lived = self.reactor.seconds() - worker.started
        was_ready, worker.ready = worker.ready, False
        delay = worker.backoff.next_start(lived, was_ready)
        if delay is None:
            log.critical(
                "worker {index} {how} before it was ready, {count} times in a row: giving up",
                index=worker.index,
                how=how,
                count=worker.backoff.unready,
            )
            self.exit_code = 1
            self._give_up()
            return
        log.warn(
            "worker {index} (pid {pid}) {how} after {lived:.1f} s; starting another in {delay:g} s",
            index=worker.index,
            pid=worker.pid,
            how=how,
            lived=lived,
            delay=delay,
        )
        worker.restart = self.reactor.callLater(delay, self._spawn, worker)
        if self.ready.called:
            self._report()

    def _give_up(self) -> None:
        """Stop the daemon with exit status 1 (twistd has no exit status of its own to set)."""
        if not self._handle_signals or self._stop_requested:
            return  # run in-process (tests): the owner reads exit_code
        self._stop_requested = True
        self.reactor.addSystemEventTrigger("after", "shutdown", _exit_now, self.exit_code)
        self.reactor.stop()

    # -- signals ---------------------------------------------------------------------------------------

    def _stop_on_signal(self) -> None:
        # reactor.stop() runs stopService (the drain).  A second signal, or one after giving up, changes
        # nothing (the flag is _give_up's too, so signals.stop_once would not do).
        if not self._stop_requested:
            self._stop_requested = True
            self.reactor.stop()

    def reload(self) -> None:
        """SIGHUP: every worker reloads its model map and client keys."""
        running = [worker for worker in self.workers if worker.process is not None]
        for worker in running:
            _signal(worker, "HUP")
        log.info("reload: SIGHUP sent to {count} workers", count=len(running))

    # -- stop ------------------------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        sd_notify("STOPPING=1", self._environ)
        for loop in self._loops:
            if loop.running:
                loop.stop()
        for worker in self.workers:
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
        # This process's copies first: once the workers have closed theirs, nothing accepts any more (with
        # socket activation, systemd's copy keeps new connections waiting for the next start).
        await DeferredList([maybeDeferred(port.stopListening) for port in self.ports])
        running = [worker for worker in self.workers if worker.process is not None]
        if running:
            log.info("stopping: {count} workers are draining", count=len(running))
            for worker in running:
                _signal(worker, "TERM")
            try:
                await self._all_exited().addTimeout(self.config.drain_timeout + STOP_GRACE, self.reactor)
            except defer.TimeoutError:
                for worker in self.workers:
                    if worker.process is not None:
                        log.warn(
                            "worker {index} (pid {pid}) did not stop: killing it",
                            index=worker.index,
                            pid=worker.pid,
                        )
                        _signal(worker, "KILL")
                with contextlib.suppress(defer.TimeoutError):
                    await self._all_exited().addTimeout(5.0, self.reactor)
        if self._receiver is not None:
            self.reactor.removeReader(self._receiver)
            self._receiver.close()
        if self.board is not None:
            self.board.close()
            self.board = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def _all_exited(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if all(worker.process is None for worker in self.workers):
            waiter.callback(None)
        else:
            self._exit_waiters.append(waiter)
        return waiter


def _signal(worker: Worker, name: str) -> None:
    if worker.process is None:
        return
    with contextlib.suppress(ProcessExitedAlready, OSError):
        worker.process.signalProcess(name)


def _exit_now(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@attrs.frozen
class WorkerArguments:
    """What the parent tells a worker on its command line, before ``--`` and the plugin arguments."""

    index: int
    parent: int
    sockets: int
    board: str
    workers: int
    plugin_argv: list[str]

    def argv(self) -> list[str]:
        """The command line that :meth:`parse` reads back."""
        return [
            f"--index={self.index}",
            f"--parent={self.parent}",
            f"--sockets={self.sockets}",
            f"--board={self.board}",
            f"--workers={self.workers}",
            "--",
            *self.plugin_argv,
        ]

    @classmethod
    def parse(cls, argv: Sequence[str]) -> WorkerArguments:
        values: dict[str, str] = {}
        rest = list(argv)
        while rest and rest[0] != "--":
            name, _, value = rest.pop(0).removeprefix("--").partition("=")
            values[name] = value
        return cls(
            index=int(values["index"]),
            parent=int(values["parent"]),
            sockets=int(values["sockets"]),
            board=values["board"],
            workers=int(values["workers"]),
            plugin_argv=rest[1:],
        )

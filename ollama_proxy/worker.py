"""One ``--workers`` worker: ``python -m ollama_proxy.worker``, started by the :class:`Supervisor`
(``supervisor.py``) with what :class:`WorkerArguments` says, then the parent's own plugin arguments.

A worker is the single daemon (a ``ProxyService``) with three differences: it listens on the sockets the
parent bound (``inherit:fd=3`` ...) instead of its ``--listen`` endpoints; it accepts in turn with its
siblings (``balance.py``); and it keeps its metrics in the parent's shared directory
(``shared_metrics.py``).  It talks to the parent as a daemon talks to systemd (``READY=1``, ``WATCHDOG=1``
on the ``NOTIFY_SOCKET`` the parent set), drains on SIGTERM, reloads on SIGHUP, leaves SIGINT to the parent
(Ctrl-C reaches the whole process group) and stops when the parent dies, however it dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from twisted.logger import ILogObserver, LogEvent, globalLogBeginner
from zope.interface import provider

from ollama_proxy.balance import ConnectionBoard, TakeTurns
from ollama_proxy.logs import json_observer, text_observer
from ollama_proxy.open_files import raise_open_file_limit
from ollama_proxy.sdnotify import attach_notifier
from ollama_proxy.signals import ignore_from_now_on, install_when_running, stop_once
from ollama_proxy.supervisor import FIRST_FD, WorkerArguments
from ollama_proxy.tap import Options

PR_SET_PDEATHSIG = 1


def worker_observer(log_format: str, index: int) -> ILogObserver:
    """The parent's log format, each event tagged with the worker (``worker``, ``pid`` fields in JSON;
    ``worker=N`` after the namespace in text)."""
    pid = os.getpid()
    json_lines = log_format == "json"
    inner = json_observer(sys.stdout) if json_lines else text_observer(sys.stdout)

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        tagged = dict(event)
        tagged["worker"] = index
        tagged["pid"] = pid
        if not json_lines:
            system = event.get("log_system")
            if system is None:
                level = event.get("log_level")
                system = f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
            tagged["log_system"] = f"{system} worker={index}"
        inner(tagged)

    result: ILogObserver = observe
    return result


def _follow_parent(parent: int) -> None:
    """Receive SIGTERM (a graceful stop) when the parent dies, however it dies (Linux's PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no such call
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        raise SystemExit(1)  # the parent died before that took effect


class WorkerOptions(Options):
    """The parent's options, listening on the ``sockets`` it passed instead of its endpoints."""

    def __init__(self, sockets: int) -> None:
        super().__init__()
        self.listen = [f"inherit:fd={FIRST_FD + n}" for n in range(sockets)]

    def opt_listen(self, endpoint: str) -> None:
        """Replaced by the inherited sockets."""

    opt_l = opt_listen


def worker_main(argv: Sequence[str]) -> None:
    """A worker: the daemon of ``argv`` (the parent's plugin arguments) on the inherited sockets."""
    arguments = WorkerArguments.parse(argv)
    _follow_parent(arguments.parent)
    options = WorkerOptions(arguments.sockets)
    options.parseOptions(arguments.plugin_argv)  # first: it decides whether TLS is needed (tap.py)
    from twisted.internet import reactor

    from ollama_proxy.service import ProxyService, settle_garbage_collector
    from ollama_proxy.shared_metrics import SharedMetrics

    config = options.config
    assert config is not None  # noqa: S101 -- parseOptions sets it or exits
    globalLogBeginner.beginLoggingTo(
        [worker_observer(config.log_format, arguments.index)], redirectStandardIO=False
    )
    raise_open_file_limit()  # inherited from the parent already, unless it was started some other way
    service = ProxyService(config, reactor)
    _share_connections(service, reactor, ConnectionBoard(arguments.board, arguments.workers), arguments.index)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        shared = SharedMetrics(service.app.metrics, directory)
        service.app.metrics.shared = shared
        reactor.callWhenRunning(shared.start, reactor)
    attach_notifier(service, reactor)
    # Ctrl-C in a terminal reaches the whole process group: the parent decides, and sends SIGTERM.
    install_when_running(
        reactor,
        {signal.SIGTERM: stop_once(reactor), signal.SIGINT: None, signal.SIGHUP: service.reload},
    )
    reactor.callWhenRunning(settle_garbage_collector)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    # Stopped and drained.  A late signal (a supervisor that signals the whole process group sends one more)
    # must not turn this clean exit into "killed by SIGTERM".
    ignore_from_now_on(signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _share_connections(service: Any, reactor: Any, board: ConnectionBoard, slot: int) -> None:
    """Publish this worker's open connections on the board, and accept only in turn (``balance.py``)."""
    board.set(slot, 0)
    service.site.connections_changed = lambda count: board.set(slot, count)
    turns: list[TakeTurns] = []

    def take_turns(port: Any) -> Any:
        turns.append(TakeTurns(port, board, slot, reactor))
        return port

    for listener in service.listeners:
        listener.listening.addCallback(take_turns)

    def stop_taking_turns() -> None:
        for each in turns:
            each.stop()

    reactor.addSystemEventTrigger("before", "shutdown", stop_taking_turns)


if __name__ == "__main__":
    from ollama_proxy.worker import worker_main as main  # the module itself, not this __main__ copy

    main(sys.argv[1:])

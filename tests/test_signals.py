"""Signals: one helper installs every handler of the daemon's processes (``signals.py``), and nothing else
in the package calls ``signal.signal``."""

from __future__ import annotations

import ast
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ollama_proxy.signals import SignalHandlers, ignore_from_now_on, install_when_running, stop_once
from tests.support import ROOT, module_names

# The demo's launcher (``make run``) is a plain program without a reactor that waits on threads and child
# processes; the helper is for the reactor's processes.
NOT_REACTOR_PROCESSES = {"ollama_proxy.demo"}


class FakeReactor:
    """Records what the helper asks of a reactor, and runs ``callFromThread`` calls when told."""

    def __init__(self) -> None:
        self.from_thread: list[Callable[[], object]] = []
        self.when_running: list[Callable[[], object]] = []
        self.triggers: list[tuple[str, str, Callable[[], object]]] = []
        self.stops = 0

    def callFromThread(self, call: Callable[[], object]) -> None:  # noqa: N802 -- Twisted's name
        self.from_thread.append(call)

    def callWhenRunning(self, call: Callable[[], object]) -> None:  # noqa: N802 -- Twisted's name
        self.when_running.append(call)

    def addSystemEventTrigger(self, phase: str, event: str, call: Callable[[], object]) -> None:  # noqa: N802
        self.triggers.append((phase, event, call))

    def stop(self) -> None:
        self.stops += 1

    def run_thread_calls(self) -> None:
        calls, self.from_thread = self.from_thread, []
        for call in calls:
            call()


@pytest.fixture
def saved_handlers() -> Iterator[None]:
    """Whatever a test does to this process's handlers is undone."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.usefixtures("saved_handlers")
def test_actions_run_on_the_reactor_thread_and_the_previous_handlers_come_back() -> None:
    reactor = FakeReactor()
    seen: list[str] = []
    previous: Any = signal.getsignal(signal.SIGUSR1)
    handlers = install_when_running(
        reactor, {signal.SIGUSR1: lambda: seen.append("usr1"), signal.SIGUSR2: None}
    )
    assert signal.getsignal(signal.SIGUSR1) is previous  # nothing until the reactor runs
    (install,) = reactor.when_running
    install()
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR2)  # ignored: this process goes on
    assert seen == []  # not in the handler: queued for the reactor
    reactor.run_thread_calls()
    assert seen == ["usr1"]
    ((phase, event, restore),) = reactor.triggers
    assert (phase, event) == ("after", "shutdown")
    assert restore == handlers.restore
    restore()
    assert signal.getsignal(signal.SIGUSR1) is previous
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


@pytest.mark.usefixtures("saved_handlers")
def test_installing_twice_still_restores_what_was_there_first() -> None:
    handlers = SignalHandlers(FakeReactor(), {signal.SIGHUP: lambda: None})
    before = signal.getsignal(signal.SIGHUP)
    handlers.install()
    handlers.install()
    handlers.restore()
    assert signal.getsignal(signal.SIGHUP) is before


@pytest.mark.usefixtures("saved_handlers")
def test_ignore_from_now_on() -> None:
    ignore_from_now_on(signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN


def test_a_second_stop_signal_changes_nothing() -> None:
    reactor = FakeReactor()
    stop = stop_once(reactor)
    stop()
    stop()
    assert reactor.stops == 1


def _signal_calls(tree: ast.AST) -> Iterator[int]:
    """The lines that call ``signal.signal(...)``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "signal.signal":
            yield node.lineno


def test_only_the_helper_installs_signal_handlers() -> None:
    found = [
        f"{name}:{line}"
        for name, path in module_names(ROOT, "ollama_proxy").items()
        if name not in {"ollama_proxy.signals", *NOT_REACTOR_PROCESSES}
        for line in _signal_calls(ast.parse(path.read_text()))
    ]
    assert found == [], "signal.signal outside ollama_proxy/signals.py: " + ", ".join(found)

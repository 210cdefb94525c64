"""How every process of the daemon handles signals: one way, so the single daemon, the ``--workers`` parent
and each worker cannot drift apart.

Three rules, each learnt the hard way (craft.md §2.4):

* Install only once the reactor runs: ``reactor.run()`` installs Twisted's own SIGINT and SIGTERM handlers
  and would replace any installed earlier.  Twisted's SIGTERM handler also makes twistd end by re-raising
  the signal, so a clean drain would exit "killed by SIGTERM" instead of 0.
* Do the work on the reactor thread, through ``callFromThread``: a Python handler runs between any two
  bytecodes of the main thread, in the middle of whatever the reactor was doing, and ``callFromThread``
  also wakes a reactor asleep in ``select``.
* Restore what was there before once the reactor has stopped, so nothing of a stopped daemon lingers.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

# What a signal does, run on the reactor thread; None ignores the signal.
Action = Callable[[], object] | None


class SignalHandlers:
    """``actions`` (signal → action) in place of this process's handlers between ``install`` and
    ``restore``."""

    def __init__(self, reactor: Any, actions: Mapping[signal.Signals, Action]) -> None:
        self._reactor = reactor
        self._actions = dict(actions)
        self._previous: dict[signal.Signals, Any] = {}

    def install(self) -> None:
        for signum, action in self._actions.items():
            handler = signal.SIG_IGN if action is None else self._handler(action)
            previous = signal.signal(signum, handler)
            self._previous.setdefault(signum, previous)  # installed twice: the first previous is the one

    def _handler(self, action: Callable[[], object]) -> Callable[[int, FrameType | None], None]:
        def handle(signum: int, frame: FrameType | None) -> None:
            self._reactor.callFromThread(action)

        return handle

    def restore(self) -> None:
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def install_when_running(reactor: Any, actions: Mapping[signal.Signals, Action]) -> SignalHandlers:
    """Install ``actions`` once ``reactor`` runs (at once if it already does) and restore the previous
    handlers after it has shut down."""
    handlers = SignalHandlers(reactor, actions)
    reactor.callWhenRunning(handlers.install)
    reactor.addSystemEventTrigger("after", "shutdown", handlers.restore)
    return handlers


def stop_once(reactor: Any) -> Callable[[], None]:
    """The action of a stop signal: the first one stops the reactor, which runs the services' graceful stop;
    any further one changes nothing (systemd's ``KillMode=control-group`` sends SIGTERM to every process of
    the unit, and an impatient operator sends another), where a second ``reactor.stop()`` would raise."""
    stopping = False

    def stop() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            reactor.stop()

    return stop


def ignore_from_now_on(*signums: signal.Signals) -> None:
    """For a process whose reactor has stopped and that is about to exit: a late signal must not turn its
    clean exit into "killed by SIGTERM" while Python shuts down (Python resets the signals it handles to
    their default on the way out; ignored ones stay ignored)."""
    for signum in signums:
        signal.signal(signum, signal.SIG_IGN)

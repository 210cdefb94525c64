"""The daemon's reactor: Twisted's epoll reactor, with each write sent in the loop pass that made it.

Twisted's reactor sends nothing when a protocol writes.  It asks epoll to watch the socket for room
(``epoll_ctl``), polls again, finds the socket writable, sends, and stops watching it (``epoll_ctl``
again).  A stream relays one small write per backend event, so each event paid two system calls and one
more dispatch through the loop before its line left, and every non-streamed reply and backend request
paid the same once.  This reactor keeps the sockets written to in one pass and sends to them when the
pass's events have all been handled: a write is sent sooner, several writes to one socket in a pass still
leave in one ``send``, and epoll watches a socket only when the kernel's buffer was full.  A writer's
``doWrite`` is therefore called without epoll having said there is room: every Twisted transport writes
without blocking and takes a full buffer as a send of nothing, and the daemon has no other writers.

It also dispatches each event without ``twisted.python.log.callWithLogger``, which builds a legacy log
context (a ``logPrefix`` call, two dictionaries, a context stack push and pop) around every read and write
so that old-style ``log.msg`` calls made inside can name the connection in their ``system`` field.  The
daemon logs through ``twisted.logger``, which never reads that context.  What changes is Twisted's own
report of an exception a protocol raised: it is logged as before, and the connection is dropped as before,
but the line's ``system`` field says ``-`` instead of naming the connection.  An unexpected error outside
a protocol's handlers is logged too, and the loop goes on with the next event.

``twistd ollamaproxy``'s option parsing installs it (``install_unless_chosen``) when no reactor is installed
yet: an operator's own ``twistd --reactor`` is kept, and so is the reactor of a program that imports the
options (the tests).
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from twisted.internet import epollreactor
from twisted.logger import Logger

_log = Logger()


class SendingReactor(epollreactor.EPollReactor):
    def __init__(self) -> None:
        # Written to in this pass and not yet sent; each is either here or watched by epoll, never both.
        self._unsent: dict[Any, None] = {}  # a dict, not a set: sends in the order of the first write
        super().__init__()

    def addWriter(self, writer: Any) -> None:  # noqa: N802 -- Twisted's name
        # Not one already waiting for room: watched by epoll, or polled because epoll refused it (a file).
        if writer.fileno() not in self._writes and not self._continuousPolling.isWriting(writer):
            self._unsent[writer] = None

    def removeWriter(self, writer: Any) -> None:  # noqa: N802 -- Twisted's name
        if writer in self._unsent:
            del self._unsent[writer]
        else:
            super().removeWriter(writer)

    def getWriters(self) -> list[Any]:  # noqa: N802 -- Twisted's name
        return [*super().getWriters(), *self._unsent]

    def removeAll(self) -> list[Any]:  # noqa: N802 -- Twisted's name
        unsent = list(self._unsent)
        self._unsent.clear()
        removed: list[Any] = super().removeAll()
        seen = set(removed)
        return removed + [writer for writer in unsent if writer not in seen]

    def _send_unsent(self) -> None:
        """Send what this pass wrote.  A socket whose buffer could not take it all is handed to epoll; one
        written to again during these sends waits for the next pass (which then polls without waiting),
        so that a producer refilling its buffer on every send cannot hold the loop here."""
        for writer in list(self._unsent):
            if writer not in self._unsent:  # closed by an earlier send's consequences
                continue
            self._dispatch(writer, writer.fileno(), epollreactor.EPOLLOUT)
            if writer in self._unsent:  # still has bytes to send (or more since): wait for room
                del self._unsent[writer]
                super().addWriter(writer)

    def _dispatch(self, selectable: Any, fd: int, event: int) -> None:
        try:
            self._doReadOrWrite(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            # As callWithLogger did: one handler's failure, even SystemExit's, is not the loop's.
            _log.failure("unexpected error handling {selectable!r}", selectable=selectable)

    def doPoll(self, timeout: float | None) -> None:  # noqa: N802 -- Twisted's name
        if self._unsent:
            # Written to outside a pass's dispatch (by timed calls, threads, before the loop started, or
            # again during the last pass's sends): poll without waiting, and send at the end of this pass.
            timeout = 0
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                self._dispatch(selectable, fd, event)
        if self._unsent:
            self._send_unsent()

    doIteration = doPoll  # noqa: N815 -- Twisted's name


def install_unless_chosen() -> None:
    if "twisted.internet.reactor" in sys.modules:
        return
    from twisted.internet.main import installReactor

    installReactor(SendingReactor())

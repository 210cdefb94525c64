"""Sharing a listening socket's connections out evenly between ``--workers`` processes.

Every worker waits on the same listening socket, and the kernel wakes all of them for a new connection;
whoever calls ``accept()`` first gets it.  Left alone, that is not even: a worker already awake takes a
burst of connections in one go (Twisted accepts up to a hundred per wake-up) before its sibling is
scheduled at all.  wrk's ten keep-alive connections landed 10/0 or 8/2 between two workers, and every
request on them then ran on one core while the other idled.  Clients that keep a few connections open (a
chat front end's HTTP pool, an editor plugin) do the same.

So each worker publishes how many client connections it has open on a small shared board, accepts one
connection per wake-up, and when it already has more than its least busy sibling it stands back for
``STAND_BACK`` seconds, leaving the connection to the sibling (woken by the same readiness).  It accepts
anyway once it has stood back, so a sibling that is stuck or gone delays a connection by at most that
much and never refuses it.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

# How long a busier worker leaves a waiting connection to its siblings.
STAND_BACK = 0.002
_ABSENT = -1  # a slot with no live worker behind it
_SLOT_BYTES = 4


class ConnectionBoard:
    """Open client connections per worker: one 32-bit slot each in a file every worker maps.

    The parent creates it before forking and marks a worker's slot absent when that worker ends, so a
    dead worker's last count does not hold the others back.  Each slot has one writer (its worker, or the
    parent once that worker is gone), and a reader seeing a count a moment old only balances a little
    less well, so no lock is needed.
    """

    def __init__(self, path: str, slots: int) -> None:
        with open(path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), slots * _SLOT_BYTES)
        self._slots = memoryview(self._map).cast("i")

    @classmethod
    def create(cls, path: str, slots: int) -> ConnectionBoard:
        with open(path, "wb") as file:
            file.write(_ABSENT.to_bytes(_SLOT_BYTES, "little", signed=True) * slots)
        return cls(path, slots)

    def set(self, slot: int, count: int) -> None:
        self._slots[slot] = count

    def clear(self, slot: int) -> None:
        self._slots[slot] = _ABSENT

    def counts(self) -> list[int | None]:
        """Each slot's count, ``None`` where no worker is."""
        return [None if count == _ABSENT else count for count in self._slots]

    def busier_than_a_sibling(self, slot: int) -> bool:
        """Whether some other live worker has fewer connections open than ``slot``'s."""
        mine = self._slots[slot]
        return any(_ABSENT < count < mine for index, count in enumerate(self._slots) if index != slot)

    def close(self) -> None:
        self._slots.release()
        self._map.close()


class TakeTurns:
    """Wraps a listening port's ``doRead`` (called when the socket has connections waiting) so that this
    worker accepts one connection at a time, and lets a less busy sibling take it first.

    Twisted's ports have no hook for this; ``doRead`` and ``numberAccepts`` are what its TCP and UNIX
    ports use to accept (``test_balance`` checks both are still there).
    """

    def __init__(self, port: Any, board: ConnectionBoard, slot: int, clock: Any) -> None:
        self._port = port
        self._accept = port.doRead
        self._board = board
        self._slot = slot
        self._clock = clock
        self._stood_back = False
        self._resume: Any = None
        port.doRead = self.doRead

    def doRead(self) -> None:  # noqa: N802 -- the reactor calls it by this name
        if not self._stood_back and self._board.busier_than_a_sibling(self._slot):
            self._stood_back = True
            self._port.stopReading()
            self._resume = self._clock.callLater(STAND_BACK, self._start_reading)
            return
        self._stood_back = False
        self._port.numberAccepts = 1
        self._accept()

    def _start_reading(self) -> None:
        self._resume = None
        if self._port.connected and not self._port.disconnecting:  # not stopped meanwhile (shutdown)
            self._port.startReading()

    def stop(self) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None


def board_path(directory: str) -> str:
    return os.path.join(directory, "connections")

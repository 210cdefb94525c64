"""Sharing connections out between workers: the shared board of open connections, and a real listening port
that accepts one connection at a time and stands back while a sibling has fewer."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater

from ollama_proxy.balance import STAND_BACK, ConnectionBoard, TakeTurns, board_path


def reactor() -> Any:
    from twisted.internet import reactor as installed

    return installed


def test_a_new_board_has_no_workers_and_each_slot_is_its_own(tmp_path: Path) -> None:
    board = ConnectionBoard.create(board_path(str(tmp_path)), 3)
    assert board.counts() == [None, None, None]
    board.set(0, 4)
    board.set(2, 0)
    other = ConnectionBoard(board_path(str(tmp_path)), 3)  # another process maps the same file
    assert other.counts() == [4, None, 0]
    other.clear(0)
    assert board.counts() == [None, None, 0]
    board.close()
    other.close()


@pytest.mark.parametrize(
    ("counts", "slot", "busier"),
    [
        ([0, 0], 0, False),  # a tie: either may take it
        ([1, 0], 0, True),
        ([1, 0], 1, False),
        ([5, 4, 7], 2, True),
        ([5, 4, 7], 1, False),
        ([3, None], 0, False),  # no live sibling: nobody to leave it to
        ([3, None, 3], 0, False),
        ([0, None, 1], 2, True),
        ([0, 0, 0, 0], 3, False),
    ],
)
def test_who_is_busier_than_a_sibling(
    tmp_path: Path, counts: list[int | None], slot: int, busier: bool
) -> None:
    board = ConnectionBoard.create(str(tmp_path / "b"), len(counts))
    for index, count in enumerate(counts):
        if count is not None:
            board.set(index, count)
    assert board.busier_than_a_sibling(slot) is busier
    board.close()


class Counting(Factory):
    def __init__(self) -> None:
        self.built = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        self.built += 1
        return Protocol()


async def _eventually(condition: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await deferLater(reactor(), 0.01)
    raise AssertionError("condition not met in time")


@pytest_twisted.ensureDeferred
async def test_a_port_accepts_one_connection_per_wake_up_and_stands_back_for_a_less_busy_sibling(
    tmp_path: Path,
) -> None:
    factory = Counting()
    port = reactor().listenTCP(0, factory, interface="127.0.0.1")
    assert hasattr(port, "doRead")
    assert hasattr(port, "numberAccepts")
    board = ConnectionBoard.create(str(tmp_path / "b"), 2)
    board.set(0, 0)
    board.set(1, 0)
    clock = Clock()
    accepts = 0
    turns = TakeTurns(port, board, 0, clock)
    wrapped = port.doRead

    def counted() -> None:
        nonlocal accepts
        accepts += 1
        wrapped()

    port.doRead = counted
    clients: list[socket.socket] = []
    try:
        # Five connections waiting at once are taken one per wake-up, not in one go.
        for _ in range(5):
            clients.append(socket.create_connection(("127.0.0.1", port.getHost().port)))
        await _eventually(lambda: factory.built == 5)
        assert accepts >= 5

        # A sibling with fewer connections: the next one is left to it for STAND_BACK, then taken anyway.
        board.set(0, 5)
        clients.append(socket.create_connection(("127.0.0.1", port.getHost().port)))
        await _eventually(lambda: accepts >= 6)  # woken, stood back without accepting
        await deferLater(reactor(), 0.05)
        assert factory.built == 5
        clock.advance(STAND_BACK)
        await _eventually(lambda: factory.built == 6)

        # Standing back is armed again after an accept; stop() cancels a pending return.
        clients.append(socket.create_connection(("127.0.0.1", port.getHost().port)))
        await _eventually(lambda: accepts >= 8)
        assert factory.built == 6
        turns.stop()
        assert not clock.getDelayedCalls()
    finally:
        for client in clients:
            client.close()
        await defer.maybeDeferred(port.stopListening)
        board.close()


@pytest_twisted.ensureDeferred
async def test_a_port_that_stopped_listening_while_standing_back_stays_stopped(tmp_path: Path) -> None:
    factory = Counting()
    port = reactor().listenTCP(0, factory, interface="127.0.0.1")
    board = ConnectionBoard.create(str(tmp_path / "b"), 2)
    board.set(0, 3)
    board.set(1, 0)
    clock = Clock()
    TakeTurns(port, board, 0, clock)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        await _eventually(lambda: bool(clock.getDelayedCalls()))
        await defer.maybeDeferred(port.stopListening)
        clock.advance(STAND_BACK)  # would start reading a closed socket
        assert factory.built == 0
    finally:
        client.close()
        board.close()

"""``inherit:fd=N``: serve a listening socket this process inherited as descriptor N.

The ``--workers`` parent binds each ``--listen`` endpoint once and hands the sockets to its workers as
descriptors 3, 4, ...; a worker listens on ``inherit:fd=3``.  Any launcher that passes a bound, listening
stream socket can use it too (the socket's family is read from the socket itself).  Unlike ``systemd:``, it
needs no ``LISTEN_*`` variables, which a parent cannot set for a child whose pid it does not know yet.

Every process holding the socket waits for it to be readable, and the first one to call ``accept()`` gets the
connection; ``--workers`` evens that out (``balance.py``).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.defer import Deferred, execute
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from zope.interface import implementer


@implementer(IStreamServerEndpoint)
class InheritedEndpoint:
    """Listens on an inherited, already listening stream socket (the descriptor is closed once adopted)."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self.fd = fd

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        return execute(self._listen, factory)

    def _listen(self, factory: IProtocolFactory) -> IListeningPort:
        try:
            probe = socket.socket(fileno=os.dup(self.fd))
        except OSError as exc:
            raise ValueError(f"inherit:fd={self.fd}: no such socket ({exc.strerror or exc})") from None
        with probe:
            family, kind = probe.family, probe.type
            accepting = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if kind != socket.SOCK_STREAM or not accepting:
            raise ValueError(f"inherit:fd={self.fd} is not a listening stream socket")
        # Shared with other processes, so never blocking: a sibling may take the connection between the
        # wake-up and this process's accept().  (The flag belongs to the socket, so all holders see it.)
        os.set_blocking(self.fd, False)
        port: IListeningPort = self._reactor.adoptStreamPort(self.fd, family, factory)
        os.close(self.fd)  # the port holds its own duplicate
        return port


def inherited_endpoint(reactor: Any, *args: object, **kwargs: object) -> InheritedEndpoint:
    """Parse ``inherit:fd=3`` (or ``inherit:3``)."""
    fd = kwargs.pop("fd", None)
    if kwargs or (fd is None and len(args) != 1) or (fd is not None and args):
        raise ValueError("inherit: takes one descriptor number: inherit:fd=3")
    text = str(fd if fd is not None else args[0])
    if not text.isdigit():
        raise ValueError(f"inherit: fd must be a descriptor number, not {text!r}")
    return InheritedEndpoint(reactor, int(text))

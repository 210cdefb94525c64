"""systemd's notify protocol (``sd_notify(3)``) without a dependency: readiness, stopping and watchdog pings.

Under ``Type=notify`` systemd hands the daemon an ``AF_UNIX`` datagram socket in ``NOTIFY_SOCKET`` (a path,
or ``@name`` in the abstract namespace) and waits for ``READY=1`` before it counts the service as started.
Sending never raises: readiness is a courtesy to the supervisor and must never take the daemon down.

``READY=1`` goes out once every listener is bound, one reactor turn after ``callWhenRunning``: twistd starts
services before ``reactor.run()``, and only ``run()`` installs the signal handlers (the daemon installs its
own from ``callWhenRunning``, ``signals.py``), so a ``READY=1`` sent from the listen callback itself would
let a supervisor's prompt SIGTERM kill the process before it could drain, or end it with the wrong status.

The same protocol carries the ``--workers`` parent's conversation with its workers (``supervisor.py``): each
worker's ``NOTIFY_SOCKET`` names a socket of the parent's, which :class:`NotifyReceiver` reads, with the
sender's pid from the kernel (``SO_PASSCRED``).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort, IReadDescriptor
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger(namespace="ollama_proxy.sdnotify")

# struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_UCRED = struct.Struct("3i")


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # the abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock: and anything else this daemon does not speak


def sd_notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``state`` (``"READY=1\\nSTATUS=..."``) to ``NOTIFY_SOCKET``; False when unset or undeliverable."""
    address = _address(environ.get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8", "replace"), address)
    except (OSError, ValueError):  # gone, refused, path too long, NUL in the name ...
        return False
    return True


def watchdog_period(environ: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None when no watchdog is armed
    for this process (``WATCHDOG_PID``, when set, must name it)."""
    text = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid if pid is not None else os.getpid()):
        return None
    try:
        usec = int(text)
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


def describe(address: Any) -> str:
    """``http://127.0.0.1:11434`` for an INET address, the path for a unix one."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    return str(getattr(address, "name", address))


class SystemdNotifier(Service):
    """``READY=1`` once all ``listening`` Deferreds have fired, ``WATCHDOG=1`` every half ``WATCHDOG_USEC``,
    ``STOPPING=1`` as soon as the stop begins.

    Add it to the daemon's ``MultiService`` after the listeners: a ``MultiService`` stops its children in
    reverse order, so this one is stopped first and ``STOPPING=1`` precedes the drain.
    """

    def __init__(
        self,
        reactor: Any,
        listening: Sequence[Deferred[IListeningPort]],
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._reactor = reactor
        self._listening = list(listening)
        self._environ = environ
        self._watchdog: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's Service is unannotated
        # DeferredList passes every result on unchanged, so the listeners' other waiters still see them.
        waiting = DeferredList(self._listening, fireOnOneErrback=True, consumeErrors=False)
        waiting.addCallbacks(self._bound, self._not_bound)
        period = watchdog_period(self._environ)
        if period is not None:
            self._watchdog = LoopingCall(self._send, "WATCHDOG=1")
            self._watchdog.clock = self._reactor
            self._reactor.callWhenRunning(self._watchdog.start, period, True)

    def _bound(self, results: list[tuple[bool, IListeningPort]]) -> None:
        where = ", ".join(describe(port.getHost()) for _ok, port in results)
        # One turn after the start-up calls: the daemon's own SIGTERM handler (the one that makes a stop
        # exit 0) is installed by a callWhenRunning registered after this one.
        self._reactor.callWhenRunning(
            self._reactor.callLater, 0, self._send, f"READY=1\nSTATUS=serving on {where}"
        )

    def _not_bound(self, failure: Failure) -> None:
        """A listener failed: ListeningService reports it and stops the reactor; no READY=1."""

    def _send(self, state: str) -> None:
        sd_notify(state, self._environ)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self._send("STOPPING=1")
        # The watchdog keeps pinging through the drain (systemd stops watching once the stop has begun).


def attach_notifier(service: Any, reactor: Any, environ: Mapping[str, str] = os.environ) -> SystemdNotifier:
    """Add a :class:`SystemdNotifier` for ``service``'s listeners (a ``ProxyService``) as its last child."""
    notifier = SystemdNotifier(reactor, [listener.listening for listener in service.listeners], environ)
    notifier.setServiceParent(service)  # type: ignore[no-untyped-call]
    return notifier


@implementer(IReadDescriptor)
class NotifyReceiver:
    """The receiving end of the protocol: an ``AF_UNIX`` datagram socket at ``path`` that calls
    ``received(pid, fields)`` for every message, ``pid`` being the sender's as the kernel reports it."""

    def __init__(self, path: str, received: Callable[[int, dict[str, str]], None]) -> None:
        self.path = path
        self._received = received
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._socket.bind(path)
        self._socket.setblocking(False)

    def fileno(self) -> int:
        return self._socket.fileno()

    def logPrefix(self) -> str:  # noqa: N802 -- ILoggingContext
        return "NotifyReceiver"

    def doRead(self) -> None:  # noqa: N802 -- IReadDescriptor
        while True:
            try:
                data, ancillary, _flags, _address = self._socket.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warn("notify socket read failed: {why}", why=str(exc))
                return
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            self._received(pid, parse_state(data))

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def close(self) -> None:
        self._socket.close()


def parse_state(data: bytes) -> dict[str, str]:
    """``b"READY=1\\nSTATUS=x"`` → ``{"READY": "1", "STATUS": "x"}``."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields

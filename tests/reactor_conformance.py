"""Twisted's own reactor tests, run against the daemon's reactor (``ollama_proxy/reactor.py``): the same
suites that every reactor Twisted ships must pass (file descriptors, timers, threads, TCP, Unix sockets,
TLS, aborted connections, processes), so that sending writes in the pass that made them changes when bytes
leave and nothing else.

Three of their tests are left out, each for a reason that is not this reactor's behaviour to fix.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.test import (
    test_core,
    test_fdset,
    test_process,
    test_tcp,
    test_threads,
    test_time,
    test_tls,
    test_unix,
)

_OURS = ["ollama_proxy.reactor.SendingReactor"]
_LEFT_OUT = {
    # The reactor dispatches without the legacy log context on purpose (its docstring says why).
    "test_logPrefix",
    # Twisted skips it for its own EPollReactor, by class name: a closed descriptor leaves an epoll set
    # without an event, so no epoll reactor can notice.  This reactor is an EPollReactor.
    "test_lostFileDescriptor",
    # Runs a child as another user; that user cannot run this checkout's Python on a machine where it
    # lives in root's home, which fails Twisted's own EPollReactor the same way.
    "test_changeUID",
}
_SUITES = [
    test_core.SystemEventTestsBuilder,
    test_fdset.ReactorFDSetTestsBuilder,
    test_time.TimeTestsBuilder,
    test_threads.ThreadTestsBuilder,
    test_tcp.TCP4ClientTestsBuilder,
    test_tcp.TCP6ClientTestsBuilder,
    test_tcp.TCPPortTestsBuilder,
    test_tcp.TCPFDPortTestsBuilder,
    test_tcp.TCPConnectionTestsBuilder,
    test_tcp.TCP4ConnectorTestsBuilder,
    test_tcp.TCP6ConnectorTestsBuilder,
    test_tcp.TCPTransportTestsBuilder,
    test_tcp.AdoptStreamConnectionTestsBuilder,
    test_tcp.TestBindAddressBuilder,
    test_tcp.AbortConnectionTests,
    test_unix.UNIXTestsBuilder,
    test_unix.UNIXPortTestsBuilder,
    test_unix.UNIXFDPortTestsBuilder,
    test_unix.UNIXAdoptStreamConnectionTestsBuilder,
    test_unix.UnixClientTestsBuilder,
    test_tls.SSLClientTestsMixin,
    test_tls.StartTLSClientTestsMixin,
    test_tls.TLSPortTestsBuilder,
    test_tls.AbortSSLConnectionTests,
    test_process.ProcessTestsBuilder,
]


def _for_our_reactor(suite: type[Any]) -> dict[str, type[Any]]:
    left_out = {name: None for name in _LEFT_OUT if hasattr(suite, name)}
    ours: Any = type(suite.__name__, (suite,), {"_reactors": _OURS, "__module__": __name__, **left_out})
    classes: dict[str, type[Any]] = ours.makeTestCaseClasses()
    return classes


for _suite in _SUITES:
    globals().update(_for_our_reactor(_suite))

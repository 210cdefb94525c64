"""The HTTP site: a Request subclass that carries the request id and writes the access log when the
request really ends.

``Site.log`` is not called for requests whose client went away mid-stream, which are exactly the ones an
operator most needs to see, so the access event is written from ``finish()`` and ``connectionLost()``.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

access_log = Logger(namespace="ollama_proxy.access")

# A client-supplied X-Request-ID is kept only when it is a plain token, so it cannot forge log lines.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


class ProxyRequest(Request):
    request_id: str = "-"
    started: float = 0.0
    outcome: str = ""

    def process(self) -> None:
        self.started = time.monotonic()
        supplied = (self.getHeader(b"x-request-id") or b"").decode("latin-1")
        self.request_id = supplied if _SANE_REQUEST_ID.match(supplied) else uuid.uuid4().hex
        self.setHeader(b"x-request-id", self.request_id.encode())
        super().process()

    def finish(self) -> None:
        super().finish()
        self._log_access("completed")

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._log_access("client_gone")

    def _log_access(self, outcome: str) -> None:
        if self.outcome:  # finish() then connectionLost(): one event per request
            return
        self.outcome = outcome
        access_log.info(
            "{method} {path} {status} {duration_ms}ms {outcome}",
            request_id=self.request_id,
            client=_peer(self),
            method=(self.method or b"").decode("ascii", "replace"),
            path=(self.uri or b"").decode("utf-8", "replace").split("?", 1)[0],
            status=self.code,
            duration_ms=round((time.monotonic() - self.started) * 1000, 1),
            bytes_out=self.sentLength,
            outcome=outcome,
        )


def _peer(request: Request) -> str:
    address: Any = request.getClientAddress()
    host = getattr(address, "host", None)
    return str(host) if host is not None else str(address)


class ProxySite(Site):
    requestFactory = ProxyRequest
    noisy = False

    def __init__(self, root: Resource) -> None:
        super().__init__(root)

    def log(self, request: Any) -> None:
        """Replaced by ProxyRequest's access event, which also covers aborted requests."""

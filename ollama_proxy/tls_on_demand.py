"""pyOpenSSL only in a daemon that speaks TLS.

Twisted imports pyOpenSSL (and with it the ``cryptography`` package's bindings) as soon as its TCP and
endpoint modules are imported, whether or not any connection will use TLS: 16 MB of the daemon's 55 MB
idle RSS.  A daemon whose backends are all ``http://`` and whose listeners are plain TCP or Unix sockets
never needs it, so before Twisted's networking modules are imported, and only then, pyOpenSSL is made
unimportable for this process: Twisted then builds its TCP transports and endpoints without TLS, as it
does on a machine where pyOpenSSL is not installed.  An ``https://`` backend or a TLS listener keeps
everything as it was.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# Endpoint types that need TLS (Twisted's ssl:, its tls: client form, and txacme's le:/lets:).
_TLS_ENDPOINTS = frozenset({"ssl", "tls", "le", "lets"})
# Imported already: too late to make a difference, so nothing is changed.
_TOO_LATE = ("OpenSSL", "twisted.internet.tcp", "twisted.internet.endpoints")


def needs_tls(backend_urls: Sequence[str], listen: Sequence[str]) -> bool:
    return any(url.lower().startswith("https:") for url in backend_urls) or any(
        description.split(":", 1)[0].strip().lower() in _TLS_ENDPOINTS for description in listen
    )


def leave_tls_out(backend_urls: Sequence[str], listen: Sequence[str]) -> bool:
    """Keep pyOpenSSL out of this process if nothing in it will use TLS; True when it was left out."""
    if needs_tls(backend_urls, listen) or any(name in sys.modules for name in _TOO_LATE):
        return False
    sys.modules["OpenSSL"] = None  # type: ignore[assignment]  # the documented way to make an import fail
    return True

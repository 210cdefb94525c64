"""Sockets passed without names: importing this module names them, before Twisted reads them.

systemd (227 and later) passes ``LISTEN_FDS``, ``LISTEN_PID`` and ``LISTEN_FDNAMES``;
``systemd-socket-activate`` without ``--fdname``, and other launchers of the older protocol, leave
``LISTEN_FDNAMES`` out.  Twisted then
ignores the sockets altogether (``systemd:domain=INET:index=0`` fails with an IndexError), and it reads the
variables once, when ``twisted.internet.endpoints`` is first imported.  So ``tap.py`` imports this module
before anything that imports endpoints, and the sockets get the name systemd itself uses when a socket has
none, ``unknown`` (``sd_listen_fds_with_names(3)``).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping


def name_unnamed_sockets(environ: MutableMapping[str, str] = os.environ, pid: int | None = None) -> bool:
    """Set ``LISTEN_FDNAMES`` to ``unknown:unknown:...`` when sockets for this process come without names."""
    count = environ.get("LISTEN_FDS", "")
    mine = environ.get("LISTEN_PID") == str(pid if pid is not None else os.getpid())
    if not mine or not count.isdigit() or int(count) < 1 or "LISTEN_FDNAMES" in environ:
        return False
    environ["LISTEN_FDNAMES"] = ":".join(["unknown"] * int(count))
    return True


name_unnamed_sockets()

"""Open files: the process's limit raised at start-up, and how many client connections fit under it.

Every client connection is a file descriptor, and so is every backend connection, the listening sockets and
the metrics files.  Under the soft limit most systems start a process with (1024: systemd's default, and
most shells'), a thousand idle clients would leave the daemon unable to open a backend connection, or to
accept anything at all: Twisted's accept loop then logs "out of file descriptors" and spins on the
listening socket.  So the soft limit is raised to the hard one at start-up (systemd's hard default is
524288), and unless ``--max-connections`` says otherwise clients get what is left once the backend
connections and the daemon's own files have room.
"""

from __future__ import annotations

import resource

from twisted.logger import Logger

from ollama_proxy.config import ProxyConfig

log = Logger(namespace="ollama_proxy.open_files")

# Descriptors besides client and backend connections: listening sockets, standard streams, the metrics
# files of --workers, the notify socket, the connections being refused (site.py).
OWN_FILES = 64
# An unlimited hard limit cannot become the soft one (Linux caps it at fs.nr_open, 1048576 by default).
UNLIMITED_CAP = 1 << 20


def _finite(limit: int) -> int:
    return UNLIMITED_CAP if limit == resource.RLIM_INFINITY else limit


def raise_open_file_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit, saying so once (workers inherit
    the raised limit from their parent, so only the first process to start says anything)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _finite(hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warn("open-file limit left at {soft}: {why}", soft=soft, why=str(exc))
            return
        log.info("open-file limit raised from {soft} to {limit}", soft=soft, limit=target)


def connection_budget(config: ProxyConfig) -> int:
    """Client connections this process may hold when ``--max-connections`` is not given: its open-file
    limit less room for every backend connection (``max-concurrent`` in flight and ``pool-size`` idle, per
    backend) and ``OWN_FILES``."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    backend = len(config.backends) * (config.max_concurrent + config.pool_size)
    return max(_finite(soft) - backend - OWN_FILES, 1)

"""``twistd`` exactly as its console script runs it, except how it leaves after SIGTERM.

twistd ends by re-raising the signal with the default handler, which kills the process before coverage
can save what it measured in it.  Here it leaves through ``sys.exit`` instead, so the subprocess daemon's
coverage counts.  Everything else (plugin discovery, options, the reactor, signal handling) is twistd's.
"""

from __future__ import annotations

import sys

from twisted.application import app
from twisted.scripts.twistd import run


def twistd_command(*args: str) -> list[str]:
    """The command line of ``twistd -n ollamaproxy ARGS`` run through this module, for the tests."""
    return [sys.executable, "-m", "tests.twistd_measured", "-n", "--pidfile=", "ollamaproxy", *args]


def _exit_with_signal(signum: int) -> None:
    sys.exit(128 + signum)


if __name__ == "__main__":
    app._exitWithSignal = _exit_with_signal
    sys.argv[0] = "twistd"
    run()

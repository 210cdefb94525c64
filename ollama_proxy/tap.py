"""``twistd ollamaproxy``: command-line options and the service they build."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.python import usage

from ollama_proxy import listen_fds  # noqa: F401 -- first: names unnamed systemd sockets (see there)
from ollama_proxy.config import SETTINGS, ProxyConfig, build_config
from ollama_proxy.errors import ConfigError
from ollama_proxy.open_files import raise_open_file_limit
from ollama_proxy.tls_on_demand import leave_tls_out


class Options(usage.Options):
    """Every value may also come from ``OLLAMA_PROXY_<NAME>`` or the ``--config`` TOML file."""

    synopsis = "[options]"
    longdesc = (
        "Serve the Ollama HTTP API from an OpenAI-compatible backend (vLLM, OpenAI, OpenRouter, llama.cpp)."
    )
    optParameters = [  # noqa: RUF012 Twisted reads this class attribute
        ["config", "c", None, "TOML configuration file (see etc/ollama-proxy.toml)."],
        *[[s.name, s.short, None, s.help] for s in SETTINGS if not s.flag and s.name != "backend"],
    ]
    optFlags = [[s.name, s.short, s.help] for s in SETTINGS if s.flag]  # noqa: RUF012 read by Twisted

    def __init__(self) -> None:
        super().__init__()
        self.listen: list[str] = []
        self.backends: list[str] = []
        self.config: ProxyConfig | None = None

    def opt_backend(self, url: str) -> None:
        """Base URL of an OpenAI-compatible backend, e.g. http://gpu1:8000/v1; repeat it for several."""
        self.backends.append(url)

    opt_b = opt_backend

    def opt_listen(self, endpoint: str) -> None:
        """Endpoint to listen on, repeatable (default: OLLAMA_HOST, else tcp:11434:interface=127.0.0.1)."""
        self.listen.append(endpoint)

    opt_l = opt_listen

    def parseOptions(self, options: list[str] | None = None) -> None:  # noqa: N802 -- Twisted's name
        self.argv = list(sys.argv[1:] if options is None else options)  # what --workers hands its workers
        super().parseOptions(options)

    def postOptions(self) -> None:
        try:
            config = build_config(self, os.environ, self["config"], tuple(self.listen), tuple(self.backends))
            # Before Twisted's networking is imported, which the daemon's reactor module is the first to do.
            leave_tls_out([backend.url for backend in config.backends], config.listen)
            from ollama_proxy.reactor import install_unless_chosen

            install_unless_chosen()  # before anything imports twisted.internet.reactor (the check below)
            _check_endpoints(config.listen)
            if config.workers > 1:
                from ollama_proxy.supervisor import check_shareable

                check_shareable(config.listen)
        except ConfigError as exc:
            # One clear line and a non-zero exit, rather than twistd's full usage text or a traceback.
            print(f"ollamaproxy: {exc}", file=sys.stderr)  # noqa: T201 -- start-up error for the operator
            raise SystemExit(2) from None
        self.config = config
        parent: Any = getattr(self, "parent", None)  # twistd's own options, when run by twistd
        # twistd builds its log observer from its --logger after parsing options, so setting it here is
        # what makes `twistd ollamaproxy --log-format json` print JSON lines from the start.  An
        # operator's own --logger is kept.
        if parent is not None and not parent.get("logger"):
            if config.log_format == "json":
                parent["logger"] = "ollama_proxy.logs.json_observer"
            elif _logs_to_stdout(parent):
                # The same lines as twistd's own observer, which formats each line's time from scratch.
                parent["logger"] = "ollama_proxy.logs.text_observer"


def _logs_to_stdout(twistd_options: Any) -> bool:
    """Where twistd itself would print its text lines to standard output: in the foreground, with no
    ``--logfile`` (or ``--logfile -``) and no ``--syslog``."""
    return bool(
        twistd_options.get("nodaemon")
        and twistd_options.get("logfile") in (None, "", "-")
        and not twistd_options.get("syslog")
    )


def _check_endpoints(endpoints: tuple[str, ...]) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    for description in endpoints:
        try:
            serverFromString(reactor, description)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--listen: {description!r} is not a valid endpoint: {exc}") from None


def makeService(options: Options, reactor: Any = None) -> Any:
    """The daemon (a ``ProxyService`` that tells systemd when it is ready), or with ``--workers`` N > 1 the
    ``Supervisor`` of N such daemons (``supervisor.py``)."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    assert options.config is not None  # noqa: S101 -- postOptions always sets it or exits
    raise_open_file_limit()  # before the limit is read for --max-connections; workers inherit it
    # Each process imports what it runs: the supervisor none of the serving code, a daemon no supervisor.
    if options.config.workers > 1:
        from ollama_proxy.supervisor import Supervisor

        return Supervisor(options.config, reactor, options.argv, handle_signals=True)
    from ollama_proxy.sdnotify import attach_notifier
    from ollama_proxy.service import ProxyService, settle_garbage_collector

    service = ProxyService(options.config, reactor, handle_signals=True)
    attach_notifier(service, reactor)
    reactor.callWhenRunning(settle_garbage_collector)
    return service

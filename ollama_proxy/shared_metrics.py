"""``/metrics`` for the whole daemon when ``--workers`` runs several processes: prometheus-client's
multiprocess mode.

The parent gives every worker the same ``PROMETHEUS_MULTIPROC_DIR``, so each worker's counters and
histograms live in memory-mapped files there (``counter_<pid>.db`` ...), and whichever worker answers
``/metrics`` reads all of the files and adds them up.  Files of workers that died stay: a restarted worker
does not make the daemon's counters go backwards.

The gauges that describe the present (requests in flight, open streams, backend slots, breaker state,
process resources) are computed on demand in each process (``metrics.py``); here each worker copies them
into multiprocess gauges every ``PUBLISH_INTERVAL`` seconds and whenever it answers a scrape.  How
the workers' values combine:

* load (``requests_in_flight``, ``open_streams``, ``backend_slots_in_use``, ``backend_queue``): summed;
* ``backend_breaker_state``: the worst worker's (each worker has its own breaker);
* process series (``process_*``, ``ollama_proxy_process_*``): one series per live worker, labelled ``pid``.

A worker that exits is marked dead by the parent (``mark_process_dead``), which drops its gauges.
"""

from __future__ import annotations

from typing import Any, Literal

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from twisted.internet.task import LoopingCall

from ollama_proxy.metrics import PREFIX, Metrics

PUBLISH_INTERVAL = 2.0

Mode = Literal["liveall", "livesum", "livemax"]


def gauge_mode(name: str) -> Mode:
    """How one worker's value of the gauge ``name`` combines with its siblings'."""
    if name.startswith(("process_", f"{PREFIX}_process_")):
        return "liveall"
    if name == f"{PREFIX}_backend_breaker_state":
        return "livemax"
    return "livesum"


class SharedMetrics:
    """The exposition of every worker's metrics, installed as ``Metrics.shared`` in each worker."""

    def __init__(self, metrics: Metrics, directory: str) -> None:
        self._source = metrics.registry
        self._registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(self._registry, path=directory)  # type: ignore[no-untyped-call]
        self._gauges: dict[tuple[str, tuple[str, ...]], Gauge] = {}
        self._loop: LoopingCall | None = None

    def start(self, clock: Any, interval: float = PUBLISH_INTERVAL) -> None:
        self._loop = LoopingCall(self.publish)
        self._loop.clock = clock
        self._loop.start(interval, now=True)

    def publish(self) -> None:
        """Copy this process's scrape-time gauges into the shared files."""
        for family in self._source.collect():
            if family.type != "gauge" and not family.name.startswith("process_"):
                continue  # counters and histograms are in the shared files already, as they change
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels)))
                gauge = self._gauges.get(key)
                if gauge is None:
                    gauge = Gauge(
                        sample.name,
                        family.documentation,
                        list(key[1]),
                        registry=None,
                        multiprocess_mode=gauge_mode(sample.name),
                    )
                    self._gauges[key] = gauge
                (gauge.labels(**sample.labels) if sample.labels else gauge).set(sample.value)

    def __call__(self) -> bytes:
        self.publish()
        return generate_latest(self._registry)

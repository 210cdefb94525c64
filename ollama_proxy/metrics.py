"""Prometheus metrics that speak LLM: requests, time to first token, tokens and tokens per second by model,
backend health, on a registry of the daemon's own (every name prefixed ``ollama_proxy_``).

Label values are bounded: endpoints are a fixed set of route names, API families the four the daemon
speaks (``ollama``, ``openai``, ``anthropic``, ``responses``), models are the backend's own ids (never a
client's free text: names the catalog could not resolve fold into ``unknown``), statuses are HTTP codes.
Gauges that describe the present (in-flight requests, open streams, breaker state, process resources) are
read at scrape time rather than maintained by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

PREFIX = "ollama_proxy"
UNKNOWN_MODEL = "unknown"

# Route names: the only values the endpoint label takes.
_API_ENDPOINTS = frozenset(
    {
        "version",
        "tags",
        "show",
        "ps",
        "chat",
        "generate",
        "embed",
        "embeddings",
        "pull",
        "push",
        "create",
        "copy",
        "delete",
        "blobs",
    }
)
# Longest first: ``messages/count_tokens`` is its own route, not ``messages``.
_V1_ENDPOINTS = (
    "messages/count_tokens",
    "chat/completions",
    "completions",
    "embeddings",
    "responses",
    "messages",
    "models",
)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TTFT = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
_TOKENS_PER_SECOND = (1.0, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 400.0, 1000.0)


def endpoint_label(path: bytes) -> str:
    """``/api/chat`` → ``/api/chat``, ``/v1/models/x`` → ``/v1/models``, anything unknown → ``other``."""
    text = path.split(b"?", 1)[0].decode("utf-8", "replace").rstrip("/") or "/"
    if text in ("/", "/health", "/ready", "/metrics"):
        return text
    if text.startswith("/api/"):
        name = text[5:].split("/", 1)[0]
        return f"/api/{name}" if name in _API_ENDPOINTS else "other"
    rest = text.removeprefix("/v1").lstrip("/")
    for route in _V1_ENDPOINTS:
        if rest == route or rest.startswith(route + "/"):
            return f"/v1/{route}"
    return "/v1/other" if text.startswith("/v1/") else "other"


class _LiveGauges(Collector):
    """Gauges computed when Prometheus scrapes: nothing to keep in step on the hot path."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield from self._read()


class _Children:
    """A labelled metric's children, found by their label values in a dict.

    ``labels()`` checks and converts its values and takes a lock on every call (2.5 µs; a chat reports
    seven): here that happens once per distinct set of values, which the bounded labels keep few.  Each
    child is the metric's own, so ``labels()`` elsewhere (the tests) sees the same counts.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests answered, by API family, endpoint, method and status.",
            ["api", "endpoint", "method", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from request to the end of the response.",
            ["api", "endpoint"],
            buckets=_SECONDS,
            registry=registry,
        )
        self.ttft_seconds = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Time from request to the first generated token.",
            ["endpoint", "model"],
            buckets=_TTFT,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens",
            "Prompt tokens the backend reported, by model.",
            ["model"],
            registry=registry,
        )
        self.completion_tokens = Counter(
            f"{PREFIX}_completion_tokens",
            "Generated tokens the backend reported, by model.",
            ["model"],
            registry=registry,
        )
        self.tokens_per_second = Histogram(
            f"{PREFIX}_tokens_per_second",
            "Generation speed after the first token, by model.",
            ["model"],
            buckets=_TOKENS_PER_SECOND,
            registry=registry,
        )
        self.backend_responses = Counter(
            f"{PREFIX}_backend_requests", "Backend responses, by HTTP status.", ["status"], registry=registry
        )
        self.backend_errors = Counter(
            f"{PREFIX}_backend_errors",
            "Backend calls that failed without a response, by reason.",
            ["reason"],
            registry=registry,
        )
        self.retries = Counter(f"{PREFIX}_backend_retries", "Backend requests retried.", registry=registry)
        self.client_disconnects = Counter(
            f"{PREFIX}_client_disconnects",
            "Requests whose client left before the response ended.",
            ["endpoint"],
            registry=registry,
        )
        self.connections_refused = Counter(
            f"{PREFIX}_connections_refused",
            "Client connections refused over a connection limit, by limit.",
            ["limit"],
            registry=registry,
        )
        ProcessCollector(namespace="", registry=registry)
        # The children each request reports to (see _Children).
        self._requests = _Children(self.requests)
        self._request_seconds = _Children(self.request_seconds)
        self._ttft_seconds = _Children(self.ttft_seconds)
        self._prompt_tokens = _Children(self.prompt_tokens)
        self._completion_tokens = _Children(self.completion_tokens)
        self._tokens_per_second = _Children(self.tokens_per_second)
        self._backend_responses = _Children(self.backend_responses)
        self._backend_errors = _Children(self.backend_errors)
        self._client_disconnects = _Children(self.client_disconnects)
        self._live: list[Callable[[], Iterable[Metric]]] = [_process_extras]
        registry.register(_LiveGauges(self._collect_live))
        # With --workers: the whole daemon's exposition, read from every worker (shared_metrics.py).
        self.shared: Callable[[], bytes] | None = None

    def add_live(self, read: Callable[[], Iterable[Metric]]) -> None:
        """Register a scrape-time reader (in-flight requests, breaker state ...)."""
        self._live.append(read)

    def _collect_live(self) -> Iterator[Metric]:
        for read in self._live:
            yield from read()

    def exposition(self) -> bytes:
        if self.shared is not None:
            return self.shared()
        return generate_latest(self.registry)

    # -- what handlers and the site report -------------------------------------------------------------

    def request_ended(
        self, api: str, endpoint: str, method: str, status: int, seconds: float, *, gone: bool
    ) -> None:
        self._requests(api, endpoint, method, str(status)).inc()
        self._request_seconds(api, endpoint).observe(seconds)
        if gone:
            self._client_disconnects(endpoint).inc()

    def connection_refused(self, limit: str) -> None:
        """``limit``: ``max_connections`` or ``max_connections_per_client``."""
        self.connections_refused.labels(limit).inc()

    def generation(
        self,
        endpoint: str,
        model: str,
        *,
        ttft: float | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        decode_seconds: float | None,
    ) -> None:
        if ttft is not None:
            self._ttft_seconds(endpoint, model).observe(ttft)
        if prompt_tokens:
            self._prompt_tokens(model).inc(prompt_tokens)
        if completion_tokens:
            self._completion_tokens(model).inc(completion_tokens)
            if decode_seconds and decode_seconds > 0 and completion_tokens > 1:
                # Tokens after the first, over the time after the first: the decode speed a user feels.
                self._tokens_per_second(model).observe((completion_tokens - 1) / decode_seconds)

    # Backend client callbacks (the BackendObserver protocol in backend.py).
    def backend_response(self, status: int) -> None:
        self._backend_responses(str(status)).inc()

    def backend_error(self, reason: str) -> None:
        self._backend_errors(reason).inc()

    def backend_retry(self) -> None:
        self.retries.inc()


def gauge(name: str, documentation: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


# One object for the process's life: psutil measures cpu_percent against the same object's previous
# call, so a new one per scrape always read 0.0.
_THIS_PROCESS = psutil.Process()


def _process_extras() -> Iterator[Metric]:
    """What the standard process collector lacks: threads, connections, CPU use, via psutil."""
    process = _THIS_PROCESS
    with process.oneshot():
        yield gauge("process_threads", "Threads of the daemon process.", process.num_threads())
        yield gauge("process_open_files", "Regular files the daemon holds open.", len(process.open_files()))
        yield gauge(
            "process_connections", "Sockets (inet) the daemon holds open.", len(process.net_connections())
        )
        yield gauge(
            "process_cpu_percent",
            "CPU use since the previous scrape, percent of one core.",
            process.cpu_percent(interval=None),
        )


def model_label(known: Callable[[str], bool], backend_id: str | None) -> str:
    """The backend id when the catalog knows it, else ``unknown``: label values stay bounded."""
    return backend_id if backend_id and known(backend_id) else UNKNOWN_MODEL

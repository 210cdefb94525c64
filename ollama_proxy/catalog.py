"""The models the backend serves, under the names Ollama clients use for them.

The backend's ``/models`` list is fetched on demand and cached for ``models_ttl`` seconds; concurrent
callers share one fetch.  A name that is not found triggers one early refresh, so a model loaded on the
backend a moment ago is found without waiting for the cache to expire.

Name rules (the same on every endpoint): a model-map alias first, then the backend id exactly, then
case-insensitively; ``NAME`` and ``NAME:latest`` are the same model; ids that contain ``:`` themselves
(OpenRouter's ``...:free``) match exactly before any tag is stripped.

What else the catalog learns of a model:

* From a llama.cpp backend (dialect ``llamacpp``), ``GET /props?model=ID`` at the server's root for each
  model it lists as loaded (an entry without a ``status``, or ``loaded`` in router mode, so that asking
  never loads one), folded in by :func:`~ollama_proxy.translate.models.props_facts`.  It only adds
  detail: it is bounded by :data:`PROPS_TIMEOUT`, tried once, and any failure leaves the model as
  ``/models`` describes it; a backend that answers 404 (a server that has no ``/props``) is not asked again.
* From replies: a model that has answered with reasoning (:meth:`ModelCatalog.note_reasoning`) is
  ``thinking``-capable from then on, across refreshes, for as long as the daemon runs.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred, FirstError, ensureDeferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ollama_proxy.backend import BackendClient
from ollama_proxy.errors import BackendError, BackendRejected, BackendTimeout, ModelNotFound, Overloaded
from ollama_proxy.translate.dialect import Dialect
from ollama_proxy.translate.models import (
    BackendFacts,
    ModelInfo,
    ModelOverride,
    listed_name,
    lookup_key,
    model_info,
    props_facts,
)
from ollama_proxy.translate.timestamps import parse_go_duration

log = Logger(namespace="ollama_proxy.catalog")

# A miss refreshes the list early, but not more often than this, so a client asking for a model that
# does not exist cannot turn every request into a backend /models call.
MISS_REFRESH_INTERVAL = 1.0
DEFAULT_KEEP_ALIVE = 300.0
# Ollama's "forever" (a negative keep_alive) shows as a date far in the future.
FOREVER_SECONDS = 100 * 365 * 24 * 3600.0
# How long llama.cpp's /props may take, per model, before the model is described without it.
PROPS_TIMEOUT = 5.0


@attrs.frozen
class Resolved:
    """A client's model name, the backend model it stands for, and the backend client that serves it.

    Handlers call ``resolved.client``, never a global backend, so routing lives in one place (here).
    ``replicas`` lists every backend serving the model, preferred first, for failover.
    """

    name: str  # as the client sent it (echoed in replies)
    info: ModelInfo
    client: BackendClient = attrs.field(eq=False, repr=False)
    replicas: tuple[BackendClient, ...] = attrs.field(default=(), eq=False, repr=False)

    @property
    def backend_id(self) -> str:
        return self.info.id

    def on(self, client: BackendClient) -> Resolved:
        """The same model on another replica (the first try is on the one it names already)."""
        return self if client is self.client else attrs.evolve(self, client=client)


@attrs.frozen
class Snapshot:
    """The merged model list of every backend, with lookup tables built once per fetch, not per request."""

    fetched_at: float  # the oldest of the backends' lists
    models: tuple[ModelInfo, ...]
    by_id: Mapping[str, ModelInfo]
    by_key: Mapping[str, ModelInfo]
    # The backends' own entries by id, as sent (``/v1/models/{alias}`` answers with its target's).
    entries: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    # Which backends serve each id, in configuration order.
    servers: Mapping[str, tuple[BackendClient, ...]] = attrs.field(factory=dict)


@attrs.frozen
class _Listing:
    """One backend's last good answer to ``/models``."""

    fetched_at: float
    models: tuple[ModelInfo, ...]
    entries: Mapping[str, Mapping[str, Any]]


def _merge(
    listings: list[tuple[BackendClient, _Listing]], thinking: frozenset[str] = frozenset()
) -> Snapshot:
    """One snapshot of every backend's list; the ids in ``thinking`` (seen reasoning) gain ``thinking``."""
    models: list[ModelInfo] = []
    by_id: dict[str, ModelInfo] = {}
    by_key: dict[str, ModelInfo] = {}
    entries: dict[str, Mapping[str, Any]] = {}
    servers: dict[str, tuple[BackendClient, ...]] = {}
    for client, listing in listings:
        for listed in listing.models:
            info = listed.with_capability("thinking") if listed.id in thinking else listed
            servers[info.id] = (*servers.get(info.id, ()), client)
            if info.id in by_id:
                continue  # the first backend's description of a shared model stands for all
            models.append(info)
            by_id[info.id] = info
            by_key.setdefault(lookup_key(info.id), info)
            entries[info.id] = listing.entries.get(info.id, {})
    fetched_at = min((listing.fetched_at for _, listing in listings), default=0.0)
    return Snapshot(fetched_at, tuple(models), by_id, by_key, entries, servers)


def _preferred(replicas: tuple[BackendClient, ...]) -> tuple[BackendClient, ...]:
    """Healthy backends first (breaker closed or due a probe), then the least busy."""
    return tuple(
        sorted(replicas, key=lambda client: (client.breaker.seconds_until_retry() > 0, client.limit.active))
    )


class ModelCatalog:
    def __init__(
        self,
        backends: Sequence[BackendClient],
        clock: IReactorTime,
        *,
        model_map: Mapping[str, str],
        overrides: Mapping[str, ModelOverride],
        ttl: float,
        fetch_timeout: float = 10.0,
    ) -> None:
        self.backends = tuple(backends)
        self._clock = clock
        self._overrides = overrides
        self._ttl = ttl
        # One backend's whole /models exchange, headers and body: a refresh that stalls ends here and
        # keeps that backend's previous list, so nothing waits on it for longer.
        self._fetch_timeout = fetch_timeout
        self._listings: dict[BackendClient, _Listing] = {}
        self.errors: dict[BackendClient, str] = {}  # each backend's last /models failure, for /ready
        self._snapshot: Snapshot | None = None
        self._refreshing: Deferred[Snapshot] | None = None
        self._waiters: list[Deferred[Snapshot]] = []
        self.model_map: Mapping[str, str] = {}
        self._aliases: dict[str, str] = {}
        self.set_model_map(model_map)
        # Backend ids seen answering with reasoning (note_reasoning), and backends without /props.
        self._reasoning: set[str] = set()
        self._without_props: set[BackendClient] = set()

    def set_model_map(self, model_map: Mapping[str, str]) -> None:
        """Swap in a new alias table atomically (requests in flight keep the backend id they resolved)."""
        self.model_map = dict(model_map)
        self._aliases = {lookup_key(alias): target for alias, target in model_map.items()}

    def model_count(self, client: BackendClient) -> int | None:
        """How many models a backend listed in its last good answer (None: it never answered)."""
        listing = self._listings.get(client)
        return None if listing is None else len(listing.models)

    def knows(self, model_id: str) -> bool:
        """Whether a backend listed this id in the last fetch (bounds the metrics' model label)."""
        return self._snapshot is not None and model_id in self._snapshot.by_id

    def override_for(self, model_id: str) -> ModelOverride | None:
        """Config overrides for an id: exact entries win over glob patterns, later patterns over earlier."""
        found: ModelOverride | None = None
        for pattern, override in self._overrides.items():
            if pattern != model_id and fnmatch.fnmatchcase(model_id, pattern):
                found = override if found is None else override.merged_over(found)
        exact = self._overrides.get(model_id)
        if exact is not None:
            found = exact if found is None else exact.merged_over(found)
        return found

    def note_reasoning(self, model_id: str) -> None:
        """A reply of this backend model carried reasoning: it is ``thinking``-capable from now on (an
        override that lists its capabilities still has the last word)."""
        if model_id in self._reasoning:
            return
        self._reasoning.add(model_id)
        if self._snapshot is not None:
            self._snapshot = self._merged()

    def _merged(self) -> Snapshot:
        answered = [(client, self._listings[client]) for client in self.backends if client in self._listings]
        return _merge(answered, frozenset(self._reasoning))

    async def snapshot(self, *, max_age: float | None = None) -> Snapshot:
        """The cached lists if younger than ``max_age`` (default: the TTL), else fresh ones.

        Backends are asked together; one that fails keeps its last good list (its models stay routable
        while its breaker decides), and only when no backend has ever answered does the failure show.
        """
        limit = self._ttl if max_age is None else max_age
        current = self._snapshot
        if current is not None and self._clock.seconds() - current.fetched_at < limit:
            return current
        waiter: Deferred[Snapshot] = Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        if self._refreshing is None:
            # The refresh belongs to no one request: a client that leaves cancels only its own wait
            # (its waiter's canceller), never the fetch the others are waiting on.  It may also end at
            # once (a breaker that is open fails it before any I/O).
            refreshing = ensureDeferred(self._refresh(limit))
            if not refreshing.called:
                self._refreshing = refreshing
            refreshing.addBoth(self._refreshed)
        return await waiter

    def _refreshed(self, outcome: Snapshot | Failure) -> None:
        self._refreshing = None
        waiters, self._waiters = self._waiters, []
        if isinstance(outcome, Failure):
            for waiter in waiters:
                waiter.errback(outcome)
            return
        self._snapshot = outcome
        for waiter in waiters:
            waiter.callback(outcome)

    async def _refresh(self, limit: float) -> Snapshot:
        now = self._clock.seconds()
        stale = [
            client
            for client in self.backends
            if client not in self._listings or now - self._listings[client].fetched_at >= limit
        ]
        try:
            outcomes = await gatherResults(
                [ensureDeferred(self._fetch(client)) for client in stale], consumeErrors=True
            )
        except FirstError as error:  # only cancellation gets here: _fetch returns backend failures
            error.subFailure.raiseException()
        first_error: BaseException | None = None
        for client, outcome in zip(stale, outcomes, strict=True):
            if isinstance(outcome, _Listing):
                self._listings[client] = outcome
                self.errors.pop(client, None)
            else:
                self.errors[client] = getattr(outcome, "message", str(outcome))
                first_error = first_error or outcome
        if not any(client in self._listings for client in self.backends) and first_error is not None:
            raise first_error
        return self._merged()

    async def _fetch(self, client: BackendClient) -> _Listing | BaseException:
        fetching = ensureDeferred(client.get_json("models")).addTimeout(self._fetch_timeout, self._clock)
        try:
            body = await fetching
        except (BackendError, Overloaded) as error:
            return error
        except defer.TimeoutError:
            return BackendTimeout(f"the backend's /models took longer than {self._fetch_timeout:g} seconds")
        entries: Any = body.get("data") if isinstance(body, dict) else body
        if not isinstance(entries, list):
            return BackendError("backend /models reply has no model list")
        served = [
            entry
            for entry in entries
            if isinstance(entry, dict) and isinstance(entry.get("id"), str) and client.serves(entry["id"])
        ]
        facts: list[BackendFacts | None] = [None] * len(served)
        if client.dialect is Dialect.LLAMACPP:
            asked = [ensureDeferred(self._props(client, entry)) for entry in served]
            try:
                facts = await gatherResults(asked, consumeErrors=True)
            except FirstError as error:  # only cancellation gets here: _props answers failures with None
                error.subFailure.raiseException()
        models = []
        raw: dict[str, Mapping[str, Any]] = {}
        for entry, found in zip(served, facts, strict=True):
            info = model_info(entry, self.override_for(entry["id"]), found)
            if info is not None:
                models.append(info)
                raw.setdefault(info.id, entry)
        return _Listing(self._clock.seconds(), tuple(models), raw)

    async def _props(self, client: BackendClient, entry: Mapping[str, Any]) -> BackendFacts | None:
        """What llama.cpp's ``/props`` says of one loaded model; None when it says nothing (module
        docstring: it never holds up or fails the listing)."""
        status = entry.get("status")
        state = status.get("value") if isinstance(status, Mapping) else status
        if client in self._without_props or state not in (None, "loaded"):
            return None

        async def ask() -> Any:
            path = "/props?model=" + quote(str(entry["id"]), safe="")
            return await client.json_body(await client.request("GET", path, retry=False))

        try:
            props = await Deferred.fromCoroutine(ask()).addTimeout(PROPS_TIMEOUT, self._clock)
        except BackendRejected as error:
            if error.backend_status == 404:
                self._without_props.add(client)
            return None
        except (BackendError, Overloaded, defer.TimeoutError):
            return None
        return props_facts(props) if isinstance(props, Mapping) else None

    def _find(self, snapshot: Snapshot, name: str) -> ModelInfo | None:
        key = lookup_key(name)
        target = self._aliases.get(key)
        if target is not None:
            return snapshot.by_id.get(target) or snapshot.by_key.get(lookup_key(target))
        return snapshot.by_id.get(name) or snapshot.by_key.get(key)

    async def resolve(self, name: str, *, request_id: str | None = None) -> Resolved:
        """The backend model for a client's name, or ModelNotFound (404 with Ollama's wording)."""
        if not name:
            raise ModelNotFound(name)
        snapshot = await self.snapshot()
        info = self._find(snapshot, name)
        if info is None and self._clock.seconds() - snapshot.fetched_at >= MISS_REFRESH_INTERVAL:
            snapshot = await self.snapshot(max_age=MISS_REFRESH_INTERVAL)
            info = self._find(snapshot, name)
        if info is None:
            raise ModelNotFound(name)
        replicas = _preferred(snapshot.servers.get(info.id, self.backends[:1]))
        return Resolved(name, info, replicas[0], replicas)

    async def listing(self) -> list[tuple[str, ModelInfo]]:
        """Every backend model under its listed name, then every alias that points at one."""
        return self.listed(await self.snapshot())

    def listed(self, snapshot: Snapshot) -> list[tuple[str, ModelInfo]]:
        """``listing`` for a snapshot in hand."""
        listed = [(listed_name(info.id), info) for info in snapshot.models]
        for alias, target in self.model_map.items():
            info = snapshot.by_id.get(target) or snapshot.by_key.get(lookup_key(target))
            if info is not None:
                listed.append((listed_name(alias), info))
        return listed


def keep_alive_seconds(value: str | float | None) -> float:
    """Seconds a model stays listed in ``/api/ps``: Ollama's rules (0 unloads, negative is forever).

    Always a finite number of at most ``FOREVER_SECONDS``, whatever the client sent (``1e300``, a
    400-digit integer), so that every later reader (``/api/ps`` dates) can use it.  Raises ValueError
    (Go's wording) for a string that is not a duration, and for a number that is not finite.
    """
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, str):
        seconds = parse_go_duration(value)
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an integer too large for a float: a very long time
            seconds = FOREVER_SECONDS
        if not math.isfinite(seconds):
            raise ValueError("keep_alive must be a finite number of seconds")
    if seconds < 0:
        return FOREVER_SECONDS
    return min(seconds, FOREVER_SECONDS)


class RecentModels:
    """Models this daemon served recently: ``/api/ps`` reports them as Ollama reports loaded ones."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._expiry: dict[str, tuple[float, Resolved]] = {}

    def touch(self, model: Resolved, keep_alive_for: float) -> None:
        key = lookup_key(model.name)
        if keep_alive_for <= 0:
            self._expiry.pop(key, None)
            return
        self._expiry[key] = (self._clock.seconds() + keep_alive_for, model)

    def current(self) -> list[tuple[float, Resolved]]:
        """Unexpired entries, longest remaining first (Ollama's order)."""
        now = self._clock.seconds()
        for key in [k for k, (until, _) in self._expiry.items() if until <= now]:
            del self._expiry[key]
        return sorted(self._expiry.values(), key=lambda item: item[0], reverse=True)


def local_offset(wall: float) -> int:
    """The local UTC offset at ``wall`` in seconds, for Ollama's local-time ``modified_at``/``expires_at``."""
    return time.localtime(wall).tm_gmtoff

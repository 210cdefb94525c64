"""The models the backend serves, under the names Ollama clients use for them.

The backend's ``/models`` list is fetched on demand and cached for ``models_ttl`` seconds; concurrent
callers share one fetch.  A name that is not found triggers one early refresh, so a model loaded on the
backend a moment ago is found without waiting for the cache to expire.

Name rules (the same on every endpoint): a model-map alias first, then the backend id exactly, then
case-insensitively; ``NAME`` and ``NAME:latest`` are the same model; ids that contain ``:`` themselves
(OpenRouter's ``...:free``) match exactly before any tag is stripped.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ollama_proxy.backend import BackendClient
from ollama_proxy.errors import BackendError, ModelNotFound
from ollama_proxy.translate.models import ModelInfo, ModelOverride, listed_name, lookup_key, model_info
from ollama_proxy.translate.timestamps import parse_go_duration

log = Logger(namespace="ollama_proxy.catalog")

# A miss refreshes the list early, but not more often than this, so a client asking for a model that
# does not exist cannot turn every request into a backend /models call.
MISS_REFRESH_INTERVAL = 1.0
DEFAULT_KEEP_ALIVE = 300.0
# Ollama's "forever" (a negative keep_alive) shows as a date far in the future.
FOREVER_SECONDS = 100 * 365 * 24 * 3600.0


@attrs.frozen
class Resolved:
    """A client's model name, the backend model it stands for, and the backend client that serves it.

    Handlers call ``resolved.client``, never a global backend, so routing lives in one place (here).
    """

    name: str  # as the client sent it (echoed in replies)
    info: ModelInfo
    client: BackendClient = attrs.field(eq=False, repr=False)

    @property
    def backend_id(self) -> str:
        return self.info.id


@attrs.frozen
class Snapshot:
    """One fetch of the backend's list, with lookup tables built once per fetch rather than per request."""

    fetched_at: float
    models: tuple[ModelInfo, ...]
    by_id: Mapping[str, ModelInfo]
    by_key: Mapping[str, ModelInfo]
    # The backend's own entries by id, as it sent them (``/v1/models/{alias}`` answers with its target's).
    entries: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)


def _snapshot(
    fetched_at: float, models: tuple[ModelInfo, ...], entries: Mapping[str, Mapping[str, Any]]
) -> Snapshot:
    by_key: dict[str, ModelInfo] = {}
    for info in models:
        by_key.setdefault(lookup_key(info.id), info)
    return Snapshot(fetched_at, models, {m.id: m for m in models}, by_key, entries)


class ModelCatalog:
    def __init__(
        self,
        backend: BackendClient,
        clock: IReactorTime,
        *,
        model_map: Mapping[str, str],
        overrides: Mapping[str, ModelOverride],
        ttl: float,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._overrides = overrides
        self._ttl = ttl
        self._snapshot: Snapshot | None = None
        self._pending: list[Deferred[Snapshot]] | None = None
        self.model_map: Mapping[str, str] = {}
        self._aliases: dict[str, str] = {}
        self.set_model_map(model_map)

    def set_model_map(self, model_map: Mapping[str, str]) -> None:
        """Swap in a new alias table atomically (requests in flight keep the backend id they resolved)."""
        self.model_map = dict(model_map)
        self._aliases = {lookup_key(alias): target for alias, target in model_map.items()}

    def knows(self, model_id: str) -> bool:
        """Whether the backend listed this id in the last fetch (bounds the metrics' model label)."""
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

    async def snapshot(self, *, max_age: float | None = None) -> Snapshot:
        """The cached list if younger than ``max_age`` (default: the TTL), else a fresh fetch."""
        limit = self._ttl if max_age is None else max_age
        current = self._snapshot
        if current is not None and self._clock.seconds() - current.fetched_at < limit:
            return current
        if self._pending is not None:
            waiter: Deferred[Snapshot] = Deferred()
            self._pending.append(waiter)
            return await waiter
        self._pending = []
        try:
            fresh = await self._fetch()
        except BaseException as exc:
            waiters, self._pending = self._pending, None
            for waiter in waiters:
                waiter.errback(exc)
            raise
        waiters, self._pending = self._pending, None
        self._snapshot = fresh
        for waiter in waiters:
            waiter.callback(fresh)
        return fresh

    async def _fetch(self) -> Snapshot:
        body = await self._backend.get_json("models")
        entries: Any = body.get("data") if isinstance(body, dict) else body
        if not isinstance(entries, list):
            raise BackendError("backend /models reply has no model list")
        models = []
        raw: dict[str, Mapping[str, Any]] = {}
        for entry in entries:
            if isinstance(entry, dict):
                entry_id = entry.get("id")
                override = self.override_for(entry_id) if isinstance(entry_id, str) else None
                info = model_info(entry, override)
                if info is not None:
                    models.append(info)
                    raw.setdefault(info.id, entry)
        return _snapshot(self._clock.seconds(), tuple(models), raw)

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
            info = self._find(await self.snapshot(max_age=MISS_REFRESH_INTERVAL), name)
        if info is None:
            raise ModelNotFound(name)
        return Resolved(name, info, self._backend)

    async def listing(self) -> list[tuple[str, ModelInfo]]:
        """Every backend model under its listed name, then every alias that points at one."""
        snapshot = await self.snapshot()
        listed = [(listed_name(info.id), info) for info in snapshot.models]
        for alias, target in self.model_map.items():
            info = snapshot.by_id.get(target) or snapshot.by_key.get(lookup_key(target))
            if info is not None:
                listed.append((listed_name(alias), info))
        return listed


def keep_alive_seconds(value: str | float | None) -> float:
    """Seconds a model stays listed in ``/api/ps``: Ollama's rules (0 unloads, negative is forever).

    Raises ValueError (Go's wording) for a string that is not a duration.
    """
    if value is None:
        return DEFAULT_KEEP_ALIVE
    seconds = parse_go_duration(value) if isinstance(value, str) else float(value)
    return FOREVER_SECONDS if seconds < 0 else seconds


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

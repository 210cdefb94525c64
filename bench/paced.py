"""The realistic stream scenario's pure pieces: event stamps, HTTP/1.1 de-chunking, per-event latency
statistics, and the figures the report shows.

The paced backend (``bench/paced_backend.py``) writes each event's send time, ``time.monotonic()``, into
the event's own text (``"content": "t=12345.678901 "``): the only part of an event that survives the
Ollama translation.  The client (``bench/paced_client.py``) finds the stamps in the lines it receives and
subtracts them from its own ``time.monotonic()`` at the read.  Both processes run on this machine, and
CLOCK_MONOTONIC is one clock for every process on Linux.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

MODEL = "bench-paced"
# The same backend, three events a stream: each proxy's warm-up and reply check before the timed run.
SHORT_MODEL = "bench-paced-short"
SHORT_EVENTS = 3
SATURATED_CORES = 0.9
# Above this many cores for the paced backend and the client together, their shared core was busy enough
# for its own queueing to show in the latencies.
LOAD_BUSY_CORES = 0.8
# A send time as the backend writes it, and a stream's end as a proxy (NDJSON) or the backend (SSE) marks it.
STAMPS = re.compile(rb"t=([0-9]+\.[0-9]+)")
DONE = re.compile(rb'"done": ?true|\[DONE\]')


def stamp_text(now: float) -> str:
    """The content of one paced event: its send time."""
    return f"t={now:.6f} "


def stamps(data: bytes) -> list[float]:
    """Every send time stamped in some received lines (one a line, unless a proxy merged events)."""
    return [float(found) for found in STAMPS.findall(data)]


class Dechunker:
    """Incremental HTTP/1.1 ``Transfer-Encoding: chunked`` decoding: bytes in, body bytes out."""

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0  # body bytes still to come in the current chunk
        self._crlf = False  # the CRLF after a chunk's data is still to come
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer + data if self._buffer else data
        out: list[bytes] = []
        while buffer and not self.finished:
            if self._remaining:
                piece = buffer[: self._remaining]
                out.append(piece)
                self._remaining -= len(piece)
                buffer = buffer[len(piece) :]
                if not self._remaining:
                    self._crlf = True
                continue
            if self._crlf:
                if len(buffer) < 2:
                    break
                buffer = buffer[2:]
                self._crlf = False
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            size = int(buffer[:end].split(b";", 1)[0].strip() or b"0", 16)
            buffer = buffer[end + 2 :]
            if size == 0:
                self.finished = True
            self._remaining = size
        self._buffer = buffer
        return b"".join(out)


def parse_specs(specs: Iterable[str] | None, default_rate: float = 50.0) -> list[tuple[int, float]]:
    """``["100x50", "500"]`` as ``[(100, 50.0), (500, 50.0)]``: concurrent streams and events a second each.
    ``0`` (or nothing) means no run."""
    out = []
    for spec in specs or []:
        streams, _, rate = spec.lower().partition("x")
        count = int(streams)
        per_second = float(rate) if rate else default_rate
        if count < 0 or per_second <= 0:
            raise ValueError(f"not STREAMSxRATE: {spec!r}")
        if count:
            out.append((count, per_second))
    return out


# -- statistics --------------------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank percentile of already sorted values (0.0 for none)."""
    if not ordered:
        return 0.0
    rank = math.ceil(q / 100 * len(ordered))
    return float(ordered[min(len(ordered) - 1, max(0, rank - 1))])


def latency_summary(seconds: Iterable[float]) -> dict[str, Any]:
    """p50 / p90 / p99 / p99.9 / max of per-event latencies given in seconds, in milliseconds."""
    ordered = sorted(seconds)
    out: dict[str, Any] = {"count": len(ordered)}
    for name, q in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99), ("p999_ms", 99.9)):
        out[name] = round(percentile(ordered, q) * 1000, 3)
    out["max_ms"] = round(ordered[-1] * 1000, 3) if ordered else 0.0
    out["min_ms"] = round(ordered[0] * 1000, 3) if ordered else 0.0
    return out


def steady_window(opened: Sequence[float], finished: Sequence[float], margin: float) -> tuple[float, float]:
    """The stretch of time during which every stream was open: from the last stream's first event (plus
    ``margin``) to the first stream's end (minus a fifth of ``margin``).  Empty (end <= start) when the
    streams never were all open at once."""
    if not opened or not finished:
        return 0.0, 0.0
    return max(opened) + margin, min(finished) - margin / 5


def summarise(raw: dict[str, Any], streams: int, margin: float) -> dict[str, Any]:
    """One client run's findings from its raw record: per stream ``(opened, done, events, first_at,
    ended_at, error)``, CPU and RSS samples ``(t, proxy_cpu_s, load_cpu_s, own_cpu_s, proxy_rss)`` taken
    every quarter second, and per event its arrival time and latency (``recv_at``, ``latency``).

    Only the steady window counts: events that arrived in it, and the CPU used between the first and last
    samples inside it."""
    records = raw["streams"]
    opened_at = [s["first_at"] for s in records if s["first_at"]]
    ended = [s["ended_at"] for s in records if s["done"]]
    errors: dict[str, int] = {}
    for record in records:
        if record["error"]:
            errors[record["error"]] = errors.get(record["error"], 0) + 1
    out: dict[str, Any] = {
        "streams": streams,
        "opened": sum(1 for s in records if s["opened"]),
        "completed": sum(1 for s in records if s["done"]),
        "events": len(raw["latency"]),
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        "seconds": raw.get("seconds"),
    }
    start, end = steady_window(opened_at, ended, margin)
    out["window"] = "all open"
    if len(opened_at) < streams or end - start < 0.5:
        # A proxy so far behind that its first stream ended before its last one began (or one that never
        # started some) still has a throughput: take the stretch from the 10th to the 90th percentile of
        # the arrivals, when it was surely busy.
        arrivals = sorted(raw["recv_at"])
        if len(arrivals) < 10:
            out["error"] = f"{len(arrivals)} events arrived"
            return out
        start, end = arrivals[len(arrivals) // 10], arrivals[len(arrivals) * 9 // 10]
        out["window"] = (
            f"10-90 % of the arrivals: the {streams} streams were never all open at once for 0.5 s "
            f"({len(opened_at)} got an event)"
        )
        if end - start < 0.5:
            out["error"] = f"{out['window']}, and those took only {end - start:.2f} s"
            return out
    inside = [lat for at, lat in zip(raw["recv_at"], raw["latency"], strict=True) if start <= at <= end]
    samples = [sample for sample in raw["samples"] if start <= sample[0] <= end]
    out["window_s"] = round(end - start, 3)
    out["events_in_window"] = len(inside)
    out["latency"] = latency_summary(inside)
    if len(samples) >= 2:
        first, last = samples[0], samples[-1]
        wall = last[0] - first[0]
        out["proxy_cores"] = round((last[1] - first[1]) / wall, 4)
        out["load_cores"] = round((last[2] - first[2]) / wall, 4)
        out["client_cores"] = round((last[3] - first[3]) / wall, 4)
    rss = sorted(sample[4] for sample in samples if sample[4])
    if rss:
        out["rss_steady_bytes"] = rss[len(rss) // 2]
        out["rss_max_bytes"] = rss[-1]
    return out


def figures(run: dict[str, Any]) -> dict[str, Any]:
    """The report's numbers from one client run: relayed events a second, the proxy's CPU cores used and
    those per 1,000 events a second, and memory per open stream."""
    window = run.get("window_s") or 0.0
    if window <= 0 or not run.get("events_in_window"):
        return {}
    rate = run["events_in_window"] / window
    out: dict[str, Any] = {"events_per_s": round(rate, 1)}
    cores = run.get("proxy_cores")
    if cores is not None:
        out["cores"] = round(cores, 4)
        out["cores_per_1k_events"] = round(cores / (rate / 1000), 4) if rate else None
    offered = run.get("offered_per_s")
    if offered:
        # A proxy pinned to one core that keeps 90 % of it busy, or relays less than it is offered, is
        # saturated: its latency is then queueing, and its CPU per event that of a full core.
        out["saturated"] = bool((cores is not None and cores >= SATURATED_CORES) or rate < 0.97 * offered)
    if run.get("load_cores") is not None and run.get("client_cores") is not None:
        out["load_busy"] = run["load_cores"] + run["client_cores"] > LOAD_BUSY_CORES
    idle, steady, streams = run.get("rss_idle_bytes"), run.get("rss_steady_bytes"), run.get("streams")
    if idle and steady and streams:
        out["rss_idle_mb"] = round(idle / 2**20, 1)
        out["rss_steady_mb"] = round(steady / 2**20, 1)
        out["rss_per_stream_kb"] = round((steady - idle) / streams / 1024, 1)
    return out

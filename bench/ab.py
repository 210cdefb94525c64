"""A/B: the same scenarios through two versions of the daemon, taking turns, so that both see the same
machine.

This machine's speed drifts by tens of percent from one minute to the next, more than most single
changes save, so two ``make bench`` runs cannot tell a 5 % gain from the drift.  Here both daemons run
side by side in front of one nginx, pinned to the same CPU, and every round measures each scenario
through both, in turn (the order alternating between rounds); the medians of their CPU time per request
are compared.  The other version is an older commit's worktree:

    git worktree add --detach ../before HEAD~1
    .venv/bin/python -m bench.ab --a ../before --scenarios tags chat-stream --rounds 8

With ``--a . --b .`` it compares one version's scenarios with each other (the stream scenarios' ratios).
``--paced 100x50`` compares the realistic streams instead (``bench/paced_backend.py``, the C client when a
compiler is here): the daemon's cores per 1,000 relayed events a second, and the events' added latency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench import paced
from bench.paced_client import build_c_client, run_client
from bench.procs import (
    REPO,
    Daemon,
    Processes,
    free_port,
    port_open,
    split_cpus,
    start_canned_nginx,
    wait_for,
)
from bench.procstat import cpu_seconds
from bench.run import ensure_tools, paced_check
from bench.scenarios import SCENARIOS
from bench.wrk import run_wrk, write_script


def _daemons(
    procs: Processes, trees: dict[str, str], backend: str, cpu: int | None, extra: list[str] | None = None
) -> dict[str, Daemon]:
    """One daemon per version, each importing its own checkout's code, all on ``cpu``."""
    return {
        name: Daemon(procs, name, backend, cpu, extra, env={"PYTHONPATH": str(Path(tree).resolve())})
        for name, tree in trees.items()
    }


def _turns(daemons: dict[str, Daemon], round_number: int) -> list[str]:
    """The versions in this round's order: the other way round every second round."""
    return list(daemons) if round_number % 2 == 0 else list(reversed(daemons))


def _row(label: str, width: int, a: list[float], b: list[float]) -> str:
    """One measure's medians for both versions, their ratio, and every round's pair."""
    a_median, b_median = statistics.median(a), statistics.median(b)
    rounds = "  ".join(f"{x:.3f}/{y:.3f}" for x, y in zip(a, b, strict=True))
    ratio = b_median / a_median
    return f"{label:{width}s} A {a_median:.3f}  B {b_median:.3f}  B/A {ratio:.3f}   rounds A/B: {rounds}"


def compare(
    trees: dict[str, str], keys: list[str], rounds: int, seconds: int, connections: int
) -> dict[tuple[str, str], list[float]]:
    """CPU ms per request of each (scenario, version), one value per round."""
    nginx_bin, wrk = ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="olp-ab-"))
    procs = Processes(work)
    load_cpu, daemon_cpu = split_cpus()
    scenarios = {s.key: s for s in SCENARIOS}
    results: dict[tuple[str, str], list[float]] = {(key, name): [] for key in keys for name in trees}
    try:
        port, _ = start_canned_nginx(procs, nginx_bin, load_cpu)
        daemons = _daemons(procs, trees, f"http://127.0.0.1:{port}/v1", daemon_cpu)
        for round_number in range(rounds):
            for key in keys:
                scenario = scenarios[key]
                script = write_script(work, key, scenario.daemon)
                for name in _turns(daemons, round_number):
                    daemon = daemons[name]
                    url = f"http://127.0.0.1:{daemon.port}{scenario.daemon.path}"
                    if round_number == 0:  # warm-up: the pool, the model list, the first of everything
                        run_wrk(wrk, script, url, connections=connections, duration=1, cpu=load_cpu)
                    before = cpu_seconds(daemon.pid)
                    result = run_wrk(
                        wrk, script, url, connections=connections, duration=seconds, cpu=load_cpu
                    )
                    used = cpu_seconds(daemon.pid) - before
                    if result.failed_requests or not result.requests:
                        raise SystemExit(f"{key} through {name}: {result.errors} {result.error_sample}")
                    results[(key, name)].append(used / result.requests * 1000)
    finally:
        procs.stop_all()
    return results


def compare_paced(
    trees: dict[str, str], streams: int, rate: float, rounds: int, seconds: float
) -> dict[str, list[dict[str, Any]]]:
    """Each version's figures (``bench.paced.figures`` and the latencies) for ``streams`` paced streams,
    one record per round."""
    work = Path(tempfile.mkdtemp(prefix="olp-ab-paced-"))
    procs = Processes(work)
    load_cpu, daemon_cpu = split_cpus()
    binary, _ = build_c_client(work)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    try:
        port = free_port()
        events = max(2, round(rate * seconds))
        command = [sys.executable, "-m", "bench.paced_backend", "--port", str(port)]
        command += [
            "--rate",
            str(rate),
            "--events",
            str(events),
            "--lifetime",
            str(rounds * 4 * (seconds + 20)),
        ]
        backend = procs.spawn("paced-backend", command, load_cpu, work / "paced-backend.log")
        wait_for(partial(port_open, port), 15, "the paced backend", backend)
        limit = ["--max-concurrent", str(streams + 16)]
        daemons = _daemons(procs, trees, f"http://127.0.0.1:{port}/v1", daemon_cpu, limit)
        for name, daemon in daemons.items():
            for _ in range(2):
                problem = paced_check(daemon.port, "/api/chat")
                if problem:
                    raise SystemExit(f"paced streams through {name}: {problem}")
        for round_number in range(rounds):
            for name in _turns(daemons, round_number):
                daemon = daemons[name]
                time.sleep(0.5)
                run: dict[str, Any] = {"streams": streams, "offered_per_s": streams * rate}
                run.update(
                    run_client(
                        port=daemon.port,
                        path="/api/chat",
                        streams=streams,
                        ramp=1.0,
                        timeout=seconds + 60,
                        pid=daemon.pid,
                        load_pids=[backend.pid],
                        cpu=load_cpu,
                        binary=binary,
                        workdir=work,
                    )
                )
                if "error" in run or run.get("errors"):
                    raise SystemExit(f"paced streams through {name}: {run.get('error') or run['errors']}")
                run.update(paced.figures(run))
                results[name].append(run)
    finally:
        procs.stop_all()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="the other version's checkout (a worktree)")
    parser.add_argument("--b", default=str(REPO), help="the version against it (this checkout)")
    parser.add_argument("--scenarios", nargs="+", default=["tags"], choices=[s.key for s in SCENARIOS])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=3, help="per wrk cell")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--paced", help="STREAMSxRATE: the realistic streams instead of the scenarios")
    parser.add_argument("--paced-seconds", type=float, default=6.0, help="each stream's length (6)")
    args = parser.parse_args()
    if args.paced:
        [(streams, rate)] = paced.parse_specs([args.paced])
        paced_runs = compare_paced({"A": args.a, "B": args.b}, streams, rate, args.rounds, args.paced_seconds)
        print(f"{streams} paced streams x {rate:g} events/s, median of {args.rounds} rounds")
        for label, pick in (
            ("cores per 1k events/s", lambda run: run["cores_per_1k_events"]),
            ("latency p50 ms", lambda run: run["latency"]["p50_ms"]),
            ("latency p99 ms", lambda run: run["latency"]["p99_ms"]),
        ):
            print(
                _row(
                    label, 22, [pick(run) for run in paced_runs["A"]], [pick(run) for run in paced_runs["B"]]
                )
            )
        return
    results = compare({"A": args.a, "B": args.b}, args.scenarios, args.rounds, args.seconds, args.connections)
    print(f"CPU ms per request at c={args.connections}, median of {args.rounds} rounds of {args.seconds} s")
    for key in args.scenarios:
        print(_row(key, 18, results[(key, "A")], results[(key, "B")]))


if __name__ == "__main__":
    main()

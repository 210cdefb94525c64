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
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from bench.procs import REPO, Daemon, Processes, start_canned_nginx
from bench.procstat import cpu_seconds
from bench.run import ensure_tools
from bench.scenarios import SCENARIOS
from bench.wrk import run_wrk, write_script


def compare(
    trees: dict[str, str], keys: list[str], rounds: int, seconds: int, connections: int
) -> dict[tuple[str, str], list[float]]:
    """CPU ms per request of each (scenario, version), one value per round."""
    nginx_bin, wrk = ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="olp-ab-"))
    procs = Processes(work)
    cpus = sorted(os.sched_getaffinity(0))
    load_cpu, daemon_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (None, None)
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})
    scenarios = {s.key: s for s in SCENARIOS}
    results: dict[tuple[str, str], list[float]] = {(key, name): [] for key in keys for name in trees}
    try:
        port, _ = start_canned_nginx(procs, nginx_bin, load_cpu)
        backend = f"http://127.0.0.1:{port}/v1"
        daemons = {
            name: Daemon(procs, name, backend, daemon_cpu, env={"PYTHONPATH": str(Path(tree).resolve())})
            for name, tree in trees.items()
        }
        for round_number in range(rounds):
            for key in keys:
                scenario = scenarios[key]
                script = write_script(work, key, scenario.daemon)
                order = list(daemons) if round_number % 2 == 0 else list(reversed(daemons))
                for name in order:
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="the other version's checkout (a worktree)")
    parser.add_argument("--b", default=str(REPO), help="the version against it (this checkout)")
    parser.add_argument("--scenarios", nargs="+", default=["tags"], choices=[s.key for s in SCENARIOS])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=3, help="per wrk cell")
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args()
    results = compare({"A": args.a, "B": args.b}, args.scenarios, args.rounds, args.seconds, args.connections)
    print(f"CPU ms per request at c={args.connections}, median of {args.rounds} rounds of {args.seconds} s")
    for key in args.scenarios:
        a, b = (statistics.median(results[(key, name)]) for name in ("A", "B"))
        pairs = zip(results[(key, "A")], results[(key, "B")], strict=True)
        rounds = "  ".join(f"{x:.3f}/{y:.3f}" for x, y in pairs)
        print(f"{key:18s} A {a:.3f}  B {b:.3f}  B/A {b / a:.3f}   rounds A/B: {rounds}")


if __name__ == "__main__":
    main()

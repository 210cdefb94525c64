"""Calls per request: one scenario's load through a daemon run under cProfile, every function's calls and
time divided by the requests served.

py-spy's samples (``make bench``) say where the time goes; this says how many calls each request makes
and what each costs when that needs proving, exactly: a call count does not drift with the machine's
speed.  cProfile slows calls down (pure Python loops most), so its percentages are not the daemon's, but
the calls per request are.

    .venv/bin/python -m bench.callprofile tags --top 40 > bench/results/callprofile-tags.txt
    .venv/bin/python -m bench.callprofile tags --tree ../before   # a worktree of an older commit
"""

from __future__ import annotations

import argparse
import pstats
import signal
import tempfile
from pathlib import Path

from bench.procs import VENV_BIN, Processes, free_port, port_open, split_cpus, start_canned_nginx, wait_for
from bench.run import ensure_tools
from bench.scenarios import SCENARIOS
from bench.wrk import run_wrk, write_script


def _where(func: tuple[str, int, str]) -> str:
    path, line, name = func
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("/lib"):
                path = path.split("/", 1)[1]
            break
    else:
        path = path.replace(str(Path(__file__).resolve().parent.parent) + "/", "")
    return f"{name} ({path}:{line})" if path != "~" else name


def profile(key: str, seconds: int, connections: int, top: int, tree: str | None = None) -> str:
    nginx_bin, wrk = ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="olp-callprofile-"))
    procs = Processes(work)
    load_cpu, daemon_cpu = split_cpus()
    try:
        port, _ = start_canned_nginx(procs, nginx_bin, load_cpu)
        daemon_port = free_port()
        stats = work / "daemon.prof"
        command = [
            str(VENV_BIN / "twistd"),
            "-n",
            "--pidfile=",
            f"--profile={stats}",
            "--profiler=cprofile",
            "--savestats",
            "ollamaproxy",
            "--backend",
            f"http://127.0.0.1:{port}/v1",
            "--listen",
            f"tcp:{daemon_port}:interface=127.0.0.1",
        ]
        env = {"PYTHONPATH": tree} if tree else None
        daemon = procs.spawn("daemon", command, daemon_cpu, work / "daemon.log", env=env)
        wait_for(lambda: port_open(daemon_port), 30, "daemon", daemon)
        scenario = {s.key: s for s in SCENARIOS}[key]
        script = write_script(work, key, scenario.daemon)
        url = f"http://127.0.0.1:{daemon_port}{scenario.daemon.path}"
        result = run_wrk(wrk, script, url, connections=connections, duration=seconds, cpu=load_cpu)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
    finally:
        procs.stop_all()
    requests = result.requests
    table = pstats.Stats(str(stats))
    rows = sorted(
        ((tt, nc, ct, func) for func, (_, nc, tt, ct, _) in table.stats.items()),  # type: ignore[attr-defined]
        reverse=True,
    )
    total = sum(row[0] for row in rows) or 1.0
    lines = [
        f"{scenario.label}, c={connections}: {requests} requests in {seconds} s under cProfile; "
        f"{table.total_calls / requests:.0f} Python calls per request",  # type: ignore[attr-defined]
        "",
        "  self %   calls/req   cum us/req  function (by self time)",
    ]
    for tt, calls, cumulative, func in rows[:top]:
        share, per_request, cumulative_us = tt / total * 100, calls / requests, cumulative / requests * 1e6
        lines.append(f"  {share:5.1f}%  {per_request:9.2f}  {cumulative_us:10.1f}  {_where(func)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.callprofile", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=[s.key for s in SCENARIOS])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--tree", help="the daemon's code from this checkout instead (an older commit's worktree)"
    )
    args = parser.parse_args()
    print(profile(args.scenario, args.seconds, args.connections, args.top, args.tree), end="")


if __name__ == "__main__":
    main()

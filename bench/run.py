"""``make bench``: the daemon against the backend's own speed, same run, same requests.

1. Installs nginx (with its njs module) and wrk from Debian's packages when they are missing.
2. Starts nginx on a loopback port with canned OpenAI replies (``bench/canned.py``).
3. Starts the daemon in front of it and checks every scenario's reply through it (and the canned replies
   themselves, with the ``openai`` SDK) before any timing: a fast error is not a result.
4. For each scenario and concurrency runs wrk straight at nginx, then through the daemon, and reads the
   daemon's CPU time and RSS from /proc.
5. Times the first chunk of each stream, opens many slow streams at once, and leaves one never read.
6. Prints the tables, saves raw JSON in ``bench/results/`` and refreshes ``docs/performance.md``.

Every server it starts listens on 127.0.0.1 only, and every load it sends is bounded in time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench import canned, paced, profile, report
from bench import peer as peer_module
from bench.paced_client import build_c_client, run_client
from bench.peer import SERVES as PEER_SERVES
from bench.peer import Peer
from bench.procs import (
    REPO,
    VENV_BIN,
    Daemon,
    Processes,
    clean_env,
    free_port,
    port_open,
    start_canned_nginx,
    supports_option,
    wait_for,
    which,
)
from bench.procstat import MB, OtherLoad, RSSSampler, cpu_seconds, hwm_bytes, rss_bytes
from bench.scenarios import (
    SCENARIOS,
    STREAM_OPTIONS,
    CheckFailed,
    Request,
    Scenario,
    essential,
    fetch,
    sdk_checks,
)
from bench.streams import first_chunk_latency, never_reads, slow_streams
from bench.wrk import run_wrk, write_script

RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "performance.md"
APT_PACKAGES = {"nginx": "nginx", "wrk": "wrk"}
# Above this many CPUs used by other processes during a cell, the machine was not quiet for that cell.
QUIET_CPUS = 0.15


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- setup -------------------------------------------------------------------------------------------------


def ensure_tools() -> tuple[str, str]:
    """nginx (with the njs module) and wrk, installed from Debian's packages if missing; gcc too where it
    can be (as root), for the realistic streams' C client."""
    missing = [pkg for tool, pkg in APT_PACKAGES.items() if which(tool) is None]
    if not canned.NJS_MODULE.exists():
        missing.append("libnginx-mod-http-js")
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        log(f"installing {' '.join(missing)} with apt-get")
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True,
            env=env,
        )
    if which("cc") is None and os.geteuid() == 0:
        # Only the C client of the realistic streams needs it; without it the Python client stands in.
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "gcc"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            check=False,
        )
    nginx, wrk = which("nginx"), which("wrk")
    if nginx is None or wrk is None or not canned.NJS_MODULE.exists():
        raise SystemExit("bench: nginx, its njs module or wrk is still missing after apt-get")
    return nginx, wrk


def wait_until_quiet(limit: float) -> None:
    """Wait (at most ``limit`` seconds) until other processes leave the CPUs alone for 3 seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        load = OtherLoad([])
        time.sleep(3.0)
        cpus = load.cpus()
        if cpus <= QUIET_CPUS:
            return
        log(f"waiting for a quiet machine: other processes keep {cpus:.2f} CPUs busy")
    log("the machine is still busy; measuring anyway (the report says so)")


def raise_fd_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _version(command: list[str], *, must_succeed: bool = False) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "?"
    if must_succeed and done.returncode != 0:
        return "?"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def machine_facts(nginx: str, wrk: str) -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        mem_kb = int(meminfo.readline().split()[1])
    code = _version(["git", "-C", str(REPO), "describe", "--always", "--dirty"], must_succeed=True)
    # Which ollama_proxy the daemons import (clean_env puts this checkout first on PYTHONPATH).
    imported = subprocess.run(
        [sys.executable, "-c", "import ollama_proxy; print(ollama_proxy.__file__)"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd="/",
        timeout=60,
        check=False,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(mem_kb / 1024 / 1024),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": metadata.version("twisted"),
        "nginx": _version([nginx, "-v"]).replace("nginx version: ", ""),
        "wrk": _version([wrk, "--version"]).split(" [")[0],
        "code": code,
        "daemon_code": str(Path(imported).parent) if imported else "?",
    }


# -- the run -----------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, nginx: str, wrk: str) -> None:
        self.args = args
        self.workdir = workdir
        self.nginx_bin = nginx
        self.wrk = wrk
        self.procs = Processes(workdir)
        cpus = sorted(os.sched_getaffinity(0))
        if args.workers > 1 and not args.no_pin:
            args.no_pin = True  # several workers share the CPUs with the load generator
            self_note = "CPU pinning is off with --workers: the workers and the load share the CPUs"
        else:
            self_note = ""
        if len(cpus) >= 2 and not args.no_pin:
            self.load_cpu: int | None = cpus[0]
            self.daemon_cpu: int | None = cpus[1]
            self.pinning = (
                f"daemon on CPU {cpus[1]}; wrk, nginx and the Python clients on CPU {cpus[0]} (taskset)"
            )
            os.sched_setaffinity(0, {cpus[0]})
        else:
            self.load_cpu = self.daemon_cpu = None
            self.pinning = ""
        self.daemon_extra: list[str] = list(args.daemon_arg or [])
        self.notes: list[str] = [self_note] if self_note else []
        self.nginx_pid = 0
        self.nginx_port = 0
        self.peer_binary: Path | None = None
        self.has_max_concurrent: bool | None = None
        self.all_cpus = set(cpus)
        if args.workers:
            if supports_option("--workers"):
                self.daemon_extra += ["--workers", str(args.workers)]
            else:
                self.notes.append(f"--workers {args.workers} skipped: the daemon has no --workers option")
                log(self.notes[-1])

    # -- backends ------------------------------------------------------------------------------------------

    def start_nginx(self) -> int:
        port, proc = start_canned_nginx(self.procs, self.nginx_bin, self.load_cpu)
        self.nginx_pid = proc.pid  # the master; its worker is a child, counted with it
        self.nginx_port = port
        log(f"nginx with canned replies on 127.0.0.1:{port}")
        return port

    def start_slow_backend(self) -> tuple[int, Any]:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "bench.slow_backend",
            "--port",
            str(port),
            "--interval",
            str(self.args.slow_interval),
            "--events",
            str(max(1, round(self.args.slow_seconds / self.args.slow_interval))),
            "--endless-seconds",
            str(self.args.never_read_seconds + 30),
            "--lifetime",
            str(self.args.slow_seconds + self.args.never_read_seconds + 300),
        ]
        proc = self.procs.spawn("slow-backend", command, self.load_cpu, self.workdir / "slow-backend.log")
        wait_for(lambda: port_open(port), 15, "slow backend", proc)
        return port, proc

    # -- checks --------------------------------------------------------------------------------------------

    def check(self, scenarios: list[Scenario], backend_port: int, daemon: Daemon) -> dict[str, list[str]]:
        """Every scenario's reply, direct and through the daemon, must be well formed, and the daemon must
        log no error while it answers."""
        failures: dict[str, list[str]] = {s.key: [] for s in scenarios}
        for scenario in scenarios:
            for target, port, request, check in (
                ("backend", backend_port, scenario.direct, scenario.direct_check),
                ("daemon", daemon.port, scenario.daemon, scenario.check),
            ):
                logged = daemon.log_size()
                try:
                    check(fetch(port, request, timeout=10))
                except (CheckFailed, OSError, http.client.HTTPException) as exc:
                    failures[scenario.key].append(f"{target}: {exc}")
                time.sleep(0.2)  # lets an error logged just after the reply reach the log
                failures[scenario.key].extend(f"daemon logged: {p}" for p in daemon.problems(logged)[:1])
        for key, problems in sdk_checks(backend_port, daemon.port).items():
            if key in failures:
                failures[key].extend(problems)
        for scenario in scenarios:
            problems = failures[scenario.key]
            log(f"check {scenario.label}: {'ok' if not problems else '; '.join(problems)}")
        return failures

    def check_peer(
        self, scenarios: list[Scenario], backend_port: int, peer: Peer
    ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """The peer's replies: failures of the essential check (not timed), and differences that the full
        checks and the SDKs find beyond it (timed, and reported)."""
        failures: dict[str, list[str]] = {s.key: [] for s in scenarios}
        differences: dict[str, list[str]] = {s.key: [] for s in scenarios}
        for scenario in scenarios:
            if scenario.key not in PEER_SERVES:
                failures[scenario.key].append("the peer does not serve this endpoint")
                continue
            logged = peer.log_size()
            try:
                reply = fetch(peer.port, scenario.daemon, timeout=10)
                essential(scenario.key)(reply)
            except (CheckFailed, OSError, http.client.HTTPException) as exc:
                failures[scenario.key].append(str(exc) or type(exc).__name__)
                continue
            try:
                scenario.check(reply)
            except CheckFailed as exc:
                differences[scenario.key].append(str(exc))
            time.sleep(0.2)
            differences[scenario.key].extend(f"peer logged: {p}" for p in peer.problems(logged)[:1])
        try:
            sdk = sdk_checks(backend_port, peer.port)
        except Exception as exc:  # the SDK checks only add to the differences
            sdk = {s.key: [f"SDK checks: {type(exc).__name__}: {exc}"] for s in scenarios}
        for key, problems in sdk.items():
            if (
                key in differences and not failures[key]
            ):  # a scenario not timed differs in nothing that counts
                differences[key].extend(p for p in problems if "direct" not in p)
        for scenario in scenarios:
            if failures[scenario.key]:
                log(f"peer check {scenario.label}: not timed: {'; '.join(failures[scenario.key])}")
            elif differences[scenario.key]:
                log(f"peer check {scenario.label}: timed; differs: {'; '.join(differences[scenario.key])}")
            else:
                log(f"peer check {scenario.label}: ok")
        return failures, differences

    # -- load ----------------------------------------------------------------------------------------------

    def wrk_cell(
        self,
        scenario: Scenario,
        target: str,
        port: int,
        c: int,
        pid: int | None,
        duration: int,
        *,
        pinned: bool = True,
    ) -> dict[str, Any]:
        request = scenario.direct if target == "direct" else scenario.daemon
        script = write_script(
            self.workdir, f"{scenario.key}-{target}", request, tally_statuses=target != "direct"
        )
        url = f"http://127.0.0.1:{port}{request.path}"
        cpu_before = cpu_seconds(pid) if pid else 0.0
        other = OtherLoad([p for p in (pid, self.nginx_pid) if p])
        load_cpu = self.load_cpu if pinned else None
        result = run_wrk(self.wrk, script, url, connections=c, duration=duration, cpu=load_cpu)
        cpu_used = cpu_seconds(pid) - cpu_before if pid else 0.0
        cell: dict[str, Any] = {"scenario": scenario.key, "target": target, "c": c, **result.as_dict()}
        cell["other_cpus"] = round(other.cpus(), 2)
        if pid:
            cell["cpu_s"] = round(cpu_used, 3)
            cell["cpu_ms_per_req"] = round(cpu_used * 1000 / result.requests, 4) if result.requests else None
        failed = {k: v for k, v in result.errors.items() if v}
        cell["ok"] = result.requests > 0 and not failed
        if not cell["ok"]:
            cell["why"] = ", ".join(f"{v} {k} errors" for k, v in failed.items()) or "no requests completed"
            bad = {s: n for s, n in result.statuses.items() if not s.startswith("2")}
            if bad:
                cell["why"] += " (HTTP " + ", ".join(f"{s}: {n}" for s, n in sorted(bad.items())) + ")"
            if result.error_sample:
                cell["why"] += f": {result.error_sample[:120]}"
        return cell

    def load(
        self,
        scenarios: list[Scenario],
        failures: dict[str, list[str]],
        nginx: int,
        daemon: Daemon,
        peer: Peer | None = None,
        peer_failures: dict[str, list[str]] | None = None,
    ) -> list[dict[str, Any]]:
        """Per scenario and concurrency: the backend alone, the daemon, and the peer (if any), one right
        after the other so that a change in the machine's speed hits all three alike."""
        cells: list[dict[str, Any]] = []
        proxies: list[tuple[str, int, int, dict[str, list[str]]]] = [
            ("daemon", daemon.port, daemon.pid, failures)
        ]
        if peer is not None:
            proxies.append(("peer", peer.port, peer.pid, peer_failures or {}))
        for scenario in scenarios:
            if self.args.wait_quiet:
                wait_until_quiet(min(self.args.wait_quiet, 120.0))
            if self.args.warmup:
                for target, port, _, broken in proxies:
                    if not broken.get(scenario.key):
                        self.wrk_cell(scenario, target, port, 10, None, self.args.warmup)
            for c in self.args.concurrency:
                direct = self.wrk_cell(scenario, "direct", nginx, c, None, self.args.duration)
                cells.append(direct)
                said = [f"{scenario.label:30} c={c:<3} direct {direct['rps']:>9.0f} req/s"]
                busy = direct["other_cpus"]
                for target, port, pid, broken in proxies:
                    if broken.get(scenario.key):
                        cells.append(
                            {
                                "scenario": scenario.key,
                                "target": target,
                                "c": c,
                                "ok": False,
                                "why": "reply check failed, not timed",
                            }
                        )
                        said.append(f"{target}: not timed")
                        continue
                    cell = self.proxy_cell(scenario, target, port, pid, c)
                    if cell["ok"] and direct["ok"]:
                        cell["added_p50_ms"] = round(cell["p50_ms"] - direct["p50_ms"], 3)
                        cell["added_p99_ms"] = round(cell["p99_ms"] - direct["p99_ms"], 3)
                    cells.append(cell)
                    busy = max(busy, cell["other_cpus"])
                    said.append(
                        f"{target} {cell['rps']:>7.0f} req/s p50 {cell['p50_ms']:.2f} "
                        f"p99 {cell['p99_ms']:.2f} cpu {cell.get('cpu_ms_per_req') or 0:.3f} ms/req"
                        + ("" if cell["ok"] else f" FAILED: {cell['why']}")
                    )
                if busy > QUIET_CPUS:
                    said.append(f"(other processes busy: {busy:.2f} CPUs)")
                log(" | ".join(said))
        return cells

    def proxy_cell(self, scenario: Scenario, target: str, port: int, pid: int, c: int) -> dict[str, Any]:
        """One cell through a proxy; with --repeat N, N runs of it and the one with the median req/s
        (a cell fails if any run failed)."""
        runs = [
            self.wrk_cell(scenario, target, port, c, pid, self.args.duration) for _ in range(self.args.repeat)
        ]
        failed = [run for run in runs if not run["ok"]]
        chosen = failed[0] if failed else sorted(runs, key=lambda run: run["rps"])[len(runs) // 2]
        if len(runs) > 1:
            chosen["rps_runs"] = [run["rps"] for run in runs]
            chosen["cpu_ms_per_req_runs"] = [run.get("cpu_ms_per_req") for run in runs]
        return chosen

    def first_chunks(
        self,
        scenarios: list[Scenario],
        failures: dict[str, list[str]],
        nginx: int,
        daemon: Daemon,
        peer: Peer | None = None,
        peer_failures: dict[str, list[str]] | None = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for scenario in scenarios:
            if not scenario.stream:
                continue
            direct = first_chunk_latency(nginx, scenario.direct, self.args.first_chunk)
            if failures[scenario.key]:
                through = {"count": 0, "why": "reply check failed"}
            else:
                through = first_chunk_latency(daemon.port, scenario.daemon, self.args.first_chunk)
            out[scenario.key] = {"direct": direct, "daemon": through}
            if peer is not None:
                if scenario.key not in PEER_SERVES:
                    out[scenario.key]["peer"] = {"count": 0, "why": "not served"}
                elif (peer_failures or {}).get(scenario.key):
                    out[scenario.key]["peer"] = {"count": 0, "why": "reply check failed"}
                else:
                    out[scenario.key]["peer"] = first_chunk_latency(
                        peer.port, scenario.daemon, self.args.first_chunk
                    )
            if through["count"] and direct["count"]:
                theirs = out[scenario.key].get("peer") or {}
                log(
                    f"first chunk {scenario.label}: direct p50 {direct['p50_ms']:.3f} ms, "
                    f"daemon p50 {through['p50_ms']:.3f} p99 {through['p99_ms']:.3f} ms"
                    + (
                        f", peer p50 {theirs['p50_ms']:.3f} p99 {theirs['p99_ms']:.3f} ms"
                        if theirs.get("count")
                        else ""
                    )
                )
            else:
                log(f"first chunk {scenario.label}: {through.get('why') or direct.get('why')}")
        return out

    def profile_daemon(
        self, daemon: Daemon, scenarios: list[Scenario], failures: dict[str, list[str]]
    ) -> dict[str, Any]:
        """py-spy on the daemon under c=10 load, twice per scenario: collapsed stacks by function (summarised
        into ``profile-KEY.txt``) and a flame graph (``profile-KEY.svg``)."""
        py_spy = VENV_BIN / "py-spy"
        if not py_spy.exists():
            return {"error": "py-spy is not installed in the venv (make .venv/.bench)"}
        out: dict[str, Any] = {}
        seconds = self.args.profile_seconds
        for scenario in scenarios:
            if scenario.key not in self.args.profile_scenarios or failures[scenario.key]:
                continue
            collapsed = RESULTS / f"profile-{scenario.key}.collapsed"
            for output, options in (
                (collapsed, ["--format", "raw", "--function"]),
                (collapsed.with_suffix(".svg"), []),
            ):
                command = [str(py_spy), "record", "--pid", str(daemon.pid), "--duration", str(seconds)]
                command += ["--rate", "200", "--nonblocking", "--output", str(output), *options]
                if self.load_cpu is not None:
                    command = ["taskset", "-c", str(self.load_cpu), *command]
                spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(1.0)  # py-spy attaches
                cell = self.wrk_cell(scenario, "daemon", daemon.port, 10, daemon.pid, seconds + 1)
                _, err = spy.communicate(timeout=seconds + 60)
                if spy.returncode != 0:
                    return {"error": f"py-spy failed: {err.decode(errors='replace')[-300:]}"}
                if output == collapsed:
                    summary = profile.summarise(collapsed)
                    summary["rps_under_profiler"] = cell["rps"]
                    collapsed.with_suffix(".txt").write_text(profile.format_summary(summary))
                    out[scenario.key] = summary
            log(f"profile of {scenario.label}: bench/results/profile-{scenario.key}.txt and .svg")
        return out

    # -- the whole run -------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        scenarios = [s for s in SCENARIOS if not self.args.scenarios or s.key in self.args.scenarios]
        results: dict[str, Any] = {"notes": self.notes, "peer": self.build_peer()}
        nginx = self.start_nginx()
        daemon = Daemon(
            self.procs, "main", f"http://127.0.0.1:{nginx}/v1", self.daemon_cpu, self.daemon_extra
        )
        log(f"daemon pid {daemon.pid} on 127.0.0.1:{daemon.port}: {' '.join(daemon.command[1:])}")
        peer = self.start_peer("main", f"http://127.0.0.1:{nginx}", [canned.MODEL, canned.EMBED_MODEL])
        if self.peer_binary is not None and peer is None:
            # Built but would not start: skipped for the whole run, with the reason start_peer noted.
            results["peer"].update(binary=None, skipped=f"it did not start: {self.notes[-1][:300]}")
            self.peer_binary = None
        time.sleep(1.0)
        rss_idle = rss_bytes(daemon.pid)
        sampler = RSSSampler(daemon.pid).start()
        peer_rss_idle = rss_bytes(peer.pid) if peer else 0
        peer_sampler = RSSSampler(peer.pid).start() if peer else None
        peer_failures: dict[str, list[str]] = {}
        try:
            failures = self.check(scenarios, nginx, daemon)
            rss_after_checks = rss_bytes(daemon.pid)
            if peer is not None:
                peer_failures, differences = self.check_peer(scenarios, nginx, peer)
                results["peer"]["check_failures"] = {k: v for k, v in peer_failures.items() if v}
                results["peer"]["differences"] = {k: v for k, v in differences.items() if v}
            results["cells"] = self.load(scenarios, failures, nginx, daemon, peer, peer_failures)
            results["first_chunk"] = self.first_chunks(
                scenarios, failures, nginx, daemon, peer, peer_failures
            )
            if self.args.profile:
                results["profile"] = self.profile_daemon(daemon, scenarios, failures)
        finally:
            sampler.stop()
            if peer_sampler is not None:
                peer_sampler.stop()
        time.sleep(3.0)
        results["rss"] = {
            "idle_mb": round(rss_idle / MB, 1),
            "after_checks_mb": round(rss_after_checks / MB, 1),
            "peak_mb": round(max(sampler.peak(), hwm_bytes(daemon.pid)) / MB, 1),
            "peak_sampled_mb": round(sampler.peak() / MB, 1),
            "after_mb": round(rss_bytes(daemon.pid) / MB, 1),
            "samples": len(sampler.samples),
        }
        log(f"daemon RSS idle / peak / after: {results['rss']}")
        if peer is not None and peer_sampler is not None:
            results["peer"]["rss"] = {
                "idle_mb": round(peer_rss_idle / MB, 1),
                "peak_mb": round(max(peer_sampler.peak(), hwm_bytes(peer.pid)) / MB, 1),
                "after_mb": round(rss_bytes(peer.pid) / MB, 1),
            }
            log(f"peer RSS idle / peak / after: {results['peer']['rss']}")
            results["peer"]["problems"] = summarise_problems(peer.problems())
            peer.stop()
        results["daemon_problems"] = summarise_problems(daemon.problems())
        others = [cell["other_cpus"] for cell in results["cells"] if "other_cpus" in cell]
        results["other_load"] = {
            "mean_cpus": round(sum(others) / len(others), 2) if others else 0.0,
            "max_cpus": max(others, default=0.0),
            "busy_cells": sum(1 for x in others if x > QUIET_CPUS),
            "cells": len(others),
        }
        daemon.stop()
        results["scenarios"] = [
            {
                "key": s.key,
                "label": s.label,
                "stream": s.stream,
                "check_failures": failures[s.key],
                "peer_serves": s.key in PEER_SERVES,
            }
            for s in scenarios
        ]
        if self.args.slow_streams:
            results.update(self.memory_tests())
        if paced.parse_specs(self.args.paced):
            results["paced"] = self.paced_tests()
        if self.args.scaling_workers > 1 and failures.get("chat") == []:
            results["scaling"] = self.scaling(next(s for s in SCENARIOS if s.key == "chat"))
        results["wall_seconds"] = round(time.monotonic() - started, 1)
        return results

    # -- the Go peer ---------------------------------------------------------------------------------------

    def build_peer(self) -> dict[str, Any]:
        if not self.args.peer:
            self.peer_binary = None
            return {"name": peer_module.NAME, "skipped": "not asked for (--no-peer)"}
        log(f"the peer {peer_module.NAME}: finding its source, building it or taking the cached build")
        cache = Path(self.args.peer_cache) if self.args.peer_cache else None
        built = peer_module.build(self.args.peer_git, self.args.peer_build, cache)
        self.peer_binary = built.binary
        if built.binary is None:
            log(f"the peer is skipped: {built.note}")
        else:
            how = "cached" if built.cached else f"built in {built.seconds:.0f} s"
            log(f"the peer: {built.binary} ({how}, {built.go}, commit {built.commit[:12]})")
        return built.as_dict()

    def start_peer(self, name: str, backend_root: str, models: list[str]) -> Peer | None:
        """The peer in front of a backend, pinned like the daemon; None (with a note) if it cannot start."""
        if self.peer_binary is None:
            return None
        try:
            peer = Peer(self.procs, name, self.peer_binary, backend_root, models, self.daemon_cpu)
        except (OSError, RuntimeError) as exc:
            said = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            self.notes.append(f"the peer did not start in front of {backend_root} ({name}): {said}")
            log(self.notes[-1])
            return None
        log(f"peer pid {peer.pid} on 127.0.0.1:{peer.port} in front of {backend_root}")
        return peer

    def scaling(self, scenario: Scenario) -> dict[str, Any]:
        """``/api/chat`` through one process and through ``--workers N``, in the same conditions: nothing
        pinned (N workers need the CPUs the load generator also runs on), both daemons started at once, and
        their cells taking turns so that a change in the machine's speed over the run hits both alike.  The
        median of the runs per cell is kept."""
        workers = self.args.scaling_workers
        os.sched_setaffinity(0, self.all_cpus)  # wrk inherits this process's CPUs
        ceiling = machine_scaling(workers, self.args.scaling_repeat)
        log(f"the machine: {workers} processes of pure Python work do {ceiling['ratio']}x one's: {ceiling}")
        nginx = psutil.Process(self.nginx_pid)
        for proc in [nginx, *nginx.children()]:
            proc.cpu_affinity(sorted(self.all_cpus))
        backend = f"http://127.0.0.1:{self.nginx_port}/v1"
        extra = [arg for arg in self.daemon_extra if not arg.startswith("--workers")]
        if "--workers" in self.daemon_extra:
            at = self.daemon_extra.index("--workers")
            extra = self.daemon_extra[:at] + self.daemon_extra[at + 2 :]
        single = Daemon(self.procs, "single", backend, None, extra)
        several = Daemon(self.procs, "workers", backend, None, [*extra, "--workers", str(workers)])
        wait_for(lambda: several.log_text().count(" ready (pid ") >= workers, 30, "the workers", several.proc)
        out: dict[str, Any] = {
            "workers": workers,
            "repeat": self.args.scaling_repeat,
            "machine": ceiling,
            "cells": [],
        }
        try:
            for daemon in (single, several):
                self.wrk_cell(
                    scenario, "daemon", daemon.port, 10, None, max(1, self.args.warmup), pinned=False
                )
            for c in self.args.scaling_concurrency:
                runs: dict[str, list[dict[str, Any]]] = {"single": [], "workers": []}
                for _ in range(self.args.scaling_repeat):
                    for name, daemon in (("single", single), ("workers", several)):
                        spread: list[int] = []
                        sampler = threading.Timer(
                            self.args.duration / 2,
                            lambda d=daemon, into=spread: into.extend(connections_per_process(d)),
                        )
                        sampler.start()
                        cell = self.wrk_cell(
                            scenario, "daemon", daemon.port, c, daemon.pid, self.args.duration, pinned=False
                        )
                        sampler.join()
                        cell["connections_per_process"] = spread
                        runs[name].append(cell)
                row: dict[str, Any] = {"c": c}
                for name, cells in runs.items():
                    failed = [cell for cell in cells if not cell["ok"]]
                    chosen = (
                        failed[0] if failed else sorted(cells, key=lambda cell: cell["rps"])[len(cells) // 2]
                    )
                    row[name] = {**chosen, "rps_runs": [cell["rps"] for cell in cells]}
                if row["single"]["ok"] and row["workers"]["ok"]:
                    row["ratio"] = round(row["workers"]["rps"] / row["single"]["rps"], 2)
                out["cells"].append(row)
                log(
                    f"scaling c={c}: one process {row['single']['rps']:.0f} req/s "
                    f"{row['single']['rps_runs']}, {workers} workers {row['workers']['rps']:.0f} req/s "
                    f"{row['workers']['rps_runs']} "
                    f"(connections {row['workers']['connections_per_process']}), ratio {row.get('ratio')}"
                )
            out["daemon_problems"] = summarise_problems(single.problems() + several.problems())
        finally:
            single.stop()
            several.stop()
        return out

    def max_concurrent(self, streams: int) -> list[str]:
        """The daemon's admission limit raised above ``streams`` (when it has one): the memory and paced
        tests measure open streams, not admission."""
        if self.has_max_concurrent is None:
            self.has_max_concurrent = supports_option("--max-concurrent")
        return ["--max-concurrent", str(streams + 16)] if self.has_max_concurrent else []

    def memory_tests(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        port, backend_proc = self.start_slow_backend()
        extra = [*self.daemon_extra, *self.max_concurrent(self.args.slow_streams)]
        out["slow_daemon_args"] = extra
        # Time to first chunk when the backend sends its stream event by event (the first at once), as a
        # real model does: unlike nginx's one-read stream, this is the first token's own latency.
        count = self.args.first_chunk
        messages = [{"role": "user", "content": "tick"}]
        direct = Request(
            "POST", "/v1/chat/completions", {"model": "bench-slow", "messages": messages, **STREAM_OPTIONS}
        )
        proxied = Request("POST", "/api/chat", {"model": "bench-slow", "messages": messages, "stream": True})
        out["first_chunk_evented"] = {"direct": first_chunk_latency(port, direct, count, whole=False)}
        try:
            daemon = Daemon(self.procs, "slow", f"http://127.0.0.1:{port}/v1", self.daemon_cpu, extra)
            try:
                out["first_chunk_evented"]["daemon"] = first_chunk_latency(
                    daemon.port, proxied, count, whole=False
                )
                log(f"first chunk with an event-by-event backend: {out['first_chunk_evented']}")
                out.update(self.stream_memory("daemon", daemon.pid, daemon.port, port))
                out["daemon_problems_slow"] = summarise_problems(daemon.problems())
            finally:
                daemon.stop()
            peer = self.start_peer("slow", f"http://127.0.0.1:{port}", ["bench-slow", "bench-endless"])
            if peer is not None:
                try:
                    out["first_chunk_evented"]["peer"] = first_chunk_latency(
                        peer.port, proxied, count, whole=False
                    )
                    log(f"peer first chunk, event-by-event backend: {out['first_chunk_evented']['peer']}")
                    out["peer_memory"] = self.stream_memory("peer", peer.pid, peer.port, port)
                    out["peer_memory"]["problems"] = summarise_problems(peer.problems())
                finally:
                    peer.stop()
        finally:
            self.procs.stop(backend_proc)
        return out

    def stream_memory(self, who: str, pid: int, proxy_port: int, backend_port: int) -> dict[str, Any]:
        """Many slow streams at once, then a client that never reads, through one proxy."""
        out: dict[str, Any] = {}
        log(f"{who}: {self.args.slow_streams} concurrent slow streams of {self.args.slow_seconds:g} s")
        try:
            slow = slow_streams(pid, proxy_port, "bench-slow", self.args.slow_streams, self.args.slow_seconds)
            out["slow_streams"] = {**slow.__dict__, "stream_seconds": self.args.slow_seconds}
            log(f"{who} slow streams: {out['slow_streams']}")
        except (OSError, RuntimeError) as exc:
            out["slow_streams"] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"{who}: a client that never reads, {self.args.never_read_seconds:g} s")

        def endless_bytes() -> int:
            return int(json.loads(fetch(backend_port, Request("GET", "/stats")).body)["endless_bytes"])

        try:
            before = endless_bytes()  # the backend's count goes on from one proxy's test to the next
            never = never_reads(
                pid,
                proxy_port,
                "bench-endless",
                self.args.never_read_seconds,
                lambda: endless_bytes() - before,
            )
            out["never_reads"] = never
            log(f"{who} never reads: {never}")
        except (OSError, RuntimeError) as exc:
            out["never_reads"] = {"error": f"{type(exc).__name__}: {exc}"}
        return out

    # -- realistic streams ---------------------------------------------------------------------------------

    def paced_tests(self) -> dict[str, Any]:
        """N streams at once from a backend that paces its events like a GPU server, through each proxy in
        turn (a fresh process per run): the proxy's CPU per 1,000 relayed events a second, the latency it
        adds per event, and its memory per open stream.  The backend alone, read by the same client,
        comes first each time: the harness's own floor."""
        args = self.args
        binary, why = build_c_client(self.workdir)
        if binary is None:
            self.notes.append(
                f"the realistic-stream client is the Python one ({why}): at hundreds of streams its own "
                "queueing adds to the latencies"
            )
            log(self.notes[-1])
        out: dict[str, Any] = {
            "seconds": args.paced_seconds,
            "ramp_s": args.paced_ramp,
            "client": "C" if binary is not None else "Python",
            "runs": [],
        }
        for streams, rate in paced.parse_specs(args.paced):
            events = max(2, round(rate * args.paced_seconds))
            port = free_port()
            lifetime = (args.paced_seconds + args.paced_ramp + 60) * 3 + 60
            command = [sys.executable, "-m", "bench.paced_backend", "--port", str(port)]
            command += ["--rate", str(rate), "--events", str(events), "--lifetime", str(lifetime)]
            backend_log = self.workdir / f"paced-backend-{streams}x{rate:g}.log"
            backend = self.procs.spawn("paced-backend", command, self.load_cpu, backend_log)
            try:
                wait_for(partial(port_open, port), 15, "the paced backend", backend)
                for target in ("direct", "daemon", "peer"):
                    if target == "peer" and self.peer_binary is None:
                        continue
                    run = self.paced_run(target, streams, rate, port, backend.pid, binary)
                    run["events_per_stream"] = events
                    out["runs"].append(run)
                    log(f"paced {target} {streams} x {rate:g}/s: {_paced_line(run)}")
            finally:
                self.procs.stop(backend)
        return out

    def paced_run(
        self, target: str, streams: int, rate: float, backend_port: int, backend_pid: int, binary: Path | None
    ) -> dict[str, Any]:
        args = self.args
        run: dict[str, Any] = {
            "target": target,
            "streams": streams,
            "rate": rate,
            "offered_per_s": streams * rate,
        }
        fetch(backend_port, Request("GET", "/stats?reset"))
        proxy: Daemon | Peer | None = None
        if target == "direct":
            port, pid, path = backend_port, backend_pid, "/v1/chat/completions"
        elif target == "daemon":
            extra = [*self.daemon_extra, *self.max_concurrent(streams)]
            proxy = Daemon(
                self.procs, f"paced-{streams}", f"http://127.0.0.1:{backend_port}/v1", self.daemon_cpu, extra
            )
            port, pid, path = proxy.port, proxy.pid, "/api/chat"
        else:
            proxy = self.start_peer(
                f"paced-{streams}", f"http://127.0.0.1:{backend_port}", [paced.MODEL, paced.SHORT_MODEL]
            )
            if proxy is None:
                return {**run, "error": "the peer did not start"}
            port, pid, path = proxy.port, proxy.pid, "/api/chat"
        try:
            # Two short streams first: the proxy's warm-up, and the check that its lines carry the stamps.
            for _ in range(2):
                problem = paced_check(port, path)
                if problem:
                    return {**run, "error": f"reply check failed: {problem}"}
            time.sleep(1.0)
            if proxy is not None:
                run["rss_idle_bytes"] = rss_bytes(pid)
            other = OtherLoad([pid, backend_pid])
            result = run_client(
                port=port,
                path=path,
                streams=streams,
                ramp=args.paced_ramp,
                timeout=args.paced_seconds + 60,
                pid=pid,
                load_pids=[backend_pid],
                cpu=self.load_cpu,
                binary=binary,
                workdir=self.workdir,
            )
            run.update(result)
            run["other_cpus"] = round(other.cpus(), 2)
            stats = json.loads(fetch(backend_port, Request("GET", "/stats")).body)
            run["backend_late_p99_ms"] = stats["lateness"]["p99_ms"]
            run["backend_blocked_writes"] = stats["blocked_writes"]
            if proxy is None:
                run.pop("rss_steady_bytes", None)  # the backend's own memory is not the question
                run.pop("rss_max_bytes", None)
            run.update(paced.figures(run))
            if proxy is not None:
                run["problems"] = summarise_problems(proxy.problems())[:3]
        finally:
            if proxy is not None:
                proxy.stop()
        return run


# The machine's own ceiling for N processes: a JSON round trip of a chat request, the daemon's kind of work,
# with no I/O and nothing shared.
_CEILING_DOC = {"model": "m", "messages": [{"role": "user", "content": "hello " * 20}] * 5, "stream": False}


def _pure_python_work(seconds: float, done: Any) -> None:
    count = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(100):
            json.loads(json.dumps(_CEILING_DOC))
        count += 100
    done.put(count)


def machine_scaling(processes: int, repeat: int, seconds: float = 3.0) -> dict[str, Any]:
    """How much more pure Python work ``processes`` processes do at once than one alone, on this
    machine, right now (one and N taking turns, the median ratio of ``repeat`` rounds).  On a virtual
    machine whose CPUs share a physical core or a power budget this is below N, and no daemon can scale
    better than it."""
    import multiprocessing

    def run(count: int) -> float:
        done: Any = multiprocessing.Queue()
        procs = [
            multiprocessing.Process(target=_pure_python_work, args=(seconds, done)) for _ in range(count)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        return float(sum(done.get() for _ in procs)) / seconds

    rounds = [(run(1), run(processes)) for _ in range(max(1, repeat))]
    ratios = sorted(many / one for one, many in rounds)
    return {
        "processes": processes,
        "ratio": round(ratios[len(ratios) // 2], 2),
        "ratios": [round(r, 2) for r in ratios],
        "one_per_s": [round(one) for one, _ in rounds],
    }


def connections_per_process(daemon: Daemon) -> list[int]:
    """How many client connections each of the daemon's processes holds now, most first."""
    counts = []
    for proc in [psutil.Process(daemon.pid), *psutil.Process(daemon.pid).children()]:
        try:
            held = proc.net_connections("tcp")
        except psutil.Error:
            continue
        mine = sum(
            1 for conn in held if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == daemon.port
        )
        if mine:
            counts.append(mine)
    return sorted(counts, reverse=True)


def paced_check(port: int, path: str) -> str:
    """A short paced stream through ``port``: what is wrong with it, or "" (every event's stamp arrived, and
    the last line ends the stream)."""
    body: dict[str, Any] = {"model": paced.SHORT_MODEL, "stream": True}
    if path == "/v1/chat/completions":
        body.update(STREAM_OPTIONS)
    body["messages"] = [{"role": "user", "content": "check"}]
    try:
        reply = fetch(port, Request("POST", path, body), timeout=10)
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    if reply.status != 200:
        return f"HTTP {reply.status}: {reply.body[:120]!r}"
    found = paced.stamps(reply.body)
    if len(found) != paced.SHORT_EVENTS:
        return f"{len(found)} stamped events of {paced.SHORT_EVENTS}: {reply.body[:160]!r}"
    last = reply.body.strip().split(b"\n")[-1]
    if not paced.DONE.search(last):
        return f"the last line does not end the stream: {last[:120]!r}"
    return ""


def _paced_line(run: dict[str, Any]) -> str:
    if run.get("error"):
        return f"FAILED: {run['error']}"
    latency = run.get("latency") or {}
    return (
        f"{run.get('events_per_s', 0):,.0f} events/s of {run['offered_per_s']:,.0f}; "
        f"cores {run.get('cores', 0):.3f} ({run.get('cores_per_1k_events') or 0:.3f} per 1k events/s); "
        f"latency p50 {latency.get('p50_ms', 0):.2f} p99 {latency.get('p99_ms', 0):.2f} ms; "
        f"RSS/stream {run.get('rss_per_stream_kb', '-')} KB; load side {run.get('load_cores', 0):.2f}"
        f" + client {run.get('client_cores', 0):.2f} cores; completed {run.get('completed')}/{run['streams']}"
    )


def summarise_problems(problems: list[str]) -> list[str]:
    """Distinct logged errors with how often each occurred (timestamps and request ids left out)."""
    counts: dict[str, int] = {}
    for problem in problems:
        key = re.sub(r"\b[0-9a-f]{16,}\b", "ID", problem.split(" ", 1)[-1])
        counts[key] = counts.get(key, 0) + 1
    return [f"{n} x {key}" for key, n in sorted(counts.items(), key=lambda kv: -kv[1])]


# -- command line ------------------------------------------------------------------------------------------


# The scenarios profiled by default: the Ollama stream every other stream's target is set against, the
# two other API families' streams, and the plain request.
PROFILED = ["chat", "chat-stream", "messages-stream", "responses-stream"]

# Defaults of a full run and of --quick (a 2-3 minute smoke run); an option on the command line wins.
FULL = {
    "duration": 5,
    "warmup": 1,
    "concurrency": [1, 10, 50],
    "first_chunk": 200,
    "slow_streams": 1000,
    "slow_seconds": 20.0,
    "never_read_seconds": 10.0,
    "profile": True,
    "profile_seconds": 10,
    "scaling_workers": 2,
    "scaling_repeat": 3,
    "paced": ["100x50", "500x50", "500x10"],
    "paced_seconds": 10.0,
}
QUICK = {
    "duration": 1,
    "warmup": 0,
    "concurrency": [1, 10],
    "first_chunk": 30,
    "slow_streams": 200,
    "slow_seconds": 4.0,
    "never_read_seconds": 3.0,
    "profile": False,
    "profile_seconds": 3,
    "scaling_workers": 2,
    "scaling_repeat": 1,
    "paced": ["100x50", "500x50"],
    "paced_seconds": 4.0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make bench BENCH_ARGS=...",
        description=__doc__.splitlines()[0] if __doc__ else "",
        epilog="Defaults are a full run's; --quick changes them to: "
        + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items()),
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="a 2-3 minute smoke run; leaves docs/performance.md alone")
    add("--duration", type=int, help=f"seconds per wrk cell ({FULL['duration']})")
    add("--warmup", type=int, help=f"seconds of warm-up per scenario through the daemon ({FULL['warmup']})")
    add("--concurrency", type=int, nargs="+", help="wrk connections, one cell each (1 10 50)")
    add("--target-concurrency", type=int, default=10, help="the c the targets table reads (10)")
    add("--repeat", type=int, default=1, help="runs per daemon cell; the median by req/s is kept (1)")
    add("--scenarios", nargs="+", choices=[s.key for s in SCENARIOS], help="default: all")
    add("--first-chunk", type=int, help=f"first-chunk samples per stream scenario ({FULL['first_chunk']})")
    add("--slow-streams", type=int, help=f"concurrent slow streams, 0 to skip ({FULL['slow_streams']})")
    add("--slow-seconds", type=float, help=f"how long each slow stream lasts ({FULL['slow_seconds']:g})")
    add("--slow-interval", type=float, default=1.0, help="seconds between slow stream events (1)")
    add("--never-read-seconds", type=float, help=f"never-reading client ({FULL['never_read_seconds']:g})")
    add("--profile", action=argparse.BooleanOptionalAction, help="py-spy on the daemon under c=10 load")
    add("--profile-seconds", type=int, help=f"per profile ({FULL['profile_seconds']})")
    add(
        "--profile-scenarios",
        nargs="+",
        choices=[s.key for s in SCENARIOS],
        default=PROFILED,
        help=f"the scenarios py-spy samples ({' '.join(PROFILED)})",
    )
    add("--workers", type=int, default=0, help="passed to the daemon if it supports --workers")
    add(
        "--scaling-workers",
        type=int,
        help=f"the one-process/--workers run's N, 0 to skip ({FULL['scaling_workers']})",
    )
    add("--scaling-repeat", type=int, help=f"runs per cell of it, taking turns ({FULL['scaling_repeat']})")
    add("--scaling-concurrency", type=int, nargs="+", default=[10, 50], help="its wrk connections (10 50)")
    add(
        "--paced",
        nargs="+",
        metavar="STREAMSxRATE",
        help="realistic streams: one run per STREAMSxRATE (concurrent paced streams x events a second "
        "each, 50 if left out); 0 to skip (100x50 500x50 500x10)",
    )
    add("--paced-seconds", type=float, help=f"how long each paced stream lasts ({FULL['paced_seconds']:g})")
    add("--paced-ramp", type=float, default=1.0, help="seconds over which the paced streams open (1)")
    add(
        "--peer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"measure the Go peer {peer_module.NAME} beside the daemon, where it can be built (on)",
    )
    add("--peer-git", help=f"its bare git directory (${peer_module.GIT_ENV}; else found under ../.mirror/)")
    add(
        "--peer-build",
        help=f"its build script (${peer_module.BUILD_ENV}; else {peer_module.BUILD_SCRIPT})",
    )
    add("--peer-cache", help=f"where its builds are kept ({peer_module.default_cache()})")
    add("--daemon-arg", action="append", help="an extra daemon argument, repeatable (--daemon-arg=--x=1)")
    add("--no-pin", action="store_true", help="do not pin the daemon and the load to CPUs")
    add("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    add("--keep", action="store_true", help="keep the work directory (configs, daemon logs)")
    add(
        "--wait-quiet",
        type=float,
        default=0,
        help="on a shared machine: wait up to this many seconds for idle CPUs first (and up to 120 s "
        "before each scenario)",
    )
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.quick:
        args.no_docs = True
    return args


def command_line(argv: list[str]) -> str:
    args = shlex.join(argv)
    if os.environ.get("MAKELEVEL"):
        return "make bench" + (f" BENCH_ARGS={shlex.quote(args)}" if args else "")
    return f".venv/bin/python -m bench.run {args}".rstrip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    wall = time.monotonic()
    raise_fd_limit()
    nginx, wrk = ensure_tools()
    if args.wait_quiet:
        wait_until_quiet(args.wait_quiet)
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="olpbench-"))
    # Before the run: it writes its profiles into bench/results, which would mark the code measured dirty.
    machine = machine_facts(nginx, wrk)
    bench = Bench(args, workdir, nginx, wrk)
    try:
        results = bench.run()
    finally:
        bench.procs.stop_all()
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results["command"] = command_line(argv)
    results["wall_seconds"] = round(time.monotonic() - wall, 1)
    results["machine"] = machine
    results["config"] = {
        "quick": args.quick,
        "duration": args.duration,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "target_concurrency": args.target_concurrency,
        "first_chunk": args.first_chunk,
        "repeat": args.repeat,
        "pinning": bench.pinning,
        "daemon_args": bench.daemon_extra,
    }
    name = "quick.json" if args.quick else "latest.json"
    (RESULTS / name).write_text(json.dumps(results, indent=1) + "\n")
    text = report.render(results)
    print("\n" + text)
    if not args.no_docs:
        report.update_docs(DOCS, text, report.DOCS_PREAMBLE)
        log(f"wrote {DOCS.relative_to(REPO)} and bench/results/{name}")
    else:
        log(f"wrote bench/results/{name}")
    failed = [c for c in results["cells"] if not c.get("ok")]
    return 1 if failed and not args.quick and len(failed) == len(results["cells"]) else 0


if __name__ == "__main__":
    sys.exit(main())

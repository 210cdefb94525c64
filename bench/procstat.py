"""CPU time and memory of a process (with its children, should the daemon ever fork workers)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import psutil

MB = 1024 * 1024


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of the process and its children, from /proc/PID/stat."""
    total = 0.0
    for proc in _tree(pid):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have spent in user and system mode since boot (/proc/stat).

    Interrupt and softirq time is left out: much of it is the kernel carrying our own loopback traffic,
    which no process is charged for."""
    with open("/proc/stat") as stat:
        user, nice, system = (int(x) for x in stat.readline().split()[1:4])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for (wrk, the apt-get run, ...)."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


class OtherLoad:
    """How much CPU everything else on the machine used meanwhile: the machine's busy time minus ours."""

    def __init__(self, pids: list[int]) -> None:
        self._pids = pids
        self._start = self._read()

    def _read(self) -> tuple[float, float, float]:
        ours = own_seconds() + sum(cpu_seconds(pid) for pid in self._pids)
        return time.monotonic(), machine_busy_seconds(), ours

    def cpus(self) -> float:
        """The average number of CPUs other processes kept busy since this object was made."""
        now, busy, ours = self._read()
        wall = now - self._start[0]
        if wall <= 0:
            return 0.0
        return max(0.0, ((busy - self._start[1]) - (ours - self._start[2])) / wall)


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) of the process and its children."""
    total = 0
    for proc in _tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def hwm_bytes(pid: int) -> int:
    """The kernel's own peak RSS (VmHWM) of the main process: catches peaks between two samples."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def open_fds(pid: int) -> int:
    """Open file descriptors of the process and its children."""
    total = 0
    for proc in _tree(pid):
        try:
            total += int(proc.num_fds())
        except psutil.NoSuchProcess:
            continue
    return total


@dataclass
class RSSSampler:
    """Samples a process's RSS every ``interval`` seconds in a background thread."""

    pid: int
    interval: float = 0.1
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RSSSampler:
        self._thread = threading.Thread(target=self._run, name=f"rss-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = rss_bytes(self.pid)
            if rss:
                self.samples.append((time.monotonic(), rss))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def peak(self, since: float = 0.0) -> int:
        return max((rss for t, rss in self.samples if t >= since), default=0)

    def window(self, start: float, end: float) -> list[int]:
        return [rss for t, rss in self.samples if start <= t <= end]

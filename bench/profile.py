"""Where the daemon's CPU time goes: py-spy's collapsed stacks summarised by function and by package.

py-spy (``record --format raw --function``) writes one line per distinct stack, ``frame;frame;... count``,
root first.  Only the reactor (main) thread is counted: the thread pool's workers spend their life waiting
on a queue, which py-spy does not always recognise as idle.  Re-summarise a saved file with
``python -m bench.profile bench/results/profile-chat.collapsed``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def short_frame(frame: str) -> str:
    """``Request.process (twisted/web/server.py:181)`` with the site-packages, stdlib or repo prefix cut."""
    for marker in ("site-packages/", str(REPO) + "/"):
        if marker in frame:
            head, _, tail = frame.partition(marker)
            return head + tail
    return re.sub(r"\(/\S*/lib/python3\.\d+/", "(", frame)


def package_of(frame: str) -> str:
    """The top-level package a frame's file belongs to (``twisted``, ``ollama_proxy``, ``json``...)."""
    match = _FRAME.match(frame)
    if not match:
        return "?"
    path = match.group("file")
    if path.endswith(".py") and "/" not in path:
        return path[:-3]  # a stdlib module
    return path.split("/", 1)[0].removesuffix(".py")


def summarise(path: Path, top: int = 25) -> dict[str, Any]:
    self_counts: dict[str, int] = {}
    total_counts: dict[str, int] = {}
    packages: dict[str, int] = {}
    samples = other_threads = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short_frame(f) for f in stack.split(";")]
        if not frames[0].startswith("<module>"):
            other_threads += count
            continue
        samples += count
        leaf = frames[-1]
        self_counts[leaf] = self_counts.get(leaf, 0) + count
        packages[package_of(leaf)] = packages.get(package_of(leaf), 0) + count
        for frame in set(frames):
            total_counts[frame] = total_counts.get(frame, 0) + count

    def ranked(counts: dict[str, int], limit: int = top) -> list[tuple[str, float]]:
        best = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
        return [(name, round(100 * n / samples, 1)) for name, n in best] if samples else []

    # The reactor loop's own frames are on nearly every stack and say nothing: they are left out of "total".
    inner = {name: n for name, n in total_counts.items() if n < 0.75 * samples}
    ours = {name: n for name, n in total_counts.items() if "(ollama_proxy/" in name}
    return {
        "samples": samples,
        "other_thread_samples": other_threads,
        "packages": ranked(packages, 15),
        "self": ranked(self_counts),
        "total": ranked(inner, top + 15),
        "ollama_proxy": ranked(ours, 20),
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['samples']} samples of the reactor thread (on-CPU only; "
        f"{summary['other_thread_samples']} samples of other threads left out); "
        f"{summary.get('rps_under_profiler', '?')} req/s under py-spy"
    ]
    titles = {
        "packages": "Self time by package",
        "self": "Top functions by self time",
        "total": "Top functions by total time (self + callees; the reactor loop's own frames left out)",
        "ollama_proxy": "ollama_proxy functions by total time",
    }
    for kind, title in titles.items():
        lines.append(f"\n{title}:")
        lines.extend(f"{pct:6.1f}%  {name}" for name, pct in summary[kind])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"== {name}")
        print(format_summary(summarise(Path(name))))

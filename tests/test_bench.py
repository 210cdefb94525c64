"""The benchmark's own pure pieces (``bench/``): the paced scenario's stamps, de-chunking and statistics, the
Go peer's discovery, build cache and configuration, and the report with and without the peer.  None of
this needs the peer, Go, nginx or wrk: ``make bench`` runs those."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import canned, paced, peer, report
from bench.paced_client import build_c_client, run_client
from bench.scenarios import BY_KEY, SCENARIOS, CheckFailed, Reply, essential
from bench.wrk import write_script

# -- the paced scenario ------------------------------------------------------------------------------------


def test_stamps_are_read_from_translated_lines() -> None:
    line = b'{"model":"m","message":{"role":"assistant","content":"t=1234.500001 "},"done":false}\n'
    assert paced.stamps(line) == [1234.500001]
    merged = b'{"message":{"content":"t=1.25 t=2.5 "}}\n{"done":true}\n'
    assert paced.stamps(merged) == [1.25, 2.5]
    assert paced.stamps(b'{"created_at":"2026-01-01T00:00:00Z","done":true}') == []
    assert paced.stamp_text(7.5) == "t=7.500000 "
    assert paced.DONE.search(b'{"done": true}')
    assert paced.DONE.search(b"data: [DONE]")
    assert not paced.DONE.search(b'{"done":false}')


def _chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


@given(
    st.lists(st.binary(min_size=1, max_size=40), max_size=8),
    st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_dechunker_gives_the_body_however_the_bytes_arrive(pieces: list[bytes], cuts: list[int]) -> None:
    wire = _chunked(pieces)
    bounds = [0, *sorted({c % (len(wire) + 1) for c in cuts}), len(wire)]
    decoder = paced.Dechunker()
    body = b"".join(decoder.feed(wire[a:b]) for a, b in itertools.pairwise(bounds))
    assert body == b"".join(pieces)
    assert decoder.finished


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert paced.percentile(values, 50) == 50.0
    assert paced.percentile(values, 99) == 99.0
    assert paced.percentile(values, 100) == 100.0
    assert paced.percentile([], 50) == 0.0
    summary = paced.latency_summary([0.002, 0.001, 0.003])
    assert summary["count"] == 3
    assert summary["p50_ms"] == 2.0
    assert summary["max_ms"] == 3.0
    assert summary["min_ms"] == 1.0
    assert paced.latency_summary([])["p99_ms"] == 0.0


def test_parse_specs() -> None:
    assert paced.parse_specs(["100x50", "500", "500X10"]) == [(100, 50.0), (500, 50.0), (500, 10.0)]
    assert paced.parse_specs(["0"]) == []
    assert paced.parse_specs(None) == []
    with pytest.raises(ValueError, match="STREAMSxRATE"):
        paced.parse_specs(["10x0"])


def _raw(streams: int, *, spread: float = 0.0) -> dict[str, Any]:
    """A fake client record: streams open at t=1..1+spread, 1 s apart in events ... until t=11."""
    records, recv_at, latency = [], [], []
    for i in range(streams):
        first = 1.0 + spread * i / max(1, streams - 1)
        records.append(
            {
                "opened": True,
                "done": True,
                "events": 10,
                "first_at": first,
                "ended_at": first + 10,
                "error": "",
            }
        )
        for k in range(10):
            recv_at.append(first + k)
            latency.append(0.001 * (k + 1))
    samples = [(t / 4, t / 4 * 0.5, t / 4 * 0.1, t / 4 * 0.05, 1000 + int(t)) for t in range(48)]
    return {"streams": records, "samples": samples, "recv_at": recv_at, "latency": latency, "seconds": 12.0}


def test_summarise_counts_only_the_window_in_which_all_streams_are_open() -> None:
    out = paced.summarise(_raw(4, spread=1.0), 4, margin=0.5)
    assert out["window"] == "all open"
    assert out["window_s"] == pytest.approx(11.0 - 0.1 - 2.5)
    assert out["completed"] == 4
    assert out["proxy_cores"] == pytest.approx(0.5)
    assert out["load_cores"] == pytest.approx(0.1)
    assert out["client_cores"] == pytest.approx(0.05)
    # The events that arrived in [2.5, 10.9]: for each stream those at first + 2 ... first + 8 or so.
    assert 20 <= out["events_in_window"] <= 36
    figures = paced.figures({**out, "offered_per_s": 4.0, "rss_idle_bytes": 500})
    assert figures["cores_per_1k_events"] == pytest.approx(0.5 / (figures["events_per_s"] / 1000), rel=0.01)
    assert figures["saturated"] is False
    assert figures["rss_per_stream_kb"] == pytest.approx((out["rss_steady_bytes"] - 500) / 4 / 1024, abs=0.1)


def test_summarise_falls_back_when_the_streams_never_were_all_open() -> None:
    out = paced.summarise(_raw(4, spread=12.0), 4, margin=0.5)
    assert out["window"].startswith("10-90 % of the arrivals")
    assert "error" not in out
    assert out["events_in_window"] >= 30
    failed = paced.summarise({**_raw(1), "streams": [], "recv_at": [], "latency": []}, 3, margin=0.5)
    assert failed["error"] == "0 events arrived"


def test_a_proxy_that_fills_its_core_or_falls_behind_is_saturated() -> None:
    base = {"window_s": 2.0, "events_in_window": 10000, "offered_per_s": 5000.0}
    assert paced.figures({**base, "proxy_cores": 0.95})["saturated"] is True
    assert paced.figures({**base, "proxy_cores": 0.5, "events_in_window": 9000})["saturated"] is True
    assert paced.figures({**base, "proxy_cores": 0.5})["saturated"] is False
    assert paced.figures({"window_s": 0}) == {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("client", ["C", "Python"])
def test_paced_backend_and_client_round_trip(client: str, tmp_path: Path) -> None:
    """Five paced streams of 100 events at 100 a second, read straight from the backend: every event
    arrives with its stamp, and the harness alone adds well under a second."""
    binary = None
    if client == "C":
        if shutil.which("cc") is None:
            pytest.skip("no C compiler")
        binary, why = build_c_client(tmp_path)
        assert binary is not None, why
    port = _free_port()
    command = [sys.executable, "-m", "bench.paced_backend", "--port", str(port), "--rate", "100"]
    backend = subprocess.Popen([*command, "--events", "100", "--lifetime", "60"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        result = run_client(
            port=port,
            path="/v1/chat/completions",
            streams=5,
            ramp=0.05,
            timeout=20,
            pid=backend.pid,
            load_pids=[backend.pid],
            cpu=None,
            binary=binary,
            workdir=tmp_path,
            margin=0.02,
        )
    finally:
        backend.terminate()
        backend.wait(10)
    assert result["client"] == client
    assert result["completed"] == 5, result
    assert result["events"] == 500, result
    assert result["window"] == "all open"
    assert result["errors"] == {}
    assert 0 < result["latency"]["p50_ms"] < 1000


# -- the Go peer -------------------------------------------------------------------------------------------


def _bare(path: Path) -> Path:
    (path / "objects").mkdir(parents=True)
    (path / "HEAD").write_text("ref: refs/heads/main\n")
    return path


def test_the_peer_source_comes_from_the_option_the_environment_or_the_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(peer.GIT_ENV, raising=False)
    given_dir = _bare(tmp_path / "given")
    assert peer.find_git_dir(str(given_dir)) == (given_dir, "given")
    monkeypatch.setenv(peer.GIT_ENV, str(given_dir))
    assert peer.find_git_dir() == (given_dir, "given")
    path, why = peer.find_git_dir(str(tmp_path / "nothing"))
    assert path is None
    assert "is not a git directory" in why
    monkeypatch.delenv(peer.GIT_ENV)
    mirror = tmp_path / ".mirror"
    fetched = _bare(mirror / "K0IN+openai-ollama-proxy" / "repo")
    monkeypatch.setattr(peer, "mirror_roots", lambda: [mirror])
    assert peer.find_git_dir() == (fetched, "found")
    monkeypatch.setattr(peer, "mirror_roots", lambda: [tmp_path / "empty"])
    path, why = peer.find_git_dir()
    assert path is None
    assert "fetch" in why
    assert peer.GIT_ENV in why


GIT = shutil.which("git") or "git"


def _git_repo(path: Path) -> Path:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b"}
    env["GIT_COMMITTER_EMAIL"] = "b@b"
    work = path / "work"
    work.mkdir()
    (work / "main.go").write_text("package main\n")
    for command in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run([GIT, "-C", str(work), *command], check=True, env=env, capture_output=True)
    bare = path / "peer.git"
    subprocess.run([GIT, "clone", "-q", "--bare", str(work), str(bare)], check=True, capture_output=True)
    return bare


def test_a_missing_build_script_or_a_failed_build_skips_the_peer(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("no git")
    bare = _git_repo(tmp_path)
    missing = peer.build(str(bare), str(tmp_path / "nope.sh"), tmp_path / "cache")
    assert missing.binary is None
    assert "build script" in missing.note
    assert missing.as_dict()["skipped"] == missing.note
    failing = tmp_path / "fail.sh"
    failing.write_text("echo 'go: something broke' >&2\nexit 3\n")
    failed = peer.build(str(bare), str(failing), tmp_path / "cache")
    assert failed.binary is None
    assert "exit 3" in failed.note
    assert "something broke" in failed.note


def test_a_built_peer_is_cached_per_commit(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("no git")
    bare = _git_repo(tmp_path)
    script = tmp_path / "build.sh"
    script.write_text(
        'mkdir -p "$2" && printf \'#!/bin/sh\\n\' > "$2/proxy" && chmod +x "$2/proxy" && echo built >> '
        f'{tmp_path}/count && echo "$2/proxy"\n'
    )
    first = peer.build(str(bare), str(script), tmp_path / "cache")
    assert first.binary is not None, first.note
    assert not first.cached
    second = peer.build(str(bare), str(script), tmp_path / "cache")
    assert second.binary == first.binary
    assert second.cached
    assert (tmp_path / "count").read_text() == "built\n"
    assert first.binary.parent.name == f"k0in-{first.commit[:12]}"


def test_the_peer_config_serves_the_bench_models_under_their_own_names() -> None:
    text = peer.config_toml(4242, "http://127.0.0.1:9", [canned.MODEL, canned.EMBED_MODEL])
    assert 'listen_addr = "127.0.0.1:4242"' in text
    assert 'url = "http://127.0.0.1:9"' in text
    for model in (canned.MODEL, canned.EMBED_MODEL):
        assert f'upstream = "{model}"\nlocal = "{model}"' in text
    assert "${" not in text  # no environment expansion left to the peer


def test_the_peer_serves_all_but_responses_and_each_scenario_has_an_essential_check() -> None:
    keys = {s.key for s in SCENARIOS}
    assert keys - peer.SERVES == {"responses-stream"}
    assert keys >= peer.SERVES
    for key in keys:
        with pytest.raises(CheckFailed):
            essential(key)(Reply(500, {}, b"{}"))
    good = Reply(
        200,
        {},
        b'{"model":"m","message":{"role":"assistant","content":"%s"},"done":true}' % (canned.TEXT.encode()),
    )
    essential("chat")(good)


# -- the scenarios' checks ---------------------------------------------------------------------------------


def _sse(events: list[dict[str, Any]], *, named: bool = True) -> bytes:
    return b"".join(
        (f"event: {e['type']}\n" if named else "").encode() + b"data: " + json.dumps(e).encode() + b"\n\n"
        for e in events
    )


def _anthropic_events() -> list[dict[str, Any]]:
    usage = {"input_tokens": canned.PROMPT_TOKENS, "output_tokens": 0}
    message: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": canned.MODEL,
        "content": [],
    }
    message.update(stop_reason=None, stop_sequence=None, usage=usage)
    text = [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token}}
        for token in canned.CONTENT_TOKENS
    ]
    return [
        {"type": "message_start", "message": message},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *text,
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": canned.COMPLETION_TOKENS},
        },
        {"type": "message_stop"},
    ]


def _responses_events() -> list[dict[str, Any]]:
    def response(status: str, output: list[Any], usage: Any = None) -> dict[str, Any]:
        return {
            "id": "resp_1",
            "object": "response",
            "created_at": 1,
            "model": canned.MODEL,
            "status": status,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": usage,
        }

    part = {"type": "output_text", "text": "", "annotations": []}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    done_part = {**part, "text": canned.TEXT}
    done_item = {**item, "status": "completed", "content": [done_part]}
    usage = {
        "input_tokens": canned.PROMPT_TOKENS,
        "output_tokens": canned.COMPLETION_TOKENS,
        "total_tokens": canned.PROMPT_TOKENS + canned.COMPLETION_TOKENS,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": response("in_progress", [])},
        {"type": "response.in_progress", "response": response("in_progress", [])},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **where, "part": part},
        *(
            {"type": "response.output_text.delta", **where, "delta": token, "logprobs": []}
            for token in canned.CONTENT_TOKENS
        ),
        {"type": "response.output_text.done", **where, "text": canned.TEXT, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": done_part},
        {"type": "response.output_item.done", "output_index": 0, "item": done_item},
        {"type": "response.completed", "response": response("completed", [done_item], usage)},
    ]
    return [{**event, "sequence_number": n} for n, event in enumerate(events)]


SSE = {"content-type": "text/event-stream; charset=utf-8"}


def test_the_anthropic_stream_check_reads_every_named_event() -> None:
    events = _anthropic_events()
    BY_KEY["messages-stream"].check(Reply(200, SSE, _sse(events)))
    essential("messages-stream")(Reply(200, SSE, _sse(events, named=False)))
    broken = {
        "event without": _sse(events, named=False),
        "the last event is message_delta": _sse(events[:-1]),
        "streamed text": _sse([e for e in events if e.get("delta", {}).get("text") != " word7"]),
        "stop_reason": _sse(
            [
                {**e, "delta": {"stop_reason": "max_tokens"}} if e["type"] == "message_delta" else e
                for e in events
            ]
        ),
        "message_start: ": _sse([{"type": "message_start", "message": {"model": canned.MODEL}}, *events[1:]]),
    }
    for problem, body in broken.items():
        with pytest.raises(CheckFailed, match=problem):
            BY_KEY["messages-stream"].check(Reply(200, SSE, body))
    with pytest.raises(CheckFailed, match="streamed text"):
        essential("messages-stream")(Reply(200, SSE, _sse(events[:5])))


def test_the_responses_stream_check_wants_created_first_and_completed_with_usage_last() -> None:
    events = _responses_events()
    BY_KEY["responses-stream"].check(Reply(200, SSE, _sse(events)))
    essential("responses-stream")(Reply(200, SSE, _sse(events)))
    without_usage = {**events[-1], "response": {**events[-1]["response"], "usage": None}}
    broken = {
        "the first event is response.in_progress": _sse(events[1:]),
        "the last event is response.output_item.done": _sse(events[:-1]),
        "usage": _sse([*events[:-1], without_usage]),
        "streamed text": _sse([e for e in events if e.get("delta") != "Hello"]),
        "unexpected event 'response.failed'": _sse([*events, {**events[-1], "type": "response.failed"}]),
        "event without": _sse(events, named=False),
    }
    for problem, body in broken.items():
        with pytest.raises(CheckFailed, match=problem):
            BY_KEY["responses-stream"].check(Reply(200, SSE, body))


def test_the_anthropic_scenario_sends_the_sdks_version_header(tmp_path: Path) -> None:
    request = BY_KEY["messages-stream"].daemon
    assert request.headers() == {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}
    assert request.body is not None
    assert request.body["max_tokens"] == 256
    script = write_script(tmp_path, "m", request).read_text()
    assert 'wrk.headers["anthropic-version"] = "2023-06-01"' in script
    assert 'wrk.headers["Content-Type"] = "application/json"' in script
    assert "wrk.headers" not in write_script(tmp_path, "t", BY_KEY["tags"].daemon).read_text()


# -- the report --------------------------------------------------------------------------------------------

# CPU ms per request at c=10 that the targets table's tests set apart from the rest's 0.5 (daemon) and
# 0.2 (peer): /api/chat's stream at 0.7 sets the others' limit at 0.84.
CPU = {
    ("chat-stream", "daemon"): 0.7,
    ("chat-stream", "peer"): 0.8,
    ("generate-stream", "daemon"): 0.77,
    ("messages-stream", "daemon"): 0.91,
    ("responses-stream", "daemon"): 0.83,
    ("chat", "daemon"): 0.3,
    ("tags", "daemon"): 0.08,
}


def _results(*, with_peer: bool, cpu: dict[tuple[str, str], float] | None = None) -> dict[str, Any]:
    def cell(target: str, key: str, c: int) -> dict[str, Any]:
        return {
            "scenario": key,
            "target": target,
            "c": c,
            "ok": True,
            "rps": 1000.0 if target != "direct" else 30000.0,
            "p50_ms": 1.0,
            "p99_ms": 2.0,
            "cpu_ms_per_req": (cpu or {}).get((key, target), 0.5 if target == "daemon" else 0.2),
            "added_p50_ms": 0.9,
            "added_p99_ms": 1.8,
            "other_cpus": 0.0,
        }

    targets = ["direct", "daemon", *(["peer"] if with_peer else [])]
    cells = [
        cell(t, s.key, c)
        for s in SCENARIOS
        for c in (1, 10)
        for t in targets
        if t != "peer" or s.key in peer.SERVES
    ]
    run = {
        "streams": 100,
        "rate": 50.0,
        "offered_per_s": 5000.0,
        "events_per_s": 5000.0,
        "cores": 0.4,
        "cores_per_1k_events": 0.08,
        "latency": {"p50_ms": 0.5, "p99_ms": 3.0, "max_ms": 9.0},
        "load_cores": 0.1,
        "client_cores": 0.05,
        "completed": 100,
        "other_cpus": 0.0,
        "window": "all open",
    }
    runs = [{**run, "target": "direct"}, {**run, "target": "daemon", "rss_idle_mb": 50.0}]
    if with_peer:
        runs.append({**run, "target": "peer", "cores_per_1k_events": 0.05, "saturated": True})
    peer_info: dict[str, Any] = (
        {
            "name": peer.NAME,
            "binary": "/cache/k0in/proxy",
            "commit": "61ae483a3469ed6a",
            "cached": True,
            "go": "go1.19.8",
            "rss": {"idle_mb": 6.5, "peak_mb": 17.0, "after_mb": 14.0},
            "differences": {"embed": ["wrong values"]},
        }
        if with_peer
        else {"name": peer.NAME, "skipped": "no source of it: none at /x/.mirror"}
    )
    return {
        "date": "2026-12-04 00:00 UTC",
        "command": "make bench",
        "wall_seconds": 100.0,
        "machine": {
            "nproc": 2,
            "cpu_model": "cpu",
            "memory_gb": 24,
            "kernel": "6",
            "python": "3.11",
            "twisted": "26",
            "nginx": "nginx/1",
            "wrk": "wrk 4",
            "code": "abc",
            "daemon_code": "/repo/ollama_proxy",
        },
        "config": {
            "duration": 5,
            "warmup": 1,
            "concurrency": [1, 10],
            "target_concurrency": 10,
            "quick": True,
        },
        "cells": cells,
        "scenarios": [
            {
                "key": s.key,
                "label": s.label,
                "stream": s.stream,
                "check_failures": [],
                "peer_serves": s.key in peer.SERVES,
            }
            for s in SCENARIOS
        ],
        "first_chunk": {"chat-stream": {t: {"count": 5, "p50_ms": 1.0, "p99_ms": 2.0} for t in targets}},
        "rss": {"idle_mb": 55.0, "peak_mb": 60.0, "after_mb": 58.0},
        "paced": {"seconds": 10.0, "ramp_s": 1.0, "client": "C", "runs": runs},
        "peer": peer_info,
    }


def test_the_report_puts_the_peer_beside_the_daemon() -> None:
    text = report.render(_results(with_peer=True))
    assert "| Go peer, same run |" in text
    assert "Go peer req/s" in text
    assert "Go peer p50 / p99 ms" in text
    assert "61ae483a3469" in text
    assert f"| 100 {report.TIMES} 50 | Go peer (saturated) |" in text
    assert f"100{report.TIMES}50/s: 0.050" in text
    assert "differs: wrong values" in text
    assert "A `--quick` smoke run" in text
    assert "the daemons imported `/repo/ollama_proxy`" in text


def _targets_rows(text: str) -> list[list[str]]:
    section = text.split("### Against the issue's targets\n\n", 1)[1].split("\n\n", 1)[0]
    lines = section.splitlines()
    assert lines[1].startswith("|---")
    return [line.strip("| ").split(" | ") for line in lines[2:]]


def test_the_targets_table_has_the_issues_rows_judged_against_the_same_run() -> None:
    rows = _targets_rows(report.render(_results(with_peer=True, cpu=CPU)))
    assert [row[0] for row in rows] == [
        "`/api/chat` 53-event stream, CPU per stream",
        "`/api/generate` stream, `/v1/messages` stream, `/v1/responses` stream, CPU per stream",
        "`/v1/chat/completions` stream, CPU per stream",
        "`/api/chat` not streamed, CPU per request",
        "`/api/embed`, one input of 384 dimensions, CPU per request",
        "`/api/tags`, CPU per request",
        "first body byte of a stream at c=1, p50 (`/api/chat` stream)",
        "realistic streams: CPU cores per 1,000 relayed events/s (latency per event p50 / p99)",
        "RSS idle / peak under the whole benchmark",
    ]
    chat_stream, others, v1_stream, chat, embed, tags, first, paced_row, rss = rows
    assert chat_stream == [
        chat_stream[0],
        "1.617 ms",
        "≤ 0.75 ms and below the Go peer's",
        "0.700 ms",
        "0.800 ms",
        "met",
    ]
    assert others[2] == f"each ≤ 1.2{report.TIMES} the `/api/chat` stream (≤ 0.840 ms in this run)"
    assert others[3] == (
        f"`/api/generate` 0.770 ms (1.10{report.TIMES}); `/v1/messages` 0.910 ms (1.30{report.TIMES}); "
        f"`/v1/responses` 0.830 ms (1.19{report.TIMES})"
    )
    assert others[4] == (
        f"`/api/generate` 0.200 ms (0.25{report.TIMES}); `/v1/messages` 0.200 ms (0.25{report.TIMES}); "
        "`/v1/responses` not served"
    )
    assert others[5] == "`/api/generate`: met; `/v1/messages`: **missed**; `/v1/responses`: met"
    assert v1_stream[1:] == ["0.796 ms", "≤ 0.6 ms", "0.500 ms", "0.200 ms", "met"]
    assert chat[1:] == ["0.516 ms", "≤ 0.35 ms", "0.300 ms (1,000 req/s)", "0.200 ms (1,000 req/s)", "met"]
    assert embed[1:3] == ["0.991 ms", "≤ 0.40 ms"]
    assert embed[5] == "**missed**"
    assert tags[1:3] == ["0.155 ms", "≤ 0.10 ms"]
    assert tags[5] == "met"
    assert first[1:3] == ["2.00 ms", "≤ 0.4 ms (backend alone 0.09 ms)"]
    assert first[3] == "1.000 ms (backend alone 1.000 ms)"
    assert first[5] == "**missed**"
    assert paced_row[2] == "below the Go peer's"
    assert paced_row[5] == "**missed**"  # 0.08 cores per 1,000 events/s against the peer's 0.05
    assert rss[1:4] == ["54.8 / 59.2 MB", "≤ 35 / ≤ 60 MB", "55.0 / 60.0 MB; 58.0 MB after"]
    assert rss[5] == "idle: **missed**; peak: met"


def test_the_other_streams_are_held_against_the_chat_stream_of_their_own_run() -> None:
    slower = {**CPU, ("chat-stream", "daemon"): 0.9, ("chat-stream", "peer"): 0.6}
    chat_stream, others, *_ = _targets_rows(report.render(_results(with_peer=True, cpu=slower)))
    assert others[2].endswith("(≤ 1.080 ms in this run)")
    assert others[5] == "met"
    assert chat_stream[5] == "**missed**"  # both parts


def test_the_targets_table_without_the_peer_says_what_it_cannot_judge() -> None:
    rows = _targets_rows(report.render(_results(with_peer=False, cpu=CPU)))
    assert len(rows) == 9
    assert all(len(row) == 5 for row in rows)
    assert rows[0][3:] == ["0.700 ms", "≤ 0.75 ms: met; below the peer: no peer to compare"]
    assert rows[1][4] == "`/api/generate`: met; `/v1/messages`: **missed**; `/v1/responses`: met"
    assert rows[7][4] == "no peer to compare"
    no_paced = _results(with_peer=False)
    del no_paced["paced"]
    paced_row = _targets_rows(report.render(no_paced))[7]
    assert paced_row[3:] == ["not run (`--paced 0`)", "not measured"]


def test_the_report_says_what_the_daemon_asks_the_backend_for() -> None:
    text = report.render(_results(with_peer=False))
    assert "without `stream` reach the backend as a stream" in text
    assert "translated onto the backend's `/v1/chat/completions`" in text
    whole = _results(with_peer=False)
    whole["config"]["daemon_args"] = ["--dialect=llamacpp"]
    assert "ask the backend for one JSON reply" in report.render(whole)


def test_the_peers_log_lines_count_once_per_message() -> None:
    assert (
        peer.GO_LOG_PREFIX.sub("", "2026/12/04 02:18:31 upstream chat error: x") == "upstream chat error: x"
    )
    merged = report._merge_problems(["3 x 02:18:31 upstream error", "2 x 02:19:00 upstream error", "1 x b"])
    assert merged == ["5 x upstream error", "1 x b"]


def test_the_report_says_why_the_peer_was_skipped_and_drops_its_columns() -> None:
    text = report.render(_results(with_peer=False))
    assert "**Go peer (K0IN/openai-ollama-proxy): skipped**: no source of it: none at /x/.mirror." in text
    assert "Go peer req/s" not in text
    assert "Go peer, same run" not in text
    assert f"| 100 {report.TIMES} 50 | daemon |" in text
    assert "Skipped: no source of it" in text


def test_the_report_reads_results_from_before_the_peer() -> None:
    old = _results(with_peer=False)
    del old["peer"], old["paced"]
    text = report.render(old)
    assert "not part of this run" in text
    assert "Not run (`--paced 0`)" in text

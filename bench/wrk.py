"""wrk runs: a Lua script per request (method, body, headers) whose ``done()`` prints the summary as JSON."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.scenarios import Request

MARKER = "WRKJSON "

# Through the daemon, each response's status is tallied (wrk only counts "non-2xx"), and the first error body
# kept, so a failed row says what the daemon answered.  Direct to nginx this per-response Lua is left out.
LUA_STATUSES = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {}; sample = "" end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status > 399 and sample == "" then sample = string.sub(body or "", 1, 200) end
end
"""

LUA_DONE = r"""
done = function(summary, latency, requests)
  if threads then
    for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
        io.write(string.format("WRKSTATUS %d %d\n", status, count))
      end
      local sample = thread:get("sample")
      if sample ~= "" then io.write("WRKSAMPLE " .. string.gsub(sample, "%s+", " ") .. "\n") end
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"mean":%.2f,"max":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
"""


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    bytes: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int]
    statuses: dict[str, int] = field(default_factory=dict)
    error_sample: str = ""

    @property
    def failed_requests(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def lua_script(request: Request, *, tally_statuses: bool = False) -> str:
    lines = [f'wrk.method = "{request.method}"']
    body = request.body_bytes()
    if body is not None:
        text = body.decode()
        if "]==]" in text:
            raise ValueError("body contains the Lua long-bracket terminator")
        lines.append(f"wrk.body = [==[{text}]==]")
    for name, value in request.headers().items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    return "\n".join(lines) + "\n" + (LUA_STATUSES if tally_statuses else "") + LUA_DONE


def write_script(directory: Path, name: str, request: Request, *, tally_statuses: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.lua"
    path.write_text(lua_script(request, tally_statuses=tally_statuses))
    return path


def run_wrk(
    wrk: str,
    script: Path,
    url: str,
    *,
    connections: int,
    duration: int,
    threads: int = 1,
    timeout: int = 10,
    cpu: int | None = None,
) -> WrkResult:
    command = [
        wrk,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{duration}s",
        f"--timeout={timeout}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + timeout + 30, check=False
    )
    raw: dict[str, Any] | None = None
    statuses: dict[str, int] = {}
    sample = ""
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            raw = json.loads(line[len(MARKER) :])
        elif line.startswith("WRKSTATUS "):
            _, status, count = line.split()
            statuses[status] = statuses.get(status, 0) + int(count)
        elif line.startswith("WRKSAMPLE ") and not sample:
            sample = line[len("WRKSAMPLE ") :].strip()
    if raw is None:
        raise RuntimeError(f"wrk printed no summary (exit {done.returncode}): {done.stdout}{done.stderr}")
    seconds = raw["duration_us"] / 1e6
    return WrkResult(
        requests=raw["requests"],
        duration_s=round(seconds, 3),
        bytes=raw["bytes"],
        rps=round(raw["requests"] / seconds, 1) if seconds else 0.0,
        p50_ms=raw["p50"] / 1000,
        p90_ms=raw["p90"] / 1000,
        p99_ms=raw["p99"] / 1000,
        p999_ms=raw["p999"] / 1000,
        mean_ms=round(raw["mean"] / 1000, 3),
        max_ms=raw["max"] / 1000,
        errors={k: int(raw[k]) for k in ("connect", "read", "write", "status", "timeout")},
        statuses=statuses,
        error_sample=sample,
    )

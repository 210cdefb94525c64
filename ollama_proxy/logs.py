"""Log output: twistd's text lines by default, or one compact JSON object per line (``--log-format json``)
for journald, Loki or Elasticsearch.

The JSON form carries the event's own keys (request id, status, model, tokens ...) as fields, not only
the rendered message, so log queries can filter on them.  Twisted's bookkeeping keys (``log_*``) are left
out, except the failure, which becomes a ``traceback`` field.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return repr(value)


def event_as_json(event: LogEvent) -> str:
    """One compact line: ``ts`` (UTC, ms), ``level``, ``ns``, ``msg``, then the event's own fields."""
    stamp = event.get("log_time") or time.time()
    seconds = int(stamp)
    record: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        + f".{int((stamp - seconds) * 1000):03d}Z",
        "level": getattr(event.get("log_level"), "name", "info"),
        "ns": event.get("log_namespace", "-"),
        "msg": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in record:
            record[key] = _plain(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"


def json_observer(stream: IO[str] | None = None) -> ILogObserver:
    """The factory ``twistd --logger=ollama_proxy.logs.json_observer`` calls (``--log-format json``)."""
    return FileLogObserver(stream or sys.stdout, event_as_json)

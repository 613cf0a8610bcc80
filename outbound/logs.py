"""Logging of every `outbound run ...` process, set up in one place from [log] level and
format.

`text` is for a person at a terminal. `json` is one JSON object per line for a log
shipper (journald, Loki, Elasticsearch): `ts` (UTC, ISO 8601), `level`, `logger`,
`process` (bridge, agi, web, worker, beat), `msg`, then every field the caller passed
with `extra=` (attempt_id, campaign, ...), so a call can be followed across processes by
its attempt id without parsing free text. A traceback goes into `exc`."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from .config import Config

TEXT_FORMAT = "%(asctime)s %(levelname)s %(process_name)s %(name)s: %(message)s"

# Attributes every LogRecord has: whatever else a record carries came from `extra=`
# (uvicorn's color_message repeats the message with terminal colours).
_STANDARD = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "process_name",
    "taskName",
    "color_message",
}


class _ProcessName(logging.Filter):
    """Stamps the process's role on every record (the handler's, so third-party loggers
    such as uvicorn's and celery's get it too)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name_ = name

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_name = self.name_
        return True


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a newline in a message stays escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": getattr(record, "process_name", ""),
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out and not key.startswith("_"):
                out[key] = _plain(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of [log] format (`text` or `json`)."""
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def setup_logging(config: Config, process_name: str, stream: IO[str] | None = None) -> None:
    """Replace the root logger's handlers with one on `stream` (stderr by default) in the
    configured format and level. Idempotent: a second call replaces the first."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(str(config.get("log", "format"))))
    handler.addFilter(_ProcessName(process_name))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(str(config.get("log", "level")))

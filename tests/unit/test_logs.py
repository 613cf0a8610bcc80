"""Structured logs (outbound.logs): [log] format = json gives one parseable JSON object per
line with the fields a log shipper indexes and whatever `extra=` carried; text is the
default and stays one human line per record."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from outbound.config import load_config
from outbound.logs import setup_logging


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _logged(tmp_path: Path, **overrides: str) -> list[str]:
    out = io.StringIO()
    setup_logging(load_config(env={}, cwd=tmp_path, overrides=overrides), "bridge", stream=out)
    log = logging.getLogger("ami_bridge.originator")
    log.info("attempt %s answered", "a-1", extra={"attempt_id": "a-1", "campaign": "Spring"})
    log.debug("not at INFO")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("dial failed", extra={"attempt_id": "a-2"})
    return out.getvalue().splitlines()


def test_given_json_format_when_logging_with_extra_then_each_line_is_a_json_object(
    tmp_path: Path,
) -> None:
    lines = _logged(tmp_path, **{"log.format": "json"})
    assert len(lines) == 2  # one line per record, the traceback's newlines escaped
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO"
    assert first["logger"] == "ami_bridge.originator"
    assert first["process"] == "bridge"
    assert first["msg"] == "attempt a-1 answered"
    assert first["attempt_id"] == "a-1" and first["campaign"] == "Spring"
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert "args" not in first and "exc" not in first  # LogRecord internals stay out
    assert second["level"] == "ERROR" and second["attempt_id"] == "a-2"
    assert "RuntimeError: boom" in second["exc"] and "campaign" not in second


def test_given_the_defaults_then_text_lines_name_level_process_and_logger(tmp_path: Path) -> None:
    assert load_config(env={}, cwd=tmp_path).get("log", "format") == "text"
    lines = _logged(tmp_path)
    assert " INFO bridge ami_bridge.originator: attempt a-1 answered" in lines[0]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])
    assert any("RuntimeError: boom" in line for line in lines)


def test_given_debug_level_then_debug_records_pass(tmp_path: Path) -> None:
    lines = _logged(tmp_path, **{"log.format": "json", "log.level": "DEBUG"})
    assert [json.loads(line)["msg"] for line in lines][:2] == [
        "attempt a-1 answered",
        "not at INFO",
    ]

"""`outbound demo` as a person runs it: a subprocess that brings up its own sandbox
Asterisk, the bridge, FastAGI, the scheduler's worker and beat and the status page, runs a
predictive campaign with simulated agents, and ends with a summary that must agree with
Asterisk's CDR; on its end or on Ctrl-C nothing it started is left running."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from outbound.sandbox import Sandbox, free_port
from tests.helpers.redis_url import redis_url
from tests.helpers.until import until

pytestmark = pytest.mark.asterisk
ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = redis_url(11)
ARGS = ["--contacts", "60", "--agents", "3", "--talk", "3-8"]


def _env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOUND_")}
    return {
        **env,
        "PYTHONPATH": str(ROOT),
        "OUTBOUND_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}",
        "OUTBOUND_REDIS_URL": redis_url,
        "COLUMNS": "120",
        "TMPDIR": str(tmp_path),  # the demo's logs and work files stay in the test's folder
    }


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Starts `outbound demo` with ARGS and more; afterwards (a failed test too) kills
    the demo and anything it left running."""
    started: list[tuple[subprocess.Popen[str], str]] = []

    def go(name: str, *args: str, redis_url: str = REDIS_URL) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "outbound.cli", "demo", "--sandbox-name", name]
        proc = subprocess.Popen(
            [*argv, *ARGS, *args],
            env=_env(tmp_path, redis_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
        started.append((proc, name))
        return proc

    yield go
    for proc, name in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        _kill(_left_behind(proc.pid, name))
        Sandbox(name=name, log=lambda m: None).remove()  # its files (logs, CDR) too


def _row(out: str, label: str) -> int:
    m = re.search(rf"{re.escape(label)}\s*│\s*(\d+)", out)
    assert m, f"no {label!r} in the summary:\n{out}"
    return int(m.group(1))


def _kill(left: list[str]) -> None:
    for line in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)


def _left_behind(demo_pid: int, name: str) -> list[str]:
    """Processes still running that the demo started: the Asterisk of its sandbox, any
    process whose parent is the demo, or that carries the demo's mark in its environment
    (an orphan's parent is no longer the demo: Celery, uvicorn, redis-server)."""
    found = []
    mark = f"OUTBOUND_DEMO={name}".encode()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (p / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if f"outbound-sandbox/{name}/" in cmd or ppid == demo_pid or mark in env:
            found.append(f"{p.name}: {cmd}")
    return found


def _check_summary(out: str) -> None:
    placed, answered = _row(out, "placed (database)"), _row(out, "answered (database)")
    assert placed == _row(out, "placed (Asterisk CDR)") and placed > 0, out
    assert answered == _row(out, "answered (Asterisk CDR)") and answered > 0, out
    assert _row(out, "humans connected") > 0, out
    assert _row(out, "machine hung up") >= 0, out


def test_given_a_short_demo_when_it_ends_then_its_summary_agrees_with_asterisks_cdr_and_nothing_is_left(
    start: Callable[..., subprocess.Popen[str]],
) -> None:
    name = f"test-{os.getpid()}-demo"
    proc = start(name, "--duration", "25")
    out, _ = proc.communicate(timeout=150)
    assert proc.returncode == 0, out
    _check_summary(out)
    assert "status page: http://127.0.0.1:" in out, out
    assert _left_behind(proc.pid, name) == []


def test_given_a_running_demo_when_interrupted_then_it_stops_cleanly_with_a_summary(
    start: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> None:
    name = f"test-{os.getpid()}-demo-int"
    # Nothing answers there: the demo starts a Redis of its own (and must stop it too).
    proc = start(name, "--duration", "300", redis_url=f"redis://127.0.0.1:{free_port()}/0")

    def connected() -> bool:
        # Mid-run: a person is talking to an agent (the demo's own database).
        db = tmp_path / "demo.db"
        if proc.poll() is not None:
            raise AssertionError(
                f"the demo ended early: {proc.stdout.read() if proc.stdout else ''}"
            )
        if not db.exists():
            return False
        with sqlite3.connect(db, timeout=5) as c:
            try:
                n = c.execute("SELECT count(*) FROM call_attempts WHERE connected_at IS NOT NULL")
                return bool(n.fetchone()[0])
            except sqlite3.OperationalError:  # tables not created yet
                return False

    try:
        until(connected, timeout=90, interval=0.5, message="no call connected")
    except AssertionError as exc:
        proc.send_signal(signal.SIGINT)
        raise AssertionError(f"{exc}:\n{proc.communicate(timeout=60)[0]}") from None
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), out
    assert "started a private one" in out, out
    _check_summary(out)
    assert _left_behind(proc.pid, name) == []

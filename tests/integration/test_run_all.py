"""`outbound run all` as an admin runs it on a single box: bridge, agi, web, worker and
beat against the sandbox Asterisk, a migrated SQLite database and a redis-server of the
test's own. It becomes healthy (the bridge logged in to Asterisk, the scheduler sweeps), a
child killed with SIGKILL comes back, SIGTERM stops everything and exits 0, and a SIGKILL
of `run all` itself takes every child with it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from ami_bridge.service import HEARTBEATS_KEY
from outbound.sandbox import Sandbox, SandboxInfo
from tests.helpers.callbacks import free_port, private_redis
from tests.helpers.db import migrated_factory
from tests.helpers.stack import TRUNK
from tests.helpers.until import until

ROOT = Path(__file__).resolve().parents[2]
STARTED = re.compile(r"(\w+) started \(pid (\d+)\)")


@dataclass
class RunAll:
    proc: subprocess.Popen[bytes]
    log: Path
    web: str
    agi_port: int
    server: str

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def pids(self) -> dict[str, list[int]]:
        """Every child started so far, by name, oldest first (from the parent's log)."""
        out: dict[str, list[int]] = {}
        for name, pid in STARTED.findall(self.text()):
            out.setdefault(name, []).append(int(pid))
        return out


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start(sandbox: SandboxInfo, tmp_path: Path, redis_url: str) -> RunAll:
    db = tmp_path / "box.db"
    migrated_factory(db)  # `outbound db upgrade` done
    server = f"box-{uuid.uuid4().hex[:6]}"
    web_port = free_port()
    sets = {
        "database.url": f"sqlite:///{db}",
        "redis.url": redis_url,
        "ami.host": sandbox.ami_host,
        "ami.port": str(sandbox.ami_port),
        "ami.username": sandbox.ami_user,
        "ami.secret": sandbox.ami_secret,
        "ami.ping_interval": "1",
        "agi.port": str(sandbox.agi_port),
        "web.port": str(web_port),
        "dialer.server": server,
        "dialer.trunk": TRUNK,
        "log.level": "INFO",
    }
    args = [sys.executable, "-m", "outbound.cli"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOUND_")}
    env["PYTHONPATH"] = str(ROOT)
    log = tmp_path / "run-all.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*args, "run", "all"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return RunAll(proc, log, f"http://127.0.0.1:{web_port}", sandbox.agi_port, server)


@pytest.fixture
def redis_url() -> Iterator[str]:
    with private_redis() as url:
        yield url


def _stop(box: RunAll) -> None:
    if box.proc.poll() is None:
        box.proc.kill()
        box.proc.wait(10)
    for pids in box.pids().values():
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_given_run_all_when_a_child_is_killed_then_it_is_restarted_and_sigterm_stops_all(
    sandbox: SandboxInfo, sandbox_instance: Sandbox, tmp_path: Path, redis_url: str
) -> None:
    box = start(sandbox, tmp_path, redis_url)
    try:

        def healthy() -> dict[str, object] | None:
            assert box.proc.poll() is None, box.text()[-3000:]
            h = httpx.get(f"{box.web}/healthz", timeout=5)
            body = h.json()
            ok = h.status_code == 200 and body.get("ami") == {box.server: "ok"}
            return body if ok and body.get("scheduler") == "ok" else None

        until(healthy, timeout=60, interval=0.3, ignore=(httpx.HTTPError,),
              message="run all healthy: web, bridge on AMI, worker and beat sweeping")  # fmt: skip
        scrape = httpx.get(f"{box.web}/metrics", timeout=5).text
        assert f'outbound_ami_up{{server="{box.server}"}} 1\n' in scrape
        # Asterisk itself has the dialer's account logged in.
        assert sandbox.ami_user in sandbox_instance.cli("manager show connected")
        assert re.search(r"^web +\| ", box.text(), re.M), "children's output is prefixed"

        agi = box.pids()["agi"][-1]
        os.kill(agi, signal.SIGKILL)
        until(lambda: len(box.pids().get("agi", [])) == 2, timeout=15, message="agi restarted")
        assert "exited with code -9; restarting in 1 s" in box.text()
        assert not alive(agi)
        until(lambda: _listening(box.agi_port), timeout=15, message="new agi listening")

        children = [pid for pids in box.pids().values() for pid in pids]
        assert len(children) == 6  # five, plus the agi's second life
        box.proc.send_signal(signal.SIGTERM)
        assert box.proc.wait(30) == 0, box.text()[-3000:]
        assert [pid for pid in children if alive(pid)] == []
        until(lambda: sandbox.ami_user not in sandbox_instance.cli("manager show connected"),
              timeout=10, message="the bridge logged off")  # fmt: skip
        assert not _listening(box.agi_port)
        # A clean stop is no outage: the bridge took its heartbeat with it.
        assert redis.Redis.from_url(redis_url).hgetall(HEARTBEATS_KEY) == {}
    finally:
        _stop(box)


def test_given_run_all_when_it_is_killed_outright_then_no_child_survives(
    sandbox: SandboxInfo, tmp_path: Path, redis_url: str
) -> None:
    box = start(sandbox, tmp_path, redis_url)
    try:
        until(lambda: len(box.pids()) == 5, timeout=20, message="five children started")
        children = [pids[0] for pids in box.pids().values()]
        assert all(alive(pid) for pid in children)
        box.proc.kill()
        box.proc.wait(10)
        until(lambda: not any(alive(pid) for pid in children), timeout=20,
              message="children gone with their parent")  # fmt: skip
    finally:
        _stop(box)

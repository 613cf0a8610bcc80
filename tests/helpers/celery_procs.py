"""Real Celery worker and beat processes of the scheduler (`outbound run worker|beat`),
started as subprocesses with their own logs, killed gently or with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI = "from outbound.cli import main; main()"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Scheduler:
    """Worker and beat processes sharing one database and one Redis (env below)."""

    workdir: Path
    database_url: str
    redis_url: str
    batch_size: int = 500
    procs: list[Proc] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOUND_")}
        env.update(
            PYTHONPATH=str(ROOT),
            OUTBOUND_DATABASE_URL=self.database_url,
            OUTBOUND_REDIS_URL=self.redis_url,
            OUTBOUND_SCHEDULER_SWEEP_INTERVAL="1",
            OUTBOUND_SCHEDULER_BATCH_SIZE=str(self.batch_size),
            OUTBOUND_LOG_LEVEL="INFO",
        )
        return env

    def _start(self, name: str, args: list[str]) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-c", CLI, "run", *args],
                cwd=self.workdir,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def worker(self, name: str = "w1") -> Proc:
        return self._start(name, ["worker", "--hostname", f"{name}@%h"])

    def beat(self, name: str = "b1") -> Proc:
        return self._start(name, ["beat", "--schedule", str(self.workdir / f"{name}.db")])

    @staticmethod
    def kill9(proc: Proc) -> None:
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(timeout=10)

    def stop(self) -> None:
        """TERM each process we started, then KILL what is still running."""
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.terminate()
        for p in self.procs:
            try:
                p.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(timeout=5)

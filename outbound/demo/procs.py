"""The demo's child processes: a private Redis when none answers at the configured URL,
and the scheduler's worker and beat and the status page as `outbound run ...`.

Every child gets its own session (process group): Ctrl-C in the terminal reaches the
demo only, and the demo stops its children in order (SIGTERM, a deadline, then SIGKILL
of the group), so that nothing is left behind, whatever stage the demo was in."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis as sredis

import outbound

from ..sandbox import free_port

MARK = "OUTBOUND_DEMO"  # in every child's environment: the demo's sandbox name
# Where this `outbound` package lives: the children import the same code.
CODE_ROOT = Path(outbound.__file__).resolve().parents[1]


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """A Redis server answers PING at `url` now."""
    client = sredis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (sredis.RedisError, OSError):
        return False
    finally:
        client.close()


def env_of(overrides: Mapping[str, str], config_path: str | None) -> dict[str, str]:
    """The environment of a child: this process's, with every `section.key` override as
    OUTBOUND_SECTION_KEY (outbound.config reads them), the same configuration file, and
    this code first on the import path."""
    env = dict(os.environ)
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        env[f"OUTBOUND_{section.upper()}_{key.upper()}"] = value
    if config_path:
        env["OUTBOUND_CONFIG"] = str(config_path)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(CODE_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    return env


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Children:
    """The processes the demo started, stopped in reverse order by `stop`. Each has
    MARK=`mark` in its environment: a process that outlived the demo can be found."""

    mark: str = ""
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="outbound-demo-")))
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env={**(env if env is not None else os.environ), MARK: self.mark},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops us in order
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def outbound(self, name: str, args: list[str], env: Mapping[str, str]) -> Child:
        """`python -m outbound.cli run <args>` with the demo's configuration."""
        return self.start(name, [sys.executable, "-m", "outbound.cli", "run", *args], env)

    def redis(self) -> str:
        """A private redis-server on a free loopback port, nothing on disk; its URL."""
        port = free_port()
        self.start(
            "redis",
            [
                "redis-server",
                *("--bind", "127.0.0.1", "--port", str(port)),
                *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
            ],
        )
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while not redis_answers(url, 0.5):
            if time.monotonic() > deadline or self.children[-1].popen.poll() is not None:
                raise RuntimeError(f"the private redis-server did not start: {self.tail('redis')}")
            time.sleep(0.1)
        return url

    def dead(self) -> list[str]:
        """Names of children that exited on their own (a crash, a port taken)."""
        return [c.name for c in self.children if c.popen.poll() is not None]

    def tail(self, name: str, lines: int = 15) -> str:
        for c in self.children:
            if c.name == name and c.log.exists():
                return "\n".join(c.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, deadline_s: float = 15.0) -> None:
        """SIGTERM every child (newest first: the status page and Celery before the Redis
        they use), wait until `deadline_s`, then SIGKILL the process group of any that is
        still there (Celery's pool and uvicorn's workers included)."""
        alive = [c for c in reversed(self.children) if c.popen.poll() is None]
        for c in alive:
            with contextlib.suppress(ProcessLookupError):
                c.popen.send_signal(signal.SIGTERM)
        until = time.monotonic() + deadline_s
        for c in alive:
            try:
                c.popen.wait(timeout=max(0.1, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for c in self.children:
            # The group too: a child's own children must not outlive it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.popen.wait(timeout=5)
        self.children.clear()


def redis_db_url(url: str) -> str:
    """`url` as shown to a person (no password)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path}"

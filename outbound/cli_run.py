"""`outbound run ...` and `outbound agi`: the dialer's processes on a real PBX, each in
the foreground (systemd or docker keep them up)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

import click

from .cli_common import Ctx, errors
from .logs import setup_logging


# ---------------------------------------------------------------- run
@click.group()
def run() -> None:
    """Run the dialer's processes on a real PBX (each in the foreground)."""


@run.command("bridge")
@click.pass_obj
@errors
def run_bridge(obj: Ctx) -> None:
    """The AMI bridge for [dialer] server: originates, tracks and controls calls."""
    import asyncio

    import redis.asyncio as aredis

    from ami_bridge.service import Bridge

    setup_logging(obj.config, "bridge")

    async def go() -> None:
        bridge = Bridge(obj.config, obj.factory, aredis.Redis.from_url(obj.config.redis_url))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, bridge.stop)
        await bridge.run()

    asyncio.run(go())


@run.command("agi")
@click.pass_obj
@errors
def run_agi(obj: Ctx) -> None:
    """The FastAGI server the dialplan calls on answered legs (route `classify`)."""
    import asyncio

    import redis.asyncio as aredis

    from agi_scripts.routes import register
    from agi_scripts.server import AgiServer

    setup_logging(obj.config, "agi")

    async def go() -> None:
        server = AgiServer(obj.config.get("agi", "host"), obj.config.get("agi", "port"))
        register(server, obj.factory, aredis.Redis.from_url(obj.config.redis_url), obj.config)
        port = await server.start()
        click.echo(f"FastAGI listening on {obj.config.get('agi', 'host')}:{port}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.close()

    asyncio.run(go())


@run.command("web")
@click.pass_obj
@errors
def run_web(obj: Ctx) -> None:
    """The status page: the agent page at / and the JSON API, with uvicorn on [web] host
    and port (loopback by default; put a TLS proxy in front for anything else)."""
    from status_page.app import serve

    setup_logging(obj.config, "web")
    serve(obj.config)


def _celery_logging(obj: Ctx, name: str) -> None:
    """Celery configures logging itself unless someone answers its setup_logging signal:
    answering it keeps the [log] format (JSON lines too) for worker and beat."""
    from celery.signals import setup_logging as celery_setup_logging

    def ours(**_: object) -> None:
        setup_logging(obj.config, name)

    celery_setup_logging.connect(ours, weak=False)


_CELERY_ARGS = {"ignore_unknown_options": True, "allow_extra_args": True}
# One process, one sweep at a time; no gossip/mingle/heartbeat: their fanout bindings
# vanish with a FLUSHALL and the scheduler needs none of them.
_WORKER = ("worker", "--pool=solo", "--without-gossip", "--without-mingle", "--without-heartbeat")
_BEAT = ("beat",)


@run.command("worker", context_settings=_CELERY_ARGS)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
@errors
def run_worker(obj: Ctx, celery_args: tuple[str, ...]) -> None:
    """The Celery worker that runs the scheduler's sweeps (fires due callbacks, brings
    retries back). Extra arguments go to `celery worker` (e.g. --hostname)."""
    from scheduler.app import make_app

    _celery_logging(obj, "worker")
    level = f"--loglevel={obj.config.get('log', 'level')}"
    make_app(obj.config).worker_main([*_WORKER, level, *celery_args])


@run.command("beat", context_settings=_CELERY_ARGS)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
@errors
def run_beat(obj: Ctx, celery_args: tuple[str, ...]) -> None:
    """Celery beat: sends a sweep every [scheduler] sweep_interval seconds. Extra
    arguments go to `celery beat` (e.g. --schedule FILE). Two beats are safe."""
    from scheduler.app import make_app

    _celery_logging(obj, "beat")
    level = f"--loglevel={obj.config.get('log', 'level')}"
    make_app(obj.config).start([*_BEAT, level, *celery_args])


@click.command("agi", context_settings={"ignore_unknown_options": True})
@click.argument("route", required=False)
@click.argument("call_args", nargs=-1)
@click.pass_obj
@errors
def agi(obj: Ctx, route: str | None, call_args: tuple[str, ...]) -> None:
    """One call as a classic process AGI on stdin/stdout (Asterisk starts it per call:
    ``AGI(/usr/local/bin/outbound-agi,classify)``). ROUTE defaults to agi_arg_1, else
    the script's name. Logs go to stderr; stdout is the AGI stream only. Asterisk also
    passes the AGI() arguments on the command line: CALL_ARGS are accepted and ignored,
    since the handlers read them from the AGI header (agi_arg_N)."""
    import redis.asyncio as aredis

    from agi_scripts.process import run as run_process_agi
    from agi_scripts.routes import register

    setup_logging(obj.config, "agi-process", stream=sys.stderr)
    redis = aredis.Redis.from_url(obj.config.redis_url)
    cfg = obj.config
    raise SystemExit(run_process_agi(lambda s: register(s, obj.factory, redis, cfg), route))


# ---------------------------------------------------------------- run all
ALL = ("bridge", "agi", "web", "worker", "beat")
RESTART_MIN_S, RESTART_MAX_S = 1.0, 30.0
STEADY_S = 60.0  # a child that ran this long is restarted after the shortest wait again
STOP_DEADLINE_S = 15.0  # after SIGTERM, what is still running gets SIGKILL


@run.command("all")
@click.pass_obj
@errors
def run_all(obj: Ctx) -> None:
    """Everything of a single box at once: bridge, agi, web, worker and beat as child
    processes with the same --config and --set, their output prefixed with their name. A
    child that dies is restarted (waiting 1 s, doubling up to 30 s while it keeps dying).
    SIGINT or SIGTERM stops all of them (SIGTERM, then SIGKILL after 15 s) and exits 0;
    the children also die with this process should it be killed outright."""
    setup_logging(obj.config, "all")
    args = [sys.executable, "-m", "outbound.cli"]
    if obj.config_path:
        args += ["--config", obj.config_path]
    for key, value in obj.overrides.items():
        args += ["--set", f"{key}={value}"]
    prefix = obj.config.get("log", "format") == "text"
    Supervisor({name: [*args, "run", name] for name in ALL}, prefix).run()


def _die_with(parent: int) -> None:
    """In the child, before exec: SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG),
    so a `kill -9` of `run all` leaves no process behind. If the parent is already gone
    (it died between fork and here), leave at once. No threads exist in the parent, so
    this is safe to run after fork."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


class Supervisor:
    """The parent of `run all`: one thread, a selector over the children's output, and
    the restart and stop rules above."""

    def __init__(self, commands: dict[str, list[str]], prefix: bool) -> None:
        self.commands = commands
        self.prefix = prefix
        self.log = logging.getLogger("outbound.run_all")
        self.procs: dict[str, Any] = {}
        self.started: dict[str, float] = {}
        self.wait: dict[str, float] = {name: RESTART_MIN_S for name in commands}
        self.restart_at: dict[str, float] = {}
        self.partial: dict[str, bytes] = {}
        self.stopping = False

    def run(self) -> None:
        self.sel = selectors.DefaultSelector()

        def stop(signum: int, _frame: Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for name in self.commands:
            self.start(name)
        while not self.stopping:
            self.pump(0.2)
            now = time.monotonic()
            for name, p in self.procs.items():
                if p.poll() is not None and name not in self.restart_at:
                    self.died(name, p.returncode, now)
            for name, at in list(self.restart_at.items()):
                if at <= now and not self.stopping:
                    del self.restart_at[name]
                    self.start(name)
        self.stop_all()

    def start(self, name: str) -> None:
        p = subprocess.Popen(
            self.commands[name],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop them in order
            preexec_fn=functools.partial(_die_with, os.getpid()),
        )
        assert p.stdout is not None
        os.set_blocking(p.stdout.fileno(), False)
        self.sel.register(p.stdout, selectors.EVENT_READ, name)
        self.procs[name] = p
        self.started[name] = time.monotonic()
        self.log.info("%s started (pid %d)", name, p.pid, extra={"child": name, "pid": p.pid})

    def died(self, name: str, code: int, now: float) -> None:
        if now - self.started[name] >= STEADY_S:
            self.wait[name] = RESTART_MIN_S
        delay = self.wait[name]
        self.wait[name] = min(delay * 2, RESTART_MAX_S)
        self.restart_at[name] = now + delay
        self.log.warning(
            "%s (pid %d) exited with code %s; restarting in %.0f s",
            name,
            self.procs[name].pid,
            code,
            delay,
            extra={"child": name, "pid": self.procs[name].pid, "code": code},
        )

    def pump(self, timeout: float) -> None:
        """Copy what the children wrote to our stdout, line by line, prefixed."""
        for key, _ in self.sel.select(timeout):
            name = str(key.data)
            try:
                data = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not data:  # the child closed its output (it exited)
                self.sel.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
                data = b"\n" if self.partial.get(name) else b""
            *lines, self.partial[name] = (self.partial.get(name, b"") + data).split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                out = f"{name:<6} | {text}" if self.prefix else text
                sys.stdout.write(out + "\n")
            sys.stdout.flush()

    def stop_all(self) -> None:
        self.log.info("stopping %s", ", ".join(self.procs))
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_DEADLINE_S
        while any(p.poll() is None for p in self.procs.values()):
            if time.monotonic() >= deadline:
                for name, p in self.procs.items():
                    if p.poll() is None:
                        self.log.warning("%s (pid %d) did not stop: SIGKILL", name, p.pid)
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(p.pid, signal.SIGKILL)
                        p.wait()
                break
            self.pump(0.1)
        while self.sel.get_map():
            self.pump(0)
            if not any(True for _ in self.sel.select(0)):
                break
        self.log.info("all stopped")

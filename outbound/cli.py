"""The `outbound` command: the one composition root that wires the runtimes together.

Runtime packages (ami_bridge, agi_scripts, scheduler, status_page) are imported lazily,
inside the commands that run them, so `outbound --help` and the admin commands stay light.
Here: the processes for a real PBX (`outbound run ...`, `outbound agi`), the demo's
in-process bridge and FastAGI server, and `asterisk check`'s AMI connection; the other
commands live in cli_*.py.
"""

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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import click

from .cli_admin import COMMANDS
from .cli_amd import amd
from .cli_asterisk import asterisk
from .cli_callbacks import callbacks
from .cli_common import Ctx, errors
from .cli_demo import demo
from .cli_sandbox import sandbox
from .logs import setup_logging

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from .config import Config
    from .sandbox import SandboxInfo


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


# ---------------------------------------------------------------- demo
async def start_stack(
    cfg: Config, factory: sessionmaker[Session], info: SandboxInfo, talk: tuple[int, int]
) -> Callable[[], Awaitable[None]]:
    """The bridge (dialer, agent sessions, command stream) and the FastAGI server where
    the sandbox's dialplan sends every answered call, in this process. The predictive
    pacer starts from estimates that fit the simulated world and warms up after a few
    dozen dials instead of fifty (a demo is short); everything else is the product's."""
    import asyncio

    import redis.asyncio as aredis

    from agi_scripts.routes import register
    from agi_scripts.server import AgiServer
    from ami_bridge.service import Bridge, health_key, live_key

    from . import pacing

    bridge_redis = aredis.Redis.from_url(cfg.redis_url)
    bridge = Bridge(cfg, factory, bridge_redis, consumer="demo")
    if bridge.dialer is not None:
        p = bridge.dialer.predictive
        p.min_dials, p.min_calls = 10, 3
        talk_mean = (talk[0] + talk[1]) / 2
        p.priors = pacing.Priors(
            answer_rate=0.4,
            ring_s=(4.0, 2.0),
            talk_s=(talk_mean, max(1.0, (talk[1] - talk[0]) / 4)),
            wrap_s=(2.5, 1.0),
        )
    task = asyncio.ensure_future(bridge.run())
    agi_redis = aredis.Redis.from_url(cfg.redis_url)
    agi = AgiServer("127.0.0.1", info.agi_port)
    register(agi, factory, agi_redis, cfg)
    await agi.start()

    async def stop() -> None:
        bridge.stop()
        try:
            await asyncio.wait_for(task, 15)
        finally:
            await agi.close()
            await agi_redis.aclose()
            # The bridge's snapshot and health record of this run's server go with it.
            await bridge_redis.delete(live_key(bridge.server), health_key(bridge.server))
            await bridge_redis.aclose()

    return stop


# ---------------------------------------------------------------- asterisk check
async def asterisk_check(obj: Ctx, timeout: float) -> Any:
    """`outbound asterisk check`'s look at Asterisk with the [ami] account (cli_asterisk.py)."""
    from ami_bridge.connection import AmiActionFailed, AmiConnection, AmiError

    from .asterisk_install import (
        CDR_BACKENDS,
        CheckReport,
        dialplan_contexts,
        judge_actions,
        judge_contexts,
        judge_modules,
        needed_modules,
        snippet_text,
    )

    cfg = obj.config
    report = CheckReport()
    host, port, user = cfg.get("ami", "host"), cfg.get("ami", "port"), cfg.get("ami", "username")
    ami = AmiConnection(
        host,
        port,
        user,
        cfg.get("ami", "secret"),
        action_timeout=min(timeout, float(cfg.get("ami", "action_timeout"))),
    )
    try:
        # ready = logged in and FullyBooted seen, which needs read=system.
        await ami.start(wait=timeout)
    except AmiError as exc:
        await ami.close()
        hint = "" if "login failed" in str(exc) else " (FullyBooted needs read=system)"
        report.add("ami", f"{user}@{host}:{port}", "problem", f"{exc}{hint}")
        return report
    try:
        report.add("ami", f"{user}@{host}:{port}", "ok", "logged in, Asterisk fully booted")
        try:
            settings = await ami.send("CoreSettings")
            report.add("asterisk", "version", "info", str(settings.get("AsteriskVersion", "?")))
        except AmiActionFailed as exc:
            report.add("asterisk", "version", "unknown", str(exc))

        # ListCommands is open to every account and lists only the actions its write
        # classes allow: the account's rights without trying anything.
        listed = await ami.send("ListCommands")
        allowed = {str(k) for k in listed if k not in ("Response", "ActionID", "Message")}
        judge_actions(report, allowed)
        report.add(
            "right",
            "read classes",
            "info",
            "not visible over AMI; read=system shown by FullyBooted, call/dtmf/user as "
            "given by manager_outbound.conf",
        )

        dialplan = snippet_text("extensions_outbound.conf")
        trunks = [str(cfg.get("dialer", "trunk")), str(cfg.get("dialer", "internal"))]
        needs = needed_modules(dialplan, trunks)
        loaded: dict[str, bool | None] = {}
        # IFMODULE through Getvar (write=call): ModuleCheck would need 'system'.
        for mod in [n.module for n in needs] + list(CDR_BACKENDS):
            try:
                resp = await ami.send("Getvar", {"Variable": f"IFMODULE({mod}.so)"})
                value = str(resp.get("Value", ""))
                loaded[mod] = {"1": True, "0": False}.get(value)
            except AmiActionFailed:
                loaded[mod] = None
        judge_modules(report, needs, loaded)

        present: dict[str, bool] = {}
        needed = [c for c in dialplan_contexts(dialplan) if c.startswith("outbound-")]
        for ctx in needed:
            try:
                await ami.send_list("ShowDialPlan", {"Context": ctx})
                present[ctx] = True
            except AmiActionFailed:
                present[ctx] = False
        judge_contexts(report, needed, present)

        try:
            base = await ami.send("Getvar", {"Variable": "OUTBOUND_AGI_BASE"})
            value = str(base.get("Value", "") or "")
            port = int(cfg.get("agi", "port"))
            used = value or "agi://127.0.0.1:4573"
            if used.startswith("agi://") and not used.rstrip("/").endswith(f":{port}"):
                report.add(
                    "dialplan", "OUTBOUND_AGI_BASE", "warning", f"{used}, but [agi] port is {port}"
                )
            else:
                report.add("dialplan", "OUTBOUND_AGI_BASE", "info", value or f"not set: {used}")
        except AmiActionFailed as exc:
            report.add("dialplan", "OUTBOUND_AGI_BASE", "unknown", str(exc))
    except AmiError as exc:
        report.add("ami", "session", "problem", str(exc))
    finally:
        await ami.close()
    return report


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="OUTBOUND_CONFIG",
    help="INI file (default: $OUTBOUND_CONFIG, else ./outbound.ini, else built-in defaults).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override one setting (repeatable), e.g. --set database.url=sqlite:///x.db",
)
@click.version_option(package_name="asterisk-outbound")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, sets: tuple[str, ...]) -> None:
    """asterisk-outbound: an outbound campaign dialer for an existing Asterisk PBX."""
    overrides: dict[str, str] = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise click.BadParameter(f"{item!r} is not SECTION.KEY=VALUE", param_hint="--set")
        overrides[key.strip()] = value
    ctx.obj = Ctx(config_path, overrides)


for _cmd in [*COMMANDS, sandbox]:
    main.add_command(_cmd)
main.add_command(amd)
main.add_command(callbacks)
main.add_command(run)
main.add_command(agi)
main.add_command(demo)
main.add_command(asterisk)


def agi_main() -> None:
    """The `outbound-agi` console script: `outbound agi` for the dialplan's AGI().
    Configuration: $OUTBOUND_CONFIG (Asterisk passes its environment on), or --config /
    --set given before the route."""
    args: list[str] = []
    rest = sys.argv[1:]
    while rest and rest[0].split("=", 1)[0] in ("--config", "--set"):
        n = 1 if "=" in rest[0] else 2
        args, rest = args + rest[:n], rest[n:]
    main(args=[*args, "agi", *rest], prog_name="outbound-agi")


if __name__ == "__main__":  # pragma: no cover
    main()

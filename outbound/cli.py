"""The `outbound` command: the one composition root that wires the runtimes together.

Runtime packages (ami_bridge, agi_scripts, scheduler, status_page) are imported lazily,
inside the commands that run them, so `outbound --help` and the admin commands stay light.
The admin commands live in cli_admin.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .cli_admin import COMMANDS
from .cli_amd import amd
from .cli_callbacks import callbacks
from .cli_common import Ctx, errors
from .cli_sandbox import sandbox


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


# ---------------------------------------------------------------- run
@main.group()
def run() -> None:
    """Run the dialer's processes on a real PBX (each in the foreground)."""


@run.command("bridge")
@click.pass_obj
@errors
def run_bridge(obj: Ctx) -> None:
    """The AMI bridge for [dialer] server: originates, tracks and controls calls."""
    import asyncio
    import logging
    import signal

    import redis.asyncio as aredis

    from ami_bridge.service import Bridge

    logging.basicConfig(
        level=obj.config.get("log", "level"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

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
    import logging
    import signal

    import redis.asyncio as aredis

    from agi_scripts.routes import register
    from agi_scripts.server import AgiServer

    logging.basicConfig(
        level=obj.config.get("log", "level"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

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
    import logging

    from status_page.app import serve

    logging.basicConfig(
        level=obj.config.get("log", "level"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    serve(obj.config)


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

    level = f"--loglevel={obj.config.get('log', 'level')}"
    make_app(obj.config).start([*_BEAT, level, *celery_args])


@main.command("agi", context_settings={"ignore_unknown_options": True})
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
    import logging

    import redis.asyncio as aredis

    from agi_scripts.process import run as run_process_agi
    from agi_scripts.routes import register

    logging.basicConfig(
        level=obj.config.get("log", "level"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    redis = aredis.Redis.from_url(obj.config.redis_url)
    cfg = obj.config
    raise SystemExit(run_process_agi(lambda s: register(s, obj.factory, redis, cfg), route))


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


# ---------------------------------------------------------------- demo
@main.command("demo")
@click.option("--contacts", "n", default=10, show_default=True, help="Simulated contacts.")
@click.option("--keep", is_flag=True, help="Leave the sandbox Asterisk running afterwards.")
@click.option("--sandbox-name", default="demo", show_default=True)
@click.pass_obj
@errors
def demo(obj: Ctx, n: int, keep: bool, sandbox_name: str) -> None:
    """Place real calls on the sandbox Asterisk: one agent on a simulated desk phone works
    a progressive campaign of simulated contacts (humans, machines, busy, unreachable),
    through the bridge and its command stream; every answered call is classified by the
    FastAGI server (AMD + policy: people reach the agent, machines are hung up); ends with
    results checked against CDR."""
    import asyncio
    import csv as csvmod
    import logging
    import tempfile
    from datetime import UTC, datetime

    import redis as sredis
    import redis.asyncio as aredis
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy import select

    from agi_scripts.routes import register
    from agi_scripts.server import AgiServer
    from ami_bridge.service import Bridge

    from .campaigns.interaction import mark_done
    from .campaigns.lifecycle import create_campaign, transition
    from .commands import CommandFailed, send_command
    from .config import load_config
    from .contacts_import import import_contacts
    from .model import Agent, AttemptState, CallAttempt, Campaign, make_engine, upgrade
    from .sandbox import Sandbox, daytime_zone

    logging.basicConfig(level="WARNING")
    con = Console()
    sb = Sandbox(name=sandbox_name, log=lambda m: con.print(m, markup=False))
    info = sb.up()
    cfg = load_config(
        obj.config_path,
        overrides={
            **obj.overrides,
            "ami.port": str(info.ami_port),
            "ami.username": info.ami_user,
            "ami.secret": info.ami_secret,
            "dialer.trunk": "Local/${NUMBER}@sim-contacts",
            "dialer.internal": "Local/${NUMBER}@sim-phones",
            "dialer.server": sandbox_name,
            "dialer.ring_timeout": "15",
        },
    )
    obj._config = cfg
    upgrade(make_engine(cfg.database_url))
    # A new campaign per run (the dial queue and the results start empty); earlier demo
    # campaigns still running (an interrupted run) are stopped so the dialer leaves them.
    camp_name = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with obj.tx() as s:
        for old in s.scalars(select(Campaign).where(Campaign.name.like("demo-%"))):
            if old.state.value == "running":
                transition(s, old.id, "stop")
        camp = create_campaign(
            s,
            camp_name,
            "progressive",
            description="sandbox demo",
            dispositions=["sale", "no-interest"],
        )
        transition(s, camp.id, "load")
        transition(s, camp.id, "start")
        agent = s.get(Agent, "1001")
        if agent is None:
            agent = Agent(id="1001", name="Demo Agent", extension="Local/1001@sim-phones")
            s.add(agent)
        if agent not in camp.agents:
            camp.agents.append(agent)  # the dialer serves a campaign's member agents
        camp_id = camp.id
    scenarios = ["0", "4", "5", "1", "7", "8", "9", "2", "3", "4"]  # sim-contacts last digit
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False, newline="") as fh:
        w = csvmod.writer(fh)
        # The simulated contacts live where it is daytime now, so the real calling-hours
        # rule lets the demo dial at any hour.
        zone = daytime_zone()
        w.writerow(["id", "name", "phone", "timezone"])
        for i in range(n):
            w.writerow([f"demo-{i}", f"Contact {i}", f"+49301{i:05d}{scenarios[i % 10]}", zone])
    rep = import_contacts(obj.factory, camp_id, Path(fh.name), default_region="DE")
    con.print(f"imported {rep.imported} contacts ({rep.already_present} already there)")
    r = sredis.Redis.from_url(cfg.redis_url)

    async def go() -> list[str]:
        bridge = Bridge(cfg, obj.factory, aredis.Redis.from_url(cfg.redis_url), consumer="demo")
        task = asyncio.ensure_future(bridge.run())
        # The FastAGI server where the sandbox's dialplan sends every answered call: AMD
        # and the campaign's policy decide who reaches the agent.
        agi = AgiServer("127.0.0.1", info.agi_port)
        register(agi, obj.factory, aredis.Redis.from_url(cfg.redis_url), cfg)
        await agi.start()

        def cmd(kind: str, **args: Any) -> dict[str, Any]:
            return send_command(r, sandbox_name, kind, args, 40)

        def attempts_now() -> list[CallAttempt]:
            with obj.factory() as s:
                return list(
                    s.scalars(
                        select(CallAttempt)
                        .where(CallAttempt.campaign_id == camp_id)
                        .order_by(CallAttempt.created_at)
                    )
                )

        before = {a.id for a in attempts_now()}
        shown: set[str] = set()
        done: set[str] = set()
        try:
            await asyncio.to_thread(cmd, "login", agent_id="1001")
            await asyncio.to_thread(cmd, "ready", agent_id="1001")
            con.print("agent 1001 logged in and Ready: the bridge's progressive dialer calls")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30 + 15 * n
            while loop.time() < deadline:
                mine = [a for a in attempts_now() if a.id not in before]
                for a in mine:
                    if a.state is AttemptState.CONNECTED and a.id not in done:
                        done.add(a.id)
                        con.print(f"{a.e164}: connected to agent 1001 (the agent talks)")
                        await asyncio.sleep(2)
                        try:
                            await asyncio.to_thread(cmd, "end", attempt_id=a.id)
                        except CommandFailed as exc:
                            con.print(f"  (end: {exc})")  # e.g. the contact hung up first
                    if a.state is AttemptState.ENDED and a.id not in shown:
                        shown.add(a.id)
                        con.print(f"{a.e164}: {a.result.value if a.result else 'ended'}")
                        if a.connected_at is not None and a.disposition is None:
                            mark_done(obj.factory, a.id, "1001", "sale")  # free again
                # Every contact had its first call and nothing is live any more.
                if len({a.contact_id for a in mine}) >= n and all(
                    a.state is AttemptState.ENDED for a in mine
                ):
                    break
                await asyncio.sleep(0.2)
            await asyncio.to_thread(cmd, "logout", agent_id="1001")
        finally:
            bridge.stop()
            await asyncio.wait_for(task, 15)
            await agi.close()
        return [a.id for a in attempts_now() if a.id not in before]

    try:
        attempts = asyncio.run(go())
        with obj.tx() as s:
            transition(s, camp_id, "stop")
        rows = []
        with open(info.cdr_csv_path, newline="") as fh2:
            rows = list(csvmod.reader(fh2))
        cdr = {r[0] for r in rows if r and r[0] in set(attempts)}
        t = Table(title="demo: results (database) and Asterisk's CDR")
        t.add_column("result")
        t.add_column("calls", justify="right")
        counts: dict[str, int] = {}
        with obj.factory() as s:
            for aid in attempts:
                a = s.get(CallAttempt, aid)
                key = a.result.value if a and a.result else "unsettled"
                counts[key] = counts.get(key, 0) + 1
        for k, v in sorted(counts.items()):
            t.add_row(k, str(v))
        t.add_row("placed (database)", str(len(attempts)))
        t.add_row("placed (Asterisk CDR)", str(len(cdr)))
        con.print(t)
    finally:
        if not keep:
            sb.down()


if __name__ == "__main__":  # pragma: no cover
    main()

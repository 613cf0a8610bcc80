"""`outbound demo`: the main job on a fresh machine (the README's first command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .cli_common import Ctx, errors


# ---------------------------------------------------------------- demo
@click.command("demo")
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

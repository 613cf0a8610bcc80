"""`outbound demo` from start to end: the sandbox Asterisk, Redis, the bridge and FastAGI
(in this process, from the caller: see `StartStack`), the scheduler's worker and beat and
the status page (child processes), a predictive campaign worked by simulated agents for
a set time with live figures, then a summary checked against Asterisk's CDR. Whatever
happens (the end, Ctrl-C, SIGTERM, an error), everything it started is stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import redis as sredis
import redis.asyncio as aredis
from rich.console import Console
from rich.live import Live
from sqlalchemy.orm import Session, sessionmaker

from ..config import Config, load_config
from ..model import make_engine, session_factory, transaction, upgrade
from ..sandbox import Sandbox, SandboxInfo, free_port
from . import stats
from .agents import Behaviour, SimAgents
from .procs import Children, env_of, redis_answers, redis_db_url
from .world import (
    agent_ids,
    create_world,
    forget,
    make_contacts,
    supervisor_login,
    write_scenarios,
)

# Starts the bridge and the FastAGI server on the sandbox; returns their stop.
StartStack = Callable[
    [Config, sessionmaker[Session], SandboxInfo, tuple[int, int]],
    Awaitable[Callable[[], Awaitable[None]]],
]

EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Options:
    contacts: int = 300
    agents: int = 5
    duration: int = 180
    talk: tuple[int, int] = (20, 120)
    keep: bool = False
    sandbox_name: str = "demo"
    web_port: int | None = None
    seed: int | None = None
    # Live answers earn the abandon budget (3% needs 33 of them before the first call
    # dialed ahead): a run of minutes needs a looser target to show predictive dialing.
    abandon_target: float = 0.1


def parse_talk(v: str) -> tuple[int, int]:
    """MIN-MAX seconds, e.g. 20-120."""
    lo, sep, hi = v.partition("-")
    try:
        a, b = int(lo), int(hi if sep else lo)
    except ValueError:
        raise ValueError(f"talk time {v!r} is not MIN-MAX seconds, e.g. 20-120") from None
    if not 1 <= a <= b <= 3600:
        raise ValueError(f"talk time {v!r}: need 1 <= MIN <= MAX <= 3600")
    return a, b


def absolute_db_url(url: str) -> str:
    """A relative SQLite path made absolute: the children run in another folder."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(Path(url[len(prefix) :]).resolve())
    return url


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@dataclass
class Outcome:
    snap: stats.Snapshot
    logged_in_s: float
    interrupted: bool


def run_demo(
    opts: Options,
    *,
    config_path: str | None,
    overrides: dict[str, str],
    start_stack: StartStack,
    console: Console | None = None,
) -> int:
    """The whole demo; the exit code: 0, 130 after Ctrl-C, 1 when the database and
    Asterisk's CDR disagree."""
    con = console or Console()
    children = Children(mark=opts.sandbox_name)
    logging.basicConfig(
        filename=str(children.workdir / "demo.log"),
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)  # cleanup as for Ctrl-C
    sb = Sandbox(name=opts.sandbox_name, log=lambda m: con.print(m, markup=False))
    try:
        info = sb.up()
        base = load_config(config_path, overrides=overrides)
        redis_url = base.redis_url
        if not redis_answers(redis_url):
            redis_url = children.redis()
            con.print(
                f"no Redis answers at {redis_db_url(base.redis_url)}: "
                f"started a private one at {redis_url}"
            )
        web_port = opts.web_port or free_port()
        ov = {
            **overrides,
            "database.url": absolute_db_url(base.database_url),
            "redis.url": redis_url,
            "ami.port": str(info.ami_port),
            "ami.username": info.ami_user,
            "ami.secret": info.ami_secret,
            "dialer.trunk": "Local/${NUMBER}@sim-contacts",
            "dialer.internal": "Local/${NUMBER}@sim-phones",
            "dialer.server": opts.sandbox_name,
            "dialer.ring_timeout": "15",
            "web.host": "127.0.0.1",
            "web.port": str(web_port),
            "scheduler.sweep_interval": "1",
        }
        cfg = load_config(config_path, overrides=ov)
        upgrade(make_engine(cfg.database_url))
        factory = session_factory(make_engine(cfg.database_url))
        rng = random.Random(opts.seed)
        contacts = make_contacts(opts.contacts, opts.talk, rng)
        write_scenarios(info, contacts)
        camp_id = create_world(
            factory, opts.agents, contacts, children.workdir, opts.abandon_target
        )
        con.print(
            f"campaign {camp_id}: predictive, {len(contacts)} simulated contacts, "
            f"{opts.agents} agents (demo-1..{opts.agents})"
        )
        with contextlib.closing(sredis.Redis.from_url(redis_url)) as r:
            forget(r, camp_id, agent_ids(opts.agents), opts.sandbox_name)
        env = env_of(ov, config_path)
        children.outbound("worker", ["worker", "--hostname", f"demo-{opts.sandbox_name}@%h"], env)
        children.outbound("beat", ["beat", "--schedule", str(children.workdir / "beat")], env)
        children.outbound("web", ["web"], env)
        url = f"http://127.0.0.1:{web_port}/supervisor"
        who, password = supervisor_login(factory)
        con.print(f"status page: {url} (log in as {who}, password {password})")
        out = asyncio.run(_main(opts, cfg, factory, info, camp_id, start_stack, children, con, rng))
        children.stop()  # a private Redis goes with them, and its keys
        if redis_url == base.redis_url:
            with contextlib.closing(sredis.Redis.from_url(redis_url)) as r:
                forget(r, camp_id, agent_ids(opts.agents), opts.sandbox_name)
        cdr = stats.read_cdr(info.cdr_csv_path, out.snap.ids)
        con.print(
            stats.summary_table(out.snap, cdr, agents=opts.agents, logged_in_s=out.logged_in_s)
        )
        agree = cdr.placed == out.snap.placed and cdr.answered == out.snap.answered
        if not agree:
            con.print("[bold red]the database and Asterisk's CDR disagree[/]")
        con.print(f"status page (while the demo ran): {url}; logs in {children.workdir}")
        if not agree:
            return 1
        return EXIT_INTERRUPTED if out.interrupted else 0
    finally:
        # A second Ctrl-C must not cut the cleanup short: it has deadlines of its own.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            children.stop()
            if not opts.keep:
                sb.down()
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)


async def _main(
    opts: Options,
    cfg: Config,
    factory: sessionmaker[Session],
    info: SandboxInfo,
    camp_id: int,
    start_stack: StartStack,
    children: Children,
    con: Console,
    rng: random.Random,
) -> Outcome:
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    hard = asyncio.Event()

    def on_signal() -> None:
        (hard if interrupted.is_set() else interrupted).set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    stop_stack = await start_stack(cfg, factory, info, opts.talk)
    ar = aredis.Redis.from_url(cfg.redis_url)
    sr = sredis.Redis.from_url(cfg.redis_url)
    agents = SimAgents(
        factory,
        ar,
        sr,
        opts.sandbox_name,
        camp_id,
        agent_ids(opts.agents),
        Behaviour(talk_s=opts.talk, callback_after_s=max(5.0, min(30.0, opts.duration / 4))),
        rng=rng,
        say=lambda m: con.print(m, markup=False),
    )
    stop_agents = asyncio.Event()
    runner: asyncio.Task[None] | None = None
    logged_in = time.monotonic()
    try:
        await agents.login()
        logged_in = time.monotonic()
        con.print(f"agents logged in and Ready; dialing for {opts.duration} s (Ctrl-C stops)")
        runner = asyncio.ensure_future(agents.run(stop_agents))
        await _live(opts, factory, camp_id, agents, children, con, interrupted, hard, logged_in)
    finally:
        stop_agents.set()
        agents.hurry.set()
        if runner is not None:
            await runner
        await agents.drain(20)
        with contextlib.suppress(Exception):
            await agents.logout()
        await stop_stack()
        await ar.aclose()
        sr.close()
    logged_in_s = time.monotonic() - logged_in
    final = await asyncio.to_thread(stats.snapshot, factory, camp_id, datetime.now(UTC))
    return Outcome(final, logged_in_s, interrupted.is_set())


async def _live(
    opts: Options,
    factory: sessionmaker[Session],
    camp_id: int,
    agents: SimAgents,
    children: Children,
    con: Console,
    interrupted: asyncio.Event,
    hard: asyncio.Event,
    logged_in: float,
) -> stats.Snapshot:
    """Dial for the set time (or until Ctrl-C), then stop dialing and let the live calls
    end (Ctrl-C: talks are cut short; twice: stop waiting), showing the figures."""
    loop = asyncio.get_running_loop()
    end = loop.time() + opts.duration
    drain_until: float | None = None
    snap = stats.Snapshot()
    reported: set[str] = set()

    def table() -> Any:
        now = loop.time()
        return stats.progress_table(
            snap,
            agents=opts.agents,
            elapsed=time.monotonic() - logged_in,
            remaining=max(0.0, end - now) if drain_until is None else 0.0,
            logged_in_s=time.monotonic() - logged_in,
        )

    with Live(table(), console=con, refresh_per_second=2, transient=False) as live:
        while True:
            snap = await asyncio.to_thread(stats.snapshot, factory, camp_id, datetime.now(UTC))
            live.update(table())
            now = loop.time()
            if drain_until is None and (now >= end or interrupted.is_set()):
                await asyncio.to_thread(_stop_campaign, factory, camp_id)
                if interrupted.is_set():
                    agents.hurry.set()
                # The longest a call can still take: ringing, a person's talk, wrap-up.
                drain_until = now + 15 + (5 if interrupted.is_set() else opts.talk[1]) + 25
            if drain_until is not None:
                if interrupted.is_set():
                    agents.hurry.set()
                idle = snap.live == 0 and not agents.tasks
                if idle or hard.is_set() or now >= drain_until:
                    break
            dead = [d for d in children.dead() if d not in reported]
            if dead:
                reported.update(dead)
                con.print(
                    f"{', '.join(dead)} stopped unexpectedly: {children.tail(dead[0])}",
                    markup=False,
                )
                interrupted.set()
            if interrupted.is_set():
                await asyncio.sleep(0.5)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(interrupted.wait(), 0.5)
    con.print()  # Live leaves the cursor after its last frame
    return snap


def _stop_campaign(factory: sessionmaker[Session], camp_id: int) -> None:
    from ..campaigns.lifecycle import transition
    from ..model import Campaign, CampaignState

    with transaction(factory) as s:
        c = s.get(Campaign, camp_id)
        if c is not None and c.state is CampaignState.RUNNING:
            transition(s, camp_id, "stop")

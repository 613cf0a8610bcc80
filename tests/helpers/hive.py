"""Several bridge workers on one campaign, for the concurrency tests: a progressive
campaign on a real (migrated) database, Bridges with the dialer on, each with its own
`[dialer] server` name and command stream, all on the session's sandbox Asterisk (a
stand-in for several Asterisk servers, or for HA workers of one), and the questions the
tests ask afterwards: the attempts per contact and per agent, and whether a contact's
state is what its attempts and the campaign's treatments make it.

Each worker has its own server name because one name means one command stream read by a
consumer group: a `login` would land on one worker and the `ready` that follows on
another, which has no session for the agent; and each worker's AMI resync settles the live
attempts of its server name that it cannot see, which on a shared name would be the
attempts the other workers have just committed and not yet originated."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ami_bridge.service import Bridge, health_key
from outbound import live, names
from outbound.campaigns.interaction import mark_done
from outbound.campaigns.treatments import treatment_for
from outbound.commands import send_command
from outbound.dial_queue import DialQueue
from outbound.model import (
    AgentCampaign,
    AttemptState,
    CallAttempt,
    Campaign,
    CampaignState,
    Contact,
    ContactList,
    ContactState,
    DialMode,
    transaction,
    utcnow,
)
from outbound.sandbox import SandboxInfo
from tests.helpers.db import add_agent, add_contact
from tests.helpers.stack import bridge_config
from tests.helpers.until import async_until

# Rescheduled, not pending: a READY contact whose next try is further away than this.
RESCHEDULED_AFTER = timedelta(seconds=90)


def campaign(factory: sessionmaker[Session], busy_retry_s: float, max_attempts: int = 2) -> int:
    """A running progressive campaign (random id: its Redis keys are its own) whose busy
    treatment retries after `busy_retry_s`."""
    cid = random.randrange(10**6, 10**9)
    with transaction(factory) as s:
        s.add(
            Campaign(
                id=cid,
                name=f"conc-{cid}",
                mode=DialMode.PROGRESSIVE,
                state=CampaignState.RUNNING,
                max_attempts=max_attempts,
                treatments={"busy": {"action": "retry", "delay_min": busy_retry_s / 60}},
            )
        )
        s.flush()
        s.add(ContactList(campaign_id=cid, name="l"))
    return cid


def contacts(factory: sessionmaker[Session], cid: int, digits: list[int]) -> dict[int, str]:
    """One contact per digit (the sandbox plays the scenario of a number's last digit):
    contact id -> number, each number unique to this test."""
    out: dict[int, str] = {}
    for d in digits:
        number = f"+4930{random.randrange(10**7, 10**8)}{d}"
        out[add_contact(factory, number, campaign=f"conc-{cid}")] = number
    return out


def agents(factory: sessionmaker[Session], cid: int, n: int) -> list[str]:
    """`n` member agents, each with a simulated desk phone of its own."""
    base = random.randrange(10**5, 10**6 - n)
    out = [
        add_agent(factory, str(base + i), f"Local/{random.randrange(10**6, 10**7)}@sim-phones")
        for i in range(n)
    ]
    with transaction(factory) as s:
        s.add_all(AgentCampaign(agent_id=a, campaign_id=cid) for a in out)
    return out


@dataclass
class Worker:
    server: str
    bridge: Bridge
    task: asyncio.Task[None]


@dataclass
class Hive:
    """The workers of one test and what they share."""

    factory: sessionmaker[Session]
    sandbox: SandboxInfo
    redis_url: str
    tmp: Path
    r: redis.Redis = field(init=False)
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.r = redis.Redis.from_url(self.redis_url)

    async def start(self, name: str, ami_port: int | None = None) -> Worker:
        """A Bridge with the dialer on, server `<prefix>-<name>`, running; its AMI through
        `ami_port` (a fault proxy) when given."""
        server = f"conc-{uuid.uuid4().hex[:6]}-{name}"
        cfg = bridge_config(
            self.sandbox,
            self.tmp,
            redis_url=self.redis_url,
            ami_port=ami_port,
            server=server,
        )
        bridge = Bridge(cfg, self.factory, aredis.Redis.from_url(self.redis_url), consumer=name)
        assert bridge.dialer is not None
        bridge.dialer.sweep_s = 1.0  # retries come back quickly
        w = Worker(server, bridge, asyncio.ensure_future(bridge.run()))
        self.workers.append(w)
        await async_until(lambda: self.r.get(health_key(server)) is not None, 20)
        return w

    def cmd(self, w: Worker, kind: str, **args: object) -> dict[str, Any]:
        return send_command(self.r, w.server, kind, dict(args), 30)

    async def login_ready(self, w: Worker, agent_ids: list[str]) -> None:
        for a in agent_ids:
            await asyncio.to_thread(self.cmd, w, "login", agent_id=a)
            await asyncio.to_thread(self.cmd, w, "ready", agent_id=a)

    async def stop(self, cid: int, agent_ids: list[str]) -> None:
        """Agents logged out (their phones hung up), workers stopped, Redis keys gone."""
        for a in agent_ids:
            for w in self.workers:
                sess = w.bridge.sessions.session(a)
                if sess is not None and not sess.machine.terminal and sess.origin == "login":
                    with contextlib.suppress(Exception):
                        await asyncio.to_thread(self.cmd, w, "logout", agent_id=a)
        for w in self.workers:
            w.bridge.stop()
        for w in self.workers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.task, 20)
        self.r.delete(
            *DialQueue(self.r, cid).all_keys(),
            *(names.key_agent_reservation(a) for a in agent_ids),
            *(live.agent_key(a) for a in agent_ids),
            *(names.key_commands(w.server) for w in self.workers),
            *(health_key(w.server) for w in self.workers),
        )


# ------------------------------------------------------------ wrap-up, ended by the test


async def end_wrap_ups(
    factory: sessionmaker[Session], stop: asyncio.Event
) -> tuple[list[str], list[str]]:
    """Until `stop`: every connected call that ended without a disposition is marked done
    (interaction.mark_done, as the agent's page does), so its agent takes calls again.
    Returns the attempts it marked and the refusals it met (each tried again)."""
    marked: list[str] = []
    errors: list[str] = []

    def once() -> None:
        with factory() as s:
            todo = s.execute(
                select(CallAttempt.id, CallAttempt.agent_id).where(
                    CallAttempt.state == AttemptState.ENDED,
                    CallAttempt.connected_at.is_not(None),
                    CallAttempt.disposition.is_(None),
                )
            ).all()
        for aid, agent in todo:
            try:
                mark_done(factory, aid, str(agent), "")
            except Exception as exc:  # reported to the test, which asserts there are none
                errors.append(f"{aid}: {exc!r}")
            else:
                marked.append(aid)

    while not stop.is_set():
        await asyncio.to_thread(once)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.3)
    # A call that ended in the last 0.3 s before `stop` (the campaign just settled) would
    # otherwise be left unmarked: one last pass, after which nothing is still ringing.
    await asyncio.to_thread(once)
    return marked, errors


# ------------------------------------------------------------ the database's account


def attempts(factory: sessionmaker[Session], cid: int) -> list[CallAttempt]:
    with factory() as s:
        q = select(CallAttempt).where(CallAttempt.campaign_id == cid)
        return list(s.scalars(q.order_by(CallAttempt.created_at)))


def contact_rows(factory: sessionmaker[Session], cid: int) -> dict[int, Contact]:
    with factory() as s:
        return {c.id: c for c in s.scalars(select(Contact).where(Contact.campaign_id == cid))}


def settled(factory: sessionmaker[Session], cid: int) -> bool:
    """Every contact final (done, dnc) or rescheduled beyond RESCHEDULED_AFTER, none in a
    live attempt: nothing more will be dialed soon."""
    now = utcnow()
    if any(a.state is not AttemptState.ENDED for a in attempts(factory, cid)):
        return False
    for c in contact_rows(factory, cid).values():
        if c.state in (ContactState.DONE, ContactState.DNC):
            continue
        if c.state is not ContactState.READY or c.next_at is None:
            return False
        if c.next_at - now < RESCHEDULED_AFTER:
            return False
    return True


def unexplained(
    factory: sessionmaker[Session], cid: int, by_contact: dict[int, list[CallAttempt]]
) -> list[str]:
    """Contacts whose state is not what their attempts and the campaign's treatments make
    it (empty when every one is explained)."""
    with factory() as s:
        camp = s.get(Campaign, cid)
        assert camp is not None
        treatments, max_attempts = dict(camp.treatments), camp.max_attempts
    wrong: list[str] = []
    for c in contact_rows(factory, cid).values():
        mine = by_contact.get(c.id, [])
        why = _explain(c, mine, treatments, max_attempts)
        if why:
            wrong.append(
                f"contact {c.id} ({c.state.value}, results {[a.result for a in mine]}): {why}"
            )
    return wrong


def _explain(
    c: Contact, mine: list[CallAttempt], treatments: dict[str, Any], max_attempts: int
) -> str:
    if not mine:
        return "never dialed"
    if c.attempts != len(mine):
        return f"attempts counter {c.attempts} != {len(mine)} rows"
    last = mine[-1]
    if last.result is None or c.last_result is not last.result:
        return f"last_result {c.last_result} != last attempt's {last.result}"
    t = treatment_for(treatments, last.result.value)
    limit = int(t.get("max_attempts", max_attempts))
    if t["action"] == "retry" and len(mine) < limit:
        assert last.ended_at is not None
        if c.state is not ContactState.READY or c.next_at is None or c.next_at <= last.ended_at:
            return f"treatment retry, but next_at {c.next_at}"
        return ""
    if t["action"] == "dnc":
        return "" if c.state is ContactState.DNC else "treatment dnc, but not dnc"
    if c.state is not ContactState.DONE:
        return f"treatment {t['action']} (attempt {len(mine)} of {limit}) but not done"
    return ""


def overlaps(
    rows: list[CallAttempt], key: Callable[[CallAttempt], str | None]
) -> list[tuple[str, str]]:
    """Pairs of attempts with the same `key` whose [created, ended] intervals overlap."""
    out: list[tuple[str, str]] = []
    groups: dict[str, list[CallAttempt]] = {}
    for a in rows:
        k = key(a)
        if k is not None:
            groups.setdefault(k, []).append(a)
    for group in groups.values():
        group.sort(key=lambda a: a.created_at)
        for prev, nxt in zip(group, group[1:], strict=False):
            end: datetime | None = prev.ended_at
            if end is None or nxt.created_at < end:
                out.append((prev.id, nxt.id))
    return out

"""The demo's simulated agents: each logs in on a simulated desk phone (the bridge's
command stream, as the agent page does), goes Ready, and then works as a person would:
talks to whoever the dialer connects, ends the call after a talk time of its own (unless
the contact hangs up first), now and then schedules a callback, wraps up for a moment,
marks the call done with a disposition and takes the next one. A fired callback offered
to it is accepted and dialed at once. The agents act through the product's own core
(mark_done, callbacks.schedule, push.accept, preview.dial) and commands, nothing else."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .. import callbacks
from ..campaigns import push
from ..campaigns.interaction import mark_done
from ..campaigns.preview import dial
from ..commands import send_command_async
from ..dial_queue import DialQueue
from ..errors import OutboundError
from ..model import AttemptState, CallAttempt, utcnow
from ..model.tables import Offer, OfferState
from .world import DISPOSITIONS

log = logging.getLogger("outbound.demo")
POLL_S = 0.3


@dataclass
class Behaviour:
    talk_s: tuple[int, int] = (20, 120)
    wrap_s: tuple[float, float] = (1.0, 4.0)
    callback_share: float = 0.03  # of the calls an agent talks on
    first_callback_on: int = 2  # the n-th connected call asks for one, so one is seen
    callback_after_s: float = 20.0  # how far ahead a callback is scheduled


@dataclass
class SimAgents:
    factory: sessionmaker[Session]
    redis: Any  # redis.asyncio.Redis: the command stream
    sync_redis: Any  # redis.Redis: the dial queue's Lua scripts
    server: str
    campaign_id: int
    agents: list[str]
    behaviour: Behaviour
    rng: random.Random = field(default_factory=random.Random)
    say: Callable[[str], None] = print
    busy: set[str] = field(default_factory=set)
    handled: set[str] = field(default_factory=set)  # attempt ids and "offer-<id>"
    connected_calls: int = 0
    hurry: asyncio.Event = field(default_factory=asyncio.Event)  # end talks now
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def command(self, kind: str, timeout: float = 30, **args: Any) -> dict[str, Any]:
        return await send_command_async(self.redis, self.server, kind, args, timeout)

    async def login(self) -> None:
        """Every agent's phone into its conference, then Ready (voice)."""
        await asyncio.gather(*(self.command("login", agent_id=a) for a in self.agents))
        await asyncio.gather(*(self.command("ready", agent_id=a) for a in self.agents))

    async def logout(self) -> None:
        results = await asyncio.gather(
            *(self.command("logout", timeout=15, agent_id=a) for a in self.agents),
            return_exceptions=True,
        )
        for a, r in zip(self.agents, results, strict=True):
            if isinstance(r, BaseException):
                log.warning("agent %s: logout: %s", a, r)

    async def _db(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(fn)

    def _work(self) -> tuple[list[tuple[str, str]], list[tuple[int, str]]]:
        """Calls connected to one of our agents and not yet marked done; callbacks offered
        to one of them."""
        with self.factory() as s:
            calls = s.execute(
                select(CallAttempt.id, CallAttempt.agent_id).where(
                    CallAttempt.campaign_id == self.campaign_id,
                    CallAttempt.connected_at.is_not(None),
                    CallAttempt.disposition.is_(None),
                    CallAttempt.agent_id.in_(self.agents),
                )
            ).all()
            offers = s.execute(
                select(Offer.id, Offer.agent_id).where(
                    Offer.campaign_id == self.campaign_id,
                    Offer.state == OfferState.OPEN,
                    Offer.callback_id.is_not(None),
                    Offer.agent_id.in_(self.agents),
                )
            ).all()
        return [(a, g) for a, g in calls if g], [(o, g) for o, g in offers if g]

    async def run(self, stop: asyncio.Event) -> None:
        """Hand each new call or offer to its agent until `stop`; the calls already being
        worked on finish in their own tasks (`drain`)."""
        while not stop.is_set():
            try:
                calls, offers = await self._db(self._work)
            except Exception as exc:  # a busy database: next round
                log.warning("demo agents: %s", exc)
                calls, offers = [], []
            for aid, agent in calls:
                if aid not in self.handled and agent not in self.busy:
                    self._spawn(agent, aid, self._call(agent, aid))
            for oid, agent in offers:
                key = f"offer-{oid}"
                if key not in self.handled and agent not in self.busy:
                    self._spawn(agent, key, self._offer(agent, oid))
            try:
                await asyncio.wait_for(stop.wait(), POLL_S)
            except TimeoutError:
                pass

    def _spawn(self, agent: str, key: str, aw: Any) -> None:
        self.handled.add(key)
        self.busy.add(agent)
        t = asyncio.ensure_future(aw)
        self.tasks.add(t)

        def done(task: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            self.busy.discard(agent)
            if not task.cancelled() and task.exception() is not None:
                log.warning("agent %s: %s", agent, task.exception())

        t.add_done_callback(done)

    async def drain(self, timeout: float) -> None:
        """Let the calls in progress end (talk cut short when `hurry` is set)."""
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
            for t in pending:
                t.cancel()

    def _state(self, aid: str) -> AttemptState | None:
        with self.factory() as s:
            a = s.get(CallAttempt, aid)
            return a.state if a is not None else None

    async def _ended(self, aid: str, within: float, talking: bool = True) -> bool:
        """True once the call ended, False when `within` seconds passed first (or, while
        `talking`, as soon as talks are cut short)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + within
        while loop.time() < end:
            if await self._db(lambda: self._state(aid)) is AttemptState.ENDED:
                return True
            if talking and self.hurry.is_set():
                return False
            await asyncio.sleep(POLL_S)
        return await self._db(lambda: self._state(aid)) is AttemptState.ENDED

    async def _call(self, agent: str, aid: str) -> None:
        """One call: talk, end it, maybe a callback, wrap up, mark done."""
        b = self.behaviour
        self.connected_calls += 1
        nth = self.connected_calls
        talk = self.rng.uniform(*b.talk_s)
        if not await self._ended(aid, talk):
            try:
                await self.command("end", timeout=15, attempt_id=aid, agent_id=agent)
            except OutboundError as exc:  # the contact hung up meanwhile
                log.info("agent %s: end %s: %s", agent, aid, exc)
            await self._ended(aid, 20, talking=False)
        code = self.rng.choice([d for d in DISPOSITIONS if d != "call-back"])
        if not self.hurry.is_set() and (
            nth == b.first_callback_on or self.rng.random() < b.callback_share
        ):
            when = utcnow() + timedelta(seconds=b.callback_after_s)
            try:
                await self._db(
                    lambda: callbacks.schedule(
                        self.factory, agent, attempt_id=aid, when=when, personal=False
                    )
                )
                code = "call-back"
                self.say(
                    f"agent {agent}: the contact asks for a callback (pooled, in "
                    f"{b.callback_after_s:.0f} s)"
                )
            except OutboundError as exc:
                log.warning("agent %s: callback on %s: %s", agent, aid, exc)
        if not self.hurry.is_set():
            await asyncio.sleep(self.rng.uniform(*b.wrap_s))
        try:
            await self._db(lambda: mark_done(self.factory, aid, agent, code, auto_next=False))
        except OutboundError as exc:
            log.warning("agent %s: mark done %s: %s", agent, aid, exc)

    async def _offer(self, agent: str, oid: int) -> None:
        """A fired callback offered to the agent: accept and dial it now."""
        q = DialQueue(self.sync_redis, self.campaign_id)
        try:
            # No lease to extend: a callback's contact is never in the dial queue.
            await self._db(lambda: push.accept(self.factory, oid, agent))
            got = await self._db(lambda: dial(self.factory, q, oid, agent))
            await self.command(
                "dial",
                contact_id=got["contact_id"],
                agent_id=agent,
                attempt_id=got["attempt_id"],
                connect=True,
            )
            self.say(f"agent {agent}: calls back {got['number']} (a callback that came due)")
        except OutboundError as exc:
            log.warning("agent %s: callback offer %s: %s", agent, oid, exc)

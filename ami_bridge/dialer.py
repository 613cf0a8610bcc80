"""The campaign engine in the bridge: decides when to dial whom, for the running campaigns
whose calls this bridge places: progressive, push preview and predictive (ami_bridge.pacer).

Every tick (`tick_s`) and per running campaign, the mode's function says which agents get
a call now. Progressive: one call per agent who is Ready on this bridge, free per the
database (no live call, no wrap-up) and not reserved. The agent is reserved *before* the
record is leased and dialed, so an answered contact always has its agent: progressive
never abandons. The reservation is held in memory and in Redis (SET NX with a TTL per
agent, names.key_agent_reservation), so neither two ticks nor two workers give one agent
two calls; the Redis key is taken first and the database asked second, so a reservation
that expired is only ever replaced once the attempt row that follows it is visible.

A call is placed as DESIGN.md says: lease one record from the campaign's dial queue,
`Originator.dial(contact, agent_id=agent)` (compliance runs inside create_attempt), no
waiting for the call. The answered contact goes through the classify route to the agent
named on the attempt. When the attempt ends (the originator's `call_ended` event) the
lease is settled (the database already holds the result and its treatment; enqueue_due
brings the record back when the treatment says) and the agent's reservation is released;
an agent who talked stays unavailable in wrap-up until the disposition is written.

A record compliance refuses (NotDialable) leaves the queue; the contact's next_at becomes
the verdict's next dialable time so that enqueue_due brings it back then (none: it stays
out until a rebuild), and the reasons are logged.

Push preview: no dial here. Each tick, pushed records left past their timeout go back to
the top (outbound.campaigns.push.expire_offers), then every member whose session is up,
Ready on the outbound preview channel, not in "done and stop", free and without an open
record is pushed the next one; the page hears it on the events stream (`offer_pushed`,
`offer_expired`). The agent accepts and dials (preview.dial) or rejects. The push core is
synchronous: it runs in a thread on a synchronous Redis client of the same server.

Housekeeping every `sweep_s`: enqueue_due and reclaim per campaign, leases of the calls in
flight renewed. The queues are rebuilt from the database at start, on every AMI
(re)connection and when a campaign starts running. Every await has a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar

import redis as sync_redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outbound import dial_queue, live, names
from outbound.campaigns import callback_offers, push
from outbound.campaigns.attempts import AgentBusy
from outbound.campaigns.callback_offers import campaigns_with_callbacks, has_open_offer
from outbound.campaigns.interaction import agent_is_free
from outbound.compliance import NotDialable
from outbound.dial_queue import AsyncDialQueue, DialQueue
from outbound.errors import Conflict, NotFound
from outbound.model import (
    AgentCampaign,
    Campaign,
    CampaignState,
    Contact,
    DialMode,
    transaction,
)

from .connection import AmiNotReady
from .originator import Originator
from .pacer import Predictive
from .reservations import RESERVE_TTL_S, AgentReservations, release_predecessor_leases
from .sessions import AgentSessions, SessionState

log = logging.getLogger("ami_bridge.dialer")

T = TypeVar("T")

TICK_S = 0.5
SWEEP_S = 3.0
STEP_TIMEOUT_S = 10.0  # deadline of one Redis / database step
REBUILD_TIMEOUT_S = float(dial_queue.REBUILD_TTL_S)  # a whole campaign's rebuild or sweep
LEASE_TTL_S = 60.0  # renewed every sweep while the call lasts
REFUSALS_PER_AGENT = 20  # records compliance may refuse for one agent in one tick

# The modes this engine drives (their queues are rebuilt and ticked).
ENGINE_MODES = (DialMode.PROGRESSIVE, DialMode.PUSH_PREVIEW, DialMode.PREDICTIVE)


# ------------------------------------------------------------ the database side


@dataclass(frozen=True)
class CampaignInfo:
    id: int
    name: str
    mode: DialMode
    trunk: str | None
    interaction_preview: bool = False  # progressive: records pushed to the agent first


def running_campaigns(s: Session, modes: tuple[DialMode, ...]) -> list[CampaignInfo]:
    rows = s.execute(
        select(
            Campaign.id,
            Campaign.name,
            Campaign.mode,
            Campaign.trunk,
            Campaign.interaction_preview,
        )
        .where(Campaign.state == CampaignState.RUNNING, Campaign.mode.in_(modes))
        .order_by(Campaign.id)
    ).all()
    return [CampaignInfo(*r) for r in rows]


def campaign_members(s: Session, campaign_id: int) -> list[str]:
    return list(
        s.scalars(
            select(AgentCampaign.agent_id)
            .where(AgentCampaign.campaign_id == campaign_id)
            .order_by(AgentCampaign.agent_id)
        )
    )


def free_for_a_call(s: Session, agent_id: str) -> bool:
    """No open offer, no live call, no wrap-up. The open offer is read first: an agent's
    preview dial closes the offer and writes the attempt in one commit, so whenever it
    commits, one of the two reads sees it (the reverse order can see neither). A dial
    that commits after both reads is refused by create_attempt under the agent's row lock
    (AgentBusy): this check only spares a lease and a refusal."""
    return not has_open_offer(s, agent_id) and agent_is_free(s, agent_id)


def postpone(s: Session, contact_id: int, until: datetime) -> None:
    """A record compliance refused comes back when it may next be dialed."""
    c = s.get(Contact, contact_id, with_for_update=True)
    if c is not None:
        c.next_at = until


# ------------------------------------------------------------ the engine


class Placed(StrEnum):
    DIALED = "dialed"
    LATE = "late"  # the dial outlived its deadline: the agent stays reserved for it
    BUSY = "busy"  # the agent is in a call or in wrap-up per the database
    EMPTY = "empty"  # no record due in the queue
    PAUSED = "paused"  # AMI not ready, or a step ran out of time: try again next tick


@dataclass(frozen=True)
class InFlight:
    """A call this worker placed, until its attempt ends."""

    attempt_id: str
    campaign_id: int
    contact_id: int
    agent_id: str | None  # None: predictive (the agent is picked when a person answers)
    token: str | None  # the agent's reservation


class Dialer:
    """The dialing loop of one bridge (one Asterisk server)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        redis: Any,
        originator: Originator,
        sessions: AgentSessions,
        *,
        server: str = "default",
        worker: str = "bridge-1",
        tick_s: float = TICK_S,
        sweep_s: float = SWEEP_S,
        step_timeout_s: float = STEP_TIMEOUT_S,
        lease_ttl_s: float = LEASE_TTL_S,
        reserve_ttl_s: int = RESERVE_TTL_S,
        pacing: dict[str, Any] | None = None,
    ) -> None:
        self.factory = factory
        self.redis = redis
        self.originator = originator
        self.sessions = sessions
        self.owner = f"dialer:{server}:{worker}:{uuid.uuid4().hex[:8]}"
        self.tick_s = tick_s
        self.sweep_s = sweep_s
        self.step_timeout_s = step_timeout_s
        self.lease_ttl_s = lease_ttl_s
        self.reservations = AgentReservations(redis, self.owner, reserve_ttl_s)
        self.inflight: dict[str, InFlight] = {}
        self._queues: dict[int, AsyncDialQueue] = {}
        self._known: set[int] = set()  # running campaigns whose queue was rebuilt
        self._resync_needed = True
        self._tasks: set[asyncio.Task[Any]] = set()
        self.predictive = Predictive(self, **(pacing or {}))
        self._modes: dict[DialMode, Callable[[CampaignInfo], Awaitable[None]]] = {
            DialMode.PROGRESSIVE: self._progressive,
            DialMode.PUSH_PREVIEW: self._push_preview,
            DialMode.PREDICTIVE: self.predictive.tick,
        }
        self._sync_redis: Any = None  # for the synchronous push preview core, in threads

    # ------------------------------------------------------------ wiring
    def attach(self) -> None:
        self.originator.ami.on_ready(self.on_ami_ready)

    async def on_ami_ready(self) -> None:
        """After every (re)connection: the queues are rebuilt before the next dial (what
        happened while we were away is only in the database)."""
        self._resync_needed = True

    def on_call_event(self, event: dict[str, Any]) -> None:
        """The originator's call events; an ended call of ours frees its lease and agent."""
        if event.get("event") != "call_ended":
            return
        fl = self.inflight.pop(str(event.get("attempt_id", "")), None)
        if fl is not None:
            self._spawn(self._ended(fl))

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set; a failing tick is logged and the loop goes on."""
        log.info("dialer %s running (modes: %s)", self.owner, ", ".join(self._modes))
        await self._release_predecessors()
        last_sweep = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                if self.originator.ami.healthy:
                    if self._resync_needed:
                        self._resync_needed = False
                        self._known.clear()
                    if loop.time() - last_sweep >= self.sweep_s:
                        last_sweep = loop.time()
                        await self.housekeeping()
                    await self.tick()
            except Exception:
                log.exception("dialer tick failed")
            try:
                await asyncio.wait_for(stop.wait(), self.tick_s)
            except TimeoutError:
                pass
        for t in list(self._tasks):
            t.cancel()
        if self._sync_redis is not None:
            self._sync_redis.close()
            self._sync_redis = None

    async def _release_predecessors(self) -> None:
        """The agents a killed predecessor (same server and worker name) still holds are
        freed now, not after the reservation TTL; failing that (Redis away), the TTL does."""
        try:
            freed = await self._step(self.reservations.release_predecessors())
        except Exception as exc:
            log.warning("reservations of a predecessor not released: %s", exc)
            return
        if freed:
            log.warning("released %d agents a predecessor reserved: %s", len(freed), freed)

    async def _release_predecessor_leases(self, campaign: CampaignInfo) -> None:
        q = self._queue(campaign.id)
        back = await self._step(release_predecessor_leases(self.redis, q, self.owner))
        if back:
            log.warning("campaign %s: a predecessor's records back on top: %s", campaign.name, back)

    # ------------------------------------------------------------ steps
    async def _step(self, aw: Awaitable[T]) -> T:
        """One Redis or database step, with its deadline."""
        return await asyncio.wait_for(aw, self.step_timeout_s)

    async def _db(self, fn: Callable[[], T]) -> T:
        return await self._step(asyncio.to_thread(fn))

    def _queue(self, campaign_id: int) -> AsyncDialQueue:
        q = self._queues.get(campaign_id)
        if q is None:
            q = self._queues[campaign_id] = AsyncDialQueue(self.redis, campaign_id)
        return q

    def _spawn(self, aw: Awaitable[Any]) -> None:
        t = asyncio.ensure_future(aw)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _campaigns(self) -> list[CampaignInfo]:
        """The running campaigns of the engine's modes; a queue is rebuilt from the
        database the first time one is seen running (start, restart, reconnection)."""

        def q() -> list[CampaignInfo]:
            with self.factory() as s:
                return running_campaigns(s, ENGINE_MODES)

        found = await self._db(q)
        for c in found:
            if c.id not in self._known:
                now = datetime.now(UTC)
                try:
                    counts = await asyncio.wait_for(
                        self._queue(c.id).rebuild(self.factory, now), REBUILD_TIMEOUT_S
                    )
                except Conflict as exc:  # another worker is rebuilding it right now
                    log.info("campaign %s: %s", c.name, exc)
                    continue
                self._known.add(c.id)
                log.info("campaign %s: dial queue rebuilt: %s", c.name, counts)
                await self._release_predecessor_leases(c)
        self._known &= {c.id for c in found}  # stopped ones are rebuilt when they restart
        return [c for c in found if c.id in self._known]

    async def housekeeping(self) -> None:
        """Records whose retry time came go into the queues; expired leases go back to the
        top; the leases and reservations of calls still in flight are renewed."""
        now = datetime.now(UTC)
        for c in await self._campaigns():
            q = self._queue(c.id)
            added = await asyncio.wait_for(q.enqueue_due(self.factory, now), REBUILD_TIMEOUT_S)
            back = await self._step(q.reclaim())
            if added or back:
                log.info(
                    "campaign %s: %d records due, %d leases reclaimed", c.name, added, len(back)
                )
            if c.mode is DialMode.PREDICTIVE:
                await self.predictive.refresh(c)
        for fl in list(self.inflight.values()):
            try:
                await self._step(
                    self._queue(fl.campaign_id).renew(fl.contact_id, self.owner, self.lease_ttl_s)
                )
                if fl.agent_id and fl.token:
                    await self._step(self.reservations.extend(fl.agent_id, fl.token))
            except Conflict as exc:
                log.warning("attempt %s: lease not renewed: %s", fl.attempt_id, exc)

    async def tick(self) -> None:
        await self._callbacks()  # fired callbacks reach agents before new records do
        for c in await self._campaigns():
            if c.mode is DialMode.PROGRESSIVE and c.interaction_preview:
                await self._push_preview(c, "voice")  # accept places the call
            else:
                await self._modes[c.mode](c)

    # ------------------------------------------------------------ progressive
    async def _ready_agents(self, campaign: CampaignInfo, channel: str = "voice") -> list[str]:
        """Members whose session on this bridge is up and who are Ready on `channel`, not
        reserved here (preview: not in "done and stop"); longest Ready first."""

        def q() -> list[str]:
            with self.factory() as s:
                return campaign_members(s, campaign.id)

        ready: list[tuple[float, str]] = []
        for agent in await self._db(q):
            sess = self.sessions.session(agent)
            if sess is None or sess.state is not SessionState.UP:
                continue
            if agent in self.reservations.held:
                continue
            state = live.decode(await self._step(self.redis.hgetall(live.agent_key(agent))))
            if channel == "preview" and state.get(live.PREVIEW_STOPPED) == "1":
                continue
            if state.get("session") == "up" and state.get(f"ready_{channel}") == "1":
                ready.append((float(state.get("ts") or 0), agent))
        return [a for _, a in sorted(ready)]

    async def _progressive(self, campaign: CampaignInfo) -> None:
        """One call per Ready, free agent, the agent reserved before the record is leased."""
        for agent in await self._ready_agents(campaign):
            # Redis first, the database second: see the module's docstring.
            token = await self._step(self.reservations.take(agent))
            if token is None:
                continue

            def free(agent: str = agent) -> bool:
                with self.factory() as s:
                    return free_for_a_call(s, agent)

            placed = Placed.PAUSED
            try:
                placed = (
                    await self._place(campaign, agent, token)
                    if await self._db(free)
                    else Placed.BUSY
                )
            finally:
                if placed not in (Placed.DIALED, Placed.LATE):
                    await self._step(self.reservations.give_back(agent, token))
            if placed in (Placed.EMPTY, Placed.PAUSED):
                return  # nothing due, or dialing paused: no other agent gets a call now

    # ------------------------------------------------------------ callbacks
    async def _callbacks(self) -> None:
        """Fired callbacks (any mode) offered to their agent or the pool
        (outbound.campaigns.callback_offers); the page hears `offer_pushed`."""

        def q() -> list[int]:
            with self.factory() as s:
                return campaigns_with_callbacks(s)

        for cid in await self._db(q):
            made = await self._db(partial(callback_offers.route, self.factory, self._sync(), cid))
            info = CampaignInfo(cid, str(cid), DialMode.PREVIEW, None)
            for got in made:
                await self._publish("offer_pushed", info, got)

    # ------------------------------------------------------------ push preview
    def _sync(self) -> Any:
        """A synchronous client of the same Redis, for the synchronous cores in threads."""
        if self._sync_redis is None:
            kw = self.redis.connection_pool.connection_kwargs
            self._sync_redis = sync_redis.Redis(
                **{k: kw[k] for k in ("host", "port", "db", "username", "password") if k in kw}
            )
        return self._sync_redis

    def _sync_queue(self, campaign_id: int) -> DialQueue:
        return DialQueue(self._sync(), campaign_id)

    async def _publish(self, event: str, campaign: CampaignInfo, got: dict[str, Any]) -> None:
        fields = {"event": event, "campaign_id": str(campaign.id)}
        fields |= {
            k: str(got[k])
            for k in ("agent_id", "offer_id", "contact_id", "deadline", "callback_id")
            if got.get(k) is not None
        }
        await self._step(
            self.redis.xadd(names.KEY_EVENTS, fields, maxlen=100_000, approximate=True)
        )

    async def _push_preview(self, campaign: CampaignInfo, channel: str = "preview") -> None:
        """Overdue pushed records back to the top, then one record pushed to each Ready,
        free agent without one. Nothing is dialed here: the agent accepts and dials."""
        q = self._sync_queue(campaign.id)
        for got in await self._db(lambda: push.expire_offers(self.factory, q)):
            await self._publish("offer_expired", campaign, got)
        ready = await self._ready_agents(campaign, channel)
        if not ready:
            return

        def free() -> list[str]:
            with self.factory() as s:
                return push.pushable(s, ready)

        for agent in await self._db(free):

            def offer(agent: str = agent) -> dict[str, Any]:
                return push.push_offer(self.factory, q, agent, campaign.id)

            try:
                got = await self._db(offer)
            except Conflict as exc:  # changed since it was looked at: next tick
                log.info("campaign %s: nothing pushed to %s: %s", campaign.name, agent, exc)
                continue
            if got["status"] != "record":
                return  # nothing due: no other agent gets one either
            await self._publish("offer_pushed", campaign, {**got, "agent_id": agent})

    async def _place(
        self,
        campaign: CampaignInfo,
        agent: str | None,
        token: str | None,
        audit: dict[str, Any] | None = None,
    ) -> Placed:
        """Lease records until one is dialed for `agent` (None: predictive, the agent comes
        when a person answers); the refused ones leave."""
        q = self._queue(campaign.id)
        for _ in range(REFUSALS_PER_AGENT):
            contact_id = await self._step(q.lease(self.owner, self.lease_ttl_s))
            if contact_id is None:
                return Placed.EMPTY
            try:
                aid = await self._dial(campaign, contact_id, agent, token, audit)
            except NotDialable as exc:
                await self._refused(campaign, contact_id, exc)
                continue
            except AmiNotReady as exc:
                log.info("campaign %s: not dialing: %s", campaign.name, exc)
                await self._step(q.release(contact_id, self.owner, top=True))
                return Placed.PAUSED
            except NotFound as exc:  # the contact was deleted, or the agent
                log.warning(
                    "campaign %s: contact %s not dialed: %s", campaign.name, contact_id, exc
                )
                await self._step(q.remove(contact_id))
                if "agent" in str(exc):
                    return Placed.PAUSED
                continue
            except AgentBusy as exc:  # the agent got a call since free() looked
                log.info("campaign %s: %s; contact %s back on top", campaign.name, exc, contact_id)
                await self._step(q.release(contact_id, self.owner, top=True))
                return Placed.BUSY
            except Conflict as exc:  # already in a call (another path dialed it)
                log.info("campaign %s: contact %s not dialed: %s", campaign.name, contact_id, exc)
                await self._step(q.remove(contact_id))
                continue
            if aid is None:
                return Placed.LATE
            self.inflight[aid] = InFlight(aid, campaign.id, contact_id, agent, token)
            log.info(
                "campaign %s: contact %s dialed for agent %s (attempt %s)",
                campaign.name,
                contact_id,
                agent or "(picked on answer)",
                aid,
            )
            return Placed.DIALED
        return Placed.PAUSED

    async def _dial(
        self,
        campaign: CampaignInfo,
        contact_id: int,
        agent: str | None,
        token: str | None,
        audit: dict[str, Any] | None = None,
    ) -> str | None:
        """Originator.dial with a deadline that never orphans a committed attempt: should
        it run late, the call is adopted when dial returns (None now; the reservation and
        the lease are then the late task's)."""
        task = asyncio.ensure_future(
            self.originator.dial(
                contact_id,
                agent_id=agent,
                trunk=campaign.trunk,
                audit={"engine": campaign.mode.value, "worker": self.owner, **(audit or {})},
            )
        )
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.step_timeout_s)
        except TimeoutError:
            log.warning("campaign %s: dial of contact %s is late", campaign.name, contact_id)
            self._spawn(self._late(task, campaign, contact_id, agent, token))
            return None

    async def _late(
        self,
        task: asyncio.Future[str],
        campaign: CampaignInfo,
        contact_id: int,
        agent: str | None,
        token: str | None,
    ) -> None:
        """A dial that outlived its deadline: tracked once placed (the agent stays reserved
        until it ends); failed, the record goes back to the top and the agent is free."""
        try:
            aid = await task
        except Exception as exc:
            log.warning(
                "campaign %s: late dial of contact %s failed: %s", campaign.name, contact_id, exc
            )
            try:
                await self._step(self._queue(campaign.id).release(contact_id, self.owner))
            finally:
                if agent and token:
                    await self._step(self.reservations.give_back(agent, token))
            return
        self.inflight[aid] = InFlight(aid, campaign.id, contact_id, agent, token)

    async def _refused(self, campaign: CampaignInfo, contact_id: int, exc: NotDialable) -> None:
        """Compliance said no: the record leaves the queue and comes back (enqueue_due) when
        the verdict says it may next be dialed, or stays out if no time will do."""
        v = exc.verdict
        nxt = v.next_dialable_at
        if nxt is not None:
            await self._db(lambda: _write(self.factory, lambda s: postpone(s, contact_id, nxt)))
        await self._step(self._queue(campaign.id).remove(contact_id))
        log.info(
            "campaign %s: contact %s refused (%s); back %s",
            campaign.name,
            contact_id,
            "; ".join(f"{r.name}: {r.reason}" for r in v.failed),
            nxt.isoformat() if nxt else "never (left out of the queue)",
        )

    async def _ended(self, fl: InFlight) -> None:
        """The attempt ended (the database holds its result and treatment): its record
        leaves the queue and its agent's reservation is released."""
        try:
            await self._step(self._queue(fl.campaign_id).settle(fl.contact_id, self.owner))
        except Conflict as exc:  # the lease lapsed and went elsewhere: theirs to settle
            log.warning("attempt %s: lease not settled: %s", fl.attempt_id, exc)
        finally:
            if fl.agent_id and fl.token:
                await self._step(self.reservations.give_back(fl.agent_id, fl.token))


def _write(factory: sessionmaker[Session], fn: Callable[[Session], None]) -> None:
    with transaction(factory) as s:
        fn(s)

"""Firing due callbacks (and bringing due retries back), exactly once.

`sweep` runs every second (scheduler/app.py's beat) and may run twice at once (two beats,
a redelivered task, a worker restarted mid-sweep). Exactly once comes from the database,
never from Redis or Celery:

- due PENDING callbacks are claimed in batches inside one transaction, PostgreSQL with
  `SELECT ... FOR UPDATE OF callbacks SKIP LOCKED` (two sweeps take disjoint rows), SQLite
  with `BEGIN IMMEDIATE` (one writer at a time);
- in that transaction each claimed callback is decided by the pure rules below (its
  window, then compliance at firing time) and, to fire, turned QUEUED with `fired_at` and
  a `callback_due` case event: only a PENDING row fires, so a second sweep finds nothing;
- after the commit, one Lua script per callback publishes it: if its id is new in the
  *published* set, it joins the campaign's callback queue (`names.key_callback_queue`,
  scored by fired_at, read by the bridge to route it) and a `callback_due` event goes to
  `names.KEY_EVENTS`. A sweep killed between commit and publish is caught by the next
  sweep's reconcile step, which republishes what was fired since the previous reconcile
  and is missing from the published set: nothing lost (even if no worker ran for an
  hour), nothing twice.

Redis is rebuilt from the database: when a campaign's *built* marker is missing (first
sweep, FLUSHALL), `rebuild_callback_queue` re-adds its QUEUED callbacks not yet taken by an
agent and marks them published, without events (their events were already sent). While
the marker is missing nothing of that campaign is published, so a FLUSHALL landing
between a commit and its publish leaves those callbacks to the rebuild: queued, not
announced (the events stream was flushed anyway).

Windows (a callback to a new number that may be called only between two wall-clock times
of the contact): the callback fires only inside the window; before it, it waits for the
opening; a window that closes before the callback fired (scheduler down, campaign stopped,
compliance refusing until after the close) or before the bridge dialed a QUEUED one counts
a missed day and moves it to the next day's window, until `campaign.callback_max_days`
days were missed: then it expires and the contact goes back to READY (its normal queue).
"""

from __future__ import annotations

import logging
import time as _time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from . import names
from .callbacks_facts import facts_many
from .compliance import Facts, Verdict, evaluate, in_window, next_in_window
from .compliance import _offset_changes as offset_changes
from .compliance import _zone as zone_of
from .dial_queue import DialQueue
from .errors import Invalid
from .model import (
    Callback,
    CallbackState,
    Campaign,
    CampaignState,
    CaseEvent,
    Contact,
    ContactState,
    transaction,
)
from .model.tables import Offer, OfferState

log = logging.getLogger(__name__)

FIRE, WAIT, EXPIRE, CANCEL = "fire", "wait", "expire", "cancel"
# Rules that fail for a while without saying until when: try again shortly.
TRANSIENT_RULES = frozenset({"live_call", "campaign"})
RETRY_TRANSIENT = timedelta(seconds=60)
# Reconcile looks back to the previous reconcile minus this margin, which covers a sweep
# whose batch committed after another sweep's reconcile had begun.
RECONCILE_MARGIN = timedelta(seconds=60)
MARK_KEEP = timedelta(hours=1)  # published marks outlive the look-back by this much
EVENTS_MAXLEN = 100_000

# KEYS: published set, campaign's callback queue, events stream, the queue's built marker.
# ARGV: score (fired_at epoch), member, stream maxlen, then the event's field/value pairs.
# No built marker (a FLUSHALL just now): nothing is published; the next sweep's rebuild
# queues the callback from the database (without an event: never two announcements).
PUBLISH_LUA = """
if redis.call('EXISTS', KEYS[4]) == 0 then
  return 0
end
if redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[2]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
  return 1
end
return 0
"""


# ---------------------------------------------------------------- pure rules
@dataclass(frozen=True)
class Decision:
    """What a sweep does with one due callback: fire it now, let it wait (PENDING) until
    `due_at`, expire it or cancel it; `days_tried` is its new count of missed days."""

    action: str
    due_at: datetime | None
    days_tried: int
    reason: str


@dataclass(frozen=True)
class Window:
    """A callback's window on the contact's wall clock; end < start crosses midnight."""

    zone: ZoneInfo
    start: time
    end: time

    def inside(self, at: datetime) -> bool:
        return in_window(at.astimezone(self.zone).time(), self.start, self.end)

    def next_opening(self, at: datetime) -> datetime:
        """`at` itself when inside, else the first instant after it that is (DST-correct:
        a start in a skipped hour opens when the clock jumps)."""
        return next_in_window(at, self.zone, self.start, self.end)

    def close_after(self, at: datetime) -> datetime:
        """The first instant after `at` that is outside the window (`at` inside it).

        Being outside begins where the wall clock reaches `end` (once, or twice in a
        repeated hour) or where the offset changes: those instants are the candidates."""
        at = at.astimezone(UTC)
        day = at.astimezone(self.zone).date()
        cands: list[datetime] = list(offset_changes(self.zone, at, at + timedelta(days=3)))
        for d in (day + timedelta(days=k) for k in range(-1, 3)):
            for fold in (0, 1):
                wall = datetime.combine(d, self.end, tzinfo=self.zone).replace(fold=fold)
                cands.append(wall.astimezone(UTC))
        found = sorted(u for u in cands if u > at and not self.inside(u))
        return found[0] if found else at  # pragma: no cover - a window closes daily


def window_of(timezone: str | None, start: time | None, end: time | None) -> Window | None:
    """The callback's window, None if it has none. Raises Invalid when it has one that
    cannot be applied (unknown time zone, start equal to end): never dialed by guess."""
    if start is None or end is None:
        return None
    zone = zone_of(timezone)
    if zone is None:
        raise Invalid(f"window {start:%H:%M}-{end:%H:%M}: contact's time zone unknown")
    if start == end:
        raise Invalid(f"window {start:%H:%M}-{end:%H:%M}: start equals end")
    return Window(zone, start, end)


def missed_day(after: datetime, w: Window, days_tried: int, max_days: int) -> Decision:
    """The window closed before the callback was fired or dialed: one more day missed;
    the next day's window, or expired once `max_days` days were missed."""
    days = days_tried + 1
    if days >= max_days:
        return Decision(EXPIRE, None, days, f"window missed on {days} of {max_days} day(s)")
    nxt = w.next_opening(after)
    return Decision(WAIT, nxt, days, f"window missed ({days} of {max_days}): next window")


def plan_window(
    now: datetime, due_at: datetime, w: Window | None, days_tried: int, max_days: int
) -> Decision | None:
    """None when the window allows firing now (or there is none); else wait for the
    window the callback targets (the first one at or after its due time), or count a
    missed day when that window already closed."""
    if w is None or w.inside(now):
        return None
    opening = w.next_opening(due_at)
    if now < opening:
        return Decision(WAIT, opening, days_tried, "before its window")
    return missed_day(now, w, days_tried, max_days)


def plan_compliance(
    now: datetime, verdict: Verdict, w: Window | None, days_tried: int, max_days: int
) -> Decision:
    """Fire when the dial rules allow it now. A rule that no time will make pass (DNC,
    no number, record done, unknown time zone) cancels it; otherwise it waits for the
    next dialable time, or a short while for a rule without one (a call in progress),
    unless that lies past its window's close: then the day is missed."""
    if verdict.allowed:
        return Decision(FIRE, now, days_tried, "due and dialable")
    never = [r for r in verdict.failed if r.next_time is None and r.name not in TRANSIENT_RULES]
    if never:
        why = "; ".join(f"{r.name}: {r.reason}" for r in never)
        return Decision(CANCEL, None, days_tried, why)
    until = verdict.next_dialable_at
    if until is None:  # only transient rules fail without a time
        until = max([now + RETRY_TRANSIENT, *(r.next_time for r in verdict.failed if r.next_time)])
    why = "; ".join(f"{r.name}: {r.reason}" for r in verdict.failed)
    if w is not None and until >= w.close_after(now):
        return missed_day(until, w, days_tried, max_days)
    return Decision(WAIT, until, days_tried, why)


# ---------------------------------------------------------------- results
@dataclass(frozen=True)
class Fired:
    """A callback turned QUEUED: what the bridge needs to route it."""

    callback_id: int
    campaign_id: int
    contact_id: int
    agent_id: str | None  # personal callbacks only
    due_at: datetime
    fired_at: datetime


@dataclass
class SweepResult:
    fired: list[Fired] = field(default_factory=list)
    waiting: int = 0  # looked at, left PENDING with a later due time
    expired: int = 0
    cancelled: int = 0
    requeued: int = 0  # QUEUED but not dialed by its window's close: next day
    published: int = 0  # callback_due events sent (this sweep's and reconciled ones)
    rebuilt: list[int] = field(default_factory=list)  # campaigns whose queue was rebuilt
    retries: int = 0  # records enqueue_due brought back into dial queues
    batches: int = 0


# ---------------------------------------------------------------- database
def _write_lock(s: Session) -> None:
    """SQLite: take the write lock first, so reads and writes are one atomic step (one
    sweep at a time). PostgreSQL: the row locks of FOR UPDATE SKIP LOCKED do it."""
    if s.get_bind().dialect.name == "sqlite":
        s.connection().exec_driver_sql("BEGIN IMMEDIATE")


def _taken_by_agent() -> Any:
    """An offer holds the callback (shown to an agent, or dialed from it)."""
    return (
        select(Offer.id)
        .where(
            Offer.callback_id == Callback.id,
            Offer.state.in_((OfferState.OPEN, OfferState.DIALED)),
        )
        .exists()
    )


def _decide(
    cb: Callback, contact: Contact, campaign: Campaign, facts: Facts, now: datetime
) -> Decision:
    try:
        w = window_of(contact.timezone, cb.window_start, cb.window_end)
    except Invalid as exc:
        return Decision(CANCEL, None, cb.days_tried, str(exc))
    max_days = max(1, campaign.callback_max_days)
    early = plan_window(now, cb.due_at, w, cb.days_tried, max_days)
    if early is not None:
        return early
    return plan_compliance(now, evaluate(facts, now), w, cb.days_tried, max_days)


def _release_contact(s: Session, cb: Callback, now: datetime) -> None:
    """The contact goes back to its normal queue, unless another callback holds it;
    next_at = now so that the next enqueue_due picks it up."""
    contact = s.get(Contact, cb.contact_id)
    if contact is None or contact.state is not ContactState.CALLBACK:
        return
    other = s.scalar(
        select(Callback.id).where(
            Callback.contact_id == cb.contact_id,
            Callback.id != cb.id,
            Callback.state.in_((CallbackState.PENDING, CallbackState.QUEUED)),
        )
    )
    if other is None:
        contact.state = ContactState.READY
        contact.next_at = now


def _apply(s: Session, cb: Callback, d: Decision, now: datetime) -> Fired | None:
    """Write one decision on the locked row (only a PENDING row is ever fired). An
    expired or cancelled callback's contact is released by the caller (`_release_contact`)
    once the batch is flushed, so that it sees its other callbacks' new states."""
    assert cb.state is CallbackState.PENDING
    moved = d.days_tried != cb.days_tried
    cb.days_tried = d.days_tried
    if d.action == FIRE:
        cb.state, cb.fired_at = CallbackState.QUEUED, now
        data = {"callback_id": cb.id, "due_at": cb.due_at.isoformat(), "late_s": _late(cb, now)}
        s.add(
            CaseEvent(
                contact_id=cb.contact_id,
                agent_id=cb.agent_id,
                kind="callback_due",
                data=data,
                text="callback due",
            )
        )
        agent = cb.agent_id if cb.personal else None
        return Fired(cb.id, cb.campaign_id, cb.contact_id, agent, cb.due_at, now)
    if d.action == WAIT:
        assert d.due_at is not None and d.due_at > now
        if moved:
            _case(s, cb, "callback_moved", d.reason, {"due_at": d.due_at.isoformat()})
        cb.due_at = d.due_at
        return None
    cb.state = CallbackState.EXPIRED if d.action == EXPIRE else CallbackState.CANCELLED
    _case(s, cb, f"callback_{cb.state.value}", d.reason, {})
    return None


def _late(cb: Callback, now: datetime) -> float:
    return round((now - cb.due_at).total_seconds(), 3)


def _case(s: Session, cb: Callback, kind: str, reason: str, data: dict[str, Any]) -> None:
    s.add(
        CaseEvent(
            contact_id=cb.contact_id,
            agent_id=cb.agent_id,
            kind=kind,
            data={"callback_id": cb.id, "reason": reason, **data},
            text=reason,
        )
    )


def claim_batch(
    factory: sessionmaker[Session], now: datetime, batch: int, result: SweepResult
) -> tuple[list[Fired], int]:
    """One transaction: claim up to `batch` due PENDING callbacks of running campaigns
    (skipping rows another sweep holds) and decide each. Returns those fired (the caller
    publishes them after this commit) and how many were claimed."""
    fired: list[Fired] = []
    with transaction(factory) as s:
        _write_lock(s)
        rows = s.scalars(
            select(Callback)
            .join(Campaign, Campaign.id == Callback.campaign_id)
            .where(
                Callback.state == CallbackState.PENDING,
                Callback.due_at <= now,
                Campaign.state == CampaignState.RUNNING,
            )
            .order_by(Callback.due_at, Callback.id)
            .limit(batch)
            .with_for_update(skip_locked=True, of=Callback)
        ).all()
        if not rows:
            result.batches += 1
            return fired, 0
        ids = {cb.campaign_id for cb in rows}
        campaigns = {c.id: c for c in s.scalars(select(Campaign).where(Campaign.id.in_(ids)))}
        ended: list[Callback] = []
        with s.no_autoflush:  # decide on what was read; write it all in one flush
            facts, contacts = facts_many(s, rows, campaigns, now)
            for cb in rows:
                camp = campaigns[cb.campaign_id]
                d = _decide(cb, contacts[cb.contact_id], camp, facts[cb.id], now)
                got = _apply(s, cb, d, now)
                if got is not None:
                    fired.append(got)
                else:
                    result.waiting += d.action == WAIT
                    result.expired += d.action == EXPIRE
                    result.cancelled += d.action == CANCEL
                    if d.action in (EXPIRE, CANCEL):
                        ended.append(cb)
                if d.action != FIRE:
                    log.info("callback %s: %s (%s)", cb.id, d.action, d.reason)
        s.flush()
        for cb in ended:
            _release_contact(s, cb, now)
    result.batches += 1
    return fired, len(rows)


def requeue_missed(
    factory: sessionmaker[Session], redis: Any, now: datetime, result: SweepResult
) -> None:
    """QUEUED windowed callbacks no agent took before their window closed go back to
    PENDING for the next day's window (or expire): never dialed outside it."""
    gone: list[tuple[int, int]] = []
    with transaction(factory) as s:
        _write_lock(s)
        rows = s.scalars(
            select(Callback)
            .where(
                Callback.state == CallbackState.QUEUED,
                Callback.window_start.is_not(None),
                Callback.window_end.is_not(None),
                ~_taken_by_agent(),
            )
            .with_for_update(skip_locked=True)
        ).all()
        for cb in rows:
            contact = s.get(Contact, cb.contact_id)
            camp = s.get(Campaign, cb.campaign_id)
            assert contact is not None and camp is not None
            try:
                w = window_of(contact.timezone, cb.window_start, cb.window_end)
            except Invalid:
                continue  # fired before the window became invalid: leave it to the agent
            if w is None or cb.fired_at is None or now < w.close_after(cb.fired_at):
                continue
            d = missed_day(now, w, cb.days_tried, max(1, camp.callback_max_days))
            cb.state = CallbackState.PENDING
            _apply(s, cb, d, now)
            if d.action == EXPIRE:
                s.flush()
                _release_contact(s, cb, now)
            gone.append((cb.campaign_id, cb.id))
    if gone:
        pipe = redis.pipeline(transaction=False)
        for camp_id, cb_id in gone:
            pipe.zrem(names.key_callback_queue(camp_id), member(cb_id))
            pipe.zrem(names.KEY_CALLBACKS_PUBLISHED, member(cb_id))
            pipe.xadd(
                names.KEY_EVENTS,
                {
                    "event": "callback_withdrawn",
                    "campaign_id": str(camp_id),
                    "callback_id": str(cb_id),
                },
                maxlen=EVENTS_MAXLEN,
                approximate=True,
            )
        pipe.execute()
        result.requeued += len(gone)


def member(callback_id: int) -> str:
    """The callback queue's member (zero-padded: Redis breaks equal scores bytewise)."""
    return f"{callback_id:015d}"


def publish(redis: Any, fired: Iterable[Fired]) -> int:
    """Queue and announce fired callbacks, each at most once (see PUBLISH_LUA). Returns
    how many were new."""
    script = redis.register_script(PUBLISH_LUA)
    pipe = redis.pipeline(transaction=False)
    n = 0
    for f in fired:
        fields = {
            "event": "callback_due",
            "campaign_id": str(f.campaign_id),
            "contact_id": str(f.contact_id),
            "callback_id": str(f.callback_id),
            "due_at": f.due_at.isoformat(),
            "fired_at": f.fired_at.isoformat(),
        }
        if f.agent_id:
            fields["agent_id"] = f.agent_id
        flat = [x for kv in fields.items() for x in kv]
        queue = names.key_callback_queue(f.campaign_id)
        built = names.key_callback_queue_built(f.campaign_id)
        keys = [names.KEY_CALLBACKS_PUBLISHED, queue, names.KEY_EVENTS, built]
        script(
            keys=keys,
            args=[repr(f.fired_at.timestamp()), member(f.callback_id), EVENTS_MAXLEN, *flat],
            client=pipe,
        )
        n += 1
    return sum(int(x) for x in pipe.execute()) if n else 0


def _fired_rows(s: Session, where: Any) -> list[Fired]:
    rows = s.execute(
        select(
            Callback.id,
            Callback.campaign_id,
            Callback.contact_id,
            Callback.personal,
            Callback.agent_id,
            Callback.due_at,
            Callback.fired_at,
        ).where(Callback.state == CallbackState.QUEUED, Callback.fired_at.is_not(None), where)
    ).all()
    return [
        Fired(i, camp, ct, agent if personal else None, due, fired)
        for i, camp, ct, personal, agent, due, fired in rows
        if fired is not None
    ]


def reconcile(factory: sessionmaker[Session], redis: Any, now: datetime) -> int:
    """Publish the fired callbacks whose publish was lost (a sweep killed after its
    commit): those fired since the previous reconcile (less a margin; a worker down for
    an hour means an hour) missing from the published set, looked up 1,000 at a time.
    Published marks older than the look-back are dropped."""
    last = redis.get(names.KEY_CALLBACKS_RECONCILED)
    since = now - RECONCILE_MARGIN
    if last is not None:
        since = min(since, datetime.fromtimestamp(float(last), UTC) - RECONCILE_MARGIN)
    with factory() as s:
        recent = _fired_rows(s, (Callback.fired_at >= since) & ~_taken_by_agent())
    lost: list[Fired] = []
    for i in range(0, len(recent), 1000):
        part = recent[i : i + 1000]
        marks = redis.zmscore(names.KEY_CALLBACKS_PUBLISHED, [member(f.callback_id) for f in part])
        lost += [f for f, mark in zip(part, marks, strict=True) if mark is None]
    if lost:
        log.warning("republishing %d fired callbacks whose publish was lost", len(lost))
    n = publish(redis, lost)
    redis.zremrangebyscore(names.KEY_CALLBACKS_PUBLISHED, "-inf", (since - MARK_KEEP).timestamp())
    redis.set(names.KEY_CALLBACKS_RECONCILED, repr(now.timestamp()))
    return n


def rebuild_callback_queue(factory: sessionmaker[Session], redis: Any, campaign_id: int) -> int:
    """Re-add every QUEUED callback of the campaign that no agent holds yet to its queue,
    mark every QUEUED one published (no event: it was announced when fired), then set the
    built marker. Idempotent; after a FLUSHALL the database is the truth. Returns how
    many were queued."""
    with factory() as s:
        rows = _fired_rows(s, Callback.campaign_id == campaign_id)
        taken = set(
            s.scalars(
                select(Callback.id).where(
                    Callback.campaign_id == campaign_id,
                    Callback.state == CallbackState.QUEUED,
                    _taken_by_agent(),
                )
            )
        )
    pipe = redis.pipeline(transaction=True)  # queue and marker appear together
    for f in rows:
        score = {member(f.callback_id): f.fired_at.timestamp()}
        pipe.zadd(names.KEY_CALLBACKS_PUBLISHED, score, nx=True)
        if f.callback_id not in taken:
            pipe.zadd(names.key_callback_queue(campaign_id), score, nx=True)
    pipe.set(names.key_callback_queue_built(campaign_id), "1")
    pipe.execute()
    return len(rows) - len(taken)


def ensure_built(
    factory: sessionmaker[Session], redis: Any, campaign_ids: list[int], result: SweepResult
) -> None:
    pipe = redis.pipeline(transaction=False)
    for cid in campaign_ids:
        pipe.exists(names.key_callback_queue_built(cid))
    for cid, there in zip(campaign_ids, pipe.execute(), strict=True):
        if not there:
            n = rebuild_callback_queue(factory, redis, cid)
            log.warning("campaign %s: callback queue rebuilt from the database (%d)", cid, n)
            result.rebuilt.append(cid)


def _campaigns(factory: sessionmaker[Session]) -> tuple[list[int], list[int]]:
    """Every campaign's id (each gets its built marker before it runs), and the running."""
    with factory() as s:
        rows = s.execute(select(Campaign.id, Campaign.state).order_by(Campaign.id)).all()
    return [i for i, _ in rows], [i for i, st in rows if st is CampaignState.RUNNING]


def sweep(
    factory: sessionmaker[Session],
    redis: Any,
    now: datetime | None = None,
    batch: int = 500,
    budget_s: float = 20.0,
    retries: bool = True,
) -> SweepResult:
    """One sweep: rebuild lost callback queues, fire the due callbacks (batch after batch
    until none is due or `budget_s` is spent: the next sweep goes on), withdraw the
    QUEUED ones whose window closed, republish lost publishes, and bring due retries
    into the dial queues (`enqueue_due`). `now` (aware) defaults to the clock, read per
    batch so that a long sweep fires nothing before its time."""
    if batch < 1:
        raise Invalid(f"batch size must be at least 1, not {batch}")
    fixed = now
    if fixed is not None and (fixed.tzinfo is None or fixed.utcoffset() is None):
        raise Invalid("now must be a time-zone aware datetime")
    clock = (lambda: fixed) if fixed is not None else (lambda: datetime.now(UTC))
    result = SweepResult()
    every, running = _campaigns(factory)
    ensure_built(factory, redis, every, result)
    deadline = _time.monotonic() + budget_s
    while True:
        fired, claimed = claim_batch(factory, clock(), batch, result)
        result.fired += fired
        result.published += publish(redis, fired)
        if claimed < batch or _time.monotonic() > deadline:
            break
    requeue_missed(factory, redis, clock(), result)
    result.published += reconcile(factory, redis, clock())
    if retries:
        for cid in running:
            result.retries += DialQueue(redis, cid).enqueue_due(factory, clock())
    return result

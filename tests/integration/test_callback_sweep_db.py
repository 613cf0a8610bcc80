"""outbound.callbacks_fire.sweep on the real databases (SQLite and PostgreSQL) and a real
Redis, with an explicit `now`: windows across both DST changes in several zones, missed
days and expiry, compliance at firing time, exactly once under concurrent sweeps, a sweep
killed between its commit and its publish, a flushed Redis, and retries brought back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
import redis as redis_lib
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from outbound import callbacks_fire as cf
from outbound import names
from outbound.dial_queue import DialQueue
from outbound.model import (
    CallbackState,
    Campaign,
    CampaignState,
    Contact,
    ContactState,
    DncEntry,
    make_engine,
    session_factory,
    transaction,
    upgrade,
)
from outbound.model.tables import Offer, OfferState
from tests.helpers.callbacks import (
    add_callback,
    add_contact,
    bulk_callbacks,
    callback,
    case_counts,
    due_events,
    make_campaign,
    private_redis,
    queue_members,
    states,
)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with private_redis() as url:
        yield url


@pytest.fixture
def r(redis_url: str) -> Iterator[Any]:
    client = redis_lib.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def db(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


def sweep(db: sessionmaker[Session], r: Any, now: datetime) -> cf.SweepResult:
    return cf.sweep(db, r, now, batch=50)


# (zone, window, due, [(sweep time, state after it, due_at / fired_at expected)])
DST_CASES = {
    # Berlin spring forward 2026-03-29 01:00 UTC: 02:30 does not exist, opens at 03:00 CEST
    "berlin-gap": ("Europe/Berlin", ("02:30", "04:00"), utc(2026, 3, 28, 23), [
        (utc(2026, 3, 28, 23), "pending", utc(2026, 3, 29, 1)),
        (utc(2026, 3, 29, 0, 59, 59), "pending", utc(2026, 3, 29, 1)),
        (utc(2026, 3, 29, 1), "queued", utc(2026, 3, 29, 1)),
    ]),
    # Berlin fall back 2026-10-25 01:00 UTC: 02:15-02:45 twice; the first pass missed
    "berlin-fold": ("Europe/Berlin", ("02:15", "02:45"), utc(2026, 10, 25, 0, 15), [
        (utc(2026, 10, 25, 0, 50), "pending", utc(2026, 10, 25, 1, 15)),
        (utc(2026, 10, 25, 1, 15), "queued", utc(2026, 10, 25, 1, 15)),
    ]),
    # New York spring forward 2026-03-08 07:00 UTC: 02:30 EST does not exist
    "new-york-gap": ("America/New_York", ("02:30", "05:00"), utc(2026, 3, 8, 5), [
        (utc(2026, 3, 8, 5), "pending", utc(2026, 3, 8, 7)),
        (utc(2026, 3, 8, 7, 0, 1), "queued", utc(2026, 3, 8, 7, 0, 1)),
    ]),
    # New York fall back 2026-11-01 06:00 UTC: 01:00-02:00 repeats; fires in the first
    "new-york-fold": ("America/New_York", ("01:00", "01:30"), utc(2026, 11, 1, 4), [
        (utc(2026, 11, 1, 4), "pending", utc(2026, 11, 1, 5)),
        (utc(2026, 11, 1, 5, 10), "queued", utc(2026, 11, 1, 5, 10)),
    ]),
    # Lord Howe: +11 -> +10:30 on 2026-04-05 02:00; the 5th's 09:00 is 22:30 UTC
    "lord-howe-dst-end": ("Australia/Lord_Howe", ("09:00", "10:00"), utc(2026, 4, 3, 22), [
        (utc(2026, 4, 3, 23, 1), "pending", utc(2026, 4, 4, 22, 30)),
        (utc(2026, 4, 4, 22, 29), "pending", utc(2026, 4, 4, 22, 30)),
        (utc(2026, 4, 4, 22, 30), "queued", utc(2026, 4, 4, 22, 30)),
    ]),
    # Kolkata, +05:30 all year
    "kolkata": ("Asia/Kolkata", ("09:00", "11:00"), utc(2026, 3, 29, 3), [
        (utc(2026, 3, 29, 3), "pending", utc(2026, 3, 29, 3, 30)),
        (utc(2026, 3, 29, 3, 30), "queued", utc(2026, 3, 29, 3, 30)),
    ]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DST_CASES))
def test_given_a_window_across_dst_when_swept_then_fired_once_inside_it_on_time(
    db: sessionmaker[Session], r: Any, case: str
) -> None:
    zone, (ws, we), due, steps = DST_CASES[case]
    camp = make_campaign(db)
    contact = add_contact(db, camp, zone, "+4930111")
    cb_id = add_callback(
        db,
        camp,
        contact,
        due,
        window=(time.fromisoformat(ws), time.fromisoformat(we)),
        new_number="+4930222",
    )
    for now, state, expect in steps:
        sweep(db, r, now)
        cb = callback(db, cb_id)
        assert cb.state.value == state, (case, now)
        if state == "pending":
            assert cb.due_at == expect and cb.fired_at is None, (case, now)
        else:
            assert cb.fired_at == expect, (case, now)
    sweep(db, r, steps[-1][0] + timedelta(seconds=1))  # once more: nothing twice
    assert due_events(r) == {cb_id: 1}
    assert case_counts(db, "callback_due") == {cb_id: 1}
    assert queue_members(r, camp) == {cb_id}


def test_given_a_window_missed_every_day_then_moved_daily_and_expired_after_max_days(
    db: sessionmaker[Session], r: Any
) -> None:
    camp = make_campaign(db, max_days=2)
    contact = add_contact(db, camp, "Europe/Berlin", "+4930111")
    cb_id = add_callback(db, camp, contact, utc(2026, 1, 5, 8), window=(time(9), time(10)))
    with transaction(db) as s:  # stopped over its window: not claimed
        s.get_one(Campaign, camp).state = CampaignState.STOPPED
    sweep(db, r, utc(2026, 1, 5, 8, 30))
    assert callback(db, cb_id).due_at == utc(2026, 1, 5, 8)
    with transaction(db) as s:
        s.get_one(Campaign, camp).state = CampaignState.RUNNING
    sweep(db, r, utc(2026, 1, 5, 10))  # 11:00 CET: closed -> tomorrow, one day missed
    cb = callback(db, cb_id)
    assert (cb.state, cb.days_tried, cb.due_at) == (CallbackState.PENDING, 1, utc(2026, 1, 6, 8))
    sweep(db, r, utc(2026, 1, 7, 12))  # missed again: 2 of 2 days -> expired
    cb = callback(db, cb_id)
    assert (cb.state, cb.days_tried, cb.fired_at) == (CallbackState.EXPIRED, 2, None)
    with db() as s:
        ct = s.get_one(Contact, contact)
        assert (ct.state, ct.next_at) == (ContactState.READY, utc(2026, 1, 7, 12))
    assert due_events(r) == {} and case_counts(db, "callback_expired") == {cb_id: 1}


def test_given_dnc_or_calling_hours_at_firing_time_then_cancelled_or_waiting(
    db: sessionmaker[Session], r: Any
) -> None:
    camp = make_campaign(db, hours=(time(8), time(21)))
    c1 = add_contact(db, camp, "America/New_York", "+12125550101")
    c2 = add_contact(db, camp, "America/New_York", "+12125550102")
    now = utc(2026, 6, 1, 12, 30)  # 08:30 EDT
    dnc_cb = add_callback(db, camp, c1, now - timedelta(minutes=1))
    early_cb = add_callback(db, camp, c2, utc(2026, 6, 1, 11))  # 07:00 EDT: too early
    with transaction(db) as s:
        s.add(DncEntry(e164="+12125550101", campaign_id=None, reason="asked"))
    sweep(db, r, utc(2026, 6, 1, 11))
    assert callback(db, early_cb).due_at == utc(2026, 6, 1, 12)  # waits for 08:00 EDT
    sweep(db, r, now)
    assert callback(db, dnc_cb).state is CallbackState.CANCELLED
    assert callback(db, early_cb).state is CallbackState.QUEUED
    assert due_events(r) == {early_cb: 1}
    with db() as s:
        assert s.get_one(Contact, c1).state is ContactState.READY


def test_given_concurrent_sweeps_then_each_callback_fires_exactly_once(
    db: sessionmaker[Session], r: Any
) -> None:
    camp = make_campaign(db)
    now = utc(2026, 6, 1, 12)
    ids = bulk_callbacks(
        db, camp, "Asia/Kolkata", [now - timedelta(seconds=i % 60) for i in range(600)]
    )
    errors: list[BaseException] = []
    results: list[int] = []

    def run() -> None:
        try:
            results.append(len(cf.sweep(db, r, now, batch=40).fired))
        except BaseException as exc:  # pragma: no cover - shown by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sum(results) == len(ids)  # each claimed by exactly one sweep
    assert states(db, ids) == {CallbackState.QUEUED: len(ids)}
    assert due_events(r) == dict.fromkeys(ids, 1)
    assert case_counts(db, "callback_due") == dict.fromkeys(ids, 1)
    assert queue_members(r, camp) == set(ids)


def test_given_a_sweep_killed_after_its_commit_then_the_next_publishes_once(
    db: sessionmaker[Session], r: Any
) -> None:
    camp = make_campaign(db)
    now = utc(2026, 6, 1, 12)
    ids = bulk_callbacks(db, camp, "Europe/Berlin", [now] * 5)
    sweep(db, r, now - timedelta(seconds=1))  # an earlier sweep: queue built, nothing due
    fired, claimed = cf.claim_batch(db, now, 100, cf.SweepResult())  # committed, never published
    assert claimed == 5 and {f.callback_id for f in fired} == set(ids)
    assert due_events(r) == {} and queue_members(r, camp) == set()
    res = sweep(db, r, now + timedelta(minutes=30))  # no worker for half an hour
    assert res.published == 5 and res.fired == []
    sweep(db, r, now + timedelta(minutes=31))
    assert due_events(r) == dict.fromkeys(ids, 1) and queue_members(r, camp) == set(ids)


def test_given_redis_flushed_then_the_queue_is_rebuilt_from_the_database_nothing_twice(
    db: sessionmaker[Session], r: Any
) -> None:
    camp = make_campaign(db)
    now = utc(2026, 6, 1, 12)
    ids = bulk_callbacks(db, camp, "Europe/Berlin", [now] * 3)
    sweep(db, r, now)
    assert due_events(r) == dict.fromkeys(ids, 1)
    with transaction(db) as s:  # one is with an agent already: not routed again
        s.add(
            Offer(
                campaign_id=camp,
                contact_id=callback(db, ids[0]).contact_id,
                callback_id=ids[0],
                state=OfferState.OPEN,
            )
        )
    r.flushdb()
    res = sweep(db, r, now + timedelta(seconds=1))
    assert res.rebuilt == [camp] and res.published == 0
    assert queue_members(r, camp) == set(ids[1:])
    assert due_events(r) == {}  # the stream was flushed; nothing announced again
    assert case_counts(db, "callback_due") == dict.fromkeys(ids, 1)
    assert r.exists(names.key_callback_queue_built(camp))


def test_given_a_queued_windowed_callback_not_taken_by_the_close_then_next_day(
    db: sessionmaker[Session], r: Any
) -> None:
    camp = make_campaign(db)
    contact = add_contact(db, camp, "Asia/Kolkata", "+911234567")
    cb_id = add_callback(db, camp, contact, utc(2026, 1, 5, 3, 30), window=(time(9), time(10)))
    sweep(db, r, utc(2026, 1, 5, 3, 31))
    assert callback(db, cb_id).state is CallbackState.QUEUED
    sweep(db, r, utc(2026, 1, 5, 4, 29))  # 09:59 IST: still inside
    assert queue_members(r, camp) == {cb_id}
    sweep(db, r, utc(2026, 1, 5, 4, 30))  # 10:00 IST: closed, no agent took it
    cb = callback(db, cb_id)
    assert (cb.state, cb.days_tried, cb.due_at) == (
        CallbackState.PENDING,
        1,
        utc(2026, 1, 6, 3, 30),
    )
    assert queue_members(r, camp) == set()
    sweep(db, r, utc(2026, 1, 6, 3, 30))  # fires again on the next day's window
    assert callback(db, cb_id).state is CallbackState.QUEUED and due_events(r) == {cb_id: 2}


def test_given_a_due_retry_when_swept_then_it_is_in_the_dial_queue(
    db: sessionmaker[Session], r: Any
) -> None:
    camp = make_campaign(db)
    contact = add_contact(db, camp, "Europe/Berlin", "+4930333")
    now = utc(2026, 6, 1, 12)
    with transaction(db) as s:
        ct = s.get_one(Contact, contact)
        ct.state, ct.next_at = ContactState.READY, now - timedelta(seconds=1)
    res = sweep(db, r, now)
    assert res.retries == 1 and DialQueue(r, camp).position(contact, now) == 0


def test_given_sqlite_when_two_processes_sweep_then_the_write_lock_serialises_them(
    tmp_path: Any, r: Any
) -> None:
    e = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade(e)
    a, b = session_factory(e), session_factory(make_engine(f"sqlite:///{tmp_path / 'x.db'}"))
    camp = make_campaign(a)
    now = utc(2026, 6, 1, 12)
    ids = bulk_callbacks(a, camp, "Europe/Berlin", [now] * 200)
    out: list[int] = []
    ts = [
        threading.Thread(target=lambda f=f: out.append(len(cf.sweep(f, r, now, batch=7).fired)))
        for f in (a, b, a, b)
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert sum(out) == 200 and due_events(r) == dict.fromkeys(ids, 1)
    with a() as s:
        assert s.scalars(select(Campaign.id)).all() == [camp]


def test_batch_facts_equal_the_dial_gates_facts_record_by_record(
    db: sessionmaker[Session], r: Any
) -> None:
    """facts_many (one batch, six queries) reads what compliance.load_facts reads."""
    from outbound.callbacks_facts import callback_number, facts_many
    from outbound.compliance import load_facts
    from outbound.model import AttemptState, CallAttempt, Callback, CallResult

    camp = make_campaign(db)
    now = utc(2026, 6, 1, 12)
    cs = [
        add_contact(db, camp, z, f"+4930{i:04d}")
        for i, z in enumerate(
            ["Europe/Berlin", None, "Asia/Kolkata", "Bad/Zone", "America/New_York"]
        )
    ]
    cbs = [add_callback(db, camp, c, now - timedelta(minutes=i)) for i, c in enumerate(cs)]
    cbs.append(add_callback(db, camp, cs[0], now, new_number="+4930999"))
    with transaction(db) as s:
        s.add(DncEntry(e164="+49300000", campaign_id=None))
        s.add(DncEntry(e164="+49300000", campaign_id=camp))
        s.add(DncEntry(e164="+4930999", campaign_id=camp))
        s.add(
            CallAttempt(
                campaign_id=camp,
                contact_id=cs[2],
                attempt_no=1,
                e164="+49300002",
                state=AttemptState.ENDED,
                result=CallResult.ABANDONED,
                created_at=now - timedelta(hours=1),
            )
        )
        s.add(
            CallAttempt(
                campaign_id=camp,
                contact_id=cs[4],
                attempt_no=2,
                e164="+49300004",
                state=AttemptState.RINGING,
            )
        )
        ct = s.get_one(Contact, cs[1])
        ct.last_result, ct.next_at = CallResult.BUSY, now + timedelta(hours=1)
    with db() as s:
        rows = s.scalars(select(Callback).where(Callback.id.in_(cbs))).all()
        campaigns = {camp: s.get_one(Campaign, camp)}
        batch, contacts = facts_many(s, rows, campaigns, now)
        for cb in rows:
            e164 = callback_number(cb, contacts[cb.contact_id])
            one = load_facts(s, cb.contact_id, now=now, e164=e164, agent_reserved=True)
            assert batch[cb.id] == one, cb.id
    seen = {f.e164: f for f in batch.values()}
    assert seen["+49300000"].dnc == ("global", "campaign") and seen["+4930999"].dnc == ("campaign",)
    assert seen["+49300002"].abandoned_at is not None and seen["+49300004"].live_attempt


def test_given_a_personal_callback_when_fired_then_its_event_names_the_agent(
    db: sessionmaker[Session], r: Any
) -> None:
    from outbound.model import Agent, Callback

    camp = make_campaign(db)
    pooled = add_contact(db, camp, "Europe/Berlin", "+4930444")
    own = add_contact(db, camp, "Europe/Berlin", "+4930555")
    now = utc(2026, 6, 1, 12)
    with transaction(db) as s:
        s.add(Agent(id="a7", name="A7", extension="PJSIP/1007"))
        s.flush()
        s.add(Callback(campaign_id=camp, contact_id=own, due_at=now, personal=True, agent_id="a7"))
        s.add(Callback(campaign_id=camp, contact_id=pooled, due_at=now, agent_id="a7"))
    sweep(db, r, now)
    events = [
        {k.decode(): v.decode() for k, v in raw.items()} for _id, raw in r.xrange(names.KEY_EVENTS)
    ]
    by_contact = {int(e["contact_id"]): e for e in events if e["event"] == "callback_due"}
    assert by_contact[own]["agent_id"] == "a7" and by_contact[own]["campaign_id"] == str(camp)
    assert "agent_id" not in by_contact[pooled]  # pooled: any agent of the campaign


def test_given_flushall_between_commit_and_publish_then_queued_by_the_rebuild_once(
    db: sessionmaker[Session], r: Any
) -> None:
    camp = make_campaign(db)
    now = utc(2026, 6, 1, 12)
    ids = bulk_callbacks(db, camp, "Europe/Berlin", [now] * 3)
    sweep(db, r, now - timedelta(seconds=1))  # queue built
    fired, _n = cf.claim_batch(db, now, 100, cf.SweepResult())
    r.flushall()  # lands between the commit and the publish
    assert cf.publish(r, fired) == 0  # no marker: nothing published half-way
    assert queue_members(r, camp) == set() and due_events(r) == {}
    res = sweep(db, r, now + timedelta(seconds=1))
    assert res.rebuilt == [camp] and res.published == 0
    assert queue_members(r, camp) == set(ids) and due_events(r) == {}
    sweep(db, r, now + timedelta(seconds=2))
    assert due_events(r) == {} and case_counts(db, "callback_due") == dict.fromkeys(ids, 1)

"""The dial queue on the real local Redis (db 9), rebuilt from SQLite and PostgreSQL.

Each test uses its own random campaign id, so its keys are its own; they are deleted after.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from outbound import dial_queue
from outbound.dial_queue import AsyncDialQueue, DialQueue
from outbound.errors import Conflict, Invalid
from outbound.model import (
    AttemptState,
    CallAttempt,
    Campaign,
    Contact,
    ContactList,
    ContactState,
    DialMode,
    session_factory,
    transaction,
)
from tests.helpers.db import add_contact
from tests.helpers.redis_url import redis_url

REDIS_URL = redis_url(9)
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _campaign_id() -> int:
    return random.randrange(10**8, 10**9)


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def q(r: redis.Redis) -> Iterator[DialQueue]:
    queue = DialQueue(r, _campaign_id())
    yield queue
    queue.drop()


def _ids(queue: DialQueue, n: int = 1000) -> list[int]:
    return [e.contact_id for e in queue.peek(n, now=T0)]


def _drain(queue: DialQueue, now: datetime = T0) -> list[int]:
    out = []
    while (cid := queue.lease("w", 30, now=now)) is not None:
        out.append(cid)
    return out


# --- ordering ---


def test_given_records_when_leased_then_higher_priority_first_then_earlier_due_then_lower_id(
    q: DialQueue,
) -> None:
    q.push(10, 0, T0 - timedelta(minutes=5), now=T0)
    q.push(9, 0, T0 - timedelta(minutes=5), now=T0)  # same place as 10: lower id first
    q.push(3, 0, T0 - timedelta(minutes=9), now=T0)  # due earlier
    q.push(7, 5, T0 - timedelta(minutes=1), now=T0)  # higher priority beats due time
    q.push(8, -2, T0 - timedelta(days=9), now=T0)
    assert _ids(q) == [7, 3, 9, 10, 8]
    first = q.peek(1, now=T0)[0]
    assert (first.section, first.priority, first.due) == ("queued", 5, T0 - timedelta(minutes=1))
    assert _drain(q) == [7, 3, 9, 10, 8]
    assert q.depth(now=T0).leased == 5


def test_given_top_entries_when_leased_then_they_come_first_in_arrival_order(
    q: DialQueue,
) -> None:
    q.push(1, 99, T0 - timedelta(hours=1), now=T0)
    q.push(2, 0, T0, now=T0)
    q.push_top(5)
    q.push_top(4)
    q.push_top(2)  # a queued record moves to the top, after those already there
    assert q.push_top(5) is False  # already there: keeps its place
    assert _ids(q) == [5, 4, 2, 1]
    assert q.position(4, now=T0) == 1 and q.position(1, now=T0) == 3
    assert _drain(q) == [5, 4, 2, 1]


def test_given_record_not_yet_due_when_leasing_then_not_handed_out_until_its_time(
    q: DialQueue,
) -> None:
    assert q.push(1, 50, T0 + timedelta(minutes=1), now=T0) == "later"
    q.push(2, 0, T0, now=T0)
    assert q.depth(now=T0) == dial_queue.Depth(top=0, queued=1, later=1, leased=0)
    assert q.position(1, now=T0) is None
    assert q.locate(1, now=T0).due == T0 + timedelta(minutes=1)
    assert _drain(q) == [2]
    assert q.lease("w", 30, now=T0 + timedelta(seconds=59)) is None
    assert q.lease("w", 30, now=T0 + timedelta(seconds=61)) == 1


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(
        st.integers(1, 10**6),
        st.tuples(st.integers(-3, 3), st.integers(0, 200)),
        max_size=30,
    )
)
def test_property_lease_order_is_priority_then_due_second_then_id(
    q: DialQueue, records: dict[int, tuple[int, int]]
) -> None:
    q.drop()
    for cid, (prio, ago) in records.items():
        q.push(cid, prio, T0 - timedelta(seconds=ago), now=T0)
    expected = sorted(records, key=lambda c: (-records[c][0], -records[c][1], c))
    assert _drain(q) == expected


# --- leases ---


def test_given_no_time_passed_then_the_redis_server_clock_decides(
    q: DialQueue, r: redis.Redis
) -> None:
    secs, micros = r.time()
    server_now = datetime.fromtimestamp(secs + micros / 1e6, UTC)
    q.push(1, 0, server_now - timedelta(seconds=5))
    q.push(2, 9, server_now + timedelta(hours=1))  # not due by the server's clock
    assert q.lease("w", 30) == 1
    assert q.lease("w", 30) is None
    lease = q.lease_of(1)
    assert lease is not None
    assert abs((lease.expires_at - server_now).total_seconds() - 30) < 5


def test_given_two_workers_leasing_concurrently_then_no_record_is_ever_held_twice(
    q: DialQueue,
) -> None:
    n = 1500
    q.push_many([(i, i % 4, T0) for i in range(1, n + 1)], now=T0)
    held: dict[int, str] = {}
    settled: list[int] = []
    clashes: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        client = redis.Redis.from_url(REDIS_URL)
        wq = DialQueue(client, q.campaign_id)
        rng = random.Random(name)
        while (cid := wq.lease(name, 60, now=T0)) is not None:
            with lock:
                if cid in held:
                    clashes.append(f"{cid} leased by {name} while {held[cid]} holds it")
                held[cid] = name
            if rng.random() < 0.2:  # pushed back: another worker may take it next
                with lock:
                    del held[cid]
                assert wq.release(cid, name, top=rng.random() < 0.5)
            else:
                assert wq.settle(cid, name)
                with lock:
                    del held[cid]
                    settled.append(cid)
        client.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clashes == []
    assert sorted(settled) == list(range(1, n + 1))
    assert q.depth(now=T0) == dial_queue.Depth(0, 0, 0, 0)


def test_given_lease_not_settled_in_time_when_reclaimed_then_back_at_the_top_with_a_count(
    q: DialQueue,
) -> None:
    for cid in (1, 2, 3):
        q.push(cid, 0, T0 - timedelta(seconds=10 - cid), now=T0)
    assert q.lease("a", 10, now=T0) == 1
    assert q.lease("b", 20, now=T0) == 2
    assert q.reclaim(now=T0 + timedelta(seconds=9)) == []
    assert q.renew(2, "b", 5, now=T0 + timedelta(seconds=9)) == T0 + timedelta(seconds=14)
    assert q.reclaim(now=T0 + timedelta(seconds=15)) == [1, 2]  # in expiry order
    assert q.lease_of(1) is None
    assert _ids(q) == [1, 2, 3]  # to the top, before record 3
    assert q.lease("c", 10, now=T0 + timedelta(seconds=15)) == 1
    lease = q.lease_of(1)
    assert lease is not None and (lease.owner, lease.reclaims) == ("c", 1)
    assert lease.expires_at == T0 + timedelta(seconds=25)
    with pytest.raises(Conflict, match="back at the top"):
        q.settle(2, "b")  # its lease lapsed: the old owner no longer holds it


def test_given_lease_when_another_owner_settles_releases_or_renews_then_refused_and_unchanged(
    q: DialQueue,
) -> None:
    q.push(1, 0, T0, now=T0)
    assert q.lease("owner", 30, now=T0) == 1
    for attempt in (
        lambda: q.settle(1, "thief"),
        lambda: q.release(1, "thief"),
        lambda: q.renew(1, "thief", 30, now=T0),
        lambda: q.push_top(1),
    ):
        with pytest.raises(Conflict):
            attempt()
    assert q.push(1, 9, T0, now=T0) == "leased"  # a push leaves a leased record alone
    placed = q.locate(1, now=T0)
    assert placed.section == "leased" and placed.lease is not None
    assert placed.lease.owner == "owner"
    assert q.settle(1, "owner") is True
    assert q.settle(1, "owner") is False  # a retried settle is harmless
    assert q.locate(1, now=T0).section == "absent"


def test_given_lease_when_released_then_back_to_the_top_or_to_its_ordered_place(
    q: DialQueue,
) -> None:
    for cid, prio in ((1, 5), (2, 3), (3, 1)):
        q.push(cid, prio, T0, now=T0)
    assert q.lease("w", 30, now=T0) == 1
    assert q.lease("w", 30, now=T0) == 2
    assert q.release(1, "w", top=False)
    assert _ids(q) == [1, 3]  # priority 5: first again by its own order
    assert q.release(2, "w", top=True)
    assert _ids(q) == [2, 1, 3]
    assert q.remove(1) is True and q.remove(1) is False
    assert _ids(q) == [2, 3]


@pytest.mark.parametrize(
    "call",
    [
        lambda q: q.push(1, 2**19, T0),
        lambda q: q.push(1, 0, datetime(2030, 1, 1)),
        lambda q: q.push(0, 0, T0),
        lambda q: q.push(True, 0, T0),
        lambda q: q.lease("", 30),
        lambda q: q.lease("w", 0),
        lambda q: q.lease("w", 30, now=datetime(2030, 1, 1)),
        lambda q: q.peek(-1),
    ],
)
def test_given_bad_input_then_invalid_and_nothing_changes(q: DialQueue, call: Any) -> None:
    q.push(5, 0, T0, now=T0)
    with pytest.raises(Invalid):
        call(q)
    assert _ids(q) == [5] and q.depth(now=T0).leased == 0


# --- rebuild from the database ---


@pytest.fixture
def db(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


def _campaign(factory: sessionmaker[Session]) -> tuple[int, str]:
    """A campaign with a random id: its Redis keys are this test's own."""
    cid, name = _campaign_id(), f"c{random.randrange(10**9)}"
    with transaction(factory) as s:
        s.add(Campaign(id=cid, name=name, mode=DialMode.PROGRESSIVE))
        s.flush()
        s.add(ContactList(campaign_id=cid, name="l"))
    return cid, name


def _contact(factory: sessionmaker[Session], campaign: str, **fields: Any) -> int:
    cid = add_contact(factory, f"+3312345{random.randrange(10**4):04d}", campaign=campaign)
    if fields:
        with transaction(factory) as s:
            c = s.get(Contact, cid)
            assert c is not None
            for k, v in fields.items():
                setattr(c, k, v)
    return cid


def _expected(factory: sessionmaker[Session], campaign_id: int) -> list[int]:
    """The database's dialable contacts in dial order, computed here independently."""
    live = select(CallAttempt.contact_id).where(CallAttempt.state != AttemptState.ENDED)
    with factory() as s:
        rows = [
            c
            for c in s.scalars(select(Contact).where(Contact.campaign_id == campaign_id))
            if c.state == ContactState.READY
            and (c.next_at is None or c.next_at <= T0)
            and c.id not in set(s.scalars(live))
        ]
    return [
        c.id
        for c in sorted(
            rows, key=lambda c: (-c.priority, int((c.next_at or c.created_at).timestamp()), c.id)
        )
    ]


def _mixed_campaign(factory: sessionmaker[Session]) -> tuple[int, str, dict[str, int]]:
    cid, name = _campaign(factory)
    made = {
        "fresh": _contact(factory, name),
        "urgent": _contact(factory, name, priority=7),
        "retry_due": _contact(factory, name, next_at=T0 - timedelta(minutes=3), attempts=1),
        "retry_later": _contact(factory, name, next_at=T0 + timedelta(hours=1)),
        "done": _contact(factory, name, state=ContactState.DONE),
        "dnc": _contact(factory, name, state=ContactState.DNC),
        "in_call": _contact(factory, name),
    }
    with transaction(factory) as s:
        s.add(CallAttempt(campaign_id=cid, contact_id=made["in_call"], attempt_no=1, e164="+1"))
    return cid, name, made


def test_given_redis_lost_when_rebuilt_then_queue_equals_what_the_database_calls_dialable(
    r: redis.Redis, db: sessionmaker[Session]
) -> None:
    cid, _, made = _mixed_campaign(db)
    q = DialQueue(r, cid)
    try:
        for i, c in enumerate(made.values()):
            q.push(c, 0, T0 - timedelta(seconds=i), now=T0)
        r.delete(*q.all_keys())  # everything Redis knew is gone
        counts = q.rebuild(db, T0)
        expected = _expected(db, cid)
        assert set(expected) == {made["fresh"], made["urgent"], made["retry_due"]}
        assert expected[0] == made["urgent"]
        assert _ids(q) == expected
        assert (counts.dialable, counts.queued, counts.top, counts.leased) == (3, 3, 0, 0)
        assert q.rebuild(db, T0) == counts  # again: the same
    finally:
        q.drop()


def test_given_leases_and_top_entries_when_rebuilt_then_live_leases_kept_and_stale_top_dropped(
    r: redis.Redis, db: sessionmaker[Session]
) -> None:
    cid, name, made = _mixed_campaign(db)
    q = DialQueue(r, cid)
    try:
        q.rebuild(db, T0)
        leased = q.lease("worker-1", 300, now=T0)
        assert leased == made["urgent"]
        q.push_top(made["fresh"])  # a rejected record, still dialable
        q.push_top(made["done"])  # pushed back, but the database has closed it since
        newcomer = _contact(db, name, priority=1)
        counts = q.rebuild(db, T0)
        assert counts.top_dropped == 1 and counts.leased == 1
        assert _ids(q) == [made["fresh"], newcomer, made["retry_due"]]
        lease = q.lease_of(made["urgent"])
        assert lease is not None and lease.owner == "worker-1"
        assert q.settle(made["urgent"], "worker-1")
    finally:
        q.drop()


def test_given_changes_while_rebuilding_then_they_win_over_the_older_snapshot(
    r: redis.Redis, db: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    cid, _, made = _mixed_campaign(db)
    q = DialQueue(r, cid)
    try:
        q.rebuild(db, T0)
        assert q.lease("w", 60, now=T0) == made["urgent"]
        real = dial_queue.dialable_chunks

        def racing(*a: Any, **kw: Any) -> Iterator[list[Any]]:
            yield from real(*a, **kw)  # the snapshot still calls `urgent` dialable ...
            q.settle(made["urgent"], "w")  # ... but it was dialed meanwhile
            q.remove(made["fresh"])  # and this one was closed

        monkeypatch.setattr(dial_queue, "dialable_chunks", racing)
        q.rebuild(db, T0)
        assert _ids(q) == [made["retry_due"]]
    finally:
        q.drop()


def test_given_a_rebuild_running_when_another_starts_then_conflict(
    r: redis.Redis, db: sessionmaker[Session]
) -> None:
    cid, _, _ = _mixed_campaign(db)
    q = DialQueue(r, cid)
    try:
        r.set(q.keys[8], "someone-else")
        with pytest.raises(Conflict, match="running"):
            q.rebuild(db, T0)
        assert r.get(q.keys[8]) == b"someone-else"
    finally:
        q.drop()


def test_given_retry_coming_due_when_swept_then_enqueued_once(
    r: redis.Redis, db: sessionmaker[Session]
) -> None:
    cid, _, made = _mixed_campaign(db)
    q = DialQueue(r, cid)
    try:
        assert q.enqueue_due(db, T0) == 3  # first sweep: everything due
        assert made["retry_later"] not in _ids(q)
        assert q.enqueue_due(db, T0 + timedelta(seconds=1)) == 0
        later = T0 + timedelta(hours=1, seconds=1)
        assert q.enqueue_due(db, later) == 1
        assert made["retry_later"] in [e.contact_id for e in q.peek(10, now=later)]
    finally:
        q.drop()


# --- the async twin ---


async def test_given_async_queue_then_same_behaviour_on_the_same_keys(
    db: sessionmaker[Session],
) -> None:
    cid, _, made = _mixed_campaign(db)
    client = aredis.Redis.from_url(REDIS_URL)
    aq = AsyncDialQueue(client, cid)
    try:
        counts = await aq.rebuild(db, T0)
        assert counts.queued == 3
        got = await aq.lease("a", 30, now=T0)
        assert got == made["urgent"]
        with pytest.raises(Conflict):
            await aq.settle(got, "b")
        assert await aq.release(got, "a", top=True)
        assert await aq.position(got, now=T0) == 0
        assert [e.contact_id for e in await aq.peek(3, now=T0)] == _expected(db, cid)
        assert await aq.lease("a", 30, now=T0) == got
        assert await aq.reclaim(now=T0 + timedelta(seconds=31)) == [got]
        assert (await aq.depth(now=T0)).top == 1
    finally:
        await aq.drop()
        await client.aclose()


async def test_given_async_queue_when_a_retry_comes_due_then_swept_in_once(
    db: sessionmaker[Session],
) -> None:
    cid, _, made = _mixed_campaign(db)
    client = aredis.Redis.from_url(REDIS_URL)
    aq = AsyncDialQueue(client, cid)
    try:
        assert await aq.enqueue_due(db, T0) == 3  # first sweep: everything due
        assert await aq.enqueue_due(db, T0 + timedelta(seconds=1)) == 0
        later = T0 + timedelta(hours=1, seconds=1)
        assert await aq.enqueue_due(db, later) == 1
        assert made["retry_later"] in [e.contact_id for e in await aq.peek(10, now=later)]
    finally:
        await aq.drop()
        await client.aclose()

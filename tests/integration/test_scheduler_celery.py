"""The scheduler as it runs on a PBX: real Celery worker and beat subprocesses (`outbound
run worker|beat`), a real Redis of their own, a real PostgreSQL, real time.

Shows: callbacks due in four zones fire once and on time (lateness printed, not
asserted), a window not yet open holds its callback; two beats and two workers at once
fire nothing twice; a worker killed with SIGKILL in the middle of a sweep loses nothing
and fires nothing twice; FLUSHALL rebuilds the callback queue from the database and
announces nothing again, and the scheduler goes on firing.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis as redis_lib
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outbound import names
from outbound.model import Callback, CallbackState, make_engine, session_factory, upgrade
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
    queued_count,
    states,
)
from tests.helpers.celery_procs import Proc, Scheduler
from tests.helpers.until import until

ZONES = ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
SUCCEEDED = re.compile(r"Task scheduler\.sweep\[[^\]]+\] succeeded")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with private_redis() as url:
        yield url


@pytest.fixture
def r(redis_url: str) -> Iterator[Any]:
    client = redis_lib.Redis.from_url(redis_url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def db(pg_url: str) -> Iterator[sessionmaker[Session]]:
    e = make_engine(pg_url)
    upgrade(e)
    yield session_factory(e)
    e.dispose()


@pytest.fixture
def sched(tmp_path: Path, pg_url: str, redis_url: str, r: Any) -> Iterator[Scheduler]:
    s = Scheduler(tmp_path, pg_url, redis_url)
    yield s
    s.stop()
    for p in s.procs:  # a test's failure is easier to read with the processes' story
        print(f"--- {p.name} (last lines)\n" + "\n".join(p.text().splitlines()[-15:]))


def sweeps(p: Proc) -> int:
    return len(SUCCEEDED.findall(p.text()))


def running(sched: Scheduler, workers: int = 1, beats: int = 1) -> list[Proc]:
    """Start processes and wait until every worker has finished a sweep."""
    ws = [sched.worker(f"w{i + 1}") for i in range(workers)]
    bs = [sched.beat(f"b{i + 1}") for i in range(beats)]
    for w in ws:
        until(partial(lambda p: sweeps(p) >= 1, w), timeout=60, message=f"{w.name} swept")
    return ws + bs


def more_sweeps(w: Proc, n: int = 3) -> None:
    """Let the worker sweep `n` more times (so that a double fire would have happened)."""
    target = sweeps(w) + n
    until(lambda: sweeps(w) >= target, timeout=30, message=f"{n} more sweeps")


def lateness(db: sessionmaker[Session], ids: list[int]) -> list[float]:
    with db() as s:
        rows = s.execute(select(Callback.due_at, Callback.fired_at).where(Callback.id.in_(ids)))
        return sorted((f - d).total_seconds() for d, f in rows if f is not None)


def report(what: str, late: list[float]) -> None:
    q = statistics.quantiles(late, n=100) if len(late) > 1 else late * 99
    print(
        f"\n{what}: {len(late)} fired; lateness p50 {q[49]:.3f} s, p99 {q[98]:.3f} s, "
        f"max {max(late):.3f} s, min {min(late):.3f} s"
    )


def local_time(now: datetime, zone: str, delta: timedelta) -> time:
    return (now + delta).astimezone(ZoneInfo(zone)).time().replace(microsecond=0)


def test_given_callbacks_in_four_zones_when_due_then_each_fires_once_on_time(
    db: sessionmaker[Session], r: Any, sched: Scheduler
) -> None:
    w, _beat = running(sched)
    camp = make_campaign(db)
    now = datetime.now(UTC)
    plain: list[int] = []
    windowed: list[int] = []
    later: dict[int, datetime] = {}
    for z in ZONES:
        for i in range(10):
            c = add_contact(db, camp, z, f"+1555{len(plain):07d}")
            plain.append(add_callback(db, camp, c, now + timedelta(seconds=2 + i * 0.4)))
        c = add_contact(db, camp, z, "+15550000000")
        open_now = (
            local_time(now, z, -timedelta(minutes=30)),
            local_time(now, z, timedelta(hours=1)),
        )
        windowed.append(
            add_callback(
                db, camp, c, now + timedelta(seconds=3), window=open_now, new_number="+15559999999"
            )
        )
        c = add_contact(db, camp, z, "+15550000001")
        opens = now + timedelta(hours=2)
        shut = (local_time(now, z, timedelta(hours=2)), local_time(now, z, timedelta(hours=3)))
        cb = add_callback(db, camp, c, now + timedelta(seconds=1), window=shut, new_number="+1555")
        later[cb] = opens.replace(microsecond=0)
    fired = plain + windowed
    until(
        lambda: states(db, fired)[CallbackState.QUEUED] == len(fired),
        timeout=60,
        message="every due callback fired",
    )
    more_sweeps(w)
    for cb_id in fired:
        got = callback(db, cb_id)
        assert got.fired_at is not None and got.fired_at >= got.due_at, cb_id  # never early
    assert due_events(r) == dict.fromkeys(fired, 1)
    assert case_counts(db, "callback_due") == dict.fromkeys(fired, 1)
    assert queue_members(r, camp) == set(fired)
    for cb_id, opening in later.items():  # its window is not open: waits for it
        got = callback(db, cb_id)
        assert (got.state, got.fired_at, got.due_at) == (CallbackState.PENDING, None, opening)
    report("four zones", lateness(db, fired))


def test_given_two_beats_and_two_workers_then_nothing_fires_twice(
    db: sessionmaker[Session], r: Any, sched: Scheduler
) -> None:
    procs = running(sched, workers=2, beats=2)
    camp = make_campaign(db)
    now = datetime.now(UTC)
    ids = bulk_callbacks(
        db, camp, "Asia/Kolkata", [now + timedelta(seconds=1 + i / 100) for i in range(400)]
    )
    until(lambda: queued_count(db) == len(ids), timeout=60, message="all 400 fired")
    more_sweeps(procs[0])
    assert due_events(r) == dict.fromkeys(ids, 1)
    assert case_counts(db, "callback_due") == dict.fromkeys(ids, 1)
    for b in procs[2:]:  # both beats really sent sweeps, both workers ran them
        assert b.text().count("Sending due task sweep") >= 3, b.name
    assert all(sweeps(w) >= 3 for w in procs[:2])
    report("two beats, two workers", lateness(db, ids))


def test_given_the_worker_killed_mid_sweep_then_nothing_lost_nothing_twice(
    db: sessionmaker[Session], r: Any, sched: Scheduler
) -> None:
    sched.batch_size = 50  # many small commits: the kill lands between two of them
    w1, _beat = running(sched)
    camp = make_campaign(db)
    n = 6000
    ids = bulk_callbacks(db, camp, "Europe/Berlin", [datetime.now(UTC)] * n)
    until(lambda: queued_count(db) > 0, timeout=30, interval=0.01, message="sweep started")
    sched.kill9(w1)
    at_kill = queued_count(db)
    assert 0 < at_kill < n, "the worker was not killed in the middle of its sweep"
    w2 = sched.worker("w2")
    until(lambda: queued_count(db) == n, timeout=120, message="the rest fired by w2")
    more_sweeps(w2)
    print(f"\nkill -9 with {at_kill} of {n} fired; w2 fired the rest")
    assert due_events(r) == dict.fromkeys(ids, 1)
    assert case_counts(db, "callback_due") == dict.fromkeys(ids, 1)
    assert queue_members(r, camp) == set(ids)


def test_given_flushall_then_the_queue_is_rebuilt_and_nothing_announced_twice(
    db: sessionmaker[Session], r: Any, sched: Scheduler
) -> None:
    w, _beat = running(sched)
    camp = make_campaign(db)
    old = bulk_callbacks(
        db, camp, "America/New_York", [datetime.now(UTC) + timedelta(seconds=1)] * 50
    )
    until(lambda: queued_count(db) == 50, timeout=60, message="first 50 fired")
    until(lambda: due_events(r) == dict.fromkeys(old, 1), timeout=10, message="announced")
    r.flushall()
    until(lambda: queue_members(r, camp) == set(old), timeout=30, message="queue rebuilt")
    assert r.exists(names.key_callback_queue_built(camp))
    new = bulk_callbacks(
        db, camp, "America/New_York", [datetime.now(UTC) + timedelta(seconds=1)] * 10
    )
    until(lambda: queued_count(db) == 60, timeout=60, message="firing goes on after FLUSHALL")
    more_sweeps(w)
    assert due_events(r) == dict.fromkeys(new, 1)  # the old 50 were not announced again
    assert case_counts(db, "callback_due") == dict.fromkeys(old + new, 1)
    assert queue_members(r, camp) == set(old + new)

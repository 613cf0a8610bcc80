"""The clock jumps across a DST change while callbacks are due in the spring-forward gap
and in the autumn fold. The machine's clock cannot be moved, so the scheduler's sweep
(outbound.callbacks_fire.sweep) is given its `now`, on PostgreSQL and a redis-server of
the test's own: it sweeps at a time before the change, then the clock jumps past it (as
after a suspended host or an NTP step), then it sweeps on. Each callback is due at the
instant the DST rule (outbound/callback_rules.py resolve_due) documents for the wall time
the agent entered, fires exactly once (never before that instant), and the second pass
of the fold's wall time fires nothing again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis as redis_lib
from sqlalchemy.orm import Session, sessionmaker

from outbound import callbacks_fire as cf
from outbound.callback_rules import resolve_due
from outbound.model import CallbackState, make_engine, session_factory, upgrade
from tests.helpers.callbacks import (
    add_callback,
    add_contact,
    callback,
    case_counts,
    due_events,
    make_campaign,
    private_redis,
    queue_members,
)

ZONE = "Europe/Berlin"


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


# The wall time the agent entered -> the documented instant and what the rule did.
# Spring forward 2026-03-29 01:00 UTC (02:00 CET -> 03:00 CEST): 02:30 does not exist
# and moves forward by the gap, to 03:30 CEST. Fall back 2026-10-25 01:00 UTC (03:00
# CEST -> 02:00 CET): 02:30 exists twice, the first (CEST, 00:30 UTC) is meant.
GAP = ("2026-03-29 02:30", utc(2026, 3, 29, 1, 30), "adjusted")
FOLD = ("2026-10-25 02:30", utc(2026, 10, 25, 0, 30), "ambiguous")


@pytest.fixture
def db(pg_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(pg_url)
    upgrade(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def r() -> Iterator[Any]:
    with private_redis() as url:
        client = redis_lib.Redis.from_url(url)
        yield client
        client.close()


@pytest.mark.parametrize("case", [GAP, FOLD], ids=["gap", "fold"])
def test_given_callbacks_due_across_a_dst_change_when_the_clock_jumps_past_it_then_each_fires_once_at_its_documented_instant(
    db: sessionmaker[Session], r: Any, case: tuple[str, datetime, str]
) -> None:
    wall, instant, how = case
    due = resolve_due(wall, ZONE)
    assert due.utc == instant and getattr(due, how), due  # the rule, as documented
    camp = make_campaign(db)
    # Two callbacks at that wall time: one the clock jumps over, one it lands on.
    jumped = add_callback(db, camp, add_contact(db, camp, ZONE, "+4930111"), due.utc)
    sweep = lambda now: cf.sweep(db, r, now, batch=50)  # noqa: E731

    # Before the change (an hour before the instant): nothing fires.
    sweep(instant - timedelta(hours=1))
    assert callback(db, jumped).state is CallbackState.PENDING
    landed = add_callback(db, camp, add_contact(db, camp, ZONE, "+4930112"), due.utc)
    # One second before the instant: still nothing.
    sweep(instant - timedelta(seconds=1))
    assert {callback(db, c).state for c in (jumped, landed)} == {CallbackState.PENDING}
    # The clock jumps to the instant: both fire, at that instant, not a second before.
    sweep(instant)
    for c in (jumped, landed):
        cb = callback(db, c)
        assert (cb.state, cb.due_at, cb.fired_at) == (CallbackState.QUEUED, instant, instant)
    # Then past the change, and (fold) through the second pass of the same wall time
    # (an hour later in UTC): nothing fires twice.
    for later in (instant + timedelta(hours=1), instant + timedelta(hours=1, seconds=1)):
        sweep(later)
    assert due_events(r) == {jumped: 1, landed: 1}
    assert case_counts(db, "callback_due") == {jumped: 1, landed: 1}
    assert queue_members(r, camp) == {jumped, landed}


def test_given_a_callback_in_the_gap_when_the_clock_jumps_from_before_the_change_to_hours_after_then_it_fires_once_on_the_first_sweep_after(
    db: sessionmaker[Session], r: Any
) -> None:
    wall, instant, _ = GAP
    due = resolve_due(wall, ZONE)
    camp = make_campaign(db)
    cb_id = add_callback(db, camp, add_contact(db, camp, ZONE, "+4930113"), due.utc)
    cf.sweep(db, r, utc(2026, 3, 29, 0, 59, 59), batch=50)  # 01:59:59 CET
    assert callback(db, cb_id).state is CallbackState.PENDING
    jump = instant + timedelta(hours=3)  # the host slept through the change
    for now in (jump, jump + timedelta(seconds=1), jump + timedelta(hours=1)):
        cf.sweep(db, r, now, batch=50)
    cb = callback(db, cb_id)
    assert (cb.state, cb.due_at, cb.fired_at) == (CallbackState.QUEUED, instant, jump)
    assert due_events(r) == {cb_id: 1}
    assert case_counts(db, "callback_due") == {cb_id: 1}

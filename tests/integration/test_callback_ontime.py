"""Callbacks fired at their time between two sweeps (outbound.callbacks_ontime), on the
real databases and a real Redis; the clock is the test's, so "at their time" is exact:
never early, never left for the next sweep when it falls due before it, and nothing
waited for past the hand-over to the next sweep."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis as redis_lib
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from outbound import callbacks_fire as cf
from outbound import callbacks_ontime
from outbound.model import CallbackState, CampaignState, session_factory
from tests.helpers.callbacks import (
    bulk_callbacks,
    callback,
    due_events,
    make_campaign,
    private_redis,
)

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


class Clock:
    """Wall and monotonic time that move only when the code under test sleeps."""

    def __init__(self) -> None:
        self.wall, self.mono = T0, 100.0
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.wall += timedelta(seconds=s)
        self.mono += s


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


def test_given_callbacks_due_before_the_next_sweep_then_each_fired_at_its_time_once(
    db: sessionmaker[Session], r: Any
) -> None:
    camp = make_campaign(db)
    stopped = make_campaign(db, state=CampaignState.STOPPED)
    soon, later, next_period = bulk_callbacks(
        db, camp, "Europe/Berlin", [T0 + timedelta(seconds=x) for x in (0.3, 0.7, 1.5)]
    )
    (not_running,) = bulk_callbacks(db, stopped, "Europe/Berlin", [T0 + timedelta(seconds=0.1)])
    clock = Clock()
    assert cf.sweep(db, r, T0).fired == []  # the beat's sweep before (builds the queues)

    got = callbacks_ontime.fire_until(
        db, r, clock.mono + 0.95, clock=clock.now, sleep=clock.sleep, monotonic=clock.monotonic
    )

    assert sorted(f.callback_id for f in got.fired) == sorted([soon, later])
    for cb_id in (soon, later):  # fired when due: not a moment early, not at the next sweep
        cb = callback(db, cb_id)
        assert cb.state is CallbackState.QUEUED
        assert cb.fired_at is not None and cb.fired_at.replace(tzinfo=UTC) == cb.due_at.replace(
            tzinfo=UTC
        )
    # Due after the hand-over: the next sweep's. A stopped campaign's: not waited for.
    assert callback(db, next_period).state is CallbackState.PENDING
    assert callback(db, not_running).state is CallbackState.PENDING
    assert clock.slept == pytest.approx([0.3, 0.4])
    assert due_events(r) == {soon: 1, later: 1}

    again = callbacks_ontime.fire_until(
        db, r, clock.mono + 0.1, clock=clock.now, sleep=clock.sleep, monotonic=clock.monotonic
    )
    assert again.fired == [] and due_events(r) == {soon: 1, later: 1}  # nothing twice


def test_given_nothing_due_in_the_future_then_no_wait(db: sessionmaker[Session], r: Any) -> None:
    camp = make_campaign(db)
    bulk_callbacks(db, camp, "Europe/Berlin", [T0 - timedelta(seconds=5)])  # the sweep's
    clock = Clock()
    got = callbacks_ontime.fire_until(
        db, r, clock.mono + 1, clock=clock.now, sleep=clock.sleep, monotonic=clock.monotonic
    )
    assert got.fired == [] and clock.slept == []

"""Callbacks fired on time, not on the next beat.

Beat sends a sweep every second, so a callback due between two sweeps would wait up to a
whole period. After its sweep, the worker looks at the next PENDING callback of a running
campaign; when it falls due before the next sweep is expected, the worker waits for that
instant and claims what is due then (the same claim as the sweep: FOR UPDATE SKIP LOCKED,
exactly once). It never claims early, and it stops in time for the next beat message, so
a worker is never busier than one sweep per period.

Callbacks already due but waiting (outside their window, agent not there yet) are the
sweep's business: only callbacks due strictly in the future are waited for.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from .callbacks_fire import SweepResult, claim_batch, publish
from .model import Callback, CallbackState, Campaign, CampaignState


def next_due(factory: sessionmaker[Session], now: datetime) -> datetime | None:
    """The earliest due time after `now` of a PENDING callback of a running campaign
    (one index range read on ix_callbacks_due)."""
    with factory() as s:
        got = s.scalar(
            select(func.min(Callback.due_at))
            .join(Campaign, Campaign.id == Callback.campaign_id)
            .where(
                Callback.state == CallbackState.PENDING,
                Callback.due_at > now,
                Campaign.state == CampaignState.RUNNING,
            )
        )
    if got is not None and got.tzinfo is None:  # SQLite hands back naive UTC
        got = got.replace(tzinfo=UTC)
    return got


def fire_until(
    factory: sessionmaker[Session],
    redis: Any,
    until: float,
    batch: int = 500,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] = _time.sleep,
    monotonic: Callable[[], float] = _time.monotonic,
) -> SweepResult:
    """Until the monotonic instant `until`: wait for each next due time that comes before
    it, then claim and publish what is due. Returns what was fired."""
    result = SweepResult()
    while True:
        now = clock()
        nxt = next_due(factory, now)
        if nxt is None:
            return result
        wait = (nxt - now).total_seconds()
        if monotonic() + wait >= until:
            return result
        sleep(max(0.0, wait))
        while True:
            fired, claimed = claim_batch(factory, clock(), batch, result)
            result.fired += fired
            result.published += publish(redis, fired)
            if claimed < batch or monotonic() >= until:
                break

"""Helpers of the interaction tests (their fixtures are in conftest.py): a campaign world
on SQLite or PostgreSQL with its dial queue on the real local Redis (db 6)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from outbound.campaigns.attempts import advance, settle
from outbound.campaigns.interaction import (
    case_info,
)
from outbound.campaigns.preview import dial, get_record
from outbound.model import (
    AttemptState,
    CallAttempt,
    CallResult,
    CaseEvent,
    Contact,
    DialMode,
    DncEntry,
    transaction,
)
from outbound.model.tables import Offer
from tests.helpers.redis_url import redis_url
from tests.helpers.world import World as BaseWorld
from tests.helpers.world import make_world

REDIS_URL = redis_url(6)
CALLER_IDS = ["+4930111111", "+4930222222"]


class World(BaseWorld):
    def case(self, item_id: Any, cls: Any = CallAttempt) -> dict[str, Any]:
        with self.factory() as s:
            return case_info(s, s.get(cls, item_id))


def make(
    factory: sessionmaker[Session], r: redis.Redis, mode: DialMode, **campaign: Any
) -> Iterator[World]:
    yield from make_world(World, factory, r, "+4930100001", "Anna Alt", mode=mode, **campaign)


def connect(factory: sessionmaker[Session], attempt_id: str, end: bool = False) -> None:
    """What the bridge does when it sends the agent's dial (claims the `created` attempt),
    the contact answers and joins the agent (and hangs up)."""
    with transaction(factory) as s:
        a = s.get(CallAttempt, attempt_id)
        assert a is not None
        if a.state is AttemptState.CREATED:
            advance(a, "send")
        advance(a, "answer")
        advance(a, "connect")
    if end:
        with transaction(factory) as s:
            settle(s, attempt_id, CallResult.ANSWERED)


def snapshot(w: World) -> dict[str, Any]:
    """Everything an action could change: rows and the queue."""
    with w.factory() as s:
        return {
            "offers": [
                (o.id, o.state, o.agent_id, o.caller_id, o.attempt_id)
                for o in s.scalars(select(Offer).order_by(Offer.id))
            ],
            "attempts": [
                (a.id, a.state, a.disposition, a.caller_id)
                for a in s.scalars(select(CallAttempt).order_by(CallAttempt.id))
            ],
            "contacts": [
                (c.id, c.state, c.next_at) for c in s.scalars(select(Contact).order_by(Contact.id))
            ],
            "events": s.scalar(select(func.count()).select_from(CaseEvent)),
            "dnc": s.scalar(select(func.count()).select_from(DncEntry)),
            "queue": [(e.contact_id, e.section) for e in w.queue.peek(50)],
            "leases": {c: w.queue.lease_of(c) for c in w.contacts},
        }


def preview_and_dial(w: World, agent: str) -> tuple[int, str]:
    got = get_record(w.factory, w.queue, agent, w.campaign_id)
    attempt = dial(w.factory, w.queue, got["offer_id"], agent, CALLER_IDS[1])["attempt_id"]
    return got["contact_id"], attempt

"""Fixtures of the interaction tests: a campaign world on SQLite or PostgreSQL (`db_url`)
with its dial queue on the real local Redis (db 6)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from outbound.model import (
    DialMode,
)
from tests.integration.interaction.world import CALLER_IDS, REDIS_URL, World, make


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def w(factory: sessionmaker[Session], r: redis.Redis) -> Iterator[World]:
    """A preview campaign asking for a caller ID, with required disposition codes; a
    code "call_again" retries in 30 minutes."""
    yield from make(
        factory,
        r,
        DialMode.PREVIEW,
        caller_ids=CALLER_IDS,
        ask_caller_id=True,
        disposition_codes=["sale", "no_interest", "call_again"],
        disposition_required=True,
        treatments={"call_again": {"action": "retry", "delay_min": 30}},
    )


@pytest.fixture
def prog(factory: sessionmaker[Session], r: redis.Redis) -> Iterator[World]:
    """A progressive campaign without disposition codes."""
    yield from make(factory, r, DialMode.PROGRESSIVE)

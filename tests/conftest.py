"""Shared fixtures: scratch databases on SQLite and on the local PostgreSQL, and a private
redis-server per pytest-xdist worker.

PostgreSQL is a real server (127.0.0.1:5432, trust auth); each test gets its own database,
created and dropped here, so parallel runs never collide. It is never skipped: CI starts it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from outbound.model import make_engine, session_factory, upgrade
from tests.helpers.redis_url import needs_private_redis, start_private_redis, stop_private_redis

PG_ADMIN_URL = os.environ.get(
    "OUTBOUND_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


# Under xdist, every worker gets its own redis-server (see tests/helpers/redis_url.py),
# started as this file is imported: before any other conftest (pytest imports the ones on
# the command line's paths before pytest_configure) or test module builds its REDIS_URL.
if needs_private_redis(os.environ.get("PYTEST_XDIST_WORKER")):
    start_private_redis()


def pytest_unconfigure(config: pytest.Config) -> None:
    stop_private_redis()


def _pg_admin() -> Engine:
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@contextmanager
def scratch_pg_database() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped on exit."""
    name = f"ob_test_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database that is dropped after the test."""
    with scratch_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """An empty database URL, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'outbound.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated database (Alembic head) on both back ends."""
    e = make_engine(db_url)
    upgrade(e)
    yield e
    e.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory on the migrated database, once on SQLite and once on PostgreSQL."""
    return session_factory(engine)

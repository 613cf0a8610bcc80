"""A live campaign (tests/faults/live.py) on the session's sandbox Asterisk, and the data
stores fail mid-campaign: the test's own redis-server wiped (FLUSHALL: dial queues,
reservations, agents' live state, command streams, Celery's queues) or restarted empty;
the campaign's PostgreSQL connections terminated by the server (pg_terminate_backend on
its scratch database only: the machine's server is shared), or a PostgreSQL server of the
test's own (tests/faults/private_pg.py) stopped for 30 s. Every process must carry on
by itself (reconnect, rebuild what Redis lost from the database) and the invariants hold.
After a wipe the `callback_due` events on the Redis stream are gone with it: the
callbacks are counted in the database only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from outbound.sandbox import SandboxInfo
from tests.faults.healthz import watch_health
from tests.faults.invariants import invariants
from tests.faults.live import LiveCampaign, live_campaign
from tests.faults.private_pg import PrivatePg, private_pg
from tests.helpers.ami import AmiClient
from tests.helpers.until import async_until

pytestmark = [pytest.mark.asterisk, pytest.mark.timeout(300)]


@pytest.fixture
def live(sandbox: SandboxInfo, pg_url: str, tmp_path: Path) -> Iterator[LiveCampaign]:
    with live_campaign(sandbox, pg_url, tmp_path) as lv:
        yield lv


async def _mid_campaign(lv: LiveCampaign, attempts: int = 10) -> None:
    await asyncio.to_thread(lv.start)
    await asyncio.to_thread(lv.wait_attempts, attempts)


async def test_given_redis_flushed_mid_campaign_then_the_campaign_completes_and_nothing_is_lost_or_doubled(
    live: LiveCampaign, admin_ami: AmiClient
) -> None:
    await _mid_campaign(live)
    live.r.flushall()
    # The bridge's health record went with it, and comes back: the bridge goes on.
    await async_until(live.bridge_healthy, 30, message="bridge reports again")
    await asyncio.to_thread(live.settle)
    await invariants(live, admin_ami, stream=False)


async def test_given_redis_restarted_empty_mid_campaign_then_the_campaign_completes_and_nothing_is_lost_or_doubled(
    live: LiveCampaign, admin_ami: AmiClient
) -> None:
    await _mid_campaign(live)
    rs = live.redis_server
    assert rs is not None
    async with watch_health(live) as health:
        await health.wait_healthy(20)
        rs.stop()
        away = time.monotonic()
        # The status page names Redis while it is away (the fault is "away for 3 s").
        await health.wait_named("redis", away, 3)
        await asyncio.sleep(max(0.0, 3 - (time.monotonic() - away)))
        await asyncio.to_thread(rs.start)
        await async_until(live.bridge_healthy, 60, message="bridge reports again")
        await health.wait_healthy(20)
    await asyncio.to_thread(live.settle)
    await invariants(live, admin_ami, stream=False)


def _terminate_backends(pg_url: str) -> int:
    """Terminate every other connection to the test's scratch database; how many."""
    engine = create_engine(pg_url)
    try:
        with engine.connect() as c:
            got = c.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            return int(got.scalar() or 0)
    finally:
        engine.dispose()


async def test_given_the_database_connections_are_terminated_mid_campaign_then_the_campaign_completes_and_nothing_is_lost_or_doubled(
    live: LiveCampaign, admin_ami: AmiClient, pg_url: str
) -> None:
    await _mid_campaign(live)
    killed = 0
    for _ in range(3):  # three times, a second apart: hits connections in flight
        killed += await asyncio.to_thread(_terminate_backends, pg_url)
        await asyncio.sleep(1)
    assert killed > 0
    await asyncio.to_thread(live.settle)
    assert all(p.popen.poll() is None for p in live.procs.procs), "a process died"
    await invariants(live, admin_ami)


@pytest.fixture
def pg() -> Iterator[PrivatePg]:
    with private_pg() as server:
        yield server


async def _database_away(
    sandbox: SandboxInfo, pg: PrivatePg, tmp_path: Path, admin_ami: AmiClient, away_s: float
) -> LiveCampaign:
    """The private server stopped `away_s` seconds mid-campaign, then started again; the
    campaign settles, no process died, the invariants hold."""
    with live_campaign(sandbox, pg.url, tmp_path) as live:
        await _mid_campaign(live)
        await asyncio.to_thread(pg.stop)
        try:
            await asyncio.sleep(away_s)  # the fault is "stopped for N s": nothing to wait for
        finally:
            await asyncio.to_thread(pg.start)
        await asyncio.to_thread(live.settle)
        assert all(p.popen.poll() is None for p in live.procs.procs[:4]), "a process died"
        await invariants(live, admin_ami)
        return live


@pytest.mark.slow  # the server is away 30 s: > 40 s in all
async def test_given_the_database_server_stopped_for_30s_mid_campaign_then_the_campaign_completes_and_nothing_is_lost_or_doubled(
    sandbox: SandboxInfo, pg: PrivatePg, tmp_path: Path, admin_ami: AmiClient
) -> None:
    await _database_away(sandbox, pg, tmp_path, admin_ami, 30)


async def test_given_the_database_server_stopped_for_5s_while_calls_end_then_the_lost_events_are_reconciled_and_nothing_is_lost_or_doubled(
    sandbox: SandboxInfo, pg: PrivatePg, tmp_path: Path, admin_ami: AmiClient
) -> None:
    """Calls end every second in this campaign: some Hangup or OriginateResponse comes
    while the server is away, its handling fails and the event is gone. The bridge
    reconciles those attempts with Asterisk's channels once the server is back (else they
    stay live for ever and the campaign never settles)."""
    live = await _database_away(sandbox, pg, tmp_path, admin_ami, 5)
    log = live.proc("bridge").text()
    assert "not handled" in log, "no event met the outage: the fault did not happen"
    assert "reconciled after a database error" in log

"""A live campaign (tests/faults/live.py) on the session's sandbox Asterisk, one process of
the dialer `kill -9`'d mid-campaign and started again, as a supervisor would: the campaign
completes and the invariants (tests/faults/invariants.py) hold. None of these faults
touches Asterisk, so the shared sandbox is used; Redis and the database are the test's
own (a private redis-server, a scratch PostgreSQL database)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from ami_bridge.service import health_key
from outbound.sandbox import SandboxInfo
from tests.faults.invariants import invariants
from tests.faults.live import LiveCampaign, live_campaign
from tests.helpers.ami import AmiClient
from tests.helpers.until import async_until

pytestmark = [pytest.mark.asterisk, pytest.mark.timeout(180)]


@pytest.fixture
def live(sandbox: SandboxInfo, pg_url: str, tmp_path: Path) -> Iterator[LiveCampaign]:
    with live_campaign(sandbox, pg_url, tmp_path) as lv:
        yield lv


async def _mid_campaign(lv: LiveCampaign, attempts: int = 12) -> None:
    await asyncio.to_thread(lv.start)
    await asyncio.to_thread(lv.wait_attempts, attempts)


async def test_given_the_bridge_is_killed_mid_campaign_when_it_is_restarted_then_the_campaign_completes_and_nothing_is_lost_or_doubled(
    live: LiveCampaign, admin_ami: AmiClient
) -> None:
    await _mid_campaign(live)
    dead = live.proc("bridge")
    dead.popen.kill()
    dead.popen.wait(10)
    left = live.dialer_holds()  # the dead run's reserved agents and leased records
    assert left, "the bridge held nothing when it was killed"
    # While it is dead its health record expires: what the status page shows as down.
    await async_until(
        lambda: live.r.get(health_key(live.server)) is None, 10, message="bridge reported down"
    )
    live.procs.restart(dead)
    # The restarted bridge (same server name) frees what its predecessor held at once,
    # not when the holds expire (reservations 120 s, leases 60 s, renewed until the kill):
    # its agents get calls again and its records are dialed on.
    await async_until(
        lambda: not left & live.dialer_holds(), 20, message="the predecessor's holds released"
    )
    await asyncio.to_thread(live.settle)
    await invariants(live, admin_ami)


async def test_given_the_agi_server_is_killed_mid_campaign_when_it_is_restarted_then_the_campaign_completes_and_nothing_is_lost_or_doubled(
    live: LiveCampaign, admin_ami: AmiClient
) -> None:
    await _mid_campaign(live)
    live.kill9_and_restart("agi", down_s=2)
    await asyncio.to_thread(live.settle)
    await invariants(live, admin_ami)


async def test_given_the_celery_worker_is_killed_while_callbacks_come_due_when_it_is_restarted_then_each_fires_once(
    live: LiveCampaign, admin_ami: AmiClient
) -> None:
    await _mid_campaign(live, attempts=6)
    live.kill9_and_restart("w1", down_s=3)
    await asyncio.to_thread(live.settle)
    await invariants(live, admin_ami)


async def test_given_beat_is_killed_while_callbacks_come_due_when_it_is_restarted_then_each_fires_once(
    live: LiveCampaign, admin_ami: AmiClient
) -> None:
    await _mid_campaign(live, attempts=6)
    live.kill9_and_restart("b1", down_s=3)
    await asyncio.to_thread(live.settle)
    await invariants(live, admin_ami)


async def test_given_two_beats_at_once_then_each_callback_fires_once_and_no_contact_is_dialed_twice(
    live: LiveCampaign, admin_ami: AmiClient
) -> None:
    # Two workers too: with one (solo pool) the sweeps of both beats would run one after
    # the other, and the claim's row locks would never be put to the test.
    live.procs.beat("b2")
    live.procs.worker("w2")
    await _mid_campaign(live, attempts=6)
    await asyncio.to_thread(live.settle)
    assert live.proc("b2").popen.poll() is None  # both ran the whole time
    assert "Sending due task" in live.proc("b2").text()
    await invariants(live, admin_ami)

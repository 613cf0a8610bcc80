"""A live campaign (tests/faults/live.py) on a sandbox Asterisk of this module's own
(`own_sandbox`: the shared one is never restarted or frozen), and Asterisk itself fails
mid-campaign: `core restart now` with calls up and queued, or the process frozen
(SIGSTOP) for 10 s and then let go (SIGCONT). The bridge must notice, reconnect, settle
what Asterisk no longer has, and finish the campaign (and the status page's /healthz say
503 naming the bridge's AMI while Asterisk is frozen, 200 once it is back); the agents log in again as people
would when their desk phone's call is gone. Then the invariants hold (counted by the
restarted Asterisk itself: its astdb and CDR survive a restart)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from outbound.sandbox import Sandbox, SandboxInfo
from tests.faults.healthz import watch_health
from tests.faults.invariants import invariants
from tests.faults.live import LiveCampaign, live_campaign
from tests.helpers.ami import AmiClient
from tests.helpers.until import async_until

pytestmark = [pytest.mark.asterisk, pytest.mark.timeout(300)]


@pytest.fixture
def own_info(own_sandbox: Sandbox) -> SandboxInfo:
    info = own_sandbox.info()
    assert info is not None
    return info


@pytest.fixture
def live(own_info: SandboxInfo, pg_url: str, tmp_path: Path) -> Iterator[LiveCampaign]:
    with live_campaign(own_info, pg_url, tmp_path) as lv:
        yield lv


@pytest.fixture
async def own_admin(own_info: SandboxInfo) -> AsyncIterator[list[AmiClient]]:
    """The admin AMI clients the test opened (one per Asterisk life), closed after it."""
    made: list[AmiClient] = []
    yield made
    for c in made:
        await c.close()


async def _admin(info: SandboxInfo, made: list[AmiClient]) -> AmiClient:
    async def connect() -> AmiClient:
        return await AmiClient.connect(
            info.ami_host, info.ami_port, info.admin_ami_user, info.admin_ami_secret
        )

    client: AmiClient = await async_until(connect, 60, 0.5, ignore=(OSError, Exception))
    made.append(client)
    return client


async def test_given_asterisk_restarts_with_live_calls_then_the_campaign_completes_and_nothing_is_lost_or_doubled(
    live: LiveCampaign,
    own_sandbox: Sandbox,
    own_info: SandboxInfo,
    own_admin: list[AmiClient],
) -> None:
    await asyncio.to_thread(live.start)
    await asyncio.to_thread(live.wait_attempts, 10)
    connects = live.bridge_connects()
    await asyncio.to_thread(own_sandbox.cli, "core restart now")
    # The bridge reported the loss (its health record), then came back by itself.
    await async_until(lambda: not live.bridge_healthy(), 30, message="bridge reported down")
    await async_until(
        lambda: live.bridge_healthy() and live.bridge_connects() > connects,
        90,
        message="bridge reconnected by itself",
    )
    await asyncio.to_thread(live.settle)
    await invariants(live, await _admin(own_info, own_admin))


async def test_given_asterisk_frozen_for_10s_then_the_campaign_completes_and_nothing_is_lost_or_doubled(
    live: LiveCampaign,
    own_info: SandboxInfo,
    own_admin: list[AmiClient],
) -> None:
    await asyncio.to_thread(live.start)
    await asyncio.to_thread(live.wait_attempts, 10)
    async with watch_health(live) as health:
        await health.wait_healthy(20)
        os.kill(own_info.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            # The bridge's pings go unanswered: it reports the AMI as unhealthy, and the
            # status page names its AMI connection while Asterisk stays frozen.
            await async_until(lambda: not live.bridge_healthy(), 30, message="bridge reported down")
            await health.wait_named(f"ami {live.server}", frozen, 10)
            await asyncio.sleep(10)  # the fault is "frozen for 10 s": nothing to wait for
        finally:
            os.kill(own_info.pid, signal.SIGCONT)
        await async_until(live.bridge_healthy, 90, message="bridge healthy again by itself")
        await health.wait_healthy(20)
    await asyncio.to_thread(live.settle)
    await invariants(live, await _admin(own_info, own_admin))

"""A live campaign (tests/faults/live.py) on the session's sandbox Asterisk, and the AMI
link itself fails: the bridge process talks to Asterisk through a FaultProxy
(tests/faults/proxy.py), which forwards one Originate and cuts the connection before
its response comes back. The bridge cannot know whether that call was placed: it must
reconnect, find the call among Asterisk's channels by its ChannelId (or settle it as
gone), never send it again, and finish the campaign; the invariants hold. And a storm
of AMI events (a dialplan loop of UserEvents) while the campaign runs: the bridge works
them off, stays healthy or gets healthy again, and the invariants hold."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from outbound import names
from outbound.sandbox import Sandbox, SandboxInfo
from tests.faults.invariants import invariants
from tests.faults.live import LiveCampaign, live_campaign
from tests.faults.proxy import FaultProxy
from tests.helpers.ami import AmiClient
from tests.helpers.dialplan import extra_dialplan
from tests.helpers.until import async_until

pytestmark = [pytest.mark.asterisk, pytest.mark.timeout(180)]

ORIGINATE_ID = re.compile(rb"ActionID: originate/([0-9a-f-]{36})")


@pytest.fixture
def live(sandbox: SandboxInfo, pg_url: str, tmp_path: Path) -> Iterator[LiveCampaign]:
    with live_campaign(sandbox, pg_url, tmp_path) as lv:
        yield lv


async def test_given_the_ami_connection_cut_between_an_originate_and_its_response_then_the_call_is_reconciled_never_resent_and_nothing_is_lost_or_doubled(
    live: LiveCampaign,
    admin_ami: AmiClient,
    make_proxy: Callable[[int], Awaitable[FaultProxy]],
) -> None:
    proxy = await make_proxy(live.sb.ami_port)
    live.procs.ami_port = proxy.port
    await asyncio.to_thread(live.start)
    await asyncio.to_thread(live.wait_attempts, 6)
    connects = live.bridge_connects()
    proxy.cut_after(b"Action: Originate")
    await async_until(lambda: proxy.cuts == 1, 20, message="an Originate met the cut")
    await async_until(
        lambda: live.bridge_healthy() and live.bridge_connects() > connects,
        30,
        message="the bridge reconnected by itself",
    )
    await asyncio.to_thread(live.settle)
    await invariants(live, admin_ami)
    # Every Originate went to Asterisk once, the one whose answer was cut included.
    sent = Counter(m.decode() for m in ORIGINATE_ID.findall(bytes(proxy.to_server)))
    assert sent and max(sent.values()) == 1, [a for a, n in sent.items() if n > 1]
    assert {a.id for a in live.attempts() if a.originated_at} >= set(sent)
    assert "Originate answer lost" in live.proc("bridge").text()


# An event storm: each channel of this context emits <exten> UserEvents as fast as the
# dialplan runs, shaped as the dialer's own dial result for an attempt id that exists
# nowhere, so that the bridge must look each one up in the database (a slow consumer
# next to Asterisk's emitter) before it can drop it.
STORM_ATTEMPT = "ffffffff-ffff-4fff-8fff-ffffffffffff"
STORM_DIALPLAN = f"""
[faults-storm]
exten => _X.,1,Set(N=0)
 same => n(loop),UserEvent({names.EVENT_DIAL_RESULT},AttemptId: {STORM_ATTEMPT},DialStatus: BUSY)
 same => n,Set(N=$[${{N}} + 1])
 same => n,GotoIf($[${{N}} < ${{EXTEN}}]?loop)
 same => n,Hangup(16)
"""
STORM_CHANNELS = 4
STORM_EVENTS = 2500  # per channel


@pytest.fixture
def storm_context(sandbox_instance: Sandbox) -> Iterator[str]:
    """The storm's context in the session sandbox's extensions_sandbox_extra.conf (what
    was there before is put back afterwards)."""
    with extra_dialplan(sandbox_instance, STORM_DIALPLAN, "faults-storm", "faults-storm") as c:
        yield c


async def test_given_an_ami_event_storm_mid_campaign_then_the_bridge_stays_or_gets_healthy_and_nothing_is_lost_or_doubled(
    live: LiveCampaign, admin_ami: AmiClient, storm_context: str
) -> None:
    await asyncio.to_thread(live.start)
    await asyncio.to_thread(live.wait_attempts, 6)
    before = len(live.attempts())
    for _ in range(STORM_CHANNELS):
        await admin_ami.send(
            "Originate",
            Channel=f"Local/{STORM_EVENTS}@{storm_context}",
            Application="Wait",
            Data="1",
            Async="true",
        )
    expected = STORM_CHANNELS * STORM_EVENTS
    await async_until(
        lambda: len(admin_ami.find_events("UserEvent", AttemptId=STORM_ATTEMPT)) >= expected,
        30,
        0.2,
        message=f"Asterisk emitted the storm's {expected} events",
    )
    # The campaign went on during the storm, and the bridge is healthy after it (the
    # events it had queued are worked off; its AMI pings are answered meanwhile).
    await async_until(live.bridge_healthy, 30, message="the bridge healthy after the storm")
    await asyncio.to_thread(live.settle)
    assert len(live.attempts()) > before
    await invariants(live, admin_ami)

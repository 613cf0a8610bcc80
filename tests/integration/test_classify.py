"""Answer classification on the sandbox: the answered leg runs our FastAGI `classify`
route, Asterisk's AMD hears the simulated greeting, and the call is routed: a human into
the reserved agent's conference, a machine hung up; the verdict is stored on the attempt."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agi_scripts.classify import _record_fax
from outbound import names
from outbound.campaigns.attempts import advance, create_attempt
from outbound.model import AttemptState, CallResult, transaction
from outbound.sandbox import SandboxInfo
from tests.helpers.ami import AmiClient
from tests.helpers.db import add_agent, add_contact, migrated_factory
from tests.helpers.stack import attempt_row, call_stack, conference_members
from tests.helpers.until import async_until

# serial: AMD hears live audio in real time; see scripts/test.
pytestmark = pytest.mark.serial


@pytest.fixture
async def stack(sandbox: SandboxInfo, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    async with call_stack(sandbox, tmp_path / "c.db") as st:
        yield st


async def test_given_a_human_greeting_and_a_reserved_agent_then_connected_to_the_agents_bridge(
    stack: dict[str, Any], admin_ami: AmiClient
) -> None:
    agent = add_agent(stack["factory"], str(50000 + uuid.uuid4().int % 9999))
    await stack["sessions"].login(agent, f"Local/{uuid.uuid4().int % 10**6}@sim-phones")
    await stack["sessions"].wait_up(agent, timeout=10)
    number = "+4930" + str(uuid.uuid4().int)[:6] + "8"  # "hello", then listens
    cid = add_contact(stack["factory"], number)
    aid = await stack["originator"].dial(cid, agent_id=agent)
    conf = names.agent_bridge(agent)
    try:
        await async_until(lambda: _has(admin_ami, conf, aid), 15, message="human not connected")
    except AssertionError as exc:  # say what our side saw: AMD's verdict, the route
        a = attempt_row(stack["factory"], aid)
        raise AssertionError(f"{exc}; attempt: {a.state} {a.amd_status} {a.audit}") from None
    await async_until(lambda: attempt_row(stack["factory"], aid).state is AttemptState.CONNECTED, 5)
    # The verdict is written after the AGI let the call go on: wait for it.
    a = await async_until(
        lambda: (x := attempt_row(stack["factory"], aid)) and "route" in x.audit and x, 10
    )
    assert a.amd_status == "HUMAN"
    assert a.audit["route"] == "connect"
    await stack["sessions"].logout(agent)  # the agent leaves: the contact's call ends
    await async_until(lambda: attempt_row(stack["factory"], aid).state is AttemptState.ENDED, 10)
    assert attempt_row(stack["factory"], aid).result is CallResult.ANSWERED


async def test_given_a_machine_greeting_then_hung_up_and_recorded_as_answering_machine(
    stack: dict[str, Any], admin_ami: AmiClient
) -> None:
    number = "+4930" + str(uuid.uuid4().int)[:6] + "4"  # a long voicemail greeting
    cid = add_contact(stack["factory"], number)
    aid = await stack["originator"].dial(cid, agent_id=add_agent(stack["factory"], "77"))
    await async_until(
        lambda: attempt_row(stack["factory"], aid).state is AttemptState.ENDED,
        20,
        message="machine call not ended",
    )
    a = attempt_row(stack["factory"], aid)
    assert a.amd_status == "MACHINE" and a.result is CallResult.ANSWERING_MACHINE
    assert await conference_members(admin_ami, names.agent_bridge("77")) == []


async def _has(admin: AmiClient, conference: str, uid: str) -> bool:
    return uid in await conference_members(admin, conference)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, CallResult.FAX),  # fax tones first: FAX
        (CallResult.HANGUP, CallResult.FAX),  # the HANGUP of AMD cut short by the jump
        (CallResult.ANSWERING_MACHINE, CallResult.ANSWERING_MACHINE),  # a beep, no fax
        (CallResult.ABANDONED, CallResult.ABANDONED),
    ],
)
def test_given_a_result_already_recorded_then_the_fax_route_replaces_only_none_or_hangup(
    tmp_path: Path, before: CallResult | None, after: CallResult
) -> None:
    factory = migrated_factory(tmp_path / "f.db")
    cid = add_contact(factory, "+4930" + str(uuid.uuid4().int)[:7])
    with transaction(factory) as s:
        a = create_attempt(s, cid)
        advance(a, "answer")
        a.result, aid = before, a.id
    assert _record_fax(factory, aid) is after
    a = attempt_row(factory, aid)
    assert a.result is after
    assert (a.audit.get("route") == "fax") is (after is CallResult.FAX)

"""Call actions on a connected call, on the sandbox Asterisk, driven with the dialer's
least-privilege AMI account and checked by asking Asterisk (admin AMI: ConfbridgeList,
CoreShowChannels with Application/BridgeId, MusicOnHold events, AstDB sim counters)."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from ami_bridge import actions
from ami_bridge.connection import AmiActionFailed, AmiConnection
from ami_bridge.control import (
    CallControl,
    CallState,
    DialTemplates,
    Interaction,
    NoSuchCall,
    TargetDeclined,
)
from ami_bridge.sessions import AgentSessions
from outbound import names
from outbound.sandbox import SandboxInfo
from tests.helpers.ami import AmiClient, AmiError, Message
from tests.helpers.until import async_until

pytestmark = pytest.mark.asterisk

SANDBOX_DIAL = DialTemplates(
    internal="Local/${NUMBER}@sim-phones", trunk="Local/${NUMBER}@sim-contacts", ring_timeout=15
)


def number(last_digit: str = "8") -> str:
    """A sim number no other test dials (8: answers after 1 s and stays two minutes)."""
    return f"+4930{random.randrange(10**6, 10**7)}{last_digit}"


def extension() -> str:
    """An internal extension (a sim desk phone that answers at once) no other test uses."""
    return str(random.randrange(600000, 700000))


@pytest.fixture
async def conn(sandbox: SandboxInfo) -> AsyncIterator[AmiConnection]:
    c = AmiConnection(
        sandbox.ami_host, sandbox.ami_port, sandbox.ami_user, sandbox.ami_secret, action_timeout=5
    )
    await c.start(wait=10)
    yield c
    await c.close()


@pytest.fixture
async def control(conn: AmiConnection) -> CallControl:
    ctl = CallControl(conn, SANDBOX_DIAL)
    ctl.attach()
    return ctl


@dataclass
class Call:
    agent: str
    agent_leg: str  # Uniqueid of the agent's phone leg in its conference
    number: str  # the contact's sim number
    ix: Interaction


@pytest.fixture
async def cleanup(admin_ami: AmiClient) -> AsyncIterator[list[str]]:
    """Numbers / extensions whose sim channels are hung up after the test."""
    used: list[str] = []
    yield used
    for n in used:
        await admin_ami.send("Hangup", check=False, Channel=f"/^Local\\/{re.escape(n)}@/")


@pytest.fixture
async def call(
    conn: AmiConnection, control: CallControl, admin_ami: AmiClient, cleanup: list[str]
) -> AsyncIterator[Call]:
    """An agent logged in (sim desk phone) with a contact connected through the product's
    outbound-dial and outbound-connect contexts, opened in `control`."""
    sessions = AgentSessions(conn, answer_timeout=5)
    sessions.attach()
    agent = str(random.randrange(10**6, 10**7))
    cleanup.append(agent)
    sess = await sessions.login(agent, f"Local/{agent}@sim-phones")
    await sessions.wait_up(agent, timeout=5)
    num = number()
    cleanup.append(num)
    attempt = f"att-{uuid.uuid4()}"
    await actions.originate(
        conn,
        f"Local/{num}@{names.CTX_DIAL}",
        context=names.CTX_CONNECT,
        exten=agent,
        channel_id=attempt,
        variables={
            names.VAR_ATTEMPT_ID: attempt,
            names.VAR_TRUNK_DIAL: "Local/${NUMBER}@sim-contacts",
        },
    )
    await admin_ami.wait_event("ConfbridgeJoin", Uniqueid=attempt, timeout=10)
    ix = await control.open(agent, attempt)
    yield Call(agent, sess.channel_id, num, ix)
    if sessions.active():
        await sessions.logout(agent)


# ------------------------------------------------------------------ asking Asterisk
async def members(admin: AmiClient, agent: str) -> set[str]:
    """Uniqueids in the agent's ConfBridge."""
    try:
        _, events = await admin.collect("ConfbridgeList", Conference=names.agent_bridge(agent))
    except AmiError:  # no such conference
        return set()
    return {e["Uniqueid"] for e in events}


async def channels(admin: AmiClient) -> list[Message]:
    _, events = await admin.collect("CoreShowChannels")
    return events


async def app_of(admin: AmiClient, uid: str) -> str | None:
    return next((e["Application"] for e in await channels(admin) if e["Uniqueid"] == uid), None)


def far_end(prefix: str) -> Callable[[Message], bool]:
    """The simulated party's own half (`;2`) of `Local/<prefix>@...`."""
    return lambda e: e["Channel"].startswith(f"Local/{prefix}@sim-") and e["Channel"].endswith(";2")


async def linked(
    admin: AmiClient, a: Callable[[Message], bool], b: Callable[[Message], bool]
) -> bool:
    """True if a channel matching `a` hears one matching `b`: connected through bridges
    (same BridgeId) and Local channel halves, whatever Local optimisation did."""
    chans = await channels(admin)
    base = {e["Channel"]: e["Channel"].rsplit(";", 1)[0] for e in chans}
    start = {e["Channel"] for e in chans if a(e)}
    seen, todo = set(start), list(start)
    while todo:
        name = todo.pop()
        cur = next(e for e in chans if e["Channel"] == name)
        for e in chans:
            same_bridge = cur.get("BridgeId") and e.get("BridgeId") == cur.get("BridgeId")
            same_local = (
                e["Channel"].startswith("Local/") and base[e["Channel"]] == base[cur["Channel"]]
            )
            if (same_bridge or same_local) and e["Channel"] not in seen:
                seen.add(e["Channel"])
                todo.append(e["Channel"])
    return any(b(e) for e in chans if e["Channel"] in seen)


def leg(uid: str) -> Callable[[Message], bool]:
    return lambda e: e["Uniqueid"] == uid


async def listening(admin: AmiClient, num: str) -> bool:
    """The simulated contact has said hello and listens (and records DTMF)."""
    return any(
        far_end(num)(e) and e.get("Application", "").lower() == "background"
        for e in await channels(admin)
    )


# ------------------------------------------------------------------ tests
async def test_given_a_connected_contact_when_the_agent_ends_the_call_then_the_contact_is_gone_and_the_agent_stays(
    call: Call, control: CallControl, admin_ami: AmiClient
) -> None:
    assert await members(admin_ami, call.agent) == {call.agent_leg, call.ix.contact_id}

    await control.end_call(call.ix.id)

    await admin_ami.wait_event("Hangup", Uniqueid=call.ix.contact_id, timeout=5)
    assert call.ix.contact_id not in {e["Uniqueid"] for e in await channels(admin_ami)}
    assert await members(admin_ami, call.agent) == {call.agent_leg}
    assert call.ix.state is CallState.ENDED


async def test_given_a_connected_contact_when_held_then_it_hears_music_apart_and_when_resumed_it_is_back(
    call: Call, control: CallControl, admin_ami: AmiClient
) -> None:
    uid = call.ix.contact_id

    await control.hold(call.ix.id)

    await admin_ami.wait_event("MusicOnHoldStart", Uniqueid=uid, timeout=5)
    assert await app_of(admin_ami, uid) == "MusicOnHold"
    assert await members(admin_ami, call.agent) == {call.agent_leg}
    assert not await linked(admin_ami, leg(uid), leg(call.agent_leg))
    assert call.ix.state is CallState.HELD

    await control.resume(call.ix.id)

    await admin_ami.wait_event("MusicOnHoldStop", Uniqueid=uid, timeout=5)
    await async_until(lambda: _is_member(admin_ami, call.agent, uid), timeout=5, message="back")
    assert await app_of(admin_ami, uid) == "ConfBridge"
    assert call.ix.state is CallState.CONNECTED


@pytest.mark.parametrize("kind", ["internal", "external"])
async def test_given_a_connected_contact_when_transferred_blind_then_it_talks_with_the_target_and_the_agent_is_alone(
    call: Call, control: CallControl, admin_ami: AmiClient, cleanup: list[str], kind: str
) -> None:
    target = extension() if kind == "internal" else number()
    cleanup.append(target)

    t = await control.transfer(call.ix.id, target)

    assert t.kind == kind
    await async_until(
        lambda: linked(admin_ami, far_end(call.number), far_end(target)),
        timeout=8,
        message="contact bridged with the target",
    )
    family = "simphonecount" if kind == "internal" else "simcount"
    assert await admin_ami.db_get(family, target) == "1"
    assert await members(admin_ami, call.agent) == {call.agent_leg}
    assert not await linked(admin_ami, far_end(call.number), leg(call.agent_leg))
    assert call.ix.state is CallState.TRANSFERRED


async def test_given_a_connected_contact_when_a_third_party_is_conferenced_in_then_all_three_share_the_agents_bridge(
    call: Call, control: CallControl, admin_ami: AmiClient, cleanup: list[str]
) -> None:
    target = extension()
    cleanup.append(target)

    tid = await control.conference(call.ix.id, target)
    outcome = await control.wait_target(call.ix.id, timeout=10)

    assert outcome.answered and outcome.channel_id == tid
    assert await members(admin_ami, call.agent) == {call.agent_leg, call.ix.contact_id, tid}
    await async_until(
        lambda: linked(admin_ami, far_end(call.number), far_end(target)), 5, message="not linked"
    )
    assert call.ix.state is CallState.CONFERENCE


async def test_given_a_listening_contact_when_the_agent_sends_dtmf_then_the_contact_heard_the_digits(
    call: Call, control: CallControl, admin_ami: AmiClient
) -> None:
    await async_until(lambda: listening(admin_ami, call.number), timeout=5, message="listening")

    sent = await control.send_dtmf(call.ix.id, "12#")

    assert sent == "12#" and call.ix.dtmf == ["1", "2", "#"]
    await async_until(
        lambda: _db_is(admin_ami, "simdtmf", call.number, "12#"), timeout=5, message="digits"
    )
    assert call.ix.state is CallState.CONNECTED


async def test_given_a_consultation_when_the_target_answers_then_it_talks_with_the_agent_and_cancel_drops_it(
    call: Call, control: CallControl, admin_ami: AmiClient, cleanup: list[str]
) -> None:
    target = extension()
    cleanup.append(target)
    uid = call.ix.contact_id

    tid = await control.consult(call.ix.id, target)
    await control.wait_target(call.ix.id, timeout=10)

    assert await members(admin_ami, call.agent) == {call.agent_leg, tid}
    assert await app_of(admin_ami, uid) == "MusicOnHold"
    await async_until(
        lambda: linked(admin_ami, leg(call.agent_leg), far_end(target)), 5, message="not linked"
    )
    assert call.ix.state is CallState.CONSULTING

    await control.cancel_consult(call.ix.id)

    await admin_ami.wait_event("Hangup", Uniqueid=tid, timeout=5)
    assert await members(admin_ami, call.agent) == {call.agent_leg}

    async def far_end_gone() -> bool:  # the target's other half follows a moment later
        return not any(far_end(target)(e) for e in await channels(admin_ami))

    await async_until(far_end_gone, 5, message="the target's far end is still up")
    assert await app_of(admin_ami, uid) == "MusicOnHold"
    assert call.ix.state is CallState.HELD


async def test_given_a_consultation_when_the_target_is_busy_then_the_agent_is_told_and_the_contact_stays_on_hold(
    call: Call, control: CallControl, admin_ami: AmiClient
) -> None:
    busy = number("5")

    await control.consult(call.ix.id, busy)

    with pytest.raises(TargetDeclined) as declined:
        await control.wait_target(call.ix.id, timeout=10)
    assert declined.value.reason == "busy"
    assert await admin_ami.db_get("simcount", busy) == "1"
    assert await admin_ami.db_get("simlast", busy) == "busy"
    assert await app_of(admin_ami, call.ix.contact_id) == "MusicOnHold"
    assert await members(admin_ami, call.agent) == {call.agent_leg}
    assert call.ix.state is CallState.HELD


async def test_given_a_consultation_when_completed_as_transfer_then_contact_and_target_talk_and_the_agent_is_alone(
    call: Call, control: CallControl, admin_ami: AmiClient, cleanup: list[str]
) -> None:
    target = extension()
    cleanup.append(target)
    await control.consult(call.ix.id, target)
    await control.wait_target(call.ix.id, timeout=10)

    await control.complete_transfer(call.ix.id)

    await async_until(
        lambda: linked(admin_ami, far_end(call.number), far_end(target)),
        timeout=5,
        message="contact bridged with the target",
    )
    assert await members(admin_ami, call.agent) == {call.agent_leg}
    assert not await linked(admin_ami, far_end(target), leg(call.agent_leg))
    assert not any(
        e["Application"] == "MusicOnHold"
        for e in await channels(admin_ami)
        if leg(call.ix.contact_id)(e)
    )
    assert call.ix.state is CallState.TRANSFERRED


async def test_given_a_consultation_when_completed_as_conference_then_all_three_share_the_agents_bridge(
    call: Call, control: CallControl, admin_ami: AmiClient, cleanup: list[str]
) -> None:
    target = extension()
    cleanup.append(target)
    tid = await control.consult(call.ix.id, target)
    await control.wait_target(call.ix.id, timeout=10)

    await control.complete_conference(call.ix.id)

    expected = {call.agent_leg, call.ix.contact_id, tid}
    await async_until(
        lambda: _members_are(admin_ami, call.agent, expected), timeout=5, message="3 members"
    )
    assert await app_of(admin_ami, call.ix.contact_id) == "ConfBridge"
    assert call.ix.state is CallState.CONFERENCE


async def test_given_a_contact_that_hung_up_unseen_when_the_agent_holds_then_no_such_call_and_nothing_changes(
    call: Call, conn: AmiConnection, admin_ami: AmiClient
) -> None:
    # A second controller that follows no events: only Asterisk's answer can tell it.
    blind = CallControl(conn, SANDBOX_DIAL)
    ix = await blind.open(call.agent, call.ix.contact_id)
    await admin_ami.send("Hangup", Channel=call.ix.contact_id)
    await admin_ami.wait_event("Hangup", Uniqueid=call.ix.contact_id, timeout=5)
    before = {e["Uniqueid"] for e in await channels(admin_ami)}

    with pytest.raises(NoSuchCall, match="no longer exists"):
        await blind.hold(ix.id)

    assert {e["Uniqueid"] for e in await channels(admin_ami)} <= before
    assert await members(admin_ami, call.agent) == {call.agent_leg}
    assert ix.state is CallState.ENDED and ix.end_reason == "contact_gone"
    with pytest.raises(NoSuchCall):
        await blind.send_dtmf(ix.id, "1")
    # The attached controller saw the Hangup event itself.
    assert call.ix.state is CallState.ENDED
    with pytest.raises(NoSuchCall):
        await blind.open(call.agent, call.ix.contact_id)


async def test_given_no_such_channel_when_an_action_names_it_then_asterisk_refuses_it_clearly(
    conn: AmiConnection,
) -> None:
    with pytest.raises(actions.NoSuchChannel) as gone:
        await actions.redirect(conn, "no-such-channel-42", names.CTX_HOLD, "s")

    assert isinstance(gone.value, AmiActionFailed)
    assert "does not exist" in str(gone.value)
    with pytest.raises(actions.NoSuchChannel):
        await actions.play_dtmf(conn, "no-such-channel-42", "1")
    assert await actions.confbridge_list(conn, names.agent_bridge("0000")) == []


async def _is_member(admin: AmiClient, agent: str, uid: str) -> bool:
    return uid in await members(admin, agent)


async def _members_are(admin: AmiClient, agent: str, expected: set[str]) -> bool:
    return await members(admin, agent) == expected


async def _db_is(admin: AmiClient, family: str, key: str, value: str) -> bool:
    return await admin.db_get(family, key) == value

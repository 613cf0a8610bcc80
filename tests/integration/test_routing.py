"""Routing after answer classification, on the sandbox Asterisk: a simulated contact
plays a greeting, the product dialplan runs our FastAGI routes (classify, optout, fax),
and Asterisk's own events (AMI, with its timestamps), full.log and the database show
what followed: a person into the reserved agent's conference within 2 seconds of the
end of the greeting; no free agent: the identification message with the opt-out key,
then hang-up (ABANDONED), and the number on the do-not-call list on a key press; a
machine: the message played after the beep; fax / silence / hang-up recorded as such."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from agi_scripts.server import AgiServer, AgiSession, Handler
from ami_bridge.originator import EVENT_CONNECT_ABANDONED
from outbound import names
from outbound.model import (
    AttemptState,
    CallAttempt,
    CallResult,
    CaseEvent,
    Contact,
    ContactState,
    DncEntry,
)
from outbound.sandbox import Sandbox, SandboxInfo
from tests.helpers.ami import AmiClient, Message
from tests.helpers.db import add_agent, add_contact
from tests.helpers.dialplan import extra_dialplan
from tests.helpers.stack import attempt_row, call_stack
from tests.helpers.until import async_until

# serial: AMD hears live audio in real time; see scripts/test.
pytestmark = [pytest.mark.asterisk, pytest.mark.serial]

IDENT = "all-circuits-busy-now"  # the test campaigns' identification message (1.8 s)

# A test's own step, run before classify sends a command: (session, command, args).
Hook = Callable[[AgiSession, str, tuple[Any, ...]], Awaitable[None]]


class HookedAgi(AgiServer):
    """The FastAGI server with every route exactly as served (routes.register), where
    a test may run a step of its own (hang the call up, log the agent out) right
    before one of classify's commands: the races the routing must survive, made
    certain instead of hoped for."""

    hook: Hook | None = None

    def route(self, name: str, handler: Handler) -> None:
        if name == names.AGI_CLASSIFY:
            handler = self._hooked(handler)
        super().route(name, handler)

    def _hooked(self, handler: Handler) -> Handler:
        async def run(session: AgiSession) -> None:
            send = session.command

            async def command(cmd: str, *args: object, timeout: float | None = None) -> Any:
                if self.hook is not None:
                    await self.hook(session, cmd, args)
                return await send(cmd, *args, timeout=timeout)

            session.command = command  # type: ignore[method-assign]
            await handler(session)

        return run


@pytest.fixture
async def stack(sandbox: SandboxInfo, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    async with call_stack(sandbox, tmp_path / "r.db", HookedAgi) as st:
        yield st


def _ended(factory: Any, aid: str) -> bool:
    return attempt_row(factory, aid).state is AttemptState.ENDED


async def _call(
    stack: dict[str, Any],
    admin: AmiClient,
    scenario: str,
    *,
    agent: str | None = None,
    policy: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Dial a fresh number whose simulated contact plays `scenario`, in a campaign of
    its own with `policy`; returns (attempt id, number)."""
    number = f"+4930{random.randrange(10**6, 10**7)}{random.randrange(10)}"
    await admin.send("DBPut", Family="simscenario", Key=number, Val=scenario)
    cid = add_contact(
        stack["factory"], number, campaign=f"c-{uuid.uuid4().hex[:8]}", amd_policy=policy or {}
    )
    aid = await stack["originator"].dial(cid, agent_id=agent)
    return aid, number


def _apps(admin: AmiClient, uid: str) -> list[tuple[str, str, str]]:
    """(context, application, data) of every dialplan step Asterisk ran on `uid`."""
    return [
        (e.get("Context", ""), e.get("Application", ""), e.get("AppData", ""))
        for e in admin.find_events("Newexten", Uniqueid=uid)
    ]


def _ts(msg: Message) -> float:
    return float(msg["Timestamp"])  # manager.conf timestampevents: Asterisk's clock


def _full_log(sandbox: SandboxInfo) -> str:
    return Path(sandbox.full_log_path).read_text(errors="replace")


async def _agent_logged_in(stack: dict[str, Any]) -> str:
    agent = add_agent(stack["factory"], str(60000 + uuid.uuid4().int % 9999))
    await stack["sessions"].login(agent, f"Local/{uuid.uuid4().int % 10**6}@sim-phones")
    await stack["sessions"].wait_up(agent, timeout=10)
    return agent


async def test_given_a_human_and_a_free_agent_then_joined_within_2s_of_the_greetings_end(
    stack: dict[str, Any], admin_ami: AmiClient
) -> None:
    agent = await _agent_logged_in(stack)
    aid, number = await _call(stack, admin_ami, "human", agent=agent)
    conf = names.agent_bridge(agent)
    join = await admin_ami.wait_event("ConfbridgeJoin", 15, Conference=conf, Uniqueid=aid)
    greeting_end = await admin_ami.wait_event(
        "UserEvent", 1, UserEvent="SimGreetingEnd", Number=number
    )
    delay = _ts(join) - _ts(greeting_end)
    assert 0 < delay < 2.0, f"joined {delay:.3f}s after the end of the greeting"
    # The verdict, Asterisk's view of the agent, and the decision-to-join delay.
    a = await async_until(
        lambda: (x := attempt_row(stack["factory"], aid)) and "connect_ms" in x.audit and x,
        10,
        message="connect delay not stored",
    )
    assert a.amd_status == "HUMAN" and a.audit["route"] == "connect"
    assert a.audit["agent_check"] == {"parties": "1", "marked": "1"}
    assert 0 <= a.audit["connect_ms"] < 2000 and a.audit["late_connect"] is False
    await stack["sessions"].logout(agent)
    await async_until(lambda: _ended(stack["factory"], aid), 10)
    assert attempt_row(stack["factory"], aid).result is CallResult.ANSWERED


async def test_given_a_human_and_the_agent_not_logged_in_then_identification_message_and_abandoned(
    stack: dict[str, Any], admin_ami: AmiClient, sandbox: SandboxInfo
) -> None:
    agent = add_agent(stack["factory"], str(61000 + uuid.uuid4().int % 999))  # no session
    policy = {"abandon_message": IDENT, "optout_wait": 1}
    aid, number = await _call(stack, admin_ami, "human", agent=agent, policy=policy)
    hangup = await admin_ami.wait_event("Hangup", 20, Uniqueid=aid)
    await async_until(lambda: _ended(stack["factory"], aid), 10)
    a = attempt_row(stack["factory"], aid)
    assert a.result is CallResult.ABANDONED and a.amd_status == "HUMAN"
    assert "not in their conference" in a.audit["abandon_reason"]
    assert a.audit["agent_check"] == {"parties": "0", "marked": "0"}
    # Asterisk: the message with the opt-out key live (Read), then our hang-up; never
    # the agent's conference; nothing added to do-not-call without a key press.
    apps = _apps(admin_ami, aid)
    read = f"OUTBOUND_OPTOUT_DIGIT,{IDENT},1,,1,1"
    assert (names.CTX_AFTER_CLASSIFY, "Read", read) in apps, apps
    assert apps[-1] == (names.CTX_AFTER_CLASSIFY, "Hangup", "16"), apps
    assert hangup["Cause"] == "16"
    assert f"{hangup['Channel']}> Playing '{IDENT}" in _full_log(sandbox)
    assert not admin_ami.find_events("ConfbridgeJoin", Uniqueid=aid)
    with stack["factory"]() as s:
        assert s.scalars(select(DncEntry).where(DncEntry.e164 == number)).all() == []


async def test_given_an_abandoned_human_who_presses_the_optout_key_then_dnc_and_confirmed(
    stack: dict[str, Any], admin_ami: AmiClient, sandbox: SandboxInfo
) -> None:
    policy = {"abandon_message": IDENT, "optout_key": "9"}
    aid, number = await _call(stack, admin_ami, "human_optout", policy=policy)  # no agent
    hangup = await admin_ami.wait_event("Hangup", 25, Uniqueid=aid)
    apps = _apps(admin_ami, aid)
    # Asterisk: the key reached the contact's leg, the optout route ran, the
    # confirmation was played, then hang-up.
    assert admin_ami.find_events("DTMFEnd", Uniqueid=aid, Digit="9", Direction="Received")
    ctx = names.CTX_AFTER_CLASSIFY
    optout = [i for i, x in enumerate(apps) if x[1] == "AGI" and x[2].endswith("/optout")]
    confirm = apps.index((ctx, "Playback", "removed"))
    assert optout and optout[0] < confirm < len(apps) - 1, apps
    assert apps[-1] == (ctx, "Hangup", "16")
    assert f"{hangup['Channel']}> Playing 'removed" in _full_log(sandbox)
    await async_until(lambda: _ended(stack["factory"], aid), 10)
    with stack["factory"]() as s:
        (entry,) = s.scalars(select(DncEntry).where(DncEntry.e164 == number)).all()
        assert entry.campaign_id is None and entry.source == "optout"  # global list
        assert aid in entry.reason
        a = s.get(CallAttempt, aid)
        assert a is not None and a.result is CallResult.ABANDONED
        assert a.audit["optout"]["number"] == number
        c = s.get(Contact, a.contact_id)
        assert c is not None and c.state is ContactState.DNC
        kinds = s.scalars(select(CaseEvent.kind).where(CaseEvent.attempt_id == aid)).all()
        assert "optout" in kinds


async def test_given_an_abandoned_human_who_presses_another_key_then_no_dnc_and_no_confirm(
    stack: dict[str, Any], admin_ami: AmiClient
) -> None:
    policy = {"abandon_message": IDENT, "optout_key": "9"}
    number_scenario = "human_optout"
    aid, number = await _call(stack, admin_ami, number_scenario, policy=policy)
    await admin_ami.send("DBPut", Family="simkey", Key=number, Val="5")
    await admin_ami.wait_event("Hangup", 25, Uniqueid=aid)
    assert admin_ami.find_events("DTMFEnd", Uniqueid=aid, Digit="5", Direction="Received")
    apps = _apps(admin_ami, aid)
    assert not [x for x in apps if x[1] == "AGI" and x[2].endswith("/optout")], apps
    assert (names.CTX_AFTER_CLASSIFY, "Playback", "removed") not in apps
    await async_until(lambda: _ended(stack["factory"], aid), 10)
    assert attempt_row(stack["factory"], aid).result is CallResult.ABANDONED
    with stack["factory"]() as s:
        assert s.scalars(select(DncEntry).where(DncEntry.e164 == number)).all() == []


async def test_given_a_machine_and_a_message_policy_then_message_played_after_the_beep(
    stack: dict[str, Any], admin_ami: AmiClient, sandbox: SandboxInfo
) -> None:
    policy = {"machine": "message", "message": "vm-goodbye"}
    agent = add_agent(stack["factory"], str(62000 + uuid.uuid4().int % 999))
    aid, number = await _call(stack, admin_ami, "machine", agent=agent, policy=policy)
    hangup = await admin_ami.wait_event("Hangup", 30, Uniqueid=aid)
    greeting_end = await admin_ami.wait_event(
        "UserEvent", 1, UserEvent="SimGreetingEnd", Number=number
    )
    played = [
        e
        for e in admin_ami.find_events("Newexten", Uniqueid=aid, Application="Playback")
        if e.get("AppData") == "vm-goodbye"
    ]
    assert played, _apps(admin_ami, aid)
    # After the machine's beep (its greeting's end), not over it.
    assert _ts(played[0]) > _ts(greeting_end)
    assert f"{hangup['Channel']}> Playing 'vm-goodbye" in _full_log(sandbox)
    await async_until(lambda: _ended(stack["factory"], aid), 10)
    a = attempt_row(stack["factory"], aid)
    assert a.amd_status == "MACHINE" and a.result is CallResult.ANSWERING_MACHINE
    assert a.audit["route"] == "message"


async def test_given_a_fax_then_fax_tones_detected_and_recorded_as_fax(
    stack: dict[str, Any], admin_ami: AmiClient, sandbox_instance: Sandbox
) -> None:
    # The sandbox loads res_fax (a PBX that wants fax detection does; classify checks
    # IFMODULE(res_fax.so) and skips detection otherwise).
    out = sandbox_instance.cli("module show like res_fax")
    assert "res_fax.so" in out and "res_fax_spandsp.so" in out, out
    agent = add_agent(stack["factory"], str(63000 + uuid.uuid4().int % 999))
    aid, _ = await _call(stack, admin_ami, "fax", agent=agent)
    await admin_ami.wait_event("Hangup", 20, Uniqueid=aid)
    await async_until(lambda: _ended(stack["factory"], aid), 10)
    a = attempt_row(stack["factory"], aid)
    assert a.result is CallResult.FAX, (a.result, a.audit)
    # Asterisk jumped the channel to the `fax` extension and ran the fax route there.
    jumped = admin_ami.find_events("Newexten", Uniqueid=aid, Exten="fax")
    assert jumped and jumped[0]["Context"] == names.CTX_ANSWERED
    assert any(x[1] == "AGI" and x[2].endswith("/fax") for x in _apps(admin_ami, aid))


async def test_given_silence_then_recorded_as_silence_and_hung_up(
    stack: dict[str, Any], admin_ami: AmiClient
) -> None:
    agent = add_agent(stack["factory"], str(64000 + uuid.uuid4().int % 999))
    aid, _ = await _call(stack, admin_ami, "silence", agent=agent)
    hangup = await admin_ami.wait_event("Hangup", 20, Uniqueid=aid)
    await async_until(lambda: _ended(stack["factory"], aid), 10)
    a = attempt_row(stack["factory"], aid)
    assert a.result is CallResult.SILENCE and (a.amd_cause or "").startswith("INITIALSILENCE")
    # Our dialplan hung up (not the contact, who would have listened for 30 s).
    assert _apps(admin_ami, aid)[-1] == (names.CTX_AFTER_CLASSIFY, "Hangup", "16")
    assert hangup["Cause"] == "16"
    assert not admin_ami.find_events("ConfbridgeJoin", Uniqueid=aid)


async def test_given_a_contact_hanging_up_during_amd_then_recorded_as_hangup(
    stack: dict[str, Any], admin_ami: AmiClient
) -> None:
    agent = add_agent(stack["factory"], str(65000 + uuid.uuid4().int % 999))
    aid, number = await _call(stack, admin_ami, "hangup_greeting", agent=agent)
    await admin_ami.wait_event("Hangup", 20, Uniqueid=aid)
    await async_until(lambda: _ended(stack["factory"], aid), 10)
    a = attempt_row(stack["factory"], aid)
    assert a.result is CallResult.HANGUP and a.amd_status == "HANGUP"
    # Asterisk: the contact's side hung up while AMD (EXEC'd by classify) was running.
    start = next(
        e
        for e in admin_ami.find_events("AGIExecStart", Uniqueid=aid)
        if e.get("Command", "").startswith('EXEC "AMD"')
    )
    ends = admin_ami.find_events("AGIExecEnd", Uniqueid=aid, CommandId=start["CommandId"])
    contact_gone = [
        e
        for e in admin_ami.find_events("Hangup")
        if e.get("Channel", "").startswith(f"Local/{number}@sim-contacts")
        and e.get("Channel", "").endswith(";2")
    ]
    assert contact_gone and _ts(start) < _ts(contact_gone[0])
    assert not ends or _ts(contact_gone[0]) <= _ts(ends[0])
    assert not admin_ami.find_events("ConfbridgeJoin", Uniqueid=aid)


async def test_given_a_hangup_right_after_amd_then_amds_verdict_is_still_recorded(
    stack: dict[str, Any], admin_ami: AmiClient
) -> None:
    agent = await _agent_logged_in(stack)
    gone: list[str] = []

    async def hang_up_before_the_agent_check(
        s: AgiSession, cmd: str, args: tuple[Any, ...]
    ) -> None:
        # AMD has decided HUMAN; the person hangs up as classify asks about the agent.
        if not gone and cmd == "GET FULL VARIABLE" and "CONFBRIDGE_INFO" in str(args[0]):
            gone.append(s.channel)
            # The channel goes once the AGI ends; until then Asterisk tells the AGI with
            # a HANGUP line, which the next command meets (AgiHangup, here or in classify).
            await admin_ami.send("Hangup", Channel=s.channel, Cause="16")
            for _ in range(50):
                await s.command("NOOP")
                await asyncio.sleep(0.1)
            raise AssertionError("Asterisk never told the AGI of the hang-up")

    stack["agi"].hook = hang_up_before_the_agent_check
    aid, _ = await _call(stack, admin_ami, "human", agent=agent)
    await admin_ami.wait_event("Hangup", 20, Uniqueid=aid)
    await async_until(lambda: _ended(stack["factory"], aid), 10)
    a = attempt_row(stack["factory"], aid)
    assert gone, "classify never asked about the agent"
    # AMD's verdict and the decision survive the hang-up; the call is a hang-up.
    assert a.amd_status == "HUMAN" and (a.amd_cause or "").startswith("HUMAN"), a.audit
    assert a.result is CallResult.HANGUP
    assert a.audit["route"] == "hangup" and a.audit["decided_route"] == "connect"
    # Asterisk: AMD ran to its end before the hang-up; the person never joined.
    amd = next(
        e
        for e in admin_ami.find_events("AGIExecStart", Uniqueid=aid)
        if e.get("Command", "").startswith('EXEC "AMD"')
    )
    (amd_end,) = admin_ami.find_events("AGIExecEnd", Uniqueid=aid, CommandId=amd["CommandId"])
    hangup = admin_ami.find_events("Hangup", Uniqueid=aid)[0]
    assert _ts(amd_end) <= _ts(hangup)
    assert not admin_ami.find_events("ConfbridgeJoin", Uniqueid=aid)


async def test_given_the_database_locked_then_a_human_still_joins_within_2s_and_is_recorded_after(
    stack: dict[str, Any], admin_ami: AmiClient
) -> None:
    agent = await _agent_logged_in(stack)
    aid, number = await _call(stack, admin_ami, "human", agent=agent)
    conn = sqlite3.connect(stack["db"], isolation_level=None, timeout=1)
    conn.execute("BEGIN IMMEDIATE")  # every write waits from now on, classify's too
    try:
        join = await admin_ami.wait_event(
            "ConfbridgeJoin", 15, Conference=names.agent_bridge(agent), Uniqueid=aid
        )
        greeting_end = await admin_ami.wait_event(
            "UserEvent", 1, UserEvent="SimGreetingEnd", Number=number
        )
        delay = _ts(join) - _ts(greeting_end)
        assert 0 < delay < 2.0, f"joined {delay:.3f}s after the end of the greeting"
        # The join did not wait for the verdict: it is not written yet.
        assert attempt_row(stack["factory"], aid).amd_status is None
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    # Once the database is free, the verdict lands, and the bridge's join with it.
    a = await async_until(
        lambda: (x := attempt_row(stack["factory"], aid)) and "connect_ms" in x.audit and x,
        15,
        message="verdict or connect delay not stored after the lock",
    )
    assert a.amd_status == "HUMAN" and a.audit["route"] == "connect"
    assert a.state is AttemptState.CONNECTED and a.result is None
    await stack["sessions"].logout(agent)
    await async_until(lambda: _ended(stack["factory"], aid), 10)


async def test_given_the_agent_leaving_between_the_check_and_the_join_then_abandoned_not_left_waiting(
    stack: dict[str, Any], admin_ami: AmiClient
) -> None:
    agent = await _agent_logged_in(stack)
    conf = names.agent_bridge(agent)
    left: list[str] = []

    async def agent_leaves_after_the_check(s: AgiSession, cmd: str, args: tuple[Any, ...]) -> None:
        # classify found the agent free and is about to send the person to them.
        if not left and cmd == "SET VARIABLE" and args[:2] == (names.VAR_NEXT, "connect"):
            left.append(agent)
            await stack["sessions"].logout(agent)
            await admin_ami.wait_event("ConfbridgeEnd", 10, Conference=conf)

    stack["agi"].hook = agent_leaves_after_the_check
    policy = {"abandon_message": IDENT, "optout_wait": 1}
    aid, _ = await _call(stack, admin_ami, "human", agent=agent, policy=policy)
    hangup = await admin_ami.wait_event("Hangup", 25, Uniqueid=aid)
    await async_until(lambda: _ended(stack["factory"], aid), 10)
    assert left, "classify never routed the person to the agent"
    a = attempt_row(stack["factory"], aid)
    assert a.amd_status == "HUMAN" and a.audit["agent_check"] == {"parties": "1", "marked": "1"}
    assert a.result is CallResult.ABANDONED, (a.result, a.audit)
    assert a.audit["route"] == "abandon"
    assert "left before the join" in a.audit["abandon_reason"]
    # Asterisk: the dialplan asked again, raised the event, played the identification
    # message with the opt-out key, hung up; the person never joined an empty bridge.
    ctx = names.CTX_AFTER_CLASSIFY
    assert admin_ami.find_events("UserEvent", UserEvent=EVENT_CONNECT_ABANDONED, AttemptId=aid)
    apps = _apps(admin_ami, aid)
    assert (ctx, "Read", f"OUTBOUND_OPTOUT_DIGIT,{IDENT},1,,1,1") in apps, apps
    assert apps[-1] == (ctx, "Hangup", "16") and hangup["Cause"] == "16"
    assert not admin_ami.find_events("ConfbridgeJoin", Uniqueid=aid)


# A machine whose beep is at the pitch of a fax's calling tone (CNG, 1100 Hz), inside
# the campaign's fax-detection window. Added to the sandbox for this test only.
CNG_BEEP_DIALPLAN = """
[sim-scenario]
exten => machine_cng_beep,1,Ringing()
 same => n,Wait(1)
 same => n,Answer()
 same => n,Playback(vm-intro)
 same => n,Playtones(1100/500,0/3000)
 same => n,Wait(4)
 same => n,StopPlaytones()
 same => n,UserEvent(SimGreetingEnd,Number: ${SIMNUM},Scenario: ${SIMSCENARIO})
 same => n,Set(SIMWAIT=30)
 same => n,Goto(sim-listen,s,1)
"""


@pytest.fixture
def cng_beep_machine(sandbox_instance: Sandbox) -> Iterator[str]:
    with extra_dialplan(
        sandbox_instance, CNG_BEEP_DIALPLAN, "sim-scenario", "machine_cng_beep"
    ) as name:
        yield name


async def test_given_a_machine_beep_at_fax_pitch_then_the_message_is_left_not_taken_for_fax(
    stack: dict[str, Any], admin_ami: AmiClient, sandbox: SandboxInfo, cng_beep_machine: str
) -> None:
    policy = {"machine": "message", "message": "vm-goodbye", "fax_detect": 20}
    agent = add_agent(stack["factory"], str(66000 + uuid.uuid4().int % 999))
    aid, _ = await _call(stack, admin_ami, cng_beep_machine, agent=agent, policy=policy)
    hangup = await admin_ami.wait_event("Hangup", 30, Uniqueid=aid)
    await async_until(lambda: _ended(stack["factory"], aid), 10)
    a = attempt_row(stack["factory"], aid)
    assert a.amd_status == "MACHINE" and a.result is CallResult.ANSWERING_MACHINE, a.audit
    assert a.audit["route"] == "message"
    # Asterisk: detection off first thing in the message route, never at `fax`, and
    # the message played to the machine.
    apps = _apps(admin_ami, aid)
    ctx = names.CTX_AFTER_CLASSIFY
    assert not admin_ami.find_events("Newexten", Uniqueid=aid, Exten="fax"), apps
    assert f"{hangup['Channel']}> Playing 'vm-goodbye" in _full_log(sandbox)
    assert apps.index((ctx, "ExecIf", "1?Set(FAXOPT(faxdetect)=no)")) < apps.index(
        (ctx, "Playback", "vm-goodbye")
    ), apps

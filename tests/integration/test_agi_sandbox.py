"""The FastAGI server with the real sandbox Asterisk: the product dialplan's
outbound-answered context calls our `classify` route, and Asterisk itself (AMI Getvar,
Newexten events, full.log) shows what the route did."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import pytest

from agi_scripts.protocol import AgiHangup, UnsafeValue
from agi_scripts.server import AgiServer, AgiSession
from outbound import names
from outbound.sandbox import SandboxInfo
from tests.helpers.ami import AmiClient
from tests.helpers.until import async_until

pytestmark = pytest.mark.asterisk

# Everything res_agi's argument parser and the dialplan treat specially, but one line.
TRICKY = 'he said "hi" \\o/ C:\\dir\\ ${EVIL} $[1+1] ; , | \\" end\\'
VAR_TRICKY = "OUTBOUND_TEST_TRICKY"


@pytest.fixture
async def agi_server(sandbox: SandboxInfo) -> AsyncIterator[AgiServer]:
    """Our server where the sandbox's OUTBOUND_AGI_BASE points (agi://127.0.0.1:<port>)."""
    server = AgiServer("127.0.0.1", sandbox.agi_port, header_timeout=5, answer_timeout=5)
    await server.start()
    yield server
    await server.close()


async def test_given_an_answered_call_when_classify_runs_then_values_round_trip_exactly(
    sandbox: SandboxInfo, agi_server: AgiServer, admin_ami: AmiClient
) -> None:
    attempt_id = str(uuid.uuid4())
    seen: dict[str, object] = {}
    ready, release = asyncio.Event(), asyncio.Event()

    async def classify(session: AgiSession) -> None:
        seen["channel"] = session.channel
        seen["attempt"] = await session.get_variable(names.VAR_ATTEMPT_ID)
        await session.set_variable(VAR_TRICKY, TRICKY)
        try:
            await session.set_variable(VAR_TRICKY, "x\nEXEC Hangup")
        except UnsafeValue as exc:
            seen["refused"] = str(exc)
        seen["read_back"] = await session.get_variable(VAR_TRICKY)
        ready.set()
        await asyncio.wait_for(release.wait(), 10)  # the test asks Asterisk meanwhile
        await session.set_variable(names.VAR_NEXT, "hangup")

    agi_server.route(names.AGI_CLASSIFY, classify)
    number = f"+4930{random.randrange(10**6, 10**7)}0"  # last digit 0: a human answers
    await admin_ami.send(
        "Originate",
        Channel=f"Local/{number}@{names.CTX_SIM_CONTACTS}",
        Context=names.CTX_ANSWERED,
        Exten="s",
        Priority="1",
        Async="true",
        Timeout="15000",
        Variable=f"{names.VAR_ATTEMPT_ID}={attempt_id}",
    )
    await asyncio.wait_for(ready.wait(), 15)
    channel = str(seen["channel"])
    assert seen["attempt"] == attempt_id
    assert "LF" in str(seen["refused"])
    assert seen["read_back"] == TRICKY
    # Asterisk holds exactly the value we set (nothing split off, nothing unescaped).
    resp = await admin_ami.send("Getvar", Channel=channel, Variable=VAR_TRICKY)
    assert resp["Value"] == TRICKY
    release.set()

    await async_until(lambda: agi_server.stats["completed"] == 1, timeout=5)
    # The dialplan followed OUTBOUND_NEXT into outbound-after-classify,hangup.
    await admin_ami.wait_event(
        "Newexten", Channel=channel, Context=names.CTX_AFTER_CLASSIFY, Extension="hangup"
    )
    await admin_ami.wait_event("Hangup", Channel=channel)
    # Only one SET VARIABLE of the tricky value reached Asterisk, and no EXEC at all.
    agi_commands = [
        e.get("Command", "") for e in admin_ami.find_events("AGIExecEnd", Channel=channel)
    ]
    assert sum(VAR_TRICKY in c for c in agi_commands) == 2  # the SET and the GET
    assert not [c for c in agi_commands if c.upper().startswith("EXEC")]
    assert agi_server.stats["errors"] == 0 and agi_server.stats["hangups"] == 0
    await async_until(
        lambda: f"/{names.AGI_CLASSIFY} completed" in sandbox.full_log_path.read_text(),
        timeout=5,
        message="full.log shows the classify AGI script completed",
    )


async def test_given_no_route_when_asterisk_asks_then_the_call_is_hung_up_cleanly(
    agi_server: AgiServer, admin_ami: AmiClient
) -> None:
    number = f"+4930{random.randrange(10**6, 10**7)}0"
    uid = str(uuid.uuid4())
    await admin_ami.send(
        "Originate",
        Channel=f"Local/{number}@{names.CTX_SIM_CONTACTS}",
        Context=names.CTX_ANSWERED,
        Exten="s",
        Priority="1",
        Async="true",
        Timeout="15000",
        ChannelId=uid,
        Variable=f"{names.VAR_ATTEMPT_ID}={uid}",
    )
    await async_until(lambda: agi_server.stats["unknown_route"] == 1, timeout=15)
    await admin_ami.wait_event(
        "Newexten", Uniqueid=uid, Context=names.CTX_AFTER_CLASSIFY, Extension="hangup"
    )
    await admin_ami.wait_event("Hangup", Uniqueid=uid)
    assert not admin_ami.find_events("UserEvent", UserEvent=names.EVENT_AGI_FAILED, AttemptId=uid)


async def test_given_the_caller_hangs_up_during_classify_then_the_handler_gets_agi_hangup(
    agi_server: AgiServer, admin_ami: AmiClient
) -> None:
    ready, release = asyncio.Event(), asyncio.Event()
    outcome: list[str] = []
    channels: list[str] = []

    async def classify(session: AgiSession) -> None:
        channels.append(session.channel)
        ready.set()
        await asyncio.wait_for(release.wait(), 10)
        try:
            # Asterisk flags the hangup to the AGI asynchronously: a command sent in the
            # same instant may still be answered, a later one is not.
            for _ in range(25):
                await session.get_variable(names.VAR_ATTEMPT_ID)
                outcome.append("answered")
                await asyncio.sleep(0.2)
        except AgiHangup as exc:
            outcome.append(f"hangup: {exc}")
            raise

    agi_server.route(names.AGI_CLASSIFY, classify)
    number = f"+4930{random.randrange(10**6, 10**7)}0"
    uid = str(uuid.uuid4())
    await admin_ami.send(
        "Originate",
        Channel=f"Local/{number}@{names.CTX_SIM_CONTACTS}",
        Context=names.CTX_ANSWERED,
        Exten="s",
        Priority="1",
        Async="true",
        Timeout="15000",
        ChannelId=uid,
    )
    await asyncio.wait_for(ready.wait(), 15)
    await admin_ami.send("Hangup", Channel=channels[0])
    # The channel lives on in AGI until the script lets go: its next commands learn
    # of the hangup (the HANGUP line, or 511 for the command).
    release.set()
    await async_until(lambda: agi_server.stats["hangups"] == 1, timeout=5)
    await admin_ami.wait_event("Hangup", Uniqueid=uid)
    assert outcome and outcome[-1].startswith("hangup"), outcome
    assert len(outcome) <= 2, outcome  # at most the one command racing the hangup
    assert agi_server.stats["errors"] == 0 and agi_server.open_sessions == 0


async def test_given_a_value_with_line_breaks_when_set_as_text_then_asterisk_holds_it_exactly(
    agi_server: AgiServer, admin_ami: AmiClient
) -> None:
    value = TRICKY + "\nsecond line\r\nEXEC Hangup\n"
    seen: dict[str, object] = {}
    done = asyncio.Event()

    async def classify(session: AgiSession) -> None:
        seen["channel"] = session.channel
        try:
            await session.set_variable("OUTBOUND_TEST_LINES", value)
        except UnsafeValue as exc:
            seen["plain_refused"] = str(exc)
        await session.set_text("OUTBOUND_TEST_LINES", value)
        seen["read_back"] = await session.get_text("OUTBOUND_TEST_LINES")
        # Asterisk's own evaluation of the stored value: its length, in characters.
        answer = await session.command("GET FULL VARIABLE", "${LEN(${OUTBOUND_TEST_LINES})}")
        seen["asterisk_len"] = answer.data
        try:
            await session.set_text("BAD(NAME)", "x\ny")
        except UnsafeValue as exc:
            seen["bad_name"] = str(exc)
        done.set()
        await session.set_variable(names.VAR_NEXT, "hangup")

    agi_server.route(names.AGI_CLASSIFY, classify)
    number = f"+4930{random.randrange(10**6, 10**7)}0"
    await admin_ami.send(
        "Originate",
        Channel=f"Local/{number}@{names.CTX_SIM_CONTACTS}",
        Context=names.CTX_ANSWERED,
        Exten="s",
        Priority="1",
        Async="true",
        Timeout="15000",
    )
    await asyncio.wait_for(done.wait(), 15)
    assert "refused before sending" in str(seen["plain_refused"])
    assert seen["read_back"] == value
    assert seen["asterisk_len"] == str(len(value))
    assert "BAD(NAME)" in str(seen["bad_name"])
    await admin_ami.wait_event("Hangup", Channel=str(seen["channel"]))
    # The line breaks never reached the wire: every AGI command Asterisk ran is one of
    # ours (no "EXEC Hangup" split off), and the helper context set the value.
    commands = [
        e.get("Command", "")
        for e in admin_ami.find_events("AGIExecEnd", Channel=str(seen["channel"]))
    ]
    assert not [c for c in commands if c.upper().startswith("EXEC HANGUP")], commands
    assert any(c.startswith(f'GOSUB "{names.CTX_AGI_SET}"') for c in commands), commands
    assert admin_ami.find_events("Newexten", Context=names.CTX_AGI_SET)

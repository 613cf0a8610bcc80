"""The sandbox Asterisk and the product's dialplan, checked against what Asterisk saw:
CoreShowChannels, AMI events, the CDR CSV and Asterisk's own database (simcount...)."""

from __future__ import annotations

import random
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from outbound.sandbox import MIN_MAJOR, Sandbox, SandboxError, SandboxInfo, ensure_root
from tests.helpers.ami import AmiClient
from tests.helpers.until import async_until, until

pytestmark = pytest.mark.asterisk

# Scenario of a simulated contact by the last digit of its number (sandbox dialplan).
HUMAN, MACHINE, BUSY, NOANSWER, CONGESTION = "0", "4", "5", "6", "7"


def number(last_digit: str) -> str:
    """A number no other test dials, so Asterisk's per-number counters start at zero."""
    return f"+4930{random.randrange(10**6, 10**7)}{last_digit}"


async def originate(ami: AmiClient, channel: str, timeout_ms: int = 15000, **headers: Any) -> str:
    """Fire an async Originate into sim-hold (keeps the answered leg up); returns the
    channel id (= Uniqueid of the originated channel)."""
    uid = str(uuid.uuid4())
    params = {"Context": "sim-hold", "Exten": "s", "Priority": "1"} | headers
    await ami.send(
        "Originate",
        Channel=channel,
        ChannelId=uid,
        Async="true",
        Timeout=str(timeout_ms),
        **params,
    )
    return uid


async def channel_states(admin: AmiClient) -> dict[str, str]:
    _, events = await admin.collect("CoreShowChannels")
    return {e["Uniqueid"]: e.get("ChannelStateDesc", "") for e in events}


def process_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def port_free(port: int, kind: str) -> bool:
    """True if a new server could bind the port now (SO_REUSEADDR, as Asterisk does:
    connections closed by the stop may linger in TIME_WAIT, no listener may)."""
    with socket.socket(
        socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    ) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_given_sandbox_when_dialer_originates_a_human_then_asterisk_shows_it_up_and_records_it_answered(
    sandbox: SandboxInfo, dialer_ami: AmiClient, admin_ami: AmiClient, cdr_rows
) -> None:
    num = number(HUMAN)

    uid = await originate(dialer_ami, f"Local/{num}@sim-contacts")

    answered = await dialer_ami.wait_event("OriginateResponse", Uniqueid=uid, timeout=15)
    assert answered["Response"] == "Success", answered
    state = await async_until(
        lambda: _state_of(admin_ami, uid), timeout=5, message="channel in CoreShowChannels"
    )
    assert state == "Up"
    await dialer_ami.send("Hangup", Channel=uid)
    await dialer_ami.wait_event("Hangup", Uniqueid=uid, timeout=5)
    row = until(
        lambda: next((r for r in cdr_rows() if r["uniqueid"] == uid), None),
        timeout=5,
        message="CDR row of the originated channel",
    )
    assert row["disposition"] == "ANSWERED"
    assert await admin_ami.db_get("simcount", num) == "1"
    assert await admin_ami.db_get("simlast", num) == "human"
    assert await admin_ami.db_get("simdup", num) is None


async def _state_of(admin: AmiClient, uid: str) -> str | None:
    return (await channel_states(admin)).get(uid)


@pytest.mark.parametrize(
    ("last_digit", "reason", "disposition"),
    [(BUSY, "5", "BUSY"), (CONGESTION, "8", "CONGESTION"), (NOANSWER, "3", "NO ANSWER")],
    ids=["busy", "congestion", "noanswer"],
)
async def test_given_an_unreachable_contact_when_originated_then_originate_fails_with_its_reason_and_cdr(
    sandbox: SandboxInfo,
    dialer_ami: AmiClient,
    admin_ami: AmiClient,
    cdr_rows,
    last_digit: str,
    reason: str,
    disposition: str,
) -> None:
    num = number(last_digit)

    uid = await originate(dialer_ami, f"Local/{num}@sim-contacts", timeout_ms=2000)

    failed = await dialer_ami.wait_event("OriginateResponse", Uniqueid=uid, timeout=10)
    assert (failed["Response"], failed["Reason"]) == ("Failure", reason), failed
    row = until(
        lambda: next((r for r in cdr_rows() if r["uniqueid"] == uid), None),
        timeout=5,
        message="CDR row of the originated channel",
    )
    assert row["disposition"] == disposition
    assert row["answer"] == ""
    assert await admin_ami.db_get("simcount", num) == "1"
    assert uid not in await channel_states(admin_ami)


async def test_given_the_dialer_account_when_it_asks_for_shell_powers_then_asterisk_refuses(
    dialer_ami: AmiClient,
) -> None:
    command = await dialer_ami.send("Command", check=False, Command="core show version")
    system = await dialer_ami.send(
        "Originate",
        check=False,
        Channel="Local/1@sim-phones",
        Application="System",
        Data="true",
    )
    dbput = await dialer_ami.send("DBPut", check=False, Family="x", Key="y", Val="z")

    assert (command["Response"], command["Message"]) == ("Error", "Permission denied")
    assert (dbput["Response"], dbput["Message"]) == ("Error", "Permission denied")
    assert system["Response"] == "Error"
    assert "Forbidden" in system["Message"]


async def test_given_product_dialplan_when_originated_through_outbound_dial_then_cdr_carries_the_attempt_id(
    sandbox: SandboxInfo, dialer_ami: AmiClient, admin_ami: AmiClient, cdr_rows
) -> None:
    num = number(HUMAN)
    attempt = str(uuid.uuid4())

    await dialer_ami.send(
        "Originate",
        Channel=f"Local/{num}@outbound-dial",
        Context="sim-hold",
        Exten="s",
        Priority="1",
        ChannelId=attempt,
        Async="true",
        Timeout="30000",
        variables={
            "OUTBOUND_ATTEMPT_ID": attempt,
            "OUTBOUND_TRUNK_DIAL": "Local/${NUMBER}@sim-contacts",
        },
    )

    answered = await dialer_ami.wait_event("OriginateResponse", Uniqueid=attempt, timeout=15)
    assert answered["Response"] == "Success", answered
    await dialer_ami.send("Hangup", Channel=attempt)
    rows = until(
        lambda: [
            r
            for r in cdr_rows()
            if r["accountcode"] == attempt and r["dcontext"] == "outbound-dial"
        ],
        timeout=5,
        message="CDR row of the trunk leg",
    )
    dial = rows[0]
    assert dial["lastapp"] == "Dial"
    assert dial["lastdata"] == f"Local/{num}@sim-contacts,30"
    assert dial["disposition"] == "ANSWERED"
    assert dial["userfield"] == attempt
    assert await admin_ami.db_get("simcount", num) == "1"


@pytest.mark.parametrize(
    ("scenario", "reason", "dial_status", "cause"),
    [("busy", "5", "BUSY", None), ("invalid", "0", "CHANUNAVAIL", "1")],
)
async def test_given_product_dialplan_when_the_number_fails_then_the_dialer_gets_the_exact_outcome(
    dialer_ami: AmiClient,
    admin_ami: AmiClient,
    scenario: str,
    reason: str,
    dial_status: str,
    cause: str | None,
) -> None:
    num = number(HUMAN)
    await admin_ami.command(f"database put simscenario {num} {scenario}")
    attempt = str(uuid.uuid4())

    await dialer_ami.send(
        "Originate",
        Channel=f"Local/{num}@outbound-dial",
        Context="sim-hold",
        Exten="s",
        Priority="1",
        ChannelId=attempt,
        Async="true",
        Timeout="30000",
        variables={
            "OUTBOUND_ATTEMPT_ID": attempt,
            "OUTBOUND_TRUNK_DIAL": "Local/${NUMBER}@sim-contacts",
        },
    )

    failed = await dialer_ami.wait_event("OriginateResponse", Uniqueid=attempt, timeout=10)
    assert (failed["Response"], failed["Reason"]) == ("Failure", reason), failed
    result = await dialer_ami.wait_event(
        "UserEvent", UserEvent="OutboundDialResult", AttemptId=attempt, timeout=5
    )
    assert result["DialStatus"] == dial_status
    if cause is not None:
        hangup = await dialer_ami.wait_event("Hangup", Uniqueid=attempt, timeout=5)
        assert hangup["Cause"] == cause
    assert await admin_ami.db_get("simlast", num) == scenario


async def test_given_no_fastagi_server_when_a_contact_answers_then_the_call_is_ended_and_reported(
    dialer_ami: AmiClient,
) -> None:
    attempt = await originate(
        dialer_ami,
        f"Local/{number(HUMAN)}@sim-contacts",
        Context="outbound-answered",
        variables={"OUTBOUND_ATTEMPT_ID": "a-1", "OUTBOUND_ABANDON_PROMPT": "beep"},
    )

    failed = await dialer_ami.wait_event(
        "UserEvent", UserEvent="OutboundAgiFailed", AttemptId="a-1", timeout=10
    )
    assert failed["Uniqueid"] == attempt
    hangup = await dialer_ami.wait_event("Hangup", Uniqueid=attempt, timeout=10)
    assert hangup["Cause"] == "16"


async def test_given_an_answered_contact_when_dtmf_is_sent_and_a_second_call_overlaps_then_asterisk_records_both(
    dialer_ami: AmiClient, admin_ami: AmiClient
) -> None:
    num = number(HUMAN)
    first = await originate(dialer_ami, f"Local/{num}@sim-contacts")
    await dialer_ami.wait_event("OriginateResponse", Uniqueid=first, Response="Success", timeout=10)
    # The contact listens (Background of silence) once its "hello" is over.
    await async_until(
        lambda: _in_app(admin_ami, first, "BackGround"), timeout=5, message="contact listening"
    )

    for digit in "42#":
        await dialer_ami.send("PlayDTMF", Channel=first, Digit=digit, Duration="120")
        await dialer_ami.wait_event("DTMFEnd", Digit=digit, Direction="Received", timeout=5)
    second = await originate(dialer_ami, f"Local/{num}@sim-contacts")
    await dialer_ami.wait_event("OriginateResponse", Uniqueid=second, timeout=10)

    await async_until(
        lambda: _db_is(admin_ami, "simdtmf", num, "42#"), timeout=5, message="digits recorded"
    )
    assert await admin_ami.db_get("simcount", num) == "2"
    assert await admin_ami.db_get("simdup", num) == "1"
    for uid in (first, second):
        await dialer_ami.send("Hangup", Channel=uid, check=False)


async def _in_app(admin: AmiClient, uid: str, app: str) -> bool:
    """True when the sim (;2) half of the Local channel ``uid`` runs ``app``."""
    _, events = await admin.collect("CoreShowChannels")
    peer = next((e for e in events if e["Uniqueid"] == uid), None)
    if peer is None:
        return False
    half = peer["Channel"].replace(";1", ";2")
    return any(
        e["Channel"] == half and e.get("Application", "").lower() == app.lower() for e in events
    )


async def _db_is(admin: AmiClient, family: str, key: str, value: str) -> bool:
    return await admin.db_get(family, key) == value


async def test_given_simulated_contacts_when_amd_listens_then_it_tells_humans_from_machines(
    dialer_ami: AmiClient, admin_ami: AmiClient
) -> None:
    silent = number(HUMAN)
    await admin_ami.command(f"database put simscenario {silent} silence")
    expected = {
        number(HUMAN): ("HUMAN", "HUMAN-"),
        number(MACHINE): ("MACHINE", "LONGGREETING-"),
        silent: ("MACHINE", "INITIALSILENCE-"),
    }

    calls = {
        num: await originate(dialer_ami, f"Local/{num}@sim-contacts", Context="sim-amd")
        for num in expected
    }

    for num, uid in calls.items():
        verdict = await dialer_ami.wait_event(
            "UserEvent", UserEvent="SimAmd", Uniqueid=uid, timeout=10
        )
        status, cause = expected[num]
        assert verdict["Status"] == status, verdict
        assert verdict["Cause"].startswith(cause), verdict


async def test_given_two_sandboxes_when_the_second_is_stopped_then_it_is_gone_and_the_first_runs_on(
    sandbox: SandboxInfo, sandbox_instance: Sandbox
) -> None:
    name = f"{sandbox.name}-second"
    second = Sandbox(name=name, log=lambda _msg: None)
    info = second.up(timeout=60)
    try:
        ports = {info.ami_port, info.sip_port, info.agi_port}
        assert ports.isdisjoint({sandbox.ami_port, sandbox.sip_port, sandbox.agi_port})
        ami = await AmiClient.connect(
            info.ami_host, info.ami_port, info.admin_ami_user, info.admin_ami_secret
        )
        await ami.close()
        # Another process (`outbound sandbox down`) finds it through its state file.
        other = Sandbox(name=name, log=lambda _msg: None)
        status = other.status()
        assert status["running"] and status["pid"] == info.pid
        assert int(status["version"].split(".")[0]) >= MIN_MAJOR
        assert isinstance(status["uptime"], int)

        other.down(timeout=20)

        until(lambda: process_gone(info.pid), timeout=5, message="asterisk process gone")
        assert port_free(info.ami_port, "tcp")
        assert port_free(info.sip_port, "udp")
        assert other.status()["running"] is False
        other.down()  # a no-op when stopped
        second.down()
        assert sandbox_instance.status()["running"] is True
        assert "Asterisk" in sandbox_instance.cli("core show version")
    finally:
        second.down()


def test_given_an_unreachable_mirror_when_building_the_root_then_it_fails_loudly_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]

    with pytest.raises(SandboxError, match="debootstrap failed") as failure:
        ensure_root(tmp_path, log=lambda _msg: None, mirror=f"http://127.0.0.1:{dead}/debian")

    assert "debootstrap.log" in str(failure.value)
    assert not (tmp_path / "root").exists()
    assert not list(tmp_path.glob("root.tmp-*"))

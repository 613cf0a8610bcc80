"""The safe AMI connection under real faults, on the real sandbox Asterisk.

What counts is what Asterisk itself recorded: its per-number call counter
(DB simcount/<number>, incremented by the simulated contact when a call arrives), its
duplicate counter (DB simdup/<number>: a second live call to the same number) and its CDR
rows. Faults come from the TCP proxy in tests/faults/proxy.py, from `core restart now`, and
from SIGSTOP/SIGCONT on the Asterisk process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ami_bridge.connection import AmiConnection, AmiConnectionLost, AmiNotReady
from outbound import names
from outbound.sandbox import Sandbox, SandboxError, SandboxInfo
from outbound.wire import UnsafeValue, channel_variable
from tests.faults.proxy import FaultProxy
from tests.helpers.ami import AmiClient
from tests.helpers.until import async_until, until

pytestmark = pytest.mark.asterisk

HUMAN, BUSY, HUMAN_LONG = "0", "5", "8"  # scenario by last digit (sandbox extensions.conf)
SIM_TRUNK = f"Local/${{NUMBER}}@{names.CTX_SIM_CONTACTS}"
ORIGINATE = b"Action: Originate"

MakeAmi = Callable[..., AmiConnection]
MakeProxy = Callable[[int], Awaitable[FaultProxy]]


def number(last_digit: str) -> str:
    """A number no other test dials, so Asterisk's counters for it start at zero."""
    return f"+4930{random.randrange(10**6, 10**7)}{last_digit}"


def originate(num: str, attempt: str, **extra: Any) -> dict[str, Any]:
    """The dialer's Originate for one attempt: the product's outbound-dial context, the
    attempt id as ChannelId, the simulated trunk; the answered side waits in sim-hold."""
    return {
        "Channel": f"Local/{num}@{names.CTX_DIAL}",
        "Context": "sim-hold",
        "Exten": "s",
        "Priority": "1",
        "ChannelId": attempt,
        "Async": "true",
        "Timeout": "30000",
        "Variable": [
            channel_variable(names.VAR_ATTEMPT_ID, attempt),
            channel_variable(names.VAR_TRUNK_DIAL, SIM_TRUNK),
        ],
        **extra,
    }


def attempt_id() -> str:
    return str(uuid.uuid4())


async def db_is(admin: AmiClient, family: str, key: str, value: str) -> bool:
    return await admin.db_get(family, key) == value


async def channel_state(admin: AmiClient, uniqueid: str) -> str | None:
    _, channels = await admin.collect("CoreShowChannels")
    return next(
        (c.get("ChannelStateDesc") for c in channels if c.get("Uniqueid") == uniqueid), None
    )


async def is_up(admin: AmiClient, uniqueid: str) -> bool:
    return await channel_state(admin, uniqueid) == "Up"


async def call_gone(admin: AmiClient, uniqueid: str) -> bool:
    """No channel of that call is left (both halves of each Local channel included)."""
    _, channels = await admin.collect("CoreShowChannels")
    return not [c for c in channels if c.get("Linkedid") == uniqueid]


async def dial_control_call(conn: AmiConnection, admin: AmiClient) -> None:
    """A barrier: one more call through `conn`, waited for until Asterisk counted it.
    Whatever `conn` wrote before it (a resend on the new connection's FullyBooted above
    all) has been read and acted on by then."""
    control = number(BUSY)  # ends by itself
    await conn.send("Originate", originate(control, attempt_id()))
    await async_until(
        lambda: db_is(admin, "simcount", control, "1"), timeout=10, message="control call"
    )


async def admin_of(info: SandboxInfo) -> AmiClient:
    return await AmiClient.connect(
        info.ami_host, info.ami_port, info.admin_ami_user, info.admin_ami_secret
    )


# ------------------------------------------------------------------ the session sandbox


async def test_given_the_connection_is_cut_between_originate_and_its_answer_when_it_recovers_then_asterisk_dialled_the_contact_once(
    sandbox: SandboxInfo,
    admin_ami: AmiClient,
    cdr_rows: Callable[[], list[dict[str, str]]],
    make_proxy: MakeProxy,
    make_ami: MakeAmi,
) -> None:
    proxy = await make_proxy(sandbox.ami_port)
    conn = make_ami(sandbox, proxy.port)
    await conn.start(wait=10)
    num, attempt = number(HUMAN), attempt_id()
    proxy.cut_after(ORIGINATE)
    # After the cut the network stays away until the call is over: while any channel of
    # it lives, Asterisk itself refuses a resend (ChannelId in use); afterwards, nothing
    # would stop one.
    proxy.refuse_connections = True

    with pytest.raises(AmiConnectionLost):
        await conn.send("Originate", originate(num, attempt))

    assert proxy.cuts == 1
    # Asterisk got the Originate (only its answer was lost): the contact is called.
    await async_until(lambda: db_is(admin_ami, "simcount", num, "1"), timeout=10)
    await admin_ami.send("Hangup", Channel=attempt)
    await async_until(
        lambda: call_gone(admin_ami, attempt), timeout=10, message="first call hung up"
    )
    proxy.refuse_connections = False
    await async_until(
        lambda: conn.healthy and conn.connects == 2, timeout=10, message="back by itself"
    )
    await dial_control_call(conn, admin_ami)
    assert await admin_ami.db_get("simcount", num) == "1"
    assert await admin_ami.db_get("simdup", num) is None
    rows = until(
        lambda: [r for r in cdr_rows() if r["accountcode"] == attempt],
        timeout=5,
        message="CDR rows of the attempt",
    )
    trunk_legs = [r for r in rows if r["dcontext"] == names.CTX_DIAL]
    assert len(trunk_legs) == 1, trunk_legs
    assert trunk_legs[0]["lastdata"].startswith(f"Local/{num}@{names.CTX_SIM_CONTACTS}")
    assert proxy.to_server.count(ORIGINATE) == 2  # the cut one and the control call


async def test_given_crlf_in_a_contact_name_when_dialling_then_unsafevalue_and_not_a_byte_reaches_asterisk(
    sandbox: SandboxInfo, admin_ami: AmiClient, make_proxy: MakeProxy, make_ami: MakeAmi
) -> None:
    proxy = await make_proxy(sandbox.ami_port)
    conn = make_ami(sandbox, proxy.port)
    await conn.start(wait=10)
    num, injected = number(HUMAN), number(HUMAN)
    name = (
        f'"Eve Mallory"\r\n\r\nAction: Originate\r\nChannel: Local/{injected}@{names.CTX_SIM_CONTACTS}'
        "\r\nContext: sim-hold\r\nExten: s\r\nPriority: 1\r\nAsync: true"
    )
    sent_before = len(proxy.from_client)

    with pytest.raises(UnsafeValue, match="CallerID"):
        await conn.send("Originate", originate(num, attempt_id(), CallerID=name))

    await dial_control_call(conn, admin_ami)
    assert b"Mallory" not in proxy.from_client
    assert injected.encode() not in proxy.from_client
    assert proxy.from_client[sent_before:].count(ORIGINATE) == 1  # the control call only
    assert await admin_ami.db_get("simcount", num) is None
    assert await admin_ami.db_get("simcount", injected) is None
    assert conn.healthy and conn.connects == 1


# ------------------------------------------------------------------ a sandbox of our own


async def test_given_a_call_up_and_an_originate_in_flight_when_asterisk_restarts_then_reconnect_resync_and_nothing_resent(
    own_sandbox: Sandbox, make_proxy: MakeProxy, make_ami: MakeAmi
) -> None:
    info = own_sandbox.info()
    assert info is not None
    proxy = await make_proxy(info.ami_port)
    conn = make_ami(info, proxy.port)
    resyncs: list[dict[str, Any]] = []

    async def resync() -> None:
        run: dict[str, Any] = {"healthy": conn.healthy}
        resyncs.append(run)
        run["channels"] = await conn.send_list("CoreShowChannels")

    conn.on_ready(resync)
    downs: list[str] = []
    conn.on_down(downs.append)
    await conn.start(wait=10)
    admin = await admin_of(info)
    up_num, up_attempt = number(HUMAN_LONG), attempt_id()
    await conn.send("Originate", originate(up_num, up_attempt))
    await async_until(lambda: is_up(admin, up_attempt), timeout=10, message="call up")
    assert await admin.db_get("simcount", up_num) == "1"
    await admin.close()
    # An Originate written by the dialer that Asterisk has not read when it goes down.
    in_flight_num = number(HUMAN)
    proxy.hold(ORIGINATE)
    in_flight = asyncio.ensure_future(
        conn.send("Originate", originate(in_flight_num, attempt_id()), timeout=30)
    )
    await async_until(lambda: proxy.held, timeout=5, message="Originate in flight")

    with contextlib.suppress(SandboxError):  # the CLI may lose Asterisk mid-answer
        await asyncio.to_thread(own_sandbox.cli, "core restart now")

    await async_until(lambda: not proxy.held, timeout=10, message="connection gone")
    proxy.release()  # from now on Originates pass (the held one died with its connection)
    with pytest.raises(AmiConnectionLost):
        await in_flight
    await async_until(
        lambda: conn.healthy and conn.connects == 2, timeout=30, message="back after restart"
    )
    assert downs, "the restart was reported (on_down)"
    assert [r["healthy"] for r in resyncs] == [False, False]  # resync ran before healthy
    assert up_attempt not in {c.get("Uniqueid") for c in resyncs[1]["channels"]}
    admin = await admin_of(info)
    try:
        await dial_control_call(conn, admin)
        assert await admin.db_get("simcount", in_flight_num) is None
        assert await admin.db_get("simcount", up_num) == "1"
    finally:
        await admin.close()
    assert proxy.to_server.count(ORIGINATE) == 2  # the call that was up, the control call


def _process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]


async def test_given_asterisk_frozen_when_pings_go_unanswered_then_unhealthy_within_two_intervals_dialing_refused_and_back_after_sigcont(
    own_sandbox: Sandbox, make_ami: MakeAmi
) -> None:
    info = own_sandbox.info()
    assert info is not None
    pid = info.pid
    # The pid is the chrooted Asterisk of this sandbox (chroot exec()s it), nothing else.
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "asterisk"
    assert own_sandbox.conf_path in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert Path(os.readlink(f"/proc/{pid}/root")) == info.root.resolve()
    interval = 0.5
    conn = make_ami(info, ping_interval=interval, action_timeout=1.0, connect_timeout=1.0)
    await conn.start(wait=10)
    refused_num = number(HUMAN)

    try:
        os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        assert until(lambda: _process_state(pid) == "T", timeout=2)
        await async_until(lambda: not conn.healthy, timeout=4 * interval, interval=0.01)
        noticed = time.monotonic() - frozen_at

        with pytest.raises(AmiNotReady):
            await conn.send("Originate", originate(refused_num, attempt_id()))
        assert "ping unanswered" in conn.last_error
    finally:
        os.kill(pid, signal.SIGCONT)

    assert noticed <= 2 * interval + 0.1, f"noticed after {noticed:.2f} s"
    await async_until(lambda: conn.healthy, timeout=15, message="healthy again by itself")
    assert conn.connects >= 2
    admin = await admin_of(info)
    try:
        await dial_control_call(conn, admin)
        assert await admin.db_get("simcount", refused_num) is None
    finally:
        await admin.close()

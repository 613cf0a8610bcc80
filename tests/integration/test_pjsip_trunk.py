"""A real SIP trunk: a PJSIP endpoint whose contact is sipp (UAS) on loopback. The dialer
originates through it and Asterisk itself reports the PJSIP channel up and the CDR."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from ami_bridge.connection import AmiConnection
from ami_bridge.originator import Originator
from outbound.model import (
    AttemptState,
    CallAttempt,
)
from outbound.sandbox import Sandbox, SandboxInfo, free_port
from tests.helpers.ami import AmiClient
from tests.helpers.db import add_contact, migrated_factory
from tests.helpers.until import async_until, until

TRUNK_CONF = """
[sipp-trunk]
type = aor
contact = sip:127.0.0.1:{port}

[sipp-trunk]
type = endpoint
transport = transport-udp
context = sim-phones
disallow = all
allow = ulaw
aors = sipp-trunk
direct_media = no
rtp_symmetric = yes
"""


@pytest.fixture
def sipp_trunk(sandbox_instance: Sandbox) -> Iterator[int]:
    port = free_port("udp")
    extra = sandbox_instance.etc_dir / "pjsip_sandbox_extra.conf"
    extra.write_text(TRUNK_CONF.format(port=port))
    sandbox_instance.cli("module reload res_pjsip.so")
    until(
        lambda: "sipp-trunk" in sandbox_instance.cli("pjsip show endpoints"),
        10,
        message="trunk endpoint not loaded",
    )
    proc = subprocess.Popen(
        [
            "sipp",
            "-sn",
            "uas",
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-nostdin",
            "-bg",
            "-trace_err",
            "-error_file",
            "/dev/null",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proc.wait(10)  # -bg forks: the parent returns at once
    try:
        yield port
    finally:
        subprocess.run(["pkill", "-f", f"sipp -sn uas -i 127.0.0.1 -p {port}"], check=False)
        extra.unlink(missing_ok=True)
        sandbox_instance.cli("module reload res_pjsip.so")


async def test_given_pjsip_trunk_answered_by_sipp_when_dialed_then_asterisk_shows_it_answered(
    sandbox: SandboxInfo,
    sipp_trunk: int,
    tmp_path: Path,
    admin_ami: AmiClient,
    cdr_rows: Callable[[], list[dict[str, str]]],
) -> None:
    f = migrated_factory(tmp_path / "t.db")
    cid = add_contact(f, "+4930" + str(uuid.uuid4().int)[:7])
    ami = AmiConnection(sandbox.ami_host, sandbox.ami_port, sandbox.ami_user, sandbox.ami_secret)
    o = Originator(ami, f, trunk="PJSIP/${NUMBER}@sipp-trunk", answered_context="sim-hold")
    o.start()
    await ami.start(wait=15)
    try:
        aid = await o.dial(cid)

        def state() -> AttemptState:
            with f() as s:
                return s.scalars(select(CallAttempt.state).where(CallAttempt.id == aid)).one()

        await async_until(
            lambda: state() is AttemptState.ANSWERED,
            15,
            message="the SIP trunk call was never answered",
        )
        _, chans = await admin_ami.collect("CoreShowChannels")
        sip = [c for c in chans if c["Channel"].startswith("PJSIP/sipp-trunk-")]
        assert sip and sip[0]["ChannelStateDesc"] == "Up" and sip[0]["Linkedid"] == aid
        await admin_ami.send("Hangup", Channel=sip[0]["Channel"])
        await async_until(lambda: state() is AttemptState.ENDED, 10)
        await async_until(
            lambda: any(
                r["accountcode"] == aid
                and r["dstchannel"].startswith("PJSIP/sipp-trunk")
                and r["disposition"] == "ANSWERED"
                for r in cdr_rows()
            ),
            10,
            message="no ANSWERED CDR row for the trunk leg",
        )
    finally:
        await o.stop()
        await ami.close()
        await asyncio.sleep(0)

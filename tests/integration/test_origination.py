"""Origination on the real sandbox Asterisk: attempt committed first, ChannelId = attempt id,
results mapped from what Asterisk reports, and checked against Asterisk's own CDR."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from ami_bridge.connection import AmiConnection
from ami_bridge.originator import Originator
from outbound.model import (
    AttemptState,
    CallAttempt,
    CallResult,
    Contact,
    ContactState,
)
from outbound.sandbox import SandboxInfo
from outbound.wire import UnsafeValue
from tests.helpers.ami import AmiClient
from tests.helpers.db import add_contact, migrated_factory
from tests.helpers.until import async_until

SIM_TRUNK = "Local/${NUMBER}@sim-contacts"


@pytest.fixture
def factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    return migrated_factory(tmp_path / "o.db")


@pytest.fixture
async def originator(sandbox: SandboxInfo, factory) -> AsyncIterator[Originator]:  # type: ignore[no-untyped-def]
    ami = AmiConnection(
        sandbox.ami_host, sandbox.ami_port, sandbox.ami_user, sandbox.ami_secret, ping_interval=1
    )
    o = Originator(
        ami,
        factory,
        trunk=SIM_TRUNK,
        ring_timeout=15,
        answered_context="sim-hold",
        answered_exten="s",
    )
    o.start()
    await ami.start(wait=15)
    yield o
    await o.stop()
    await ami.close()


def _number() -> str:
    return "+4930" + str(uuid.uuid4().int)[:6]


def _attempt(factory, aid: str) -> CallAttempt:  # type: ignore[no-untyped-def]
    with factory() as s:
        a = s.get(CallAttempt, aid)
        assert a is not None
        return a


async def test_given_human_contact_when_dialed_then_asterisk_has_the_call_up_under_the_attempt_id(
    originator: Originator,
    factory,
    admin_ami: AmiClient,
    cdr_rows: Callable[[], list[dict[str, str]]],
) -> None:
    number = _number() + "0"  # last digit 0: answers as a human
    cid = add_contact(factory, number)
    aid = await originator.dial(cid)
    # The attempt row existed before the Originate (it is the ChannelId).
    await async_until(
        lambda: _attempt(factory, aid).state is AttemptState.ANSWERED,
        15,
        message="attempt never answered",
    )
    _, chans = await admin_ami.collect("CoreShowChannels")
    mine = [c for c in chans if c.get("Uniqueid") == aid]
    assert mine and mine[0]["ChannelStateDesc"] == "Up"
    assert await admin_ami.db_get("simcount", number) == "1"
    await admin_ami.send("Hangup", Channel=mine[0]["Channel"])
    await async_until(lambda: _attempt(factory, aid).state is AttemptState.ENDED, 10)
    await async_until(
        lambda: any(r["accountcode"] == aid and r["disposition"] == "ANSWERED" for r in cdr_rows()),
        10,
        message="no ANSWERED CDR row",
    )


@pytest.mark.parametrize(
    ("scenario", "result", "cdr"),
    [
        ("busy", CallResult.BUSY, "BUSY"),
        ("congestion", CallResult.CONGESTION, "CONGESTION"),
        ("invalid", CallResult.INVALID_NUMBER, None),
    ],
)
async def test_given_unanswered_contact_then_result_comes_from_asterisk_and_treatment_applies(
    originator: Originator,
    factory,
    sandbox_instance,
    admin_ami: AmiClient,
    cdr_rows: Callable[[], list[dict[str, str]]],
    scenario: str,
    result: CallResult,
    cdr: str | None,
) -> None:
    number = _number()
    sandbox_instance.cli(f"database put simscenario {number} {scenario}")
    cid = add_contact(factory, number)
    aid = await originator.dial(cid)
    await async_until(
        lambda: _attempt(factory, aid).state is AttemptState.ENDED,
        20,
        message=f"{scenario}: attempt not settled",
    )
    a = _attempt(factory, aid)
    assert a.result is result
    assert await admin_ami.db_get("simcount", number) == "1"
    with factory() as s:
        ct = s.get(Contact, cid)
        assert ct is not None and ct.attempts == 1
        if result is CallResult.BUSY:  # default treatment: retry in 10 minutes
            assert ct.state is ContactState.READY and ct.next_at is not None
            assert abs((ct.next_at - a.ended_at).total_seconds() - 600) < 2  # type: ignore[operator]
    if cdr:
        await async_until(
            lambda: any(r["accountcode"] == aid and r["disposition"] == cdr for r in cdr_rows()),
            10,
            message=f"no {cdr} CDR row",
        )


async def test_given_unsafe_caller_id_then_refused_before_any_row_or_call(
    originator: Originator,
    factory,
    admin_ami: AmiClient,
) -> None:
    number = _number() + "0"
    cid = add_contact(factory, number)
    with pytest.raises(UnsafeValue):
        await originator.dial(cid, caller_id="Eve\r\nAction: Originate")
    with factory() as s:
        assert s.scalars(select(CallAttempt).where(CallAttempt.contact_id == cid)).all() == []
    assert await admin_ami.db_get("simcount", number) is None


async def test_given_contact_in_a_call_when_dialed_again_then_refused(
    originator: Originator,
    factory,
    admin_ami: AmiClient,
) -> None:
    number = _number() + "0"
    cid = add_contact(factory, number)
    aid = await originator.dial(cid)
    with pytest.raises(Exception, match="already in"):
        await originator.dial(cid)
    await async_until(lambda: _attempt(factory, aid).state is AttemptState.ANSWERED, 15)
    _, chans = await admin_ami.collect("CoreShowChannels")
    await admin_ami.send(
        "Hangup", Channel=next(c["Channel"] for c in chans if c.get("Uniqueid") == aid)
    )
    assert await admin_ami.db_get("simcount", number) == "1"
    assert await admin_ami.db_get("simdup", number) is None

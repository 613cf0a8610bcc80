"""The originator under faults, checked against Asterisk's own call counts and the database:
an Originate whose answer is lost is reconciled (never resent), and a `core restart now`
with a live call settles that call once and dials nobody twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from ami_bridge import originator
from ami_bridge.connection import AmiConnection
from ami_bridge.originator import Originator
from outbound.campaigns.attempts import create_attempt
from outbound.model import (
    AttemptState,
    CallAttempt,
    CallResult,
    transaction,
    utcnow,
)
from outbound.sandbox import Sandbox, SandboxInfo
from tests.faults.proxy import FaultProxy
from tests.helpers.ami import AmiClient
from tests.helpers.db import add_contact, migrated_factory
from tests.helpers.until import async_until

SIM_TRUNK = "Local/${NUMBER}@sim-contacts"


@pytest.fixture
def factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    return migrated_factory(tmp_path / "f.db")


def _attempts(factory: Any, contact_id: int) -> list[CallAttempt]:
    with factory() as s:
        return list(s.scalars(select(CallAttempt).where(CallAttempt.contact_id == contact_id)))


def _number(last: str) -> str:
    return "+4930" + str(uuid.uuid4().int)[:6] + last


async def _channel_of(admin: AmiClient, uid: str) -> str | None:
    _, chans = await admin.collect("CoreShowChannels")
    return next((c["Channel"] for c in chans if c.get("Uniqueid") == uid), None)


async def test_given_originate_answer_lost_when_reconnected_then_reconciler_tracks_it_and_nothing_is_resent(
    sandbox: SandboxInfo,
    admin_ami: AmiClient,
    make_proxy: Callable[[int], Awaitable[FaultProxy]],
    make_ami: Callable[..., AmiConnection],
    factory: Any,
) -> None:
    proxy = await make_proxy(sandbox.ami_port)
    ami = make_ami(sandbox, proxy.port)
    o = Originator(ami, factory, trunk=SIM_TRUNK, ring_timeout=15, answered_context="sim-hold")
    o.start()
    try:
        await ami.start(wait=10)
        number = _number("8")  # a human who stays on the line
        cid = add_contact(factory, number)
        proxy.cut_after(b"Action: Originate")
        aid = await o.dial(cid)
        await async_until(
            lambda: ami.connects >= 2 and ami.healthy, 15, message="did not reconnect"
        )
        # The call is up in Asterisk; the reconciler found it and keeps tracking it.
        await async_until(lambda: _channel_of(admin_ami, aid), 10)
        assert [a.state for a in _attempts(factory, cid)] != [AttemptState.ENDED]
        assert await admin_ami.db_get("simcount", number) == "1"
        await admin_ami.send("Hangup", Channel=await _channel_of(admin_ami, aid))
        await async_until(lambda: _attempts(factory, cid)[0].state is AttemptState.ENDED, 10)
        attempts = _attempts(factory, cid)
        assert len(attempts) == 1 and attempts[0].id == aid
        assert proxy.to_server.count(b"Action: Originate") == 1  # never resent
        assert await admin_ami.db_get("simcount", number) == "1"
        assert await admin_ami.db_get("simdup", number) is None
    finally:
        await o.stop()  # make_ami closes the connection


async def test_given_a_live_call_when_asterisk_restarts_then_the_attempt_is_settled_once_and_nobody_redialed(
    own_sandbox: Sandbox,
    make_ami: Callable[..., AmiConnection],
    factory: Any,
) -> None:
    info = own_sandbox.info()
    assert info is not None
    ami = make_ami(info)
    o = Originator(ami, factory, trunk=SIM_TRUNK, ring_timeout=15, answered_context="sim-hold")
    o.start()
    try:
        await ami.start(wait=15)
        number = _number("8")
        cid = add_contact(factory, number)
        aid = await o.dial(cid)
        await async_until(lambda: _attempts(factory, cid)[0].state is AttemptState.ANSWERED, 15)
        own_sandbox.cli("core restart now")
        await async_until(lambda: not ami.healthy, 10, message="restart not noticed")
        await async_until(lambda: ami.healthy, 60, message="no reconnect after restart")
        # Reconciled after the reconnect: the call died with Asterisk; settled once.
        await async_until(lambda: _attempts(factory, cid)[0].state is AttemptState.ENDED, 10)
        attempts = _attempts(factory, cid)
        assert len(attempts) == 1 and attempts[0].id == aid
        assert attempts[0].result in (CallResult.HANGUP, CallResult.FAILED)
        with factory() as s:
            assert s.scalar(select(func.count()).select_from(CallAttempt)) == 1
        # Asterisk's own count: AstDB survives the restart; still exactly one call.
        assert "1" in own_sandbox.cli(f"database get simcount {number}")
    finally:
        await o.stop()  # make_ami closes the connection


def _live_attempt(factory: Any, age_s: float, server: str) -> str:
    """An attempt of `server` Asterisk has no channel for (its Hangup was lost), sent
    `age_s` seconds ago."""
    with transaction(factory) as s:
        a = create_attempt(s, add_contact(factory, _number("5")), server=server)
        a.originated_at = utcnow() - timedelta(seconds=age_s)
        return a.id


async def test_given_an_event_lost_to_a_database_error_when_the_bridge_recovers_then_older_gone_attempts_are_settled_and_newer_ones_left(
    sandbox: SandboxInfo,
    make_ami: Callable[..., AmiConnection],
    factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(originator, "RECOVER_AFTER_S", 0.0)
    ami = make_ami(sandbox)
    server = f"rec-{uuid.uuid4().hex[:6]}"
    o = Originator(ami, factory, server=server)
    await ami.start(wait=10)
    o._next_backstop = asyncio.get_running_loop().time() + 3600  # not this time
    lost = _live_attempt(factory, 30, server)
    # An event's handling fails on the database (as the consumer reports it).
    o._failed("event Hangup", OperationalError("SELECT", {}, Exception("server closed")))
    assert o.reconcile_needed
    young = _live_attempt(factory, 0, server)  # sent after the failure: left to its events
    await o.recover()
    assert not o.reconcile_needed
    assert [_state(factory, a) for a in (lost, young)] == [
        AttemptState.ENDED,
        AttemptState.ORIGINATING,
    ]
    # The backstop, whatever happened: a live attempt without a channel, older than
    # BACKSTOP_MIN_AGE_S, is settled; a younger one is not.
    await o.recover()  # the flag is clear, the backstop not due: nothing
    assert _state(factory, young) is AttemptState.ORIGINATING
    monkeypatch.setattr(originator, "BACKSTOP_MIN_AGE_S", 0.0)
    o._next_backstop = 0.0
    await o.recover()
    assert _state(factory, young) is AttemptState.ENDED


def _state(factory: Any, aid: str) -> AttemptState:
    with factory() as s:
        a = s.get(CallAttempt, aid)
        assert a is not None
        return a.state

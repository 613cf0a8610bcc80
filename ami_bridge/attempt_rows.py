"""The originator's row-level steps on call attempts, each inside its caller's
transaction: the write lock, claiming an agent-written attempt for its Originate, ending
an unclaimed one, and storing the 2-second rule's timing at the join."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from outbound.campaigns.amd import connect_timing
from outbound.campaigns.attempts import advance, settle
from outbound.errors import Conflict, NotFound
from outbound.model import AttemptState, CallAttempt, CallResult, Campaign, utcnow

log = logging.getLogger("ami_bridge.originator")


def write_lock(s: Session) -> None:
    """Take SQLite's write lock before reading what is written back: its reads otherwise
    run outside the transaction, and this bridge and the classify AGI, both writing an
    attempt's audit, could each overwrite the other's keys. (PostgreSQL: the row lock
    of with_for_update.) Must be the transaction's first statement."""
    if s.get_bind().dialect.name == "sqlite":
        s.connection().exec_driver_sql("BEGIN IMMEDIATE")


def claim_created(s: Session, attempt_id: str, contact_id: int, server: str) -> CallAttempt:
    """Lock an agent-written attempt for its one Originate: it must be `created` (never
    sent) and the contact's; it moves to `originating` on this server in the caller's
    transaction, so a second dial command for it finds it taken."""
    a = s.scalar(
        select(CallAttempt)
        .where(CallAttempt.id == attempt_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if a is None:
        raise NotFound(f"attempt {attempt_id} does not exist")
    if a.contact_id != contact_id:
        raise Conflict(f"attempt {attempt_id} is not contact {contact_id}'s")
    if a.state is not AttemptState.CREATED and "expired" in a.audit:
        raise Conflict(f"attempt {attempt_id} expired unclaimed and was cancelled: dial again")
    if a.state is not AttemptState.CREATED:
        raise Conflict(f"attempt {attempt_id} was already dialed (state {a.state.value})")
    advance(a, "send")
    a.server, a.originated_at = server, utcnow()
    return a


def expire_one(s: Session, attempt_id: str, cutoff: datetime, note: str) -> bool:
    """End one unclaimed attempt under its row lock (SQLite: the write lock), so that a
    claim racing it either came first (state originating: left alone) or comes after and
    finds it ended (refused, nothing sent). Never both."""
    write_lock(s)
    a = s.get(CallAttempt, attempt_id, with_for_update=True, populate_existing=True)
    if a is None or a.state is not AttemptState.CREATED or a.created_at >= cutoff:
        return False
    a.audit = {**a.audit, "expired": {"after_s": (utcnow() - a.created_at).total_seconds()}}
    return settle(s, attempt_id, CallResult.CANCELLED, note=note)


def store_timing(s: Session, a: CallAttempt) -> None:
    """The 2-second rule's delay (audit `connect_ms`, `late_connect`) from classify's
    `decided_at` and the join's `connected_at`. Classify's write, if it comes after the
    join, stores it instead (both take the write lock first, so one of them sees both)."""
    c = s.get(Campaign, a.campaign_id)
    timing = connect_timing(a.audit, a.connected_at, dict(c.amd_policy) if c else {})
    if timing is None:
        return
    a.audit = {**a.audit, **timing}
    if timing["late_connect"]:
        log.warning(
            "attempt %s: late connect, %d ms after AMD's decision", a.id, timing["connect_ms"]
        )

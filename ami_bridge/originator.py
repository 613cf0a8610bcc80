"""Origination: commit the attempt, fire an async Originate with the attempt id as ChannelId,
track the call from events, settle its result. Never awaits a call inline, never resends.

An Originate whose answer is lost (connection cut, timeout) stays `originating` in the
database; after every (re)connection the reconciler looks for its ChannelId among
Asterisk's channels: found, it is tracked on; gone, it is settled as failed (the treatment
decides whether and when a *new* attempt happens). It is never sent a second time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from panoramisk.message import Message
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outbound import names
from outbound.campaigns.amd import connect_timing
from outbound.campaigns.attempts import advance, create_attempt, settle
from outbound.campaigns.results import dial_result
from outbound.errors import Conflict, NotFound
from outbound.model import (
    AttemptState,
    CallAttempt,
    CallResult,
    Campaign,
    transaction,
    utcnow,
)
from outbound.wire import channel_variable, check_value

from .connection import AmiActionFailed, AmiConnection, AmiError, AmiNotReady

log = logging.getLogger("ami_bridge.originator")

ORIGINATE_PREFIX = "originate/"
# Raised by outbound-after-classify (agent_gone) when the agent left between classify's
# check and the join: the person hears the abandon message instead (AttemptId, Reason).
EVENT_CONNECT_ABANDONED = names.EVENT_CONNECT_ABANDONED
# An agent's preview dial commits its attempt `created` and sends the bridge a `dial`
# command that claims it; a command lives 10-30 s (its deadline), so an attempt still
# `created` after this was never going to be claimed (page closed, API down, command
# expired): it is ended (CANCELLED), freeing its contact and its agent.
CREATED_TTL_S = 60.0
LIVE_STATES = (
    AttemptState.ORIGINATING,
    AttemptState.RINGING,
    AttemptState.ANSWERED,
    AttemptState.CONNECTED,
)


class Originator:
    """Places and tracks the calls of one Asterisk server (`server` names it in the DB)."""

    def __init__(
        self,
        ami: AmiConnection,
        factory: sessionmaker[Session],
        *,
        server: str = "default",
        trunk: str = "PJSIP/${NUMBER}@trunk",
        ring_timeout: int = 30,
        answered_context: str = names.CTX_ANSWERED,
        answered_exten: str = "s",
        originate_timeout: float = 10.0,
        on_settled: Callable[[str, CallResult], Any] | None = None,
        on_call_event: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.ami = ami
        self.factory = factory
        self.server = server
        self.trunk = trunk
        self.ring_timeout = max(15, ring_timeout)
        self.answered_context = answered_context
        self.answered_exten = answered_exten
        self.originate_timeout = originate_timeout
        self.on_settled = on_settled
        self.on_call_event = on_call_event
        self._pending: dict[str, _Pending] = {}  # what is known of unanswered attempts
        self._tasks: set[asyncio.Task[Any]] = set()
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        ami.on_event("OriginateResponse", self._events.put_nowait)
        ami.on_event("Hangup", self._events.put_nowait)
        ami.on_event("Newstate", self._events.put_nowait)
        ami.on_event("UserEvent", self._events.put_nowait)
        ami.on_event("ConfbridgeJoin", self._events.put_nowait)
        ami.on_ready(self.reconcile)
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.ensure_future(self._consume())

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
        for t in list(self._tasks):
            t.cancel()

    # ------------------------------------------------------------ dialing
    async def dial(
        self,
        contact_id: int,
        *,
        e164: str | None = None,
        agent_id: str | None = None,
        caller_id: str | None = None,
        trunk: str | None = None,
        variables: dict[str, str] | None = None,
        audit: dict[str, Any] | None = None,
        context: str | None = None,
        exten: str | None = None,
        attempt_id: str | None = None,
    ) -> str:
        """Commit an attempt and fire its Originate; return the attempt id at once.

        With `attempt_id`: an attempt the agent's own dial already wrote in state
        `created` (preview, push preview; compliance ran then) is claimed instead,
        created -> originating in one transaction, and originated once; a second claim,
        another contact's attempt or one already sent is refused (Conflict), nothing sent.
        Its number, trunk, caller id and agent are the row's.

        Refused (AmiNotReady, nothing written) while AMI is not healthy: dialing pauses."""
        if not self.ami.healthy:
            raise AmiNotReady(f"not dialing contact {contact_id}: AMI not healthy")
        dial_trunk = trunk or self.trunk
        # Values are checked before the row is written: bad input changes nothing.
        extra = [channel_variable(k, v) for k, v in (variables or {}).items()]
        channel_variable(names.VAR_TRUNK_DIAL, dial_trunk)
        if caller_id is not None:
            check_value("CallerID", caller_id, max_len=80)
        if e164 is not None:
            check_value("number", e164, max_len=20)

        claimed: dict[str, Any] = {}

        def commit() -> tuple[str, str]:
            with transaction(self.factory) as s:
                if attempt_id is not None:
                    _write_lock(s)  # SQLite: or an expiry could end it under our feet
                    a = _claim_created(s, attempt_id, contact_id, self.server)
                    claimed.update(trunk=a.trunk, caller_id=a.caller_id, agent_id=a.agent_id)
                    return a.id, a.e164
                a = create_attempt(
                    s,
                    contact_id,
                    e164=e164,
                    server=self.server,
                    trunk=dial_trunk,
                    caller_id=caller_id,
                    agent_id=agent_id,
                    audit=audit,
                )
                return a.id, a.e164

        aid, number = await asyncio.to_thread(commit)
        if claimed:
            dial_trunk = claimed["trunk"] or dial_trunk
            caller_id = claimed["caller_id"] or caller_id
            agent_id = claimed["agent_id"] or agent_id
        self._emit(
            {
                "event": "call_connecting",
                "attempt_id": aid,
                "contact_id": contact_id,
                "agent_id": agent_id or "",
            }
        )
        fields: dict[str, Any] = {
            "ActionID": ORIGINATE_PREFIX + aid,
            "Channel": f"Local/{number}@{names.CTX_DIAL}",
            "Context": context or self.answered_context,
            "Exten": exten or self.answered_exten,
            "Priority": "1",
            "Async": "true",
            "ChannelId": aid,
            "Timeout": str((self.ring_timeout + 10) * 1000),
            "Variable": [
                channel_variable(names.VAR_ATTEMPT_ID, aid),
                channel_variable(names.VAR_TRUNK_DIAL, dial_trunk),
                channel_variable(names.VAR_RING_TIMEOUT, self.ring_timeout),
                *([channel_variable(names.VAR_AGENT, agent_id)] if agent_id else []),
                *extra,
            ],
        }
        if caller_id:
            fields["CallerID"] = caller_id
        task = asyncio.ensure_future(self._fire(aid, fields))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return aid

    async def _fire(self, attempt_id: str, fields: dict[str, Any]) -> None:
        try:
            await self.ami.send("Originate", fields, timeout=self.originate_timeout)
        except AmiActionFailed as exc:
            # Asterisk refused it outright: nothing was dialed.
            await self._settle(attempt_id, CallResult.FAILED, note=f"refused: {exc}")
        except AmiNotReady as exc:
            # Not written to the socket at all: nothing was dialed.
            await self._settle(attempt_id, CallResult.CANCELLED, note=f"not sent: {exc}")
        except AmiError as exc:
            # Lost or late answer: it may be ringing now. The reconciler settles it.
            log.warning(
                "attempt %s: Originate answer lost (%s); left to the reconciler", attempt_id, exc
            )

    # ------------------------------------------------------------ tracking
    async def _consume(self) -> None:
        while True:
            msg = await self._events.get()
            try:
                await self._handle(msg)
            except Exception:
                log.exception("event %s not handled", msg.get("Event"))

    async def _handle(self, msg: Message) -> None:
        ev = msg.get("Event")
        log.debug("event %s %s %s", ev, msg.get("Uniqueid"), msg.get("UserEvent", ""))
        if ev == "UserEvent" and msg.get("UserEvent") == names.EVENT_DIAL_RESULT:
            if not await self._is_ours(msg.get("AttemptId", "")):
                return
            p = self._pending.setdefault(msg.get("AttemptId", ""), _Pending())
            p.status, p.cause = msg.get("DialStatus", ""), _int(msg.get("HangupCause"))
            await self._try_settle_unanswered(msg.get("AttemptId", ""))
        elif ev == "UserEvent" and msg.get("UserEvent") == EVENT_CONNECT_ABANDONED:
            if await self._is_ours(msg.get("AttemptId", "")):
                await self._late_abandon(msg.get("AttemptId", ""), msg.get("Reason", ""))
        elif ev == "OriginateResponse":
            action_id = msg.get("ActionID", "")
            if not action_id.startswith(ORIGINATE_PREFIX):
                return
            aid = action_id[len(ORIGINATE_PREFIX) :]
            if not await self._is_ours(aid):
                return
            if msg.get("Response") == "Success":
                self._pending.pop(aid, None)
                await self._advance(aid, "answer")
            else:
                self._pending.setdefault(aid, _Pending()).reason = _int(msg.get("Reason"))
                await self._try_settle_unanswered(aid)
                self._later(aid)
        elif ev == "ConfbridgeJoin" and msg.get("Conference", "").startswith("outbound-agent-"):
            # The contact is in an agent's conference: connected.
            if msg.get("Uniqueid") and await self._is_ours(msg["Uniqueid"]):
                await self._advance(msg["Uniqueid"], "connect", at=event_time(msg))
        elif ev == "Newstate" and msg.get("ChannelStateDesc") == "Ringing":
            if msg.get("Uniqueid") and await self._is_ours(msg["Uniqueid"]):
                await self._advance(msg["Uniqueid"], "ring")
        elif ev == "Hangup":
            uid = msg.get("Uniqueid", "")
            cause = _int(msg.get("Cause"))
            if uid.endswith(";2") and await self._is_ours(uid[:-2]):
                # The dialing half is gone: its OutboundDialResult came before this.
                p = self._pending.setdefault(uid[:-2], _Pending())
                p.half2_gone, p.cause = True, p.cause or cause
                await self._try_settle_unanswered(uid[:-2])
            elif uid and await self._is_ours(uid):
                await self._settle_on_hangup(uid, cause)

    def _later(self, aid: str, delay: float = 2.0) -> None:
        """Events of the two halves of a Local channel can arrive in either order; settle
        with what is known if the rest has not come within `delay`."""

        async def fallback() -> None:
            await asyncio.sleep(delay)
            await self._try_settle_unanswered(aid, final=True)

        t = asyncio.ensure_future(fallback())
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _try_settle_unanswered(self, aid: str, final: bool = False) -> None:
        p = self._pending.get(aid)
        if p is None:
            return
        complete = p.reason is not None and (bool(p.status) or p.half2_gone)
        if not (complete or final):
            return
        self._pending.pop(aid, None)
        result = dial_result(reason=p.reason, dial_status=p.status or None, cause=p.cause)
        await self._settle(aid, result, cause=p.cause)

    async def _is_ours(self, uid: str) -> bool:
        """An attempt this server placed. Another bridge's attempts are not: several
        bridges (own server names) on one Asterisk all see every call's events, and only
        the one that placed a call may settle it and tell its dialer (call_ended)."""
        if len(uid) != 36:  # our ChannelIds are UUIDs; Asterisk's own look like 1795.12
            return False

        def q() -> bool:
            with self.factory() as s:
                return s.scalar(select(CallAttempt.server).where(CallAttempt.id == uid)) == (
                    self.server
                )

        return await asyncio.to_thread(q)

    async def _advance(self, attempt_id: str, event: str, at: datetime | None = None) -> None:
        def run() -> str | None:
            with transaction(self.factory) as s:
                _write_lock(s)
                a = s.get(CallAttempt, attempt_id, with_for_update=True)
                if a is not None:
                    try:
                        if event == "connect" and a.state in (
                            AttemptState.ORIGINATING,
                            AttemptState.RINGING,
                        ):
                            advance(a, "answer")  # the join overtook the OriginateResponse
                        if advance(a, event, at):
                            if event == "connect":
                                _store_timing(s, a)
                            return a.state.value
                    except Conflict as exc:
                        log.warning("%s", exc)

            return None

        new = await asyncio.to_thread(run)
        if new is not None:
            self._emit({"event": f"call_{new}", "attempt_id": attempt_id})

    async def _late_abandon(self, attempt_id: str, reason: str) -> None:
        """outbound-after-classify found the agent gone right before the join: the
        person gets the abandon message, and the attempt the result ABANDONED (classify
        had decided `connect`, which leaves the result to the call's end)."""

        def run() -> bool:
            with transaction(self.factory) as s:
                _write_lock(s)
                a = s.get(CallAttempt, attempt_id, with_for_update=True)
                if a is None or a.state is AttemptState.ENDED:
                    return False
                a.result = a.result or CallResult.ABANDONED
                why = reason[:200] or "agent left before the join"
                a.audit = {**a.audit, "route": "abandon", "abandon_reason": why}
                return True

        if await asyncio.to_thread(run):
            log.warning("attempt %s: abandoned at the join: %s", attempt_id, reason)

    async def _settle_on_hangup(self, attempt_id: str, cause: int | None) -> None:
        def run() -> tuple[bool | None, CallResult]:
            with transaction(self.factory) as s:
                a = s.get(CallAttempt, attempt_id)
                if a is None or a.state is AttemptState.ENDED:
                    return False, CallResult.FAILED
                if a.state is AttemptState.CONNECTED:
                    result = CallResult.ANSWERED
                elif a.state is AttemptState.ANSWERED:
                    # Answered but never connected: the classifier's result if it set one.
                    result = a.result or CallResult.HANGUP
                else:
                    return None, CallResult.FAILED  # not answered: the dial result decides
                return settle(s, attempt_id, result, cause=cause), result

        done, result = await asyncio.to_thread(run)
        if done is None:
            p = self._pending.setdefault(attempt_id, _Pending())
            p.cause = p.cause or cause
            await self._try_settle_unanswered(attempt_id)
            self._later(attempt_id)
        elif done:
            self._notify_settled(attempt_id, result)

    async def _settle(
        self, attempt_id: str, result: CallResult, *, cause: int | None = None, note: str = ""
    ) -> None:
        def run() -> bool:
            with transaction(self.factory) as s:
                return settle(s, attempt_id, result, cause=cause, note=note)

        if await asyncio.to_thread(run):
            log.info("attempt %s settled: %s", attempt_id, result.value)
            self._notify_settled(attempt_id, result)

    def _notify_settled(self, attempt_id: str, result: CallResult) -> None:
        if self.on_settled:
            self.on_settled(attempt_id, result)
        self._emit({"event": "call_ended", "attempt_id": attempt_id, "result": result.value})

    def _emit(self, event: dict[str, Any]) -> None:
        """Tell the outside world (the bridge publishes these on the Redis event stream)."""
        if self.on_call_event is not None:
            try:
                self.on_call_event(event)
            except Exception:
                log.exception("call event hook failed")

    # ------------------------------------------------------------ unclaimed attempts
    async def expire_created(self, ttl_s: float = CREATED_TTL_S) -> list[str]:
        """End every attempt still `created` (written by an agent's preview dial, never
        claimed by a `dial` command) `ttl_s` after it was written: result CANCELLED, the
        audit says why, the contact's treatment applied as for any attempt never sent.
        Whatever server an unclaimed attempt names (the bridge that will send it is only
        known at the claim), so every bridge runs this; the row lock makes it one end.
        Returns the ids ended here."""
        cutoff = utcnow() - timedelta(seconds=ttl_s)
        note = f"expired: not claimed for its Originate within {ttl_s:g} s"

        def stale() -> list[str]:
            with self.factory() as s:
                q = select(CallAttempt.id).where(
                    CallAttempt.state == AttemptState.CREATED, CallAttempt.created_at < cutoff
                )
                return list(s.scalars(q.order_by(CallAttempt.created_at)))

        def end(aid: str) -> bool:
            with transaction(self.factory) as s:
                return _expire_one(s, aid, cutoff, note)

        ended = []
        for aid in await asyncio.to_thread(stale):
            if await asyncio.to_thread(end, aid):
                log.warning("attempt %s: %s; cancelled", aid, note)
                self._notify_settled(aid, CallResult.CANCELLED)
                ended.append(aid)
        return ended

    # ------------------------------------------------------------ reconciliation
    async def reconcile(self) -> None:
        """After every (re)connection: look for each live attempt of this server among
        Asterisk's channels by its ChannelId; settle the ones that are gone."""
        channels = await self.ami.send_list("CoreShowChannels", timeout=10)
        present = {c.get("Uniqueid") for c in channels} | {c.get("Linkedid") for c in channels}

        def run() -> list[tuple[str, CallResult]]:
            settled = []
            with transaction(self.factory) as s:
                live = s.scalars(
                    select(CallAttempt).where(
                        CallAttempt.server == self.server, CallAttempt.state.in_(LIVE_STATES)
                    )
                ).all()
                for a in live:
                    if a.id in present:
                        continue
                    result = (
                        CallResult.ANSWERED
                        if a.state is AttemptState.CONNECTED
                        else (a.result or CallResult.FAILED)
                    )
                    if settle(s, a.id, result, note="gone after AMI reconnect"):
                        settled.append((a.id, result))
            return settled

        for aid, result in await asyncio.to_thread(run):
            log.warning(
                "attempt %s not found in Asterisk after reconnect: settled %s", aid, result.value
            )
            self._notify_settled(aid, result)


def _expire_one(s: Session, attempt_id: str, cutoff: datetime, note: str) -> bool:
    """End one unclaimed attempt under its row lock (SQLite: the write lock), so that a
    claim racing it either came first (state originating: left alone) or comes after and
    finds it ended (refused, nothing sent). Never both."""
    _write_lock(s)
    a = s.get(CallAttempt, attempt_id, with_for_update=True, populate_existing=True)
    if a is None or a.state is not AttemptState.CREATED or a.created_at >= cutoff:
        return False
    a.audit = {**a.audit, "expired": {"after_s": (utcnow() - a.created_at).total_seconds()}}
    return settle(s, attempt_id, CallResult.CANCELLED, note=note)


def _write_lock(s: Session) -> None:
    """Take SQLite's write lock before reading what is written back: its reads otherwise
    run outside the transaction, and this bridge and the classify AGI, both writing an
    attempt's audit, could each overwrite the other's keys. (PostgreSQL: the row lock
    of with_for_update.) Must be the transaction's first statement."""
    if s.get_bind().dialect.name == "sqlite":
        s.connection().exec_driver_sql("BEGIN IMMEDIATE")


def _store_timing(s: Session, a: CallAttempt) -> None:
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


@dataclass
class _Pending:
    reason: int | None = None  # OriginateResponse Reason (failure)
    status: str = ""  # DIALSTATUS from OutboundDialResult
    cause: int | None = None
    half2_gone: bool = False


def event_time(msg: Any) -> datetime | None:
    """When Asterisk says the event happened (its `Timestamp`, with manager.conf's
    timestampevents = yes), else None (now): the 2-second rule is judged on Asterisk's
    clock, not on when a busy bridge got round to the event."""
    try:
        ts = float(msg.get("Timestamp") or "")
    except ValueError:
        return None
    return datetime.fromtimestamp(ts, UTC)


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _claim_created(s: Session, attempt_id: str, contact_id: int, server: str) -> CallAttempt:
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

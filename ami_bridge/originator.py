"""Origination: commit the attempt, fire an async Originate with the attempt id as ChannelId,
track the call from events, settle its result. Never awaits a call inline, never resends.

An Originate whose answer is lost (connection cut, timeout) stays `originating` in the
database; after every (re)connection the reconciler looks for its ChannelId among
Asterisk's channels: found, it is tracked on; gone, it is settled as failed (the treatment
decides whether and when a *new* attempt happens). It is never sent a second time.

An event whose handling failed on the database (an outage: the Hangup of a call came
while PostgreSQL was away) is not seen again, so its attempt would stay live for ever:
the failure marks a reconcile as needed, and `recover()` (the bridge's housekeeping, every
few seconds) runs it once the database answers. As a backstop, live attempts older than
a few minutes are reconciled every minute whatever happened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from panoramisk.message import Message
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from outbound import names
from outbound.campaigns.attempts import advance, create_attempt, settle
from outbound.campaigns.results import dial_result
from outbound.errors import Conflict
from outbound.model import (
    AttemptState,
    CallAttempt,
    CallResult,
    transaction,
    utcnow,
)
from outbound.wire import channel_variable, check_value

from .attempt_rows import claim_created, expire_one, store_timing, write_lock
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
# The reconcile after a failed event waits this long after the last failure, and covers
# the attempts originated before it: younger ones may have no channel yet (committed, the
# Originate not yet processed), and no event of theirs can have been lost.
RECOVER_AFTER_S = 10.0
BACKSTOP_EVERY_S = 60.0  # the backstop reconcile's period ...
BACKSTOP_MIN_AGE_S = 180.0  # ... over attempts older than this (no call rings that long)
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
        ami.on_ready(self._reconcile_on_ready)
        self._worker: asyncio.Task[None] | None = None
        self.reconcile_needed = False  # an event's handling failed on the database ...
        self._failed_at = utcnow()  # ... last at this time
        self._next_backstop = 0.0  # loop time of the next backstop reconcile

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
                    write_lock(s)  # SQLite: or an expiry could end it under our feet
                    a = claim_created(s, attempt_id, contact_id, self.server)
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
        self._track(asyncio.ensure_future(self._fire(aid, fields)), f"Originate of {aid}")
        return aid

    def _track(self, task: asyncio.Task[Any], what: str) -> None:
        """Keep a background task; its failure is logged and, on the database, marks a
        reconcile as needed (what it would have written is lost otherwise)."""
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self._failed(what, t.exception())

        task.add_done_callback(done)

    def _failed(self, what: str, exc: BaseException | None) -> None:
        log.error("%s not handled", what, exc_info=exc)
        if isinstance(exc, SQLAlchemyError | OSError):
            self.reconcile_needed, self._failed_at = True, utcnow()

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
            except Exception as exc:
                self._failed(f"event {msg.get('Event')}", exc)

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

        self._track(asyncio.ensure_future(fallback()), f"settling attempt {aid}")

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
                write_lock(s)
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
                                store_timing(s, a)
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
                write_lock(s)
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
                return expire_one(s, aid, cutoff, note)

        ended = []
        for aid in await asyncio.to_thread(stale):
            if await asyncio.to_thread(end, aid):
                log.warning("attempt %s: %s; cancelled", aid, note)
                self._notify_settled(aid, CallResult.CANCELLED)
                ended.append(aid)
        return ended

    # ------------------------------------------------------------ reconciliation
    async def recover(self) -> None:
        """The bridge's housekeeping, every few seconds: a reconcile once an event's
        handling failed on the database (RECOVER_AFTER_S after the last failure, over the
        attempts originated before it; the flag stays until one succeeds, so a database
        still away is tried again next time), else the backstop reconcile every
        BACKSTOP_EVERY_S over attempts originated BACKSTOP_MIN_AGE_S ago. Nothing while
        AMI is down: the reconnection reconciles anyway."""
        if not self.ami.healthy:
            return
        loop = asyncio.get_running_loop()
        if self.reconcile_needed:
            failed_at = self._failed_at
            if utcnow() - failed_at < timedelta(seconds=RECOVER_AFTER_S):
                return
            self.reconcile_needed = False  # an event failing meanwhile sets it again
            try:
                n = await self.reconcile(failed_at, "gone after a database error")
            except BaseException:
                self.reconcile_needed = True
                raise
            log.warning("reconciled after a database error: %d attempts settled", n)
        elif loop.time() >= self._next_backstop:
            self._next_backstop = loop.time() + BACKSTOP_EVERY_S
            before = utcnow() - timedelta(seconds=BACKSTOP_MIN_AGE_S)
            await self.reconcile(before, "gone (backstop reconcile)")

    async def _reconcile_on_ready(self) -> None:
        await self.reconcile()

    async def reconcile(
        self, before: datetime | None = None, why: str = "gone after AMI reconnect"
    ) -> int:
        """Look for each live attempt of this server among Asterisk's channels by its
        ChannelId (CoreShowChannels); settle the ones that are gone (connected: answered;
        else the classifier's result or failed). After every (re)connection: all of them;
        from `recover`: those originated `before` then. Returns how many were settled. A
        database failure raises and marks the reconcile as still needed."""
        channels = await self.ami.send_list("CoreShowChannels", timeout=10)
        present = {c.get("Uniqueid") for c in channels} | {c.get("Linkedid") for c in channels}

        def run() -> list[tuple[str, CallResult]]:
            settled = []
            with transaction(self.factory) as s:
                q = select(CallAttempt).where(
                    CallAttempt.server == self.server, CallAttempt.state.in_(LIVE_STATES)
                )
                if before is not None:
                    since = func.coalesce(CallAttempt.originated_at, CallAttempt.created_at)
                    q = q.where(since < before)
                for a in s.scalars(q).all():
                    if a.id in present:
                        continue
                    result = (
                        CallResult.ANSWERED
                        if a.state is AttemptState.CONNECTED
                        else (a.result or CallResult.FAILED)
                    )
                    if settle(s, a.id, result, note=why):
                        settled.append((a.id, result))
            return settled

        try:
            done = await asyncio.to_thread(run)
        except SQLAlchemyError:
            self.reconcile_needed, self._failed_at = True, utcnow()
            raise
        for aid, result in done:
            log.warning("attempt %s not found in Asterisk (%s): settled %s", aid, why, result.value)
            self._notify_settled(aid, result)
        return len(done)


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

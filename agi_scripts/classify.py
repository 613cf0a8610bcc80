"""The `classify` route: run on the answered contact leg. Reads the attempt id, runs AMD
with the campaign's parameters, combines the verdict with the campaign's policy
(outbound.campaigns.amd.decide), checks with Asterisk that the reserved agent is really
free, records it all on the attempt, and tells the dialplan where to go (OUTBOUND_NEXT:
connect / abandon / hangup / message). Thin: the decisions are pure and live in the core.

The 2-second rule decides the order: a person (connect, abandon) is routed first and
the AGI stream closed at once, so Asterisk runs the dialplan while the verdict is
written; the database (a locked row, a slow disk) can never hold a person back. The
write has a deadline and logs an error when it fails. A machine or silence is recorded
first (nobody waits for it, and our own hang-up must not overtake the record).

A hang-up at any point after AMD still records AMD's verdict (AMDSTATUS, AMDCAUSE, the
decision in audit `decided_route`) with the result HANGUP.

Also the `fax` route: fax detection (FAXOPT(faxdetect), enabled here for the first
seconds, switched off by every route of outbound-after-classify) jumps the channel to the
dialplan's `fax` extension, which records FAX here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from outbound import names
from outbound.campaigns.amd import (
    DEFAULT_POLICY,
    Decision,
    abandon_plan,
    agent_availability,
    amd_args,
    connect_timing,
    decide,
    route_to_agent,
    validate_policy,
)
from outbound.campaigns.predictive import pick_agent, unassign
from outbound.errors import Invalid
from outbound.model import (
    AttemptState,
    CallAttempt,
    CallResult,
    Campaign,
    DialMode,
    transaction,
)
from outbound.model.types import utcnow

from .protocol import AgiHangup
from .server import AgiSession, Handler

log = logging.getLogger(__name__)

# How long a verdict's database write may take before classify gives up on it (and
# logs an error). PostgreSQL enforces it itself (lock_timeout / statement_timeout).
RECORD_DEADLINE_S = 5.0
# Predictive: how long picking an agent for a person may take (of the 2 s), and how many
# agents are tried when Asterisk says a picked one is not in their conference.
PICK_DEADLINE_S = 0.8
PICK_TRIES = 2
_BACKGROUND: set[asyncio.Future[None]] = set()
# Routes where a person waits: routed before the verdict is written.
_PERSON_ROUTES = ("connect", "abandon")
# Set by a later stage (the AMI bridge on a late abandon, the fax route): never
# overwritten by classify's own, possibly later, write.
_LATER_KEYS = ("route", "abandon_reason")


async def _full_variable(session: AgiSession, expression: str) -> str | None:
    """GET FULL VARIABLE: Asterisk evaluates `expression` (functions included) on the
    channel. The expression is ours, never data from outside."""
    answer = await session.command("GET FULL VARIABLE", expression)
    return answer.data if answer.result == 1 else None


async def _agent_free(session: AgiSession, agent_id: str) -> tuple[bool, str, dict[str, Any]]:
    """Ask Asterisk (not our own state) whether the agent waits alone in their
    conference: CONFBRIDGE_INFO gives 0 for a conference that does not exist."""
    conf = names.agent_bridge(agent_id)
    parties = await _full_variable(session, f"${{CONFBRIDGE_INFO(parties,{conf})}}")
    marked = await _full_variable(session, f"${{CONFBRIDGE_INFO(marked,{conf})}}")
    free, why = agent_availability(parties, marked)
    return free, why, {"parties": parties, "marked": marked}


async def _enable_fax_detect(session: AgiSession, seconds: int) -> None:
    """CNG detection for `seconds` (res_fax; skipped when the module is not loaded, so
    the PBX's log does not fill with "function FAXOPT not registered")."""
    if seconds <= 0 or await _full_variable(session, "${IFMODULE(res_fax.so)}") != "1":
        return
    await session.set_variable("FAXOPT(faxdetect)", f"cng,{seconds}")


async def _set_route(
    session: AgiSession, d: Decision, policy: dict[str, Any], agent_id: str | None
) -> None:
    """The dialplan values of the decision; OUTBOUND_NEXT last (the dialplan's choice)."""
    if d.route == "connect" and agent_id:
        await session.set_variable(names.VAR_AGENT, agent_id)
    if d.route == "message":
        await session.set_variable(names.VAR_MESSAGE, policy["message"])
    if d.route in _PERSON_ROUTES:
        # connect too: should the agent leave before the join, the dialplan abandons
        # the person (outbound-after-classify, agent_gone) with this same message.
        plan = abandon_plan(policy)
        if plan.prompt:  # else the PBX's own OUTBOUND_ABANDON_PROMPT, if any
            await session.set_variable(names.VAR_ABANDON_PROMPT, plan.prompt)
        await session.set_variable(names.VAR_OPTOUT_KEY, plan.optout_key)
        await session.set_variable(names.VAR_OPTOUT_WAIT, plan.optout_wait)
        await session.set_variable(names.VAR_OPTOUT_CONFIRM, plan.optout_confirm)
    await session.set_variable(names.VAR_NEXT, d.route)


def _release(session: AgiSession) -> None:
    """End the AGI conversation now: Asterisk continues the dialplan when the AGI stream
    closes (FastAGI socket or process-AGI stdout), not when the route variables are
    set. The server closes the stream again when the handler returns (harmless)."""
    session.release()


async def _store(what: str, attempt_id: str, write: Callable[[], None]) -> None:
    """Run a database write in a thread with a deadline; an error is logged, never
    raised (the call goes on; the verdict is lost or lands late, and the log says so)."""
    try:
        await asyncio.wait_for(asyncio.to_thread(write), RECORD_DEADLINE_S)
    except TimeoutError:
        log.error(
            "attempt %s: %s not recorded within %gs (database busy); it may land later",
            *(attempt_id, what, RECORD_DEADLINE_S),
        )
    except Exception:
        log.exception("attempt %s: %s not recorded", attempt_id, what)


def make_classify(factory: sessionmaker[Session], redis: Any = None) -> Handler:
    """`redis` (redis.asyncio): live agent state, for the agent a predictive call's person
    gets when they answer; None: predictive calls find no agent (abandoned)."""

    async def classify(session: AgiSession) -> None:
        attempt_id = await session.get_variable(names.VAR_ATTEMPT_ID) or ""

        def load() -> tuple[dict[str, Any], str | None, int, bool] | None:
            with factory() as s:
                a = s.get(CallAttempt, attempt_id)
                c = s.get(Campaign, a.campaign_id) if a else None
                if a is None or c is None:
                    return None
                pick = c.mode is DialMode.PREDICTIVE and a.agent_id is None
                return dict(c.amd_policy), a.agent_id, c.id, pick

        found = await asyncio.to_thread(load)
        if found is None:
            log.warning("classify: unknown attempt %r; hanging up", attempt_id)
            await session.set_variable(names.VAR_NEXT, "hangup")
            return
        raw_policy, agent_id, campaign_id, pick = found
        audit: dict[str, Any] = {}
        try:
            policy = validate_policy(raw_policy)
        except Invalid as exc:
            # A person is on the line now: classify with the defaults, say why.
            log.error(
                "attempt %s: campaign AMD policy invalid (%s); using defaults", attempt_id, exc
            )
            policy, audit["policy_error"] = dict(DEFAULT_POLICY), str(exc)
        await _enable_fax_detect(session, int(policy["fax_detect"]))
        started = time.monotonic()
        try:
            await session.exec("AMD", *amd_args(policy), timeout=30)
            status = await session.get_variable("AMDSTATUS") or "NOTSURE"
            cause = await session.get_variable("AMDCAUSE") or ""
        except AgiHangup:
            # The contact hung up during AMD, or fax detection took the channel to the
            # `fax` extension (whose route then records FAX over this).
            took_ms = int((time.monotonic() - started) * 1000)
            await _store(
                "hang-up during AMD",
                attempt_id,
                lambda: _record_hangup(factory, attempt_id, took_ms),
            )
            log.info("attempt %s: gone during AMD after %d ms", attempt_id, took_ms)
            raise
        took_ms = int((time.monotonic() - started) * 1000)
        audit.update(amd_ms=took_ms, decided_at=utcnow().isoformat())
        d = decide(status, cause, policy, agent_reserved=agent_id is not None or pick)

        def record(result: CallResult | None) -> Callable[[], None]:
            return lambda: _record(factory, attempt_id, status, cause, result, audit)

        try:
            if d.route == "connect" and pick:
                d, agent_id = await _pick(session, factory, redis, campaign_id, attempt_id, audit)
            elif d.route == "connect" and agent_id:
                free, why, seen = await _agent_free(session, agent_id)
                audit["agent_check"] = seen
                d = route_to_agent(d, free, why)
            audit["route"] = d.route
            if d.why:
                audit["abandon_reason"] = d.why
            if d.route not in _PERSON_ROUTES:
                await _store("verdict", attempt_id, record(d.result))
            await _set_route(session, d, policy, agent_id)
        except AgiHangup:
            # Gone after AMD's verdict: the verdict is kept, the call is a hang-up, but
            # a person already abandoned stays ABANDONED (the abandonment rate counts
            # every person nobody served, whether they waited for the message or not).
            audit.update(route="hangup", decided_route=d.route)
            gone = CallResult.ABANDONED if d.route == "abandon" else CallResult.HANGUP
            await _store("verdict (hung up)", attempt_id, record(gone))
            log.info("attempt %s: AMD %s %s, then gone before routing", attempt_id, status, cause)
            raise
        log.info(
            "attempt %s: AMD %s %s in %d ms -> %s %s",
            *(attempt_id, status, cause, took_ms, d.route, d.why),
        )
        if d.route in _PERSON_ROUTES:
            _release(session)
            # A connected call's result comes at its end (the AMI bridge settles it).
            await _store("verdict", attempt_id, record(None if d.route == "connect" else d.result))

    return classify


async def _pick(
    session: AgiSession,
    factory: sessionmaker[Session],
    redis: Any,
    campaign_id: int,
    attempt_id: str,
    audit: dict[str, Any],
) -> tuple[Decision, str | None]:
    """Predictive: a person answered and no agent was reserved. Pick a Ready, free member
    (outbound.campaigns.predictive.pick_agent), then ask Asterisk whether they are really
    waiting in their conference; if not, the pick is undone and the next one tried. Bounded
    by PICK_DEADLINE_S: past it, or with nobody free, the person is abandoned."""
    connect = Decision(CallResult.ANSWERED, "connect")
    if redis is None:
        return route_to_agent(connect, False, "no live agent state (no Redis)"), None
    deadline = time.monotonic() + PICK_DEADLINE_S
    tried: set[str] = set()

    async def run(fn: Callable[[], Any]) -> Any:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return await asyncio.wait_for(asyncio.to_thread(fn), left)

    why = "no agent free when the person answered"
    try:
        for _ in range(PICK_TRIES):
            agent = await asyncio.wait_for(
                pick_agent(
                    redis, factory, campaign_id, attempt_id, run=run, exclude=frozenset(tried)
                ),
                max(0.001, deadline - time.monotonic()),
            )
            if agent is None:
                break
            tried.add(agent)
            free, why, seen = await _agent_free(session, agent)
            audit.setdefault("agent_checks", []).append({"agent": agent, **seen})
            if free:
                return connect, agent
            await run(partial(unassign, factory, attempt_id, agent))
    except TimeoutError:
        why = f"no agent picked within {PICK_DEADLINE_S:g} s"
        # A pick that lands after the deadline is undone (the person is abandoned), after
        # the person is routed: a slow database never holds them back.
        t = asyncio.ensure_future(
            _store("unpick", attempt_id, partial(_unpick, factory, attempt_id))
        )
        _BACKGROUND.add(t)
        t.add_done_callback(_BACKGROUND.discard)
    audit["agents_tried"] = sorted(tried)
    return route_to_agent(connect, False, why), None


def _unpick(factory: sessionmaker[Session], attempt_id: str) -> None:
    with factory() as s:
        a = s.get(CallAttempt, attempt_id)
        picked = a.agent_id if a is not None else None
    if picked:
        unassign(factory, attempt_id, picked)


def _bound(s: Session) -> None:
    """Start a record's transaction. PostgreSQL gives up on a locked row or a slow
    statement itself after the record deadline (SET LOCAL: this transaction only), so
    no writer thread lingers on. SQLite takes its write lock first: its reads otherwise
    run outside the transaction, and this write and the AMI bridge's (join, late
    abandon) could each overwrite the other's audit keys."""
    if s.get_bind().dialect.name == "sqlite":
        s.connection().exec_driver_sql("BEGIN IMMEDIATE")
    elif s.get_bind().dialect.name == "postgresql":
        ms = int(RECORD_DEADLINE_S * 1000)
        s.execute(text(f"SET LOCAL lock_timeout = {ms}"))
        s.execute(text(f"SET LOCAL statement_timeout = {ms}"))


def _record(
    factory: sessionmaker[Session],
    attempt_id: str,
    status: str,
    cause: str,
    result: CallResult | None,
    audit: dict[str, Any],
) -> None:
    """AMD's verdict and the decision on the attempt. May land after the dialplan has
    moved on: a result set meanwhile (fax route, late abandon, hang-up settled) stands,
    and so do the route notes a later stage wrote. If the AMI bridge has already seen
    the join, the 2-second rule's delay is stored here (else the bridge stores it)."""
    with transaction(factory) as s:
        _bound(s)
        a = s.get(CallAttempt, attempt_id, with_for_update=True)
        if a is None:
            return
        a.amd_status, a.amd_cause = status, cause[:60]
        if result is not None and a.result is None and a.state is not AttemptState.ENDED:
            a.result = result
        merged = {**a.audit, **audit, **{k: a.audit[k] for k in _LATER_KEYS if k in a.audit}}
        c = s.get(Campaign, a.campaign_id)
        timing = connect_timing(merged, a.connected_at, dict(c.amd_policy) if c else {})
        if timing:
            merged.update(timing)
            _log_late(attempt_id, timing)
        a.audit = merged


def _log_late(attempt_id: str, timing: dict[str, Any]) -> None:
    if timing["late_connect"]:
        log.warning(
            "attempt %s: late connect, %d ms after AMD's decision", attempt_id, timing["connect_ms"]
        )


def _record_hangup(factory: sessionmaker[Session], attempt_id: str, took_ms: int) -> None:
    with transaction(factory) as s:
        _bound(s)
        a = s.get(CallAttempt, attempt_id, with_for_update=True)
        if a is None:
            return
        if a.result is None:  # the fax route may have been first
            a.result = CallResult.HANGUP
            a.amd_status = a.amd_status or "HANGUP"
        a.audit = {**a.audit, "amd_ms": took_ms, "route": a.audit.get("route", "hangup")}


def _record_fax(factory: sessionmaker[Session], attempt_id: str) -> CallResult | None:
    """FAX on the attempt, unless it already has a result other than the HANGUP an
    interrupted AMD wrote (a machine's ANSWERING_MACHINE, an ABANDONED, ... stand: a
    machine's beep can sound like CNG). Returns the result the attempt now has; None
    for an unknown or ended attempt."""
    with transaction(factory) as s:
        _bound(s)
        a = s.get(CallAttempt, attempt_id, with_for_update=True)
        if a is None or a.state is AttemptState.ENDED:
            return None
        if a.result not in (None, CallResult.HANGUP):
            return a.result
        a.result = CallResult.FAX
        if a.amd_status == "HANGUP":  # classify's note of the interrupted AMD
            a.amd_status = None
        a.audit = {**a.audit, "route": "fax"}
        return a.result


def make_fax(factory: sessionmaker[Session]) -> Handler:
    """The `fax` route: the dialplan's `fax` extension (reached by CNG detection) runs
    it; records FAX over nothing or the HANGUP the interrupted classify may have written
    (see _record_fax)."""

    async def fax(session: AgiSession) -> None:
        attempt_id = await session.get_variable(names.VAR_ATTEMPT_ID) or ""
        result = await asyncio.to_thread(_record_fax, factory, attempt_id)
        if result is CallResult.FAX:
            log.info("attempt %s: fax tones detected -> FAX", attempt_id)
        elif result is None:
            log.warning("fax: attempt %r unknown or already ended", attempt_id)
        else:
            log.warning("attempt %s: fax tones after the verdict %s; kept", attempt_id, result)
        await session.set_variable(names.VAR_NEXT, "hangup")

    return fax

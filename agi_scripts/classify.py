"""The `classify` route: run on the answered contact leg. Reads the attempt id, runs AMD
with the campaign's parameters, combines the verdict with the campaign's policy
(outbound.campaigns.amd.decide), checks with Asterisk that the reserved agent is really
free, records it all on the attempt, and tells the dialplan where to go (OUTBOUND_NEXT:
connect / abandon / hangup / message). Thin: the decisions are pure and live in the core.

Also the `fax` route: fax detection (FAXOPT(faxdetect), enabled here for the first
seconds) jumps the channel to the dialplan's `fax` extension, which records FAX here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from outbound import names
from outbound.campaigns.amd import (
    DEFAULT_POLICY,
    Decision,
    abandon_plan,
    agent_availability,
    amd_args,
    connect_delay_ms,
    decide,
    is_late_connect,
    route_to_agent,
    validate_policy,
)
from outbound.errors import Invalid
from outbound.model import AttemptState, CallAttempt, CallResult, Campaign, transaction
from outbound.model.types import utcnow

from .protocol import AgiHangup
from .server import AgiSession, Handler

log = logging.getLogger(__name__)

# Follow-up tasks that wait for a connected contact's join (see _watch_connect); kept
# here so that they are not garbage-collected while they run.
_watchers: set[asyncio.Task[None]] = set()
CONNECT_WATCH_S = 10.0


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


def make_classify(factory: sessionmaker[Session]) -> Handler:
    async def classify(session: AgiSession) -> None:
        attempt_id = await session.get_variable(names.VAR_ATTEMPT_ID) or ""

        def load() -> tuple[dict[str, Any], str | None] | None:
            with factory() as s:
                a = s.get(CallAttempt, attempt_id)
                c = s.get(Campaign, a.campaign_id) if a else None
                return (dict(c.amd_policy), a.agent_id) if a and c else None

        found = await asyncio.to_thread(load)
        if found is None:
            log.warning("classify: unknown attempt %r; hanging up", attempt_id)
            await session.set_variable(names.VAR_NEXT, "hangup")
            return
        raw_policy, agent_id = found
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
            await asyncio.to_thread(_record_hangup, factory, attempt_id, took_ms)
            log.info("attempt %s: gone during AMD after %d ms", attempt_id, took_ms)
            raise
        decided_at = utcnow()
        took_ms = int((time.monotonic() - started) * 1000)
        d = decide(status, cause, policy, agent_reserved=agent_id is not None)
        if d.route == "connect" and agent_id:
            free, why, seen = await _agent_free(session, agent_id)
            audit["agent_check"] = seen
            d = route_to_agent(d, free, why)
        audit.update(amd_ms=took_ms, route=d.route, decided_at=decided_at.isoformat())
        if d.why:
            audit["abandon_reason"] = d.why
        await asyncio.to_thread(_record, factory, attempt_id, status, cause, d, audit)
        log.info(
            "attempt %s: AMD %s %s in %d ms -> %s %s",
            *(attempt_id, status, cause, took_ms, d.route, d.why),
        )
        if d.route == "connect" and agent_id:
            await session.set_variable(names.VAR_AGENT, agent_id)
            _watch(factory, attempt_id, decided_at, policy)
        if d.route == "message":
            await session.set_variable(names.VAR_MESSAGE, policy["message"])
        if d.route == "abandon":
            plan = abandon_plan(policy)
            if plan.prompt:  # else the PBX's own OUTBOUND_ABANDON_PROMPT, if any
                await session.set_variable(names.VAR_ABANDON_PROMPT, plan.prompt)
            await session.set_variable(names.VAR_OPTOUT_KEY, plan.optout_key)
            await session.set_variable(names.VAR_OPTOUT_WAIT, plan.optout_wait)
            await session.set_variable(names.VAR_OPTOUT_CONFIRM, plan.optout_confirm)
        await session.set_variable(names.VAR_NEXT, d.route)

    return classify


def _record(
    factory: sessionmaker[Session],
    attempt_id: str,
    status: str,
    cause: str,
    d: Decision,
    audit: dict[str, Any],
) -> None:
    with transaction(factory) as s:
        a = s.get(CallAttempt, attempt_id)
        if a is None:
            return
        a.amd_status, a.amd_cause = status, cause[:60]
        if d.route != "connect":  # a connected call's result comes at its end
            a.result = d.result
        a.audit = {**a.audit, **audit}


def _record_hangup(factory: sessionmaker[Session], attempt_id: str, took_ms: int) -> None:
    with transaction(factory) as s:
        a = s.get(CallAttempt, attempt_id)
        if a is None:
            return
        if a.result is None:  # the fax route may have been first
            a.result = CallResult.HANGUP
            a.amd_status = a.amd_status or "HANGUP"
        a.audit = {**a.audit, "amd_ms": took_ms, "route": a.audit.get("route", "hangup")}


def _watch(
    factory: sessionmaker[Session], attempt_id: str, decided_at: datetime, policy: dict[str, Any]
) -> None:
    """Once the AMI bridge has seen the contact join the agent's conference (it sets
    `connected_at` from ConfbridgeJoin), store the decision-to-join delay on the attempt
    (`audit.connect_ms`, `audit.late_connect`) for the late-connect report. The join
    happens after this AGI session ends, so a short follow-up task waits for it."""

    async def run() -> None:
        deadline = time.monotonic() + CONNECT_WATCH_S
        while time.monotonic() < deadline:
            if await asyncio.to_thread(_store_delay, factory, attempt_id, decided_at, policy):
                return
            await asyncio.sleep(0.2)
        log.info("attempt %s: no join within %gs of the decision", attempt_id, CONNECT_WATCH_S)

    task = asyncio.get_running_loop().create_task(run())
    _watchers.add(task)
    task.add_done_callback(_watchers.discard)


def _store_delay(
    factory: sessionmaker[Session], attempt_id: str, decided_at: datetime, policy: dict[str, Any]
) -> bool:
    """True once there is nothing more to wait for (stored, or the call ended unjoined)."""
    with transaction(factory) as s:
        a = s.get(CallAttempt, attempt_id)
        if a is None:
            return True
        if a.connected_at is None:
            return a.state is AttemptState.ENDED
        ms = connect_delay_ms(decided_at, a.connected_at)
        late = is_late_connect(ms, policy)
        a.audit = {**a.audit, "connect_ms": ms, "late_connect": late}
        if late:
            log.warning("attempt %s: late connect, %d ms after AMD's decision", attempt_id, ms)
        return True


def make_fax(factory: sessionmaker[Session]) -> Handler:
    """The `fax` route: the dialplan's `fax` extension (reached by CNG detection) runs
    it; records FAX (over the HANGUP the interrupted classify may have written)."""

    async def fax(session: AgiSession) -> None:
        attempt_id = await session.get_variable(names.VAR_ATTEMPT_ID) or ""

        def record() -> bool:
            with transaction(factory) as s:
                a = s.get(CallAttempt, attempt_id)
                if a is None or a.state is AttemptState.ENDED:
                    return False
                a.result = CallResult.FAX
                if a.amd_status == "HANGUP":  # classify's note of the interrupted AMD
                    a.amd_status = None
                a.audit = {**a.audit, "route": "fax"}
                return True

        if await asyncio.to_thread(record):
            log.info("attempt %s: fax tones detected -> FAX", attempt_id)
        else:
            log.warning("fax: attempt %r unknown or already ended", attempt_id)
        await session.set_variable(names.VAR_NEXT, "hangup")

    return fax

"""The `classify` route: run on the answered contact leg. Reads the attempt id, runs AMD
with the campaign's parameters, combines the verdict with the campaign's policy
(outbound.campaigns.amd.decide), records it on the attempt, and tells the dialplan where
to go (OUTBOUND_NEXT: connect / abandon / hangup / message). Thin: the decision is pure
and lives in the core."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from outbound import names
from outbound.campaigns.amd import DEFAULT_POLICY, amd_args, decide
from outbound.model import CallAttempt, Campaign, transaction

from .server import AgiSession, Handler

log = logging.getLogger(__name__)


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
        policy, agent_id = found
        policy = {**DEFAULT_POLICY, **policy}
        started = time.monotonic()
        await session.exec("AMD", *amd_args(policy), timeout=30)
        status = await session.get_variable("AMDSTATUS") or "NOTSURE"
        cause = await session.get_variable("AMDCAUSE") or ""
        took_ms = int((time.monotonic() - started) * 1000)
        d = decide(status, cause, policy, agent_reserved=agent_id is not None)

        def record() -> None:
            with transaction(factory) as s:
                a = s.get(CallAttempt, attempt_id)
                if a is None:
                    return
                a.amd_status, a.amd_cause = status, cause[:60]
                if d.route != "connect":  # a connected call's result comes at its end
                    a.result = d.result
                a.audit = {**a.audit, "amd_ms": took_ms, "route": d.route}

        await asyncio.to_thread(record)
        log.info(
            "attempt %s: AMD %s %s in %d ms -> %s", attempt_id, status, cause, took_ms, d.route
        )
        if d.route == "connect" and agent_id:
            await session.set_variable(names.VAR_AGENT, agent_id)
        if d.route == "message":
            await session.set_variable(names.VAR_MESSAGE, policy["message"])
        await session.set_variable(names.VAR_NEXT, d.route)

    return classify

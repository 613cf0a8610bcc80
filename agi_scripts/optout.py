"""The `optout` route: an abandoned person pressed the campaign's opt-out key during the
identification message (outbound-after-classify, extension `optout`). Records the
do-not-call entry (outbound.dnc.opt_out) and sets OUTBOUND_OPTOUT_DONE=1; the dialplan
then plays the confirmation and hangs up. Without that "1" (unknown attempt, a key that
is not the campaign's, a database failure) the dialplan confirms nothing: a person must
never hear "removed" when the number was not recorded."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.orm import Session, sessionmaker

from outbound import dnc, names
from outbound.campaigns.amd import DEFAULT_POLICY, abandon_plan, validate_policy
from outbound.errors import Invalid, NotFound
from outbound.model import CallAttempt, Campaign, transaction

from .server import AgiSession, Handler

log = logging.getLogger(__name__)


def make_optout(factory: sessionmaker[Session]) -> Handler:
    async def optout(session: AgiSession) -> None:
        attempt_id = await session.get_variable(names.VAR_ATTEMPT_ID) or ""
        pressed = await session.get_variable(names.VAR_OPTOUT_DIGIT) or ""

        def record() -> dict[str, object] | str:
            with transaction(factory) as s:
                a = s.get(CallAttempt, attempt_id)
                c = s.get(Campaign, a.campaign_id) if a else None
                if a is None or c is None:
                    return "unknown attempt"
                try:
                    policy = validate_policy(c.amd_policy)
                except Invalid as exc:  # classify fell back to the defaults too
                    log.error("attempt %s: AMD policy invalid (%s); defaults", attempt_id, exc)
                    policy = dict(DEFAULT_POLICY)
                key, scope = abandon_plan(policy).optout_key, str(policy["optout_scope"])
                if not key or pressed != key:
                    return f"key {pressed!r} is not the campaign's opt-out key"
                try:
                    return dnc.opt_out(s, attempt_id, key=key, scope=scope)
                except (Invalid, NotFound) as exc:
                    return str(exc)

        outcome = await asyncio.to_thread(record)
        if isinstance(outcome, str):
            log.warning("optout: attempt %r not recorded: %s", attempt_id, outcome)
            return
        log.info("attempt %s: opt-out recorded: %s", attempt_id, outcome)
        await session.set_variable(names.VAR_OPTOUT_DONE, "1")

    return optout

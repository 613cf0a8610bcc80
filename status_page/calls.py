"""The agent's actions on a previewed record (dial, decline, accept, reject) and on a call
(end, hold, transfer, ..., mark done).

Ownership is checked in the database before anything reaches the bridge: the core's
`_own_offer` / `own_attempt` refuse (NotAllowed, 403) an offer or call that is not the
caller's, and nothing is sent. A preview dial is two steps, like everywhere else: the
core writes the attempt (compliance checked there), then the bridge's `dial` command
originates exactly that attempt; if the bridge refuses or does not answer, the attempt
(still `created`, never claimed) is ended as cancelled, so the agent is not left with a
call that will never ring and can mark it done."""

from __future__ import annotations

import logging
from typing import Any

from outbound.campaigns import push
from outbound.campaigns.attempts import settle
from outbound.campaigns.interaction import done_and_stop, mark_done, own_attempt
from outbound.campaigns.preview import decline, dial
from outbound.commands import CommandFailed, CommandTimeout
from outbound.errors import NotFound
from outbound.model import AttemptState, CallAttempt, CallResult, transaction
from outbound.model.tables import Offer

from .http import Call
from .schema import Field, path_int

log = logging.getLogger("status_page.calls")

# What an agent may type as a transfer / conference / consultation target: an extension
# or a phone number with the usual separators (the bridge decides which it is).
TARGET = Field(
    required=True,
    max_len=40,
    pattern=r"\+?[0-9*#][0-9*# ().-]{0,38}",
    description="an internal extension or a phone number (digits, +, *, #)",
)
DIGITS = Field(required=True, max_len=32, pattern=r"[0-9*#A-D]{1,32}", description="DTMF digits")
CALLER_ID = Field(max_len=80, pattern=r"\+?[0-9]{2,30}", description="one of the campaign's")

# action -> (bridge command, its argument and the body field carrying it, or None)
ACTIONS: dict[str, tuple[str, dict[str, Field] | None]] = {
    "end": ("end", None),
    "hold": ("hold", None),
    "resume": ("resume", None),
    "transfer": ("transfer", {"target": TARGET}),
    "conference": ("conference", {"target": TARGET}),
    "dtmf": ("dtmf", {"digits": DIGITS}),
    "consult_start": ("consult_start", {"target": TARGET}),
    "consult_cancel": ("consult_cancel", None),
    "consult_transfer": ("consult_transfer", None),
    "consult_conference": ("consult_conference", None),
}


def _offer_campaign(c: Call) -> tuple[int, int]:
    """(offer id, its campaign id); NotFound when there is no such offer."""
    oid = path_int(c.params["offer_id"])
    with c.ctx.factory() as s:
        offer = s.get(Offer, oid) if oid is not None else None
        if offer is None:
            raise NotFound(f"no preview record (offer) {c.params['offer_id']}")
        return offer.id, offer.campaign_id


def _cancel_unclaimed(c: Call, attempt_id: str, why: str) -> bool:
    """End an attempt the bridge never claimed (still `created`): True when ended."""
    with transaction(c.ctx.factory) as s:
        a = s.get(CallAttempt, attempt_id, with_for_update=True)
        if a is None or a.state is not AttemptState.CREATED:
            return False
        return settle(s, attempt_id, CallResult.CANCELLED, note=f"not dialed: {why}"[:200])


async def _originate(c: Call, out: dict[str, Any]) -> dict[str, Any]:
    """Have the bridge originate the attempt the core wrote; the contact is connected
    into the agent's conference on answer."""
    args = {
        "contact_id": out["contact_id"],
        "agent_id": c.me,
        "attempt_id": out["attempt_id"],
        "connect": True,
    }
    try:
        await c.ctx.command("dial", args)
    except (CommandFailed, CommandTimeout) as exc:
        if await c.ctx.blocking(_cancel_unclaimed, c, out["attempt_id"], str(exc)):
            log.warning(
                "attempt %s cancelled: the bridge did not dial it: %s", out["attempt_id"], exc
            )
        raise
    return out


async def offer_dial(c: Call) -> Any:
    oid, cid = await c.ctx.blocking(_offer_campaign, c)
    out = await c.ctx.blocking(
        dial, c.ctx.factory, c.ctx.queue(cid), oid, c.me, c.body.get("caller_id")
    )
    return await _originate(c, out)


async def offer_decline(c: Call) -> Any:
    oid, cid = await c.ctx.blocking(_offer_campaign, c)
    return await c.ctx.blocking(
        decline, c.ctx.factory, c.ctx.queue(cid), oid, c.me, c.body["choice"]
    )


async def offer_accept(c: Call) -> Any:
    """Accept a pushed record; with `dial` true, dial it at once (as /dial would). A
    progressive campaign's interaction preview is always dialed on accept."""
    oid, cid = await c.ctx.blocking(_offer_campaign, c)
    q = c.ctx.queue(cid)
    out = await c.ctx.blocking(push.accept, c.ctx.factory, oid, c.me, queue=q)
    if c.body.get("dial") or out.get("dial_now"):
        got = await c.ctx.blocking(dial, c.ctx.factory, q, oid, c.me, c.body.get("caller_id"))
        out["dial"] = await _originate(c, got)
    return out


async def offer_reject(c: Call) -> Any:
    oid, cid = await c.ctx.blocking(_offer_campaign, c)
    return await c.ctx.blocking(push.reject, c.ctx.factory, c.ctx.queue(cid), oid, c.me)


def _check_own(c: Call) -> int:
    """The call's campaign when it is the caller's (NotFound / NotAllowed otherwise)."""
    with c.ctx.factory() as s:
        return own_attempt(s, c.params["attempt_id"], c.me).campaign_id


def call_action(action: str) -> Any:
    kind, spec = ACTIONS[action]

    async def handler(c: Call) -> Any:
        await c.ctx.blocking(_check_own, c)
        args: dict[str, Any] = {"attempt_id": c.params["attempt_id"], "agent_id": c.me}
        for name in spec or {}:
            args[name] = c.body[name]
        return await c.ctx.command(kind, args)

    handler.__name__ = f"call_{action}"
    return handler


async def call_done(c: Call) -> Any:
    """Mark done (preview: the next record is previewed), or done and stop."""
    cid = await c.ctx.blocking(_check_own, c)
    q, aid, code = c.ctx.queue(cid), c.params["attempt_id"], c.body.get("disposition")
    if c.body.get("stop"):
        return await c.ctx.blocking(
            done_and_stop, c.ctx.factory, c.ctx.redis, aid, c.me, code, queue=q
        )
    return await c.ctx.blocking(mark_done, c.ctx.factory, aid, c.me, code, queue=q)

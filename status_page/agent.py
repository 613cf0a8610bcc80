"""Log-in and the agent's own state: the web session, the desk-phone session through the
bridge, Ready per channel, "me", "My campaigns", notifications, "Get record" and the
current interaction."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import JSONResponse

from outbound import live, names
from outbound.agents import get_agent
from outbound.campaigns import notify
from outbound.campaigns.interaction import case_info
from outbound.campaigns.preview import get_record
from outbound.errors import Conflict, NotFound
from outbound.model import AttemptState, CallAttempt
from outbound.model.tables import Offer, OfferState

from .auth import BAD_LOGIN, COOKIE, check_password
from .context import ApiError
from .http import Call, error
from .schema import path_int

LOGIN_WAIT_S = 30.0  # the bridge waits this long for the desk phone to answer

# The outbound preview channel's Ready flag, set only while the desk-phone session is up
# (checked and written in one step: a session ending meanwhile wins).
_SET_PREVIEW_READY = """
if redis.call('HGET', KEYS[1], 'session') ~= 'up' then return 0 end
redis.call('HSET', KEYS[1], 'ready_preview', ARGV[1], 'reason', 'page', 'ts', ARGV[2])
return 1
"""


def _client_ip(c: Call) -> str:
    return c.request.client.host if c.request.client else "unknown"


async def login(c: Call) -> Any:
    """Password log-in: a session cookie and the CSRF token for state-changing requests."""
    agent_id, password = c.body["agent_id"], c.body["password"]
    ip = _client_ip(c)
    wait = await c.ctx.sessions.locked_for(agent_id, ip)
    if wait:
        raise ApiError(
            429, f"too many failed log-ins: try again in {wait} s", {"Retry-After": str(wait)}
        )
    role = await c.ctx.blocking(check_password, c.ctx.factory, agent_id, password)
    if role is None:
        await c.ctx.sessions.failed(agent_id, ip)
        return error(401, BAD_LOGIN)
    await c.ctx.sessions.succeeded(agent_id)
    who = await c.ctx.sessions.create(agent_id, role)
    resp = JSONResponse({"agent_id": agent_id, "role": role, "csrf_token": who.csrf})
    resp.set_cookie(
        COOKIE,
        who.token,
        max_age=int(c.ctx.web("session_ttl")),
        path="/",
        httponly=True,
        samesite="strict",
        secure=c.ctx.web("cookie_secure") == "on",
    )
    return resp


async def logout(c: Call) -> Any:
    assert c.who is not None
    await c.ctx.sessions.end(c.who.token)
    resp = JSONResponse({"logged_out": True})
    resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return resp


async def phone_login(c: Call) -> Any:
    """The bridge calls the agent's desk phone into their conference (bridge `login`)."""
    return await c.ctx.command(
        "login", {"agent_id": c.me, "timeout": LOGIN_WAIT_S}, timeout=LOGIN_WAIT_S + 5
    )


async def phone_logout(c: Call) -> Any:
    return await c.ctx.command("logout", {"agent_id": c.me})


async def ready(c: Call) -> Any:
    """Ready / Not Ready. The voice channel is the bridge's (`ready` / `not_ready`: only a
    session in its conference can be Ready, and the bridge sets both channels). The
    outbound preview channel (push preview) is set here alone, only while the session is
    up."""
    channel, on = c.body["channel"], c.body["ready"]
    if channel == "voice":
        out = await c.ctx.command("ready" if on else "not_ready", {"agent_id": c.me})
        return {**out, "channel": "voice"}
    key = live.agent_key(c.me)
    ok = await c.ctx.aredis.eval(
        _SET_PREVIEW_READY, 1, key, "1" if on else "0", f"{time.time():.3f}"
    )
    if not int(ok):
        raise Conflict(f"agent {c.me} has no phone session: log in the phone first")
    await c.ctx.aredis.xadd(
        names.KEY_EVENTS,
        {
            "event": "agent_ready" if on else "agent_not_ready",
            "agent_id": c.me,
            "channel": "preview",
            "reason": "page",
        },
        maxlen=notify.EVENTS_MAXLEN,
        approximate=True,
    )
    return {"agent_id": c.me, "channel": "preview", "ready": on}


def _me(c: Call) -> dict[str, Any]:
    with c.ctx.factory() as s:
        a = get_agent(s, c.me)
        agent = {
            "id": a.id,
            "name": a.name,
            "extension": a.extension,
            "role": a.role.value,
            "timezone": a.timezone,
        }
    state = live.decode(c.ctx.redis.hgetall(live.agent_key(c.me)))
    return {
        "agent": agent,
        "live": {
            "session": state.get("session", "ended"),
            "ready_voice": state.get("ready_voice") == "1",
            "ready_preview": state.get("ready_preview") == "1",
            "preview_stopped": state.get(live.PREVIEW_STOPPED) == "1",
            "reason": state.get("reason", ""),
            "since": float(state["ts"]) if state.get("ts") else None,
        },
    }


async def me(c: Call) -> Any:
    return await c.ctx.blocking(_me, c)


def _campaigns(c: Call) -> dict[str, Any]:
    with c.ctx.factory() as s:
        return {"campaigns": notify.my_campaigns(s, c.me)}


async def campaigns(c: Call) -> Any:
    return await c.ctx.blocking(_campaigns, c)


async def notifications(c: Call) -> Any:
    return {"notifications": await c.ctx.blocking(notify.inbox, c.ctx.redis, c.me)}


async def ack(c: Call) -> Any:
    nid = c.params["notification_id"]
    if not await c.ctx.blocking(notify.ack, c.ctx.redis, c.me, nid):
        raise NotFound(f"no notification {nid} (already dismissed?)")
    return {"acknowledged": nid}


async def record(c: Call) -> Any:
    """Get record (preview): the next record of the campaign, leased to the agent."""
    cid = path_int(c.params["campaign_id"])
    if cid is None:
        raise NotFound(f"no campaign {c.params['campaign_id']}")
    return await c.ctx.blocking(get_record, c.ctx.factory, c.ctx.queue(cid), c.me, cid)


def current(s: Session, agent_id: str) -> Offer | CallAttempt | None:
    """The agent's current interaction: an open offer; else a live call; else a call in
    wrap-up (connected, ended, no disposition); else their last preview dial that was not
    answered and not yet marked done."""
    offer = s.scalar(
        select(Offer).where(Offer.agent_id == agent_id, Offer.state == OfferState.OPEN)
    )
    if offer is not None:
        return offer
    mine = select(CallAttempt).where(CallAttempt.agent_id == agent_id)
    newest = CallAttempt.created_at.desc()
    found = s.scalar(mine.where(CallAttempt.state != AttemptState.ENDED).order_by(newest).limit(1))
    if found is None:
        found = s.scalar(
            mine.where(
                CallAttempt.state == AttemptState.ENDED,
                CallAttempt.connected_at.is_not(None),
                CallAttempt.disposition.is_(None),
            )
            .order_by(newest)
            .limit(1)
        )
    if found is None:
        last = s.scalar(mine.order_by(newest).limit(1))
        dialed = last is not None and s.scalar(select(Offer.id).where(Offer.attempt_id == last.id))
        found = last if dialed and last is not None and last.disposition is None else None
    return found


def _interaction(c: Call) -> dict[str, Any]:
    with c.ctx.factory() as s:
        item = current(s, c.me)
        if item is None:
            return {"interaction": None}
        kind = "offer" if isinstance(item, Offer) else "call"
        return {"interaction": {"kind": kind, "case": case_info(s, item)}}


async def interaction(c: Call) -> Any:
    return await c.ctx.blocking(_interaction, c)

"""The supervisor dashboard: one JSON snapshot of the floor (`GET /api/admin/dashboard`)
and the page that shows it (`GET /supervisor`).

The snapshot is read, never stored: agents' live state from their Redis hashes
(outbound.live), calls from the attempt rows (the truth the dialers use), queue depth
from each campaign's dial queue, abandonment from the same ledger predictive pacing uses
(`predictive.ledger`, so the dashboard and the pacer can never disagree about the rate),
callbacks from their rows. Every query is bounded by campaigns, agents or live calls,
never by contacts: a fixed number of grouped queries plus one ledger query per listed
campaign, and one Redis pipeline for all agents.

"Today" is the UTC day, as in the abandon ledger. The answer rate today is live answers
(connected to an agent, or abandoned) over finished dials placed today (cancelled dials
left out), the same definition the pacer's answer-rate estimate uses.

The page polls the JSON endpoint every 2 s rather than listening to a stream: what it
shows is an aggregate (rates, depths, durations) that has to be re-read whole after any
change anyway, so an event stream would only be a trigger for the same read, at the cost
of a long-lived connection per open dashboard and a second code path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from outbound import live
from outbound.campaigns.predictive import ledger
from outbound.dial_queue import Depth
from outbound.model import (
    Agent,
    AgentRole,
    AttemptState,
    CallAttempt,
    Callback,
    CallbackState,
    CallResult,
    Campaign,
    CampaignState,
    utcnow,
)
from outbound.model.tables import Offer, OfferState

from .auth import COOKIE
from .context import Ctx
from .http import Call

REFRESH_S = 2
CALLBACK_HORIZON = timedelta(hours=1)
MAX_CALLS = 500  # live calls listed (every one is counted)
MAX_CALLBACKS = 200  # callbacks listed (every one is counted per campaign)
QUEUED_STATES = (CampaignState.LOADED, CampaignState.RUNNING, CampaignState.STOPPED)
PAGE = "/supervisor"
LOGIN_URL = f"/?next={PAGE}"

_HERE = Path(__file__).parent
_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
PATHS = frozenset({PAGE, *(f"{PAGE}/{name}" for name in _ASSETS)})
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# ------------------------------------------------------------------ pure helpers


def mask(number: str) -> str:
    """A phone number with every digit but the last 4 hidden (a supervisor needs to tell
    calls apart, not to read numbers off the wall screen)."""
    digits = sum(ch.isdigit() for ch in number)
    out, seen = [], 0
    for ch in number:
        if ch.isdigit():
            seen += 1
            out.append(ch if seen > digits - 4 else "•")
        else:
            out.append(ch)
    return "".join(out)


def rate(part: int, whole: int) -> float | None:
    """part / whole, rounded for display; None when there is nothing to divide by (no
    dials is not a 0 % answer rate)."""
    return round(part / whole, 4) if whole else None


def seconds(now: datetime, since: datetime | None) -> int | None:
    return None if since is None else max(0, int((now - since).total_seconds()))


def iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def agent_status(h: dict[str, str]) -> str:
    """The one word a supervisor reads: Logged out / Logging in / Ready / Not ready
    (Ready on the voice channel, the one calls are given on)."""
    session = h.get("session", "ended")
    if session == "logging_in":
        return "Logging in"
    if session != "up":
        return "Logged out"
    return "Ready" if h.get("ready_voice") == "1" else "Not ready"


def day_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


@dataclass(frozen=True)
class Activity:
    """What an agent is doing, from the attempt and offer rows."""

    kind: str  # in_call | dialing | wrap_up | offer
    since: datetime | None
    attempt_id: str | None = None


# Which activity wins when an agent has several rows (a stale wrap-up under a new call).
_RANK = {"in_call": 0, "dialing": 1, "wrap_up": 2, "offer": 3}


def _keep(out: dict[str, Activity], agent: str | None, act: Activity) -> None:
    if agent is None:
        return
    old = out.get(agent)
    if old is None or _RANK[act.kind] < _RANK[old.kind]:
        out[agent] = act


# ------------------------------------------------------------------ the queries


def activities(s: Session) -> dict[str, Activity]:
    """Agent -> activity: live calls, wrap-ups (connected, ended, no disposition: the
    same rule `agent_is_free` uses) and open offers; three queries for all agents."""
    out: dict[str, Activity] = {}
    live_rows = s.execute(
        select(
            CallAttempt.agent_id,
            CallAttempt.id,
            CallAttempt.connected_at,
            CallAttempt.originated_at,
            CallAttempt.created_at,
        ).where(CallAttempt.agent_id.is_not(None), CallAttempt.state != AttemptState.ENDED)
    )
    for agent, aid, connected, originated, created in live_rows:
        if connected is not None:
            _keep(out, agent, Activity("in_call", connected, aid))
        else:
            _keep(out, agent, Activity("dialing", originated or created, aid))
    wrap_rows = s.execute(
        select(CallAttempt.agent_id, CallAttempt.id, CallAttempt.ended_at).where(
            CallAttempt.agent_id.is_not(None),
            CallAttempt.state == AttemptState.ENDED,
            CallAttempt.connected_at.is_not(None),
            CallAttempt.disposition.is_(None),
        )
    )
    for agent, aid, ended in wrap_rows:
        _keep(out, agent, Activity("wrap_up", ended, aid))
    offers = s.execute(
        select(Offer.agent_id, Offer.created_at).where(Offer.state == OfferState.OPEN)
    )
    for agent, created in offers:
        _keep(out, agent, Activity("offer", created))
    return out


def agents(s: Session, redis: Any, now: datetime) -> list[dict[str, Any]]:
    """Every agent (role agent) and every supervisor with a phone session, with live state
    (one Redis pipeline) and activity."""
    rows = s.execute(select(Agent.id, Agent.name, Agent.role).order_by(Agent.name, Agent.id)).all()
    pipe = redis.pipeline(transaction=False)
    for agent_id, _, _ in rows:
        pipe.hgetall(live.agent_key(agent_id))
    states = [live.decode(h) for h in pipe.execute()]
    acts = activities(s)
    out = []
    for (agent_id, name, role), h in zip(rows, states, strict=True):
        if role is not AgentRole.AGENT and h.get("session") != "up":
            continue
        ts = float(h["ts"]) if h.get("ts") else None
        act = acts.get(agent_id)
        out.append(
            {
                "id": agent_id,
                "name": name,
                "session": h.get("session", "ended"),
                "status": agent_status(h),
                "ready_voice": h.get("ready_voice") == "1",
                "ready_preview": h.get("ready_preview") == "1",
                "reason": h.get("reason", ""),
                "since": iso(datetime.fromtimestamp(ts, UTC)) if ts else None,
                "since_s": max(0, int(now.timestamp() - ts)) if ts else None,
                "activity": act.kind if act else "idle",
                "activity_since": iso(act.since) if act else None,
                "activity_s": seconds(now, act.since) if act else None,
                "attempt_id": act.attempt_id if act else None,
            }
        )
    return out


def calls(s: Session, now: datetime) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Calls in progress (oldest first, at most MAX_CALLS) and the count per campaign."""
    counts = dict(
        s.execute(
            select(CallAttempt.campaign_id, func.count())
            .where(CallAttempt.state != AttemptState.ENDED)
            .group_by(CallAttempt.campaign_id)
        ).all()
    )
    rows = s.execute(
        select(
            CallAttempt.id,
            CallAttempt.campaign_id,
            Campaign.name,
            CallAttempt.agent_id,
            Agent.name,
            CallAttempt.e164,
            CallAttempt.state,
            CallAttempt.created_at,
            CallAttempt.originated_at,
            CallAttempt.connected_at,
        )
        .join(Campaign, Campaign.id == CallAttempt.campaign_id)
        .outerjoin(Agent, Agent.id == CallAttempt.agent_id)
        .where(CallAttempt.state != AttemptState.ENDED)
        .order_by(CallAttempt.created_at, CallAttempt.id)
        .limit(MAX_CALLS)
    ).all()
    out = [
        {
            "attempt_id": aid,
            "campaign_id": cid,
            "campaign": cname,
            "agent_id": agent,
            "agent": agent_name,
            "number": mask(e164),
            "state": state.value,
            "started": iso(originated or created),
            "duration_s": seconds(now, originated or created),
            "talk_s": seconds(now, connected),
        }
        for aid, cid, cname, agent, agent_name, e164, state, created, originated, connected in rows
    ]
    return out, {int(k): int(v) for k, v in counts.items()}


def answers_today(s: Session, now: datetime, ids: list[int]) -> dict[int, tuple[int, int]]:
    """Campaign -> (finished dials, live answers) among the dials placed today (naming the
    campaigns lets the database use its (campaign, created) index)."""
    is_live = or_(CallAttempt.connected_at.is_not(None), CallAttempt.result == CallResult.ABANDONED)
    rows = s.execute(
        select(CallAttempt.campaign_id, func.count(), func.sum(case((is_live, 1), else_=0)))
        .where(
            CallAttempt.campaign_id.in_(ids),
            CallAttempt.created_at >= day_start(now),
            CallAttempt.state == AttemptState.ENDED,
            CallAttempt.originated_at.is_not(None),
            CallAttempt.result.is_not(None),
            CallAttempt.result != CallResult.CANCELLED,
        )
        .group_by(CallAttempt.campaign_id)
    ).all()
    return {int(cid): (int(n), int(lv or 0)) for cid, n, lv in rows}


def callbacks(s: Session, now: datetime) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Callbacks due before now + 1 h that have not been dialed yet: pending ones (overdue
    included: the scheduler has not fired them yet) and queued ones (fired, waiting in
    the dial queue or offered). Soonest first, at most MAX_CALLBACKS; counted per campaign."""
    due = (
        Callback.state.in_((CallbackState.PENDING, CallbackState.QUEUED)),
        Callback.due_at < now + CALLBACK_HORIZON,
    )
    counts = dict(
        s.execute(
            select(Callback.campaign_id, func.count()).where(*due).group_by(Callback.campaign_id)
        ).all()
    )
    rows = s.execute(
        select(
            Callback.id,
            Callback.campaign_id,
            Campaign.name,
            Callback.due_at,
            Callback.personal,
            Callback.agent_id,
            Agent.name,
            Callback.state,
        )
        .join(Campaign, Campaign.id == Callback.campaign_id)
        .outerjoin(Agent, Agent.id == Callback.agent_id)
        .where(*due)
        .order_by(Callback.due_at, Callback.id)
        .limit(MAX_CALLBACKS)
    ).all()
    out = [
        {
            "id": cb_id,
            "campaign_id": cid,
            "campaign": cname,
            "due_at": iso(due_at),
            "overdue": due_at <= now,
            "personal": personal,
            "agent_id": agent if personal else None,
            "agent": agent_name if personal else None,
            "state": state.value,
        }
        for cb_id, cid, cname, due_at, personal, agent, agent_name, state in rows
    ]
    return out, {int(k): int(v) for k, v in counts.items()}


def abandonment(s: Session, campaign_id: int, today: date, target: float) -> dict[str, Any]:
    """Today's and the rolling 30 days' abandon rate against the campaign's target, from
    the pacer's own ledger."""
    b = ledger(s, campaign_id, today, target).budget(today)
    within_today = b.rate_today <= target
    within_30d = b.rate_30d <= target
    return {
        "target": target,
        "answered_today": b.answered_today,
        "abandoned_today": b.abandoned_today,
        "rate_today": rate(b.abandoned_today, b.answered_today),
        "answered_30d": b.answered_30d,
        "abandoned_30d": b.abandoned_30d,
        "rate_30d": rate(b.abandoned_30d, b.answered_30d),
        "within_target_today": within_today,
        "within_target_30d": within_30d,
        "within_target": within_today and within_30d,
    }


def _queue(depth: Depth | None) -> dict[str, int] | None:
    if depth is None:
        return None
    return {
        "waiting": depth.waiting,
        "top": depth.top,
        "queued": depth.queued,
        "later": depth.later,
        "leased": depth.leased,
    }


def campaigns(
    s: Session,
    depth_of: Callable[[int], Depth],
    now: datetime,
    live_calls: dict[int, int],
    due_callbacks: dict[int, int],
) -> list[dict[str, Any]]:
    """Every campaign not unloaded, by name: state, mode, queue depth (loaded, running or
    stopped ones: the others have no queue), calls, answer and abandon rates."""
    rows = s.execute(
        select(Campaign.id, Campaign.name, Campaign.state, Campaign.mode, Campaign.abandon_target)
        .where(Campaign.state != CampaignState.UNLOADED)
        .order_by(Campaign.name)
    ).all()
    answers = answers_today(s, now, [row[0] for row in rows]) if rows else {}
    out = []
    for cid, name, state, mode, target in rows:
        dials, answered = answers.get(cid, (0, 0))
        out.append(
            {
                "id": cid,
                "name": name,
                "state": state.value,
                "mode": mode.value,
                "queue": _queue(depth_of(cid) if state in QUEUED_STATES else None),
                "calls": live_calls.get(cid, 0),
                "dials_today": dials,
                "live_answers_today": answered,
                "answer_rate_today": rate(answered, dials),
                "abandon": abandonment(s, cid, now.date(), float(target)),
                "callbacks_next_hour": due_callbacks.get(cid, 0),
            }
        )
    return out


def snapshot(
    s: Session, redis: Any, depth_of: Callable[[int], Depth], now: datetime
) -> dict[str, Any]:
    """The whole dashboard at `now` (aware UTC)."""
    call_rows, live_calls = calls(s, now)
    cb_rows, due_callbacks = callbacks(s, now)
    return {
        "now": iso(now),
        "today": now.date().isoformat(),
        "refresh_s": REFRESH_S,
        "agents": agents(s, redis, now),
        "calls": call_rows,
        "calls_total": sum(live_calls.values()),
        "campaigns": campaigns(s, depth_of, now, live_calls, due_callbacks),
        "callbacks": {
            "horizon_s": int(CALLBACK_HORIZON.total_seconds()),
            "total": sum(due_callbacks.values()),
            "per_campaign": {str(k): v for k, v in sorted(due_callbacks.items())},
            "due": cb_rows,
        },
    }


# ------------------------------------------------------------------ the web side


def _read(ctx: Ctx) -> dict[str, Any]:
    with ctx.factory() as s:
        return snapshot(s, ctx.redis, lambda cid: ctx.queue(cid).depth(), utcnow())


async def api(c: Call) -> Any:
    """GET /api/admin/dashboard (the route table lets supervisors only in)."""
    return await c.ctx.blocking(_read, c.ctx)


_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def render(**values: Any) -> str:
    return _templates.get_template("dashboard.html").render(**values)


def page_routes(ctx: Ctx) -> list[Route]:
    """GET /supervisor (the page) and its script and style sheet. The page itself holds no
    data: its script reads /api/admin/dashboard, so the API's checks are the only ones."""

    async def page(request: Request) -> Response:
        who = await ctx.sessions.lookup(request.cookies.get(COOKIE))
        if who is None:
            return RedirectResponse(LOGIN_URL, status_code=303, headers=HEADERS)
        if who.role != AgentRole.SUPERVISOR.value:
            html = render(forbidden=True, me=who.agent_id, csrf=who.csrf, refresh_s=REFRESH_S)
            return HTMLResponse(html, status_code=403, headers=HEADERS)
        html = render(forbidden=False, me=who.agent_id, csrf=who.csrf, refresh_s=REFRESH_S)
        return HTMLResponse(html, headers=HEADERS)

    def asset(name: str) -> Route:
        async def serve(request: Request) -> Response:
            return FileResponse(
                _HERE / "static" / name,
                media_type=_ASSETS[name],
                headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
            )

        return Route(f"{PAGE}/{name}", serve, methods=["GET"])

    return [Route(PAGE, page, methods=["GET"]), *(asset(n) for n in _ASSETS)]


class SupervisorPage:
    """ASGI middleware: GET / HEAD of /supervisor and of its two files are answered here,
    every other request by the app behind it. A layer rather than routes of the app: the
    app's routes are the JSON API, each one documented in /openapi.json (a unit test holds
    them to that), and this page is not part of the API."""

    def __init__(self, app: ASGIApp, ctx: Ctx) -> None:
        self.app = app
        self.page = Starlette(routes=page_routes(ctx))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        mine = (
            scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and scope["path"] in PATHS
        )
        await (self.page if mine else self.app)(scope, receive, send)

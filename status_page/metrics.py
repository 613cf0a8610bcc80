"""`GET /metrics` in the Prometheus text exposition format (0.0.4), and the component
checks `/healthz` shares with it.

Everything is read at scrape time, never stored: the attempt rows, the pacer's abandon
ledger (`predictive.ledger`, the same numbers the dashboard shows and the pacer obeys),
the dial queues, agents' live state (the dashboard's own reader), callbacks, and the
bridges' heartbeats in Redis. The work of one scrape is a fixed number of grouped queries
plus, per campaign that is not unloaded, one ledger query and one dial-queue read: it grows
with campaigns, never with contacts or calls.

`outbound_calls_total` counts the dials placed since 00:00 UTC (the day the abandon
ledger and the dashboard use) that have a result: a counter that restarts at midnight,
which `rate()` and `increase()` treat as a counter reset. Counting every attempt ever
made would scan the whole table on every scrape; today's rows come off the
(campaign, created) index.

Who may scrape is [web] metrics: `on` (whoever reaches the port: loopback by default),
`off` (404), or a token the scraper sends as `Authorization: Bearer <token>`."""

from __future__ import annotations

import hmac
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session
from starlette.responses import Response

from outbound import names
from outbound.campaigns.predictive import ledger
from outbound.model import CallAttempt, Callback, CallbackState, Campaign, CampaignState, utcnow

from . import dashboard
from .context import Ctx
from .http import Call, error

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The bridges' heartbeats (ami_bridge/service.py writes them every second; the name
# belongs in outbound/names.py, which both sides would then import).
HEARTBEATS_KEY = names.KEY_BRIDGE_HEARTBEATS
STALE_S = 10.0  # a heartbeat older than this: the bridge is gone or stuck
AGENT_STATES = {
    "Ready": "ready",
    "Not ready": "not_ready",
    "Logging in": "logging_in",
    "Logged out": "logged_out",
}
ACTIVITIES = ("in_call", "dialing", "wrap_up", "offer", "idle")


# ------------------------------------------------------------------ component health


@dataclass(frozen=True)
class BridgeHealth:
    """One bridge's AMI connection as its last heartbeat tells it."""

    server: str
    up: bool
    age_s: float  # since the heartbeat was written
    pong_age_s: float | None  # since Asterisk last answered a Ping, as of the heartbeat
    problem: str | None


def bridges(raw: Mapping[Any, Any], now: float) -> list[BridgeHealth]:
    """Each bridge's health from the heartbeat hash (HGETALL), by server name. Up means a
    fresh heartbeat that says the AMI connection is healthy."""
    out = []
    for key, value in raw.items():
        server = key.decode() if isinstance(key, bytes) else str(key)
        try:
            rec = json.loads(value)
            age = max(0.0, now - float(rec["ts"]))
        except (ValueError, KeyError, TypeError):
            out.append(BridgeHealth(server, False, math.inf, None, "unreadable heartbeat"))
            continue
        pong = rec.get("pong_age")
        problem = None
        if age > STALE_S:
            problem = f"no heartbeat for {age:.0f} s (bridge down?)"
        elif not rec.get("healthy"):
            problem = f"AMI not connected: {rec.get('last_error') or 'connecting'}"
        out.append(
            BridgeHealth(server, problem is None, age, float(pong) if pong else None, problem)
        )
    return sorted(out, key=lambda b: b.server)


def sweep_stale_after(config: Any) -> float:
    """How old the scheduler's last sweep may be: a few beats of a sweep that used its
    whole budget."""
    sched = config.values["scheduler"]
    return 3 * (float(sched["sweep_interval"]) + float(sched["sweep_budget"]))


def sweep_age(raw: Any, now: float) -> float | None:
    """Seconds since the scheduler's last sweep ended (its reconcile mark), None if no
    sweep was ever recorded (no scheduler runs against this Redis)."""
    if raw is None:
        return None
    try:
        return max(0.0, now - float(raw))
    except ValueError:
        return None


# ------------------------------------------------------------------ exposition format


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if float(v).is_integer() and abs(v) < 2**53 else repr(float(v))


@dataclass
class Family:
    """One metric: its HELP, TYPE and samples (labels, value)."""

    name: str
    kind: str  # gauge | counter
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))

    def render(self) -> str:
        lines = [
            f"# HELP {self.name} {self.help.replace(chr(92), chr(92) * 2)}",
            f"# TYPE {self.name} {self.kind}",
        ]
        for labels, value in self.samples:
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{self.name}{{{inner}}} {_number(value)}" if inner else
                         f"{self.name} {_number(value)}")  # fmt: skip
        return "\n".join(lines) + "\n"


def render(families: Iterable[Family]) -> str:
    return "".join(f.render() for f in families)


# ------------------------------------------------------------------ the numbers


def _calls_today(s: Session, ids: list[int], since: datetime) -> list[tuple[int, str, int]]:
    if not ids:
        return []
    rows = s.execute(
        select(CallAttempt.campaign_id, CallAttempt.result, func.count())
        .where(
            CallAttempt.campaign_id.in_(ids),
            CallAttempt.created_at >= since,
            CallAttempt.result.is_not(None),
        )
        .group_by(CallAttempt.campaign_id, CallAttempt.result)
    ).all()
    return [(int(cid), str(result), int(n)) for cid, result, n in rows]


def _callbacks(s: Session, now: datetime) -> dict[int, tuple[int, int]]:
    overdue = func.sum(case((Callback.due_at <= now, 1), else_=0))
    rows = s.execute(
        select(Callback.campaign_id, func.count(), overdue)
        .where(Callback.state == CallbackState.PENDING)
        .group_by(Callback.campaign_id)
    ).all()
    return {int(cid): (int(n), int(od or 0)) for cid, n, od in rows}


def collect(ctx: Ctx) -> list[Family]:
    """Every family but the scrape duration, read now (blocking: run it in a thread)."""
    now = utcnow()
    calls = Family(
        "outbound_calls_total",
        "counter",
        "Dials placed since 00:00 UTC that have a result, by campaign and result",
    )
    abandon = Family("outbound_abandon_rate", "gauge",
                     "Abandoned over live answers (the pacer's ledger), today or rolling 30 days; "
                     "absent without live answers")  # fmt: skip
    target = Family("outbound_abandon_target", "gauge", "The campaign's abandon-rate target")
    depth = Family(
        "outbound_dial_queue_depth",
        "gauge",
        "Records a lease would hand out now (top and due), by campaign",
    )
    leased = Family("outbound_dial_queue_leased", "gauge", "Records leased out, by campaign")
    later = Family(
        "outbound_dial_queue_later",
        "gauge",
        "Records queued with a due time still to come, by campaign",
    )
    agents = Family("outbound_agents", "gauge", "Agents by live state")
    activity = Family(
        "outbound_agents_activity",
        "gauge",
        "Agents by what they are doing (calls, wrap-up, offers)",
    )
    pending = Family(
        "outbound_callbacks_pending", "gauge", "Callbacks scheduled and not fired yet, by campaign"
    )
    overdue = Family(
        "outbound_callbacks_overdue",
        "gauge",
        "Pending callbacks already due (the scheduler has not fired them)",
    )
    with ctx.factory() as s:
        rows = s.execute(
            select(Campaign.id, Campaign.name, Campaign.state, Campaign.abandon_target)
            .where(Campaign.state != CampaignState.UNLOADED)
            .order_by(Campaign.name)
        ).all()
        names_of = {int(cid): str(name) for cid, name, _, _ in rows}
        for cid, result, n in _calls_today(s, list(names_of), dashboard.day_start(now)):
            calls.add(n, campaign=names_of[cid], result=result)
        for cid, name, state, tgt in rows:
            b = ledger(s, cid, now.date(), float(tgt)).budget(now.date())
            target.add(float(tgt), campaign=name)
            if b.answered_today:
                abandon.add(b.abandoned_today / b.answered_today, campaign=name, window="today")
            if b.answered_30d:
                abandon.add(b.abandoned_30d / b.answered_30d, campaign=name, window="30d")
            if state in dashboard.QUEUED_STATES:
                d = ctx.queue(cid).depth()
                depth.add(d.waiting, campaign=name)
                leased.add(d.leased, campaign=name)
                later.add(d.later, campaign=name)
        people = dashboard.agents(s, ctx.redis, now)
        for cid, (n, od) in sorted(_callbacks(s, now).items()):
            if cid in names_of:
                pending.add(n, campaign=names_of[cid])
                overdue.add(od, campaign=names_of[cid])
    for status, label in AGENT_STATES.items():
        agents.add(sum(a["status"] == status for a in people), state=label)
    for act in ACTIVITIES:
        activity.add(sum(a["activity"] == act for a in people), activity=act)
    return [calls, abandon, target, depth, leased, later, agents, activity, pending, overdue,
            *_health_families(ctx)]  # fmt: skip


def _health_families(ctx: Ctx) -> list[Family]:
    pipe = ctx.redis.pipeline(transaction=False)
    pipe.hgetall(HEARTBEATS_KEY)
    pipe.get(names.KEY_CALLBACKS_RECONCILED)
    beats, swept = pipe.execute()
    now = time.time()
    up = Family(
        "outbound_ami_up",
        "gauge",
        "1 while the bridge's heartbeat is fresh and its AMI connection healthy",
    )
    age = Family(
        "outbound_ami_heartbeat_age_seconds",
        "gauge",
        "Seconds since the bridge last wrote its heartbeat",
    )
    pong = Family(
        "outbound_ami_pong_age_seconds",
        "gauge",
        "Seconds since Asterisk last answered the bridge's Ping (as of the heartbeat)",
    )
    for b in bridges(beats, now):
        up.add(1 if b.up else 0, server=b.server)
        age.add(b.age_s, server=b.server)
        if b.pong_age_s is not None:
            pong.add(b.pong_age_s, server=b.server)
    out = [up, age, pong]
    last = sweep_age(swept, now)
    if last is not None:
        sweep = Family(
            "outbound_scheduler_last_sweep_age_seconds",
            "gauge",
            "Seconds since the scheduler's last callback sweep ended",
        )
        sweep.add(last)
        out.append(sweep)
    return out


# ------------------------------------------------------------------ the route


def allowed(ctx: Ctx, authorization: str | None) -> Response | None:
    """None when this request may scrape; else the answer to give."""
    mode = str(ctx.web("metrics"))
    if mode == "off":
        return error(404, "no such route")
    if mode == "on":
        return None
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), mode.encode()):
        return error(401, "send the metrics token as Authorization: Bearer <token>",
                     {"WWW-Authenticate": 'Bearer realm="metrics"'})  # fmt: skip
    return None


async def metrics(c: Call) -> Any:
    """GET /metrics."""
    refused = allowed(c.ctx, c.request.headers.get("authorization"))
    if refused is not None:
        return refused
    started = time.perf_counter()
    families = await c.ctx.blocking(collect, c.ctx)
    took = Family("outbound_scrape_duration_seconds", "gauge", "Time this scrape took")
    took.add(round(time.perf_counter() - started, 6))
    return Response(render([*families, took]), media_type=CONTENT_TYPE)

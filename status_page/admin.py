"""Supervisor endpoints (campaign lifecycle with agent notifications, "why is this
record (not) dialing?") and the unauthenticated health check.

A bridge's heartbeat stays in Redis when the bridge dies (it removes it only when stopped
cleanly), so /healthz keeps naming a crashed bridge until it runs again."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from starlette.responses import JSONResponse

from outbound import names
from outbound.campaigns.notify import transition_and_notify
from outbound.compliance import find_contact, why
from outbound.errors import NotFound
from outbound.model import Contact

from . import metrics
from .http import Call
from .schema import path_int

CHECK_TIMEOUT_S = 2.0  # a dependency that does not answer in this time counts as down


async def campaign_event(c: Call) -> Any:
    """load / start / stop / unload; members are notified of load and start."""
    ev, delivery = await c.ctx.blocking(
        transition_and_notify, c.ctx.factory, c.ctx.redis, c.params["name"], c.params["event"]
    )
    return {
        "campaign_id": ev.campaign_id,
        "campaign": ev.campaign,
        "event": ev.event,
        "old": ev.old.value,
        "new": ev.new.value,
        "notified": delivery.to_dict() if delivery is not None else None,
    }


def _why(c: Call) -> dict[str, Any]:
    ref = c.params["contact_id"].strip()
    with c.ctx.factory() as s:
        if ref.isdigit() and path_int(ref) is None:  # no such row id: only a contact key
            cid = s.scalar(select(Contact.id).where(Contact.external_key == ref).limit(1))
            if cid is None:
                raise NotFound(f"no contact with id or key {ref!r}")
        else:
            cid = find_contact(s, ref, c.query.get("campaign"))
        return why(s, cid, datetime.now(UTC)).to_dict()


async def contact_why(c: Call) -> Any:
    return await c.ctx.blocking(_why, c)


def _db_ok(c: Call) -> bool:
    with c.ctx.factory() as s:
        s.execute(text("SELECT 1"))
    return True


def _why_down(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


async def healthz(c: Call) -> Any:
    """Every component: database, Redis, each bridge's AMI connection (its heartbeat) and
    the scheduler's last sweep (when one was ever recorded). 200 when all are ok, else 503
    with `problems` naming each degraded one. Cheap: SELECT 1 and one Redis round trip."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    try:
        await asyncio.wait_for(c.ctx.blocking(_db_ok, c), CHECK_TIMEOUT_S)
        out["database"] = "ok"
    except Exception as exc:  # any failure means "not reachable" here
        out["database"] = f"degraded: {_why_down(exc)}"
        problems.append(f"database: {_why_down(exc)}")
    try:
        pipe = c.ctx.aredis.pipeline(transaction=False)
        pipe.ping()
        pipe.hgetall(metrics.HEARTBEATS_KEY)
        pipe.get(names.KEY_CALLBACKS_RECONCILED)
        _, beats, swept = await asyncio.wait_for(pipe.execute(), CHECK_TIMEOUT_S)
        out["redis"] = "ok"
    except Exception as exc:
        out["redis"] = f"degraded: {_why_down(exc)}"
        problems.append(f"redis: {_why_down(exc)}")
        beats, swept = {}, None  # unknown: not reported rather than guessed
    now = time.time()
    if beats:
        out["ami"] = {}
        for b in metrics.bridges(beats, now):
            out["ami"][b.server] = "ok" if b.problem is None else f"degraded: {b.problem}"
            if b.problem is not None:
                problems.append(f"ami {b.server}: {b.problem}")
    age = metrics.sweep_age(swept, now)
    if age is not None:
        if age <= metrics.sweep_stale_after(c.ctx.config):
            out["scheduler"] = "ok"
        else:
            out["scheduler"] = f"degraded: last sweep {age:.0f} s ago"
            problems.append(f"scheduler: last sweep {age:.0f} s ago (worker or beat down?)")
    if problems:
        return JSONResponse({"ok": False, **out, "problems": problems}, status_code=503)
    return JSONResponse({"ok": True, **out})

"""Supervisor endpoints (campaign lifecycle with agent notifications, "why is this
record (not) dialing?") and the unauthenticated health check."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from starlette.responses import JSONResponse

from outbound.campaigns.notify import transition_and_notify
from outbound.compliance import find_contact, why
from outbound.errors import NotFound
from outbound.model import Contact

from .http import Call
from .schema import path_int


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


async def healthz(c: Call) -> Any:
    """Database and Redis reachability; 503 naming what is down."""
    out: dict[str, str] = {}
    try:
        await c.ctx.blocking(_db_ok, c)
        out["database"] = "ok"
    except Exception as exc:  # any failure means "not reachable" here
        out["database"] = f"down: {type(exc).__name__}"
    try:
        await c.ctx.aredis.ping()
        out["redis"] = "ok"
    except Exception as exc:
        out["redis"] = f"down: {type(exc).__name__}"
    ok = all(v == "ok" for v in out.values())
    return JSONResponse({"ok": ok, **out}, status_code=200 if ok else 503)

"""Server-sent events for the agent's page: their own events from the bridge's event
stream (`names.KEY_EVENTS`) and their notifications (their inbox stream), live.

An event is the agent's when it names them (`agent_id`) or one of their calls: the
bridge's call progress events (ringing, answered, connected, ended) carry only the
attempt id, so the attempts of the agent are learned from the events that name both (and
read from the database at connection time for calls already under way). A pooled
callback that comes due (`callback_due` without an agent) is every member's news.

Each message's id is "<events stream id>,<inbox stream id>": a browser reconnecting with
Last-Event-ID continues from both positions and misses nothing Redis still holds. A
connection is bounded ([web] sse_max seconds) so that a proxy or a forgotten tab never
holds it forever; a comment line every [web] sse_heartbeat seconds keeps it open."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import select
from starlette.responses import StreamingResponse

from outbound import names
from outbound.model import AgentCampaign, AttemptState, CallAttempt

from .context import ApiError
from .http import Call

_POSITION = re.compile(r"^(\d{1,20}-\d{1,20}),(\d{1,20}-\d{1,20})\Z")
POLL_S = 1.0  # each XREAD blocks at most this long (below any client socket timeout)
RETRY_MS = 3000


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _live_attempts(c: Call) -> set[str]:
    with c.ctx.factory() as s:
        return set(
            s.scalars(
                select(CallAttempt.id).where(
                    CallAttempt.agent_id == c.me, CallAttempt.state != AttemptState.ENDED
                )
            )
        )


def _campaign_ids(c: Call) -> set[str]:
    with c.ctx.factory() as s:
        return {
            str(i)
            for i in s.scalars(
                select(AgentCampaign.campaign_id).where(AgentCampaign.agent_id == c.me)
            )
        }


async def _last_id(c: Call, key: str) -> str:
    got = await c.ctx.aredis.xrevrange(key, count=1)
    return _text(got[0][0]) if got else "0-0"


def _message(pos: dict[str, str], keys: tuple[str, str], kind: str, data: dict[str, Any]) -> str:
    return (
        f"id: {pos[keys[0]]},{pos[keys[1]]}\nevent: {kind}\n"
        f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
    )


def _notification(sid: str, f: dict[str, str]) -> dict[str, Any]:
    """An inbox entry in the shape of GET /api/notifications."""
    try:
        actions = json.loads(f.get("actions", "[]"))
    except ValueError:
        actions = []
    return {
        "id": sid,
        **{k: f.get(k, "") for k in ("kind", "campaign", "mode", "delivery_mode", "description")},
        "campaign_id": int(f["campaign_id"]) if f.get("campaign_id", "").isdigit() else None,
        "actions": actions,
        "at": f.get("at", ""),
    }


async def events(c: Call) -> Any:
    """The agent's live events (text/event-stream)."""
    keys = (names.KEY_EVENTS, names.key_agent_inbox(c.me))
    last = c.request.headers.get("last-event-id") or c.query.get("last_event_id")
    if last:
        m = _POSITION.match(last)
        if m is None:
            raise ApiError(422, "Last-Event-ID is not one of this stream's ids")
        pos = {keys[0]: m.group(1), keys[1]: m.group(2)}
    else:
        pos = {k: await _last_id(c, k) for k in keys}
    mine = await c.ctx.blocking(_live_attempts, c)
    member_of = await c.ctx.blocking(_campaign_ids, c)
    end = time.monotonic() + float(c.ctx.web("sse_max"))
    beat = float(c.ctx.web("sse_heartbeat"))

    async def stream() -> AsyncIterator[str]:
        yield f"retry: {RETRY_MS}\n\n"
        sent = time.monotonic()
        while (left := end - time.monotonic()) > 0:
            streams: dict[Any, Any] = dict(pos)
            got: Any = await c.ctx.aredis.xread(
                streams, count=100, block=max(1, int(min(POLL_S, left) * 1000))
            )
            for key, entries in got or []:
                key = _text(key)
                for sid, raw in entries:
                    pos[key] = _text(sid)
                    f = {_text(k): _text(v) for k, v in raw.items()}
                    if key == keys[1]:
                        yield _message(pos, keys, "notification", _notification(pos[key], f))
                        sent = time.monotonic()
                        continue
                    aid = f.get("attempt_id", "")
                    if f.get("agent_id") == c.me and aid:
                        mine.add(aid)
                    pooled = (
                        f.get("event") == "callback_due"
                        and not f.get("agent_id")
                        and f.get("campaign_id") in member_of
                    )
                    if f.get("agent_id") == c.me or (aid and aid in mine) or pooled:
                        yield _message(pos, keys, f.get("event", "event"), {"id": pos[key], **f})
                        sent = time.monotonic()
            if time.monotonic() - sent >= beat:
                yield ": heartbeat\n\n"
                sent = time.monotonic()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )

"""Live agent state in Redis (rebuildable: a bridge restart re-derives sessions from
Asterisk). One hash per agent: session (up / logging_in / ended), ready (0/1 per channel),
the reason of the last change and when."""

from __future__ import annotations

import time
from typing import Any

from . import names


def agent_key(agent_id: str) -> str:
    return f"{names.REDIS_PREFIX}agent:{agent_id}"


def agent_fields(session: str, *, ready: bool | None = None, reason: str = "") -> dict[Any, Any]:
    out: dict[Any, Any] = {"session": session, "reason": reason, "ts": f"{time.time():.3f}"}
    if ready is not None:
        out["ready_voice"] = "1" if ready else "0"
        out["ready_preview"] = "1" if ready else "0"
    return out


def decode(h: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in h.items()
    }


# "Done and stop" (preview): the agent gets no new preview record, neither the automatic
# next one after "mark done" nor a pushed one, until they ask with "get record" again.
# Live state only: lost with Redis, the agent simply gets records again.
PREVIEW_STOPPED = "preview_stopped"


def set_preview_stopped(redis: Any, agent_id: str, stopped: bool) -> None:
    """Set or clear the agent's "done and stop" flag in their hash."""
    redis.hset(agent_key(agent_id), PREVIEW_STOPPED, "1" if stopped else "0")


def preview_stopped(redis: Any, agent_id: str) -> bool:
    """True after "done and stop" until the agent's next "get record"."""
    v = redis.hget(agent_key(agent_id), PREVIEW_STOPPED)
    return v in (b"1", "1")


def is_ready(redis: Any, agent_id: str, channel: str = "voice") -> bool:
    """The agent's Ready flag for a channel ("voice", or "preview": the outbound preview
    channel push preview needs), as the bridge last wrote it."""
    v = redis.hget(agent_key(agent_id), f"ready_{channel}")
    return v in (b"1", "1")

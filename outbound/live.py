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

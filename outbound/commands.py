"""Commands to the AMI bridge that owns a call, and their results.

Commands travel on a Redis stream per Asterisk server (`outbound:commands:<server>`), read
by the bridge through a consumer group, so a command sent while the bridge restarts is
delivered when it is back. Each result is pushed to a reply list the sender waits on with a
deadline. A command runs at most once: the bridge marks its id done before acting, so a
redelivery after a crash is answered "already handled" instead of being run twice (a
repeated dial or transfer is worse than a lost one, which the sender sees as a timeout).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from . import names
from .errors import OutboundError

GROUP = "bridge"
REPLY_TTL_S = 120
DONE_TTL_S = 24 * 3600


class CommandTimeout(OutboundError):
    """The bridge did not answer in time (down, or busy); the command may still run once."""


class CommandFailed(OutboundError):
    """The bridge answered with an error (e.g. the call no longer exists)."""


@dataclass(frozen=True)
class Command:
    id: str
    kind: str
    args: dict[str, Any]

    def encode(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind, "args": json.dumps(self.args)}

    @classmethod
    def decode(cls, fields: dict[Any, Any]) -> Command:
        f = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        return cls(id=f["id"], kind=f["kind"], args=json.loads(f.get("args") or "{}"))


def reply_key(command_id: str) -> str:
    return f"{names.REDIS_PREFIX}reply:{command_id}"


def done_key(command_id: str) -> str:
    return f"{names.REDIS_PREFIX}cmddone:{command_id}"


def send_command(
    redis: Any, server: str, kind: str, args: dict[str, Any] | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """Put a command on the server's stream and wait for its result (sync redis client).
    Raises CommandFailed with the bridge's message, or CommandTimeout."""
    cmd = Command(id=uuid.uuid4().hex, kind=kind, args=args or {})
    redis.xadd(names.key_commands(server), cmd.encode(), maxlen=100_000, approximate=True)
    got = redis.blpop([reply_key(cmd.id)], timeout=max(1, int(timeout + 0.999)))
    if got is None:
        raise CommandTimeout(
            f"{kind}: no answer from the bridge of server {server!r} within {timeout:.0f} s"
        )
    reply = json.loads(got[1])
    if not reply.get("ok"):
        raise CommandFailed(f"{kind}: {reply.get('error', 'failed')}")
    return dict(reply.get("result") or {})

"""Commands to the AMI bridge that owns a call, and their results.

Commands travel on a Redis stream per Asterisk server (`outbound:commands:<server>`), read
by the bridge through a consumer group, so a command sent while the bridge restarts is
delivered when it is back. Each result is pushed to a reply list the sender waits on with a
deadline. A command runs at most once: the bridge marks its id done before acting, so a
redelivery after a crash is answered "already handled" instead of being run twice (a
repeated dial or transfer is worse than a lost one, which the sender sees as a timeout).

A command also expires: the sender puts its deadline (epoch seconds, the moment it stops
waiting) into the args as `DEADLINE_ARG`, and the bridge refuses a command it reads after
that ("expired", logged). Without it, a command whose sender already gave up (a desk phone
that played its error beep) would still run when the bridge came back, minutes later: an
agent made ready, or logged out, long after being told it failed. The bridge compares with
its own clock, so the hosts' clocks must agree (NTP) to within a fraction of the timeout.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from . import names
from .errors import OutboundError

GROUP = "bridge"
REPLY_TTL_S = 120
DONE_TTL_S = 24 * 3600
DEADLINE_ARG = "_deadline"  # reserved arg: when the command expires (epoch seconds)
# A desk-phone code (*52-*54, agi_scripts.features): how long the bridge may take for it
# (a log out waits this long for Asterisk to report the leg's hangup), and how long the
# phone waits for the answer: longer, so the phone never reports a failure the bridge then
# turns into a success (a beep of error after a log out that worked).
PHONE_CODE_BRIDGE_S = 10.0
PHONE_CODE_WAIT_S = PHONE_CODE_BRIDGE_S + 3.0


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
        args = json.loads(f.get("args") or "{}")
        if not isinstance(args, dict):
            raise ValueError("command args must be a JSON object")
        return cls(id=f["id"], kind=f["kind"], args=args)


def reply_key(command_id: str) -> str:
    return f"{names.REDIS_PREFIX}reply:{command_id}"


def done_key(command_id: str) -> str:
    return f"{names.REDIS_PREFIX}cmddone:{command_id}"


def new_command(kind: str, args: dict[str, Any] | None, timeout: float) -> Command:
    """A command that expires when its sender stops waiting (now + `timeout`)."""
    return Command(
        id=uuid.uuid4().hex, kind=kind, args={**(args or {}), DEADLINE_ARG: time.time() + timeout}
    )


def deadline_of(cmd: Command) -> float | None:
    """The command's deadline; None for one without (sent by an older sender)."""
    raw = cmd.args.get(DEADLINE_ARG)
    if raw is None:
        return None
    try:
        return float(raw)
    except (TypeError, ValueError):
        return 0.0  # a deadline nobody can read has passed: refuse rather than run late


# The reply is awaited in BLPOPs of at most this long: redis-py gives every client a
# socket timeout (5 s by default), and a BLPOP that blocks longer than that ends in the
# client's TimeoutError instead of our CommandTimeout. Never below 10 ms, as a BLPOP
# timeout that Redis rounds to 0 would block forever.
REPLY_POLL_S = 1.0


def _poll(end: float) -> float | None:
    """The next BLPOP's timeout, None when the sender's time is up."""
    left = end - time.monotonic()
    return max(0.01, min(left, REPLY_POLL_S)) if left > 0 else None


def _result(kind: str, server: str, timeout: float, got: Any) -> dict[str, Any]:
    if got is None:
        raise CommandTimeout(
            f"{kind}: no answer from the bridge of server {server!r} within {timeout:.0f} s"
        )
    reply = json.loads(got[1])
    if not reply.get("ok"):
        raise CommandFailed(f"{kind}: {reply.get('error', 'failed')}")
    return dict(reply.get("result") or {})


def send_command(
    redis: Any, server: str, kind: str, args: dict[str, Any] | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """Put a command on the server's stream and wait for its result (sync redis client).
    Raises CommandFailed with the bridge's message, or CommandTimeout (the command then
    expires: a bridge that reads it later refuses it)."""
    cmd = new_command(kind, args, timeout)
    redis.xadd(names.key_commands(server), cmd.encode(), maxlen=100_000, approximate=True)
    end, got = time.monotonic() + timeout, None
    while got is None and (wait := _poll(end)) is not None:
        got = redis.blpop([reply_key(cmd.id)], timeout=wait)
    return _result(kind, server, timeout, got)


async def send_command_async(
    redis: Any, server: str, kind: str, args: dict[str, Any] | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """`send_command` for an asyncio Redis client (redis.asyncio.Redis): same stream,
    same deadline, same errors."""
    cmd = new_command(kind, args, timeout)
    await redis.xadd(names.key_commands(server), cmd.encode(), maxlen=100_000, approximate=True)
    end, got = time.monotonic() + timeout, None
    while got is None and (wait := _poll(end)) is not None:
        got = await redis.blpop([reply_key(cmd.id)], timeout=wait)
    return _result(kind, server, timeout, got)

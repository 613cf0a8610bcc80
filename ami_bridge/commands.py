"""The bridge's command consumer: reads the server's Redis stream (consumer group), runs each
command at most once through a handler, replies, acknowledges. Survives a restart: entries
delivered to this consumer but not acknowledged are read again first. A command read after
its deadline (`outbound.commands.DEADLINE_ARG`: its sender has given up and told its user
so) is refused, logged and answered "expired", never run; handlers never see the deadline."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from outbound import names
from outbound.commands import (
    DEADLINE_ARG,
    DONE_TTL_S,
    GROUP,
    REPLY_TTL_S,
    Command,
    deadline_of,
    done_key,
    reply_key,
)
from outbound.errors import OutboundError

from .connection import AmiError
from .control import NoSuchCall

__all__ = ["CommandConsumer", "NoSuchCall"]

log = logging.getLogger("ami_bridge.commands")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


class CommandConsumer:
    def __init__(self, redis: Redis, server: str, consumer: str = "bridge-1") -> None:
        self.redis = redis
        self.stream = names.key_commands(server)
        self.consumer = consumer
        self.handlers: dict[str, Handler] = {}
        self._stop = asyncio.Event()

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        """Consume until stop(). Redis outages are waited out with a back-off."""
        backlog = True  # first our own unacknowledged entries (a crash mid-command)
        delay = 0.2
        while not self._stop.is_set():
            try:
                await self._ensure_group()
                got: Any = await self.redis.xreadgroup(
                    GROUP,
                    self.consumer,
                    {self.stream: "0" if backlog else ">"},
                    count=50,
                    block=None if backlog else 1000,
                )
                delay = 0.2
                entries = got[0][1] if got else []
                if backlog and not entries:
                    backlog = False
                for entry_id, fields in entries:
                    await self._one(entry_id, fields)
            except (RedisError, OSError) as exc:
                log.warning("command stream unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
                backlog = True

    def stop(self) -> None:
        self._stop.set()

    async def _one(self, entry_id: Any, fields: dict[Any, Any]) -> None:
        try:
            cmd = Command.decode(fields)
        except (KeyError, ValueError):
            log.error("malformed command entry %s dropped", entry_id)
            await self.redis.xack(self.stream, GROUP, entry_id)
            return
        deadline = deadline_of(cmd)
        first = await self.redis.set(done_key(cmd.id), "1", nx=True, ex=DONE_TTL_S)
        if deadline is not None and time.time() > deadline:
            late = time.time() - deadline
            log.warning(
                "command %s (%s) read %.1f s after its deadline: expired, not run",
                cmd.kind,
                cmd.id,
                late,
            )
            reply: dict[str, Any] = {"ok": False, "error": f"expired {late:.0f} s ago, not run"}
        elif not first:
            reply = {"ok": False, "error": "already handled (redelivered)"}
        else:
            reply = await self.execute(cmd)
        await self.redis.rpush(reply_key(cmd.id), json.dumps(reply, default=str))
        await self.redis.expire(reply_key(cmd.id), REPLY_TTL_S)
        await self.redis.xack(self.stream, GROUP, entry_id)

    async def execute(self, cmd: Command) -> dict[str, Any]:
        handler = self.handlers.get(cmd.kind)
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd.kind!r}"}
        args = {k: v for k, v in cmd.args.items() if k != DEADLINE_ARG}
        try:
            result = await handler(args)
            return {"ok": True, "result": result or {}}
        except (OutboundError, AmiError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # never let one command kill the consumer
            log.exception("command %s failed", cmd.kind)
            return {"ok": False, "error": f"internal error: {type(exc).__name__}"}

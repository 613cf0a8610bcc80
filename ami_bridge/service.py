"""The bridge daemon for one Asterisk server: AMI connection, least-privilege check,
originator, command consumer, and a health record in Redis that expires if we die."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import redis.asyncio as aredis
from sqlalchemy.orm import Session, sessionmaker

from outbound import names
from outbound.config import Config

from .commands import CommandConsumer, NoSuchCall
from .connection import AmiConnection
from .originator import Originator
from .rights import ensure_least_privilege

log = logging.getLogger("ami_bridge.service")

HEALTH_TTL_S = 5


def health_key(server: str) -> str:
    return f"{names.REDIS_PREFIX}health:bridge:{server}"


class Bridge:
    def __init__(
        self,
        config: Config,
        factory: sessionmaker[Session],
        redis: aredis.Redis,
        *,
        consumer: str = "bridge-1",
    ) -> None:
        self.config = config
        self.server = str(config.get("dialer", "server"))
        self.ami = AmiConnection(
            config.get("ami", "host"),
            config.get("ami", "port"),
            config.get("ami", "username"),
            config.get("ami", "secret"),
            ping_interval=config.get("ami", "ping_interval"),
            action_timeout=config.get("ami", "action_timeout"),
        )
        self.redis = redis
        self.originator = Originator(
            self.ami,
            factory,
            server=self.server,
            trunk=config.get("dialer", "trunk"),
            ring_timeout=config.get("dialer", "ring_timeout"),
        )
        self.commands = CommandConsumer(redis, self.server, consumer)
        self.commands.register("dial", self._dial)
        self.commands.register("end", self._end)
        self._stop = asyncio.Event()

    async def _dial(self, args: dict[str, Any]) -> dict[str, Any]:
        aid = await self.originator.dial(
            int(args["contact_id"]),
            e164=args.get("number"),
            agent_id=args.get("agent_id"),
            caller_id=args.get("caller_id"),
        )
        return {"attempt_id": aid}

    async def channel_of(self, attempt_id: str) -> str:
        """The name of the channel Asterisk knows under this attempt id (ChannelId)."""
        for c in await self.ami.send_list("CoreShowChannels"):
            if c.get("Uniqueid") == attempt_id:
                return str(c.get("Channel"))
        raise NoSuchCall(f"call {attempt_id} does not exist (any more)")

    async def _end(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = await self.channel_of(str(args["attempt_id"]))
        await self.ami.send("Hangup", {"Channel": channel, "Cause": "16"})
        return {"ended": args["attempt_id"]}

    async def _health_loop(self) -> None:
        while not self._stop.is_set():
            rec = {
                "server": self.server,
                "healthy": self.ami.healthy,
                "last_error": self.ami.last_error,
                "connects": self.ami.connects,
                "ts": time.time(),
            }
            try:
                await self.redis.set(health_key(self.server), json.dumps(rec), ex=HEALTH_TTL_S)
            except Exception as exc:  # Redis down: keep running, the record expires
                log.warning("cannot publish health: %s", exc)
            try:
                await asyncio.wait_for(self._stop.wait(), 1.0)
            except TimeoutError:
                pass

    async def run(self, ready_timeout: float = 30) -> None:
        self.originator.start()
        await self.ami.start(wait=ready_timeout)
        await ensure_least_privilege(self.ami)
        tasks = [
            asyncio.ensure_future(self.commands.run()),
            asyncio.ensure_future(self._health_loop()),
        ]
        log.info("bridge for server %r running", self.server)
        try:
            await self._stop.wait()
        finally:
            self.commands.stop()
            for t in tasks:
                t.cancel()
            await self.originator.stop()
            await self.ami.close()

    def stop(self) -> None:
        self._stop.set()

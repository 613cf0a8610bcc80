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

from outbound import live, names
from outbound.agents import get_agent
from outbound.campaigns.interaction import record_dtmf
from outbound.config import Config
from outbound.errors import Conflict, NotFound
from outbound.model import CallAttempt

from .commands import CommandConsumer, NoSuchCall
from .connection import AmiActionFailed, AmiConnection
from .control import CallControl, DialTemplates, Interaction
from .dialer import Dialer
from .originator import CREATED_TTL_S, Originator
from .rights import ensure_least_privilege
from .sessions import AgentSession, AgentSessions, NotLoggedIn, SessionState

log = logging.getLogger("ami_bridge.service")

HEALTH_TTL_S = 5
EXPIRY_EVERY_S = 5.0  # how often unclaimed preview attempts are looked for
EXPIRY_TIMEOUT_S = 30.0  # the deadline of one such look


def health_key(server: str) -> str:
    return f"{names.REDIS_PREFIX}health:bridge:{server}"


# Every bridge's last heartbeat (field: server, value: the health record): unlike the
# expiring health key, a dead bridge's entry stays, so /healthz and /metrics can say it is
# gone; a bridge that stops cleanly removes its own. (Belongs in outbound/names.py.)
HEARTBEATS_KEY = names.KEY_BRIDGE_HEARTBEATS


def live_key(server: str) -> str:
    """The snapshot of Asterisk's channels, bridges and conferences at the last resync."""
    return f"{names.REDIS_PREFIX}live:{server}"


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
        self.dialer: Dialer | None = None  # the campaign engine ([dialer] engine = on)
        self.originator = Originator(
            self.ami,
            factory,
            server=self.server,
            trunk=config.get("dialer", "trunk"),
            ring_timeout=config.get("dialer", "ring_timeout"),
            on_call_event=self._call_event,
        )
        self.factory = factory
        self.control = CallControl(
            self.ami,
            DialTemplates(
                internal=config.get("dialer", "internal"),
                trunk=config.get("dialer", "trunk"),
                ring_timeout=min(300, int(config.get("dialer", "ring_timeout"))),
            ),
        )
        self.control.attach()
        self.sessions = AgentSessions(
            self.ami, on_session_end=self._session_end, on_session_up=self._session_up
        )
        self.sessions.attach()
        self.ami.on_ready(self._resync_snapshot)
        if config.get("dialer", "engine") == "on":
            self.dialer = Dialer(
                factory, redis, self.originator, self.sessions, server=self.server, worker=consumer
            )
            self.dialer.attach()
        self.commands = CommandConsumer(redis, self.server, consumer)
        for kind, handler in {
            "dial": self._dial,
            "end": self._end,
            "login": self._login,
            "logout": self._logout,
            "ready": self._ready(True),
            "not_ready": self._ready(False),
            "hold": self._call_action("hold"),
            "resume": self._call_action("resume"),
            "transfer": self._call_action("transfer", "target"),
            "conference": self._call_action("conference", "target"),
            "dtmf": self._call_action("send_dtmf", "digits"),
            "consult_start": self._call_action("consult", "target"),
            "consult_cancel": self._call_action("cancel_consult"),
            "consult_transfer": self._call_action("complete_transfer"),
            "consult_conference": self._call_action("complete_conference"),
        }.items():
            self.commands.register(kind, handler)
        self._stop = asyncio.Event()
        self._serving = False  # past the AMI rights check: the health key is published
        self._pending_events: set[asyncio.Task[None]] = set()
        self.created_ttl_s = CREATED_TTL_S  # unclaimed preview attempts end after this
        self.expiry_every_s = EXPIRY_EVERY_S

    # ------------------------------------------------------------ agent sessions
    async def _login(self, args: dict[str, Any]) -> dict[str, Any]:
        agent_id = str(args["agent_id"])

        def phone() -> str:
            with self.factory() as s:
                return get_agent(s, agent_id).extension

        ext = await asyncio.to_thread(phone)
        await self.redis.hset(
            live.agent_key(agent_id), mapping=live.agent_fields("logging_in", ready=False)
        )
        await self.sessions.login(agent_id, ext)
        sess = await self.sessions.wait_up(agent_id, timeout=float(args.get("timeout", 30)))
        await self.redis.hset(
            live.agent_key(agent_id), mapping=live.agent_fields("up", ready=False, reason="login")
        )
        return {"agent_id": agent_id, "channel_id": sess.channel_id}

    def _session_of(self, args: dict[str, Any]) -> AgentSession:
        """The live session a command is about: by `agent_id` (the agent's page) or by
        `phone` (a feature code dialled on the desk phone). NotLoggedIn if none."""
        if args.get("agent_id") is not None:
            sess = self.sessions.session(str(args["agent_id"]))
            if sess is None or sess.machine.terminal:
                raise NotLoggedIn(f"agent {args['agent_id']} is not logged in")
            return sess
        phone = str(args.get("phone", ""))
        found = self.sessions.on_phone(phone) if phone else None
        if found is None:
            raise NotLoggedIn(f"no agent is logged in on phone {phone!r}")
        return found

    async def _logout(self, args: dict[str, Any]) -> dict[str, Any]:
        agent_id = self._session_of(args).agent_id
        await self.sessions.logout(agent_id)
        await self.sessions.wait_ended(agent_id)
        return {"agent_id": agent_id}

    def _ready(self, ready: bool) -> Any:
        """ready / not_ready: the agent takes calls or not. Only a session in its
        conference can be ready (NotLoggedIn otherwise); the bridge writes live state,
        so the agent's page and a desk-phone code never race each other's writes."""

        async def handler(args: dict[str, Any]) -> dict[str, Any]:
            sess = self._session_of(args)
            if ready and sess.state is not SessionState.UP:
                raise NotLoggedIn(f"agent {sess.agent_id} is not in the conference ({sess.state})")
            reason = str(args.get("reason") or ("phone" if "phone" in args else "page"))[:40]
            await self.redis.hset(
                live.agent_key(sess.agent_id),
                mapping=live.agent_fields(sess.state.value, ready=ready, reason=reason),
            )
            self._publish(
                {
                    "event": "agent_ready" if ready else "agent_not_ready",
                    "agent_id": sess.agent_id,
                    "reason": reason,
                }
            )
            log.info("agent %s %s (%s)", sess.agent_id, "ready" if ready else "not ready", reason)
            return {"agent_id": sess.agent_id, "ready": ready}

        return handler

    async def _session_up(self, sess: AgentSession) -> None:
        """A session joined its conference. One a desk phone started (*51) was not
        announced by a login command: it is written up here, not ready until *52. One
        this bridge adopted on its resync (a session another worker or its own earlier
        run started) is announced already: its live state is kept, Ready included, or
        every worker joining would make the other workers' agents Not Ready."""
        if sess.origin == "phone" and not await self._announced(sess.agent_id):
            await self.redis.hset(
                live.agent_key(sess.agent_id),
                mapping=live.agent_fields("up", ready=False, reason="phone_login"),
            )
        self._publish(
            {"event": "agent_session_up", "agent_id": sess.agent_id, "origin": sess.origin}
        )

    async def _announced(self, agent_id: str) -> bool:
        """The agent's live state says a session is up: a session that comes up now is
        that one, adopted (a second leg for an agent with a live session is hung up, and
        an ended session is written "ended")."""
        state = await self.redis.hget(live.agent_key(agent_id), "session")
        return state in (b"up", "up")

    async def _session_end(self, agent_id: str, reason: str) -> None:
        """The phone hung up (or login failed, or logout): the agent is not ready."""
        await self.redis.hset(
            live.agent_key(agent_id), mapping=live.agent_fields("ended", ready=False, reason=reason)
        )
        self._publish({"event": "agent_session_ended", "agent_id": agent_id, "reason": reason})
        log.info("agent %s session ended (%s): not ready", agent_id, reason)

    # ------------------------------------------------------------ call actions
    async def _interaction(self, args: dict[str, Any]) -> Interaction:
        """The agent's interaction for this attempt; an agent acts only on their own."""
        attempt_id, agent_id = str(args["attempt_id"]), str(args["agent_id"])
        try:
            ix = self.control.get(attempt_id)
        except NoSuchCall:

            def owner() -> str | None:
                with self.factory() as s:
                    a = s.get(CallAttempt, attempt_id)
                    if a is None:
                        raise NotFound(f"call {attempt_id} does not exist")
                    return a.agent_id

            if await asyncio.to_thread(owner) != agent_id:
                raise Conflict(f"call {attempt_id} is not agent {agent_id}'s") from None
            ix = await self.control.open(agent_id, attempt_id, iid=attempt_id)
        if ix.agent_id != agent_id:
            raise Conflict(f"call {attempt_id} is not agent {agent_id}'s")
        return ix

    def _call_action(self, method: str, arg: str | None = None) -> Any:
        async def handler(args: dict[str, Any]) -> dict[str, Any]:
            ix = await self._interaction(args)
            fn = getattr(self.control, method)
            out = await (fn(ix.id, str(args[arg])) if arg else fn(ix.id))
            result: dict[str, Any] = {"attempt_id": ix.id, "state": ix.state.value}
            if method == "send_dtmf":
                result["digits"] = out
                # The digits the contact heard go into the contact's case history.
                await asyncio.to_thread(record_dtmf, self.factory, ix.id, ix.agent_id, out)
            elif method in ("consult", "conference"):
                result["target_channel_id"] = out
            return result

        return handler

    async def _resync_snapshot(self) -> None:
        """After every (re)connection: what Asterisk has now (CoreShowChannels, BridgeList,
        ConfbridgeListRooms), kept in Redis for the dashboard and health. The originator,
        call control and sessions resync their own state from the same connection."""
        channels = await self.ami.send_list("CoreShowChannels")
        bridges = await self.ami.send_list("BridgeList")
        try:
            rooms = await self.ami.send_list("ConfbridgeListRooms")
        except AmiActionFailed:  # "No active conferences."
            rooms = []
        snap = {
            "channels": len(channels),
            "bridges": len(bridges),
            "conferences": sorted(str(r.get("Conference")) for r in rooms),
            "ts": time.time(),
        }
        await self.redis.set(live_key(self.server), json.dumps(snap))

    def _call_event(self, event: dict[str, Any]) -> None:
        """The originator's call events: published, and to the dialer (an ended call frees
        its lease and its agent's reservation)."""
        self._publish(event)
        if self.dialer is not None:
            self.dialer.on_call_event(event)

    def _publish(self, event: dict[str, Any]) -> None:
        """Call events out: connecting, ringing, answered, connected, ended (with result),
        on the Redis stream the status page reads. Fire and forget: a Redis outage must
        not stall call handling (the database keeps the truth)."""
        fields: dict[Any, Any] = {k: str(v) for k, v in {**event, "server": self.server}.items()}

        async def add() -> None:
            try:
                await self.redis.xadd(
                    names.KEY_EVENTS,
                    fields,
                    maxlen=100_000,
                    approximate=True,
                )
            except Exception as exc:
                log.warning("call event not published: %s", exc)

        t = asyncio.ensure_future(add())
        self._pending_events.add(t)
        t.add_done_callback(self._pending_events.discard)

    async def _dial(self, args: dict[str, Any]) -> dict[str, Any]:
        agent = args.get("agent_id")
        # With an agent reserved (preview, progressive) and "connect", the answered contact
        # goes straight into the agent's conference.
        connect = bool(agent and args.get("connect"))
        aid = await self.originator.dial(
            int(args["contact_id"]),
            e164=args.get("number"),
            agent_id=agent,
            caller_id=args.get("caller_id"),
            context=names.CTX_CONNECT if connect else None,
            exten=str(agent) if connect else None,
            # An attempt the agent's preview dial already wrote: originate that one.
            attempt_id=str(args["attempt_id"]) if args.get("attempt_id") else None,
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
                # Seconds since Asterisk last answered a Ping (None: not yet).
                "pong_age": (
                    round(time.monotonic() - self.ami.last_pong, 3) if self.ami.last_pong else None
                ),
            }
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    if self._serving:
                        pipe.set(health_key(self.server), json.dumps(rec), ex=HEALTH_TTL_S)
                    pipe.hset(HEARTBEATS_KEY, self.server, json.dumps(rec))
                    await pipe.execute()
            except Exception as exc:  # Redis down: keep running, the record expires
                log.warning("cannot publish health: %s", exc)
            try:
                await asyncio.wait_for(self._stop.wait(), 1.0)
            except TimeoutError:
                pass

    async def _expiry_loop(self) -> None:
        """Attempts an agent's preview dial wrote and no `dial` command claimed end after
        `created_ttl_s` (Originator.expire_created): their contact and agent are free
        again. Then Originator.recover: live attempts whose events were lost to a database
        error are reconciled with Asterisk. A failed round is logged; the next one tries
        again."""
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(
                    self.originator.expire_created(self.created_ttl_s), EXPIRY_TIMEOUT_S
                )
            except Exception:
                log.exception("unclaimed attempts not expired this round")
            try:  # events lost to a database error; the periodic backstop
                await asyncio.wait_for(self.originator.recover(), EXPIRY_TIMEOUT_S)
            except Exception as exc:
                log.warning("live attempts not reconciled this round: %s", exc)
            try:
                await asyncio.wait_for(self._stop.wait(), self.expiry_every_s)
            except TimeoutError:
                pass

    async def run(self, ready_timeout: float = 30) -> None:
        self.originator.start()
        # The heartbeat starts before AMI is up, so a bridge that cannot reach Asterisk
        # says so; the health key (what "the bridge is running" means) only once it runs.
        health = asyncio.ensure_future(self._health_loop())
        try:
            await self.ami.start(wait=ready_timeout)
            await ensure_least_privilege(self.ami)
        except BaseException:
            health.cancel()
            raise
        self._serving = True
        tasks = [
            asyncio.ensure_future(self.commands.run()),
            health,
            asyncio.ensure_future(self._expiry_loop()),
        ]
        if self.dialer is not None:
            tasks.append(asyncio.ensure_future(self.dialer.run(self._stop)))
        log.info("bridge for server %r running", self.server)
        try:
            await self._stop.wait()
        finally:
            self.commands.stop()
            for t in tasks:
                t.cancel()
            await self.originator.stop()
            await self.ami.close()
            try:  # a clean stop is not an outage: no stale heartbeat left behind
                await self.redis.hdel(HEARTBEATS_KEY, self.server)
            except Exception as exc:
                log.warning("heartbeat not removed: %s", exc)

    def stop(self) -> None:
        self._stop.set()

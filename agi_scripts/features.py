"""The `features` route: desk-phone feature codes (asterisk_conf/extensions_outbound.conf,
contexts outbound-phone-codes / outbound-phone-session). The dialplan calls

    AGI(${OUTBOUND_AGI}/features,<code>[,<prompt>])   code: login, ready, not_ready, logout

and routes on OUTBOUND_CODE_RESULT (ok, wrong, locked, invalid, none, refused, error); on a
successful login OUTBOUND_AGENT and OUTBOUND_PHONE say who logged in where, and the
dialplan takes the call itself into the agent's conference: the phone's call is the
session leg, so nobody has to call the phone back.

The phone is the calling channel's device (`outbound.agents.phone_of`: PJSIP/1001), not
its caller ID, which a phone can set to anything.

Log in collects the agent id and the PIN here, digit by digit (STREAM FILE with every key
as escape digit, then WAIT FOR DIGIT until `#`), rather than with Read() in the dialplan
or GET DATA:
* Read() would put the PIN into a channel variable, which Asterisk announces in a VarSet
  AMI event to every manager account that reads `dialplan` events, and which shows in
  `core show channel`; collected here it exists only in this process, is checked
  against the argon2 hash and dropped. It is never logged.
* GET DATA answers ``result=<digits>``, which the strict answer parser reads as a number
  (a leading 0 of a PIN would be lost, an empty entry is no number at all).

Wrong PINs are counted per agent id and per phone (`outbound.agents.PinGuard`, Redis with
TTLs); at [agents] pin_attempts the id / phone is locked for pin_lockout seconds, logged as
a WARNING and published on the `outbound:events` stream; a locked login is refused even
with the right PIN until the lock expires.

Ready, not ready and log out are commands to the AMI bridge over the Redis command stream
(the bridge is the one writer of live agent state and owns the session leg): the phone
identifies the session, so these codes work from a second line of the phone as well as
from inside the session (the conference menu runs the same dialplan).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from outbound import names
from outbound.agents import AGENT_ID, PinGuard, PinPolicy, phone_of, verify_pin
from outbound.commands import Command, reply_key
from outbound.config import DEFAULTS, Config

from .server import AgiSession, Handler

log = logging.getLogger(__name__)

CODES = ("login", "ready", "not_ready", "logout")
KEYS = "0123456789*#"
# What asks for the agent id: first try, after a refusal, after "already logged in".
PROMPTS = ("agent-user", "agent-incorrect", "agent-alreadyon")
MAX_DIGITS = 12  # agent ids and PINs are at most 12 digits (outbound.agents, security)
DIGIT_TIMEOUT_MS = 8000  # between two keys; a person looks at the keypad
COMMAND_TIMEOUT_S = 8.0  # how long the caller waits for the bridge


async def read_digits(session: AgiSession, prompt: str, max_digits: int = MAX_DIGITS) -> str:
    """Play `prompt` (a key interrupts it) and collect keys up to `#`, a pause of
    DIGIT_TIMEOUT_MS, or one key more than `max_digits` (so an overlong entry reads as
    invalid instead of being cut to a valid one)."""
    key = await session.stream_file(prompt, KEYS)
    digits = ""
    while True:
        if not key:
            answer = await session.command(
                "WAIT FOR DIGIT", DIGIT_TIMEOUT_MS, timeout=DIGIT_TIMEOUT_MS / 1000 + 5
            )
            key = chr(answer.result) if answer.result > 0 else ""
        if key in ("", "#"):
            return digits
        digits += key
        if len(digits) > max_digits:
            return digits
        key = ""


async def send_command(
    redis: Any, server: str, kind: str, args: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """`outbound.commands.send_command` for an asyncio Redis client: put the command on
    the bridge's stream, wait for its reply. Raises TimeoutError (bridge down or busy) or
    RuntimeError with the bridge's message."""
    cmd = Command(id=uuid.uuid4().hex, kind=kind, args=args)
    await redis.xadd(names.key_commands(server), cmd.encode(), maxlen=100_000, approximate=True)
    got = await redis.blpop([reply_key(cmd.id)], timeout=max(1, int(timeout + 0.999)))
    if got is None:
        raise TimeoutError(f"{kind}: no answer from the bridge of server {server!r}")
    reply = json.loads(got[1])
    if not reply.get("ok"):
        raise RuntimeError(f"{kind}: {reply.get('error', 'failed')}")
    return dict(reply.get("result") or {})


class Features:
    """The feature-code handler; `make_features` builds it from the configuration."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        redis: Any,
        *,
        server: str = "default",
        policy: PinPolicy | None = None,
        command_timeout: float = COMMAND_TIMEOUT_S,
    ) -> None:
        self.factory, self.redis, self.server = factory, redis, server
        self.guard = PinGuard(redis, policy) if redis is not None else None
        self.command_timeout = command_timeout

    async def __call__(self, session: AgiSession) -> None:
        code = session.variables.get("agi_arg_1", "")
        phone = phone_of(session.channel)
        if code not in CODES or phone is None:
            log.warning("features: code %r from channel %r refused", code[:20], session.channel)
            await session.set_variable(names.VAR_CODE_RESULT, "error")
            return
        if code == "login":
            result = await self.login(session, phone)
        else:
            result = await self.bridge_code(code, phone)
        await session.set_variable(names.VAR_CODE_RESULT, result)

    async def login(self, session: AgiSession, phone: str) -> str:
        prompt = session.variables.get("agi_arg_2", "")
        agent_id = await read_digits(session, prompt if prompt in PROMPTS else PROMPTS[0])
        if not agent_id:  # nothing typed: the caller gave up, which is no wrong PIN
            return "none"
        pin = await read_digits(session, "agent-pass")
        if self.guard is None:  # no Redis, no lockout: refuse rather than allow guessing
            log.error("login from %s refused: no Redis for the PIN lockout", phone)
            return "error"
        if not AGENT_ID.match(agent_id):
            # Only keypad characters can arrive here; the id is shown cut and quoted anyway.
            log.warning("login from %s refused: malformed agent id %r", phone, agent_id[:13])
            await self._failed(None, phone)
            return "invalid"
        left = await self.guard.locked_for(agent_id, phone)
        if left:
            log.warning(
                "login of agent %s from %s refused: locked for %d s more", agent_id, phone, left
            )
            return "locked"

        def check() -> tuple[bool, bool]:
            with self.factory() as s:
                return verify_pin(s, agent_id, pin)

        known, ok = await asyncio.to_thread(check)
        if not ok:
            log.warning(
                "login from %s refused: %s",
                phone,
                f"wrong PIN for agent {agent_id}" if known else f"unknown agent id {agent_id}",
            )
            locked = await self._failed(agent_id if known else None, phone)
            return "locked" if locked else "wrong"
        await self.guard.succeeded(agent_id, phone)
        await session.set_variable(names.VAR_AGENT, agent_id)
        await session.set_variable(names.VAR_PHONE, phone)
        log.info("agent %s logged in from %s (channel %s)", agent_id, phone, session.channel)
        return "ok"

    async def _failed(self, agent_id: str | None, phone: str) -> list[str]:
        assert self.guard is not None
        locked = await self.guard.failed(agent_id, phone)
        for kind in locked:
            subject = agent_id if kind == "agent" else phone
            log.warning(
                "PIN lockout: %s %s locked for %d s after %d wrong PINs",
                kind,
                subject,
                self.guard.policy.lockout_s,
                self.guard.policy.attempts,
            )
            await self._event(
                {
                    "event": "agent_pin_locked",
                    "locked": kind,
                    "agent_id": agent_id or "",
                    "phone": phone,
                    "lockout_s": self.guard.policy.lockout_s,
                }
            )
        return locked

    async def _event(self, event: dict[str, Any]) -> None:
        """Publish on the stream the status page reads, like the bridge's events; a Redis
        failure is logged, never fatal to the call."""
        fields = {k: str(v) for k, v in {**event, "server": self.server, "ts": time.time()}.items()}
        try:
            await self.redis.xadd(names.KEY_EVENTS, fields, maxlen=100_000, approximate=True)
        except Exception as exc:
            log.warning("event %s not published: %s", event.get("event"), exc)

    async def bridge_code(self, code: str, phone: str) -> str:
        """ready / not_ready / logout for the session on this phone, run by the bridge."""
        if self.redis is None:
            return "error"
        try:
            await send_command(
                self.redis, self.server, code, {"phone": phone}, self.command_timeout
            )
        except TimeoutError as exc:
            log.warning("%s from %s: %s", code, phone, exc)
            return "error"
        except RuntimeError as exc:
            log.info("%s from %s refused: %s", code, phone, exc)
            return "refused"
        log.info("%s from %s done", code, phone)
        return "ok"


def make_features(
    factory: sessionmaker[Session], redis: Any = None, config: Config | None = None
) -> Handler:
    """The route's handler. Without `config` the built-in DEFAULTS apply (server
    "default", [agents] pin_attempts / pin_lockout); without `redis` every code is
    refused ("error"): no lockout store, no log-in."""
    if config is not None:
        server = str(config.get("dialer", "server"))
        policy = PinPolicy(
            int(config.get("agents", "pin_attempts")), int(config.get("agents", "pin_lockout"))
        )
    else:
        server = DEFAULTS["dialer"]["server"]
        policy = PinPolicy(
            int(DEFAULTS["agents"]["pin_attempts"]), int(DEFAULTS["agents"]["pin_lockout"])
        )
    return Features(factory, redis, server=server, policy=policy)

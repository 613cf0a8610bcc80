"""The `features` route: desk-phone feature codes (asterisk_conf/extensions_outbound.conf,
contexts outbound-phone-codes / outbound-phone-session). The dialplan calls

    AGI(${OUTBOUND_AGI}/features,<code>[,<prompt>])   code: login, ready, not_ready, logout

(or, as a process AGI on a small install, ``AGI(outbound-agi,features,<code>[,<prompt>])``:
the handler reads `AgiSession.args`, the arguments after the route's name, the same list
in both modes).

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
  `core show channel`; collected here it is held by no channel variable, is checked
  against the argon2 hash and dropped, and is never logged (an unknown agent id, maybe
  a PIN typed at the wrong prompt, is logged only as its length and a short hash).
  It is not secret from Asterisk, though: every key is also an AMI DTMFBegin/DTMFEnd
  event to each manager account with read=dtmf (the dialer's account has it), and a
  DTMF log line if logger.conf enables "dtmf". manager_outbound.conf filters the DTMF
  events of the phone-session context out of the dialer's account; any other account
  with read=dtmf sees the PIN's keys.
* GET DATA answers ``result=<digits>``, which the strict answer parser reads as a number
  (a leading 0 of a PIN would be lost, an empty entry is no number at all).

Wrong PINs are counted per (agent id, phone) pair, per agent id and per phone
(`outbound.agents.PinGuard`, Redis with TTLs): at [agents] pin_attempts the pair is locked,
at pin_attempts_global the id everywhere (or the phone for every id), for pin_lockout
seconds, so three wrong PINs from someone else's phone cannot lock an agent out. Each lock
is logged as a WARNING and published on the `outbound:events` stream; a locked login is
refused even with the right PIN until the lock expires.

Ready, not ready and log out wait PHONE_CODE_WAIT_S for the bridge, longer than the bridge
allows itself (outbound.commands), and the command expires when the phone stops waiting,
so a code that beeped "error" never runs later.

Ready, not ready and log out are commands to the AMI bridge over the Redis command stream
(the bridge is the one writer of live agent state and owns the session leg): the phone
identifies the session, so these codes work from a second line of the phone as well as
from inside the session (the conference menu runs the same dialplan).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from outbound import names
from outbound.agents import AGENT_ID, PinGuard, PinPolicy, phone_of, verify_pin
from outbound.commands import (
    PHONE_CODE_WAIT_S,
    CommandFailed,
    CommandTimeout,
    send_command_async,
)
from outbound.config import DEFAULTS, Config

from .server import AgiSession, Handler

log = logging.getLogger(__name__)

CODES = ("login", "ready", "not_ready", "logout")
KEYS = "0123456789*#"
# What asks for the agent id: first try, after a refusal, after "already logged in".
PROMPTS = ("agent-user", "agent-incorrect", "agent-alreadyon")
MAX_DIGITS = 12  # agent ids and PINs are at most 12 digits (outbound.agents, security)
DIGIT_TIMEOUT_MS = 8000  # between two keys; a person looks at the keypad
# How long the caller waits for the bridge: longer than the bridge may take (a log out
# waits for the leg's hangup), so a code never beeps "error" and then works.
COMMAND_TIMEOUT_S = PHONE_CODE_WAIT_S


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


def _redact(agent_id: str) -> str:
    """How an unknown agent id is logged: its length and a short hash, never the digits
    (a PIN typed at the agent-id prompt must not reach the log). The hash lets repeated
    tries of one id be told apart from many; 6 digits have too few values to keep a hash
    secret, so it is cut to 4 hex digits (many ids share one)."""
    return f"<{len(agent_id)} digits, #{hashlib.sha256(agent_id.encode()).hexdigest()[:4]}>"


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
        code = session.args[0] if session.args else ""
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
        prompt = session.args[1] if len(session.args) > 1 else ""
        agent_id = await read_digits(session, prompt if prompt in PROMPTS else PROMPTS[0])
        if not agent_id:  # nothing typed: the caller gave up, which is no wrong PIN
            return "none"
        pin = await read_digits(session, "agent-pass")
        if self.guard is None:  # no Redis, no lockout: refuse rather than allow guessing
            log.error("login from %s refused: no Redis for the PIN lockout", phone)
            return "error"
        if not AGENT_ID.match(agent_id):
            # Maybe a PIN typed at the wrong prompt: never logged as typed.
            log.warning("login from %s refused: malformed agent id %s", phone, _redact(agent_id))
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
                f"wrong PIN for agent {agent_id}"
                if known
                else f"unknown agent id {_redact(agent_id)}",
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
        policy = self.guard.policy
        for kind in locked:
            subject, wrong = {
                "pair": (f"agent {agent_id} on phone {phone}", policy.attempts),
                "agent": (f"agent {agent_id} (on every phone)", policy.attempts_global),
                "phone": (f"phone {phone} (for every agent)", policy.attempts_global),
            }[kind]
            log.warning(
                "PIN lockout: %s locked for %d s after %d wrong PINs",
                subject,
                policy.lockout_s,
                wrong,
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
            await send_command_async(
                self.redis, self.server, code, {"phone": phone}, self.command_timeout
            )
        except CommandTimeout as exc:  # the command expires: a late bridge will not run it
            log.warning("%s from %s: %s", code, phone, exc)
            return "error"
        except RedisError as exc:  # Redis down: the command may not even have been sent
            log.warning("%s from %s: Redis unavailable (%s)", code, phone, exc)
            return "error"
        except CommandFailed as exc:
            log.info("%s from %s refused: %s", code, phone, exc)
            return "refused"
        log.info("%s from %s done", code, phone)
        return "ok"


def make_features(
    factory: sessionmaker[Session], redis: Any = None, config: Config | None = None
) -> Handler:
    """The route's handler. Without `config` the built-in DEFAULTS apply (server
    "default", [agents] pin_attempts / pin_attempts_global / pin_lockout); without `redis`
    every code is refused ("error"): no lockout store, no log-in."""
    agents: dict[str, Any] = (
        {k: config.get("agents", k) for k in ("pin_attempts", "pin_attempts_global", "pin_lockout")}
        if config is not None
        else dict(DEFAULTS["agents"])
    )
    server = (
        str(config.get("dialer", "server")) if config is not None else DEFAULTS["dialer"]["server"]
    )
    policy = PinPolicy(
        attempts=int(agents["pin_attempts"]),
        lockout_s=int(agents["pin_lockout"]),
        attempts_global=int(agents["pin_attempts_global"]),
    )
    return Features(factory, redis, server=server, policy=policy)

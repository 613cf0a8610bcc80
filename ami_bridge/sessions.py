"""Agent sessions: the desk phone in the agent's personal ConfBridge for the whole session.

Log in = AMI Originate of the phone (`PJSIP/1001`, or `Local/1001@sim-phones` in the
sandbox) into `outbound-agent,<agent id>` with a ChannelId of ours; the phone answering
and joining `outbound-agent-<agent id>` (ConfbridgeJoin with that Uniqueid) = session up.
The session ends when that channel leaves the conference or hangs up (the agent put the
phone down, logged out, or Asterisk dropped it): `on_session_end(agent_id, reason)` is
called once, so the caller can mark the agent not ready. Log out = AMI Hangup of it.

Per-session state machine: logging_in --joined--> up --logout--> logging_out --hangup-->
ended; up --left--> away (out of the conference: no calls) --joined--> up; a hangup ends
every state. A ConfbridgeLeave alone does not end the session: the phone leg's hangup
follows it at once (outbound-agent hangs up after ConfBridge) and says why.

A desk phone can start a session itself (feature code *51, asterisk_conf
[outbound-phone-session]): after the PIN check the dialplan raises the UserEvent
OutboundPhoneLogin (Agent, Phone) on the phone's call and takes that call into the
agent's conference. That event adopts the call as a session (origin "phone", state
logging_in, keyed by the event's Uniqueid), and its ConfbridgeJoin makes it up, exactly
like an originated one; its Hangup ends it ("phone_hangup", or "logout" after `logout`).
The event is not trusted as such: any AMI account with write=user can send a UserEvent
with any headers (AMI action UserEvent), and any dialplan can raise one. It is adopted only
if it comes from the phone-session context (Context header), names the channel's own phone
(phone_of(Channel) == Phone), and Asterisk confirms it (`_verify_phone_login`: Status of
the Uniqueid gives that channel, whose OUTBOUND_AGENT, set by the features AGI after the
PIN check, is the Agent); the session leg's events that arrive meanwhile wait for it.
A second phone for an agent who already has a live session is hung up (one session leg
per agent). Should the bridge miss the event (it was reconnecting), `resync` finds the
leg as the marked member of outbound-agent-<id> (ConfbridgeList) and adopts it as up.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from panoramisk.message import Message

from ami_bridge import actions
from ami_bridge.actions import NoSuchChannel
from ami_bridge.connection import AmiConnection, AmiError
from ami_bridge.control import StateMachine
from outbound import names
from outbound.agents import AGENT_ID, PHONE, phone_of
from outbound.commands import PHONE_CODE_BRIDGE_S
from outbound.errors import Conflict, Invalid, OutboundError

log = logging.getLogger("ami_bridge.sessions")


class SessionState(StrEnum):
    LOGGING_IN = "logging_in"  # the phone is being called
    UP = "up"  # the phone is in the agent's conference
    AWAY = "away"  # the phone left the conference but is still up (no calls)
    LOGGING_OUT = "logging_out"  # we hung it up, waiting for Asterisk to confirm
    ENDED = "ended"


class SessionEvent(StrEnum):
    JOINED = "joined"  # ConfbridgeJoin of the session's channel
    FAILED = "failed"  # OriginateResponse Failure: the phone did not answer
    LEFT = "left"  # ConfbridgeLeave of the session's channel
    HANGUP = "hangup"  # Hangup of the session's channel
    LOGOUT = "logout"


_S, _E = SessionState, SessionEvent
SESSION_TRANSITIONS: dict[tuple[SessionState, SessionEvent], SessionState] = {
    (_S.LOGGING_IN, _E.JOINED): _S.UP,
    (_S.LOGGING_IN, _E.FAILED): _S.ENDED,
    (_S.LOGGING_IN, _E.HANGUP): _S.ENDED,
    (_S.LOGGING_IN, _E.LOGOUT): _S.LOGGING_OUT,
    (_S.UP, _E.LEFT): _S.AWAY,
    (_S.UP, _E.HANGUP): _S.ENDED,
    (_S.UP, _E.LOGOUT): _S.LOGGING_OUT,
    (_S.AWAY, _E.JOINED): _S.UP,
    (_S.AWAY, _E.HANGUP): _S.ENDED,
    (_S.AWAY, _E.LOGOUT): _S.LOGGING_OUT,
    (_S.LOGGING_OUT, _E.JOINED): _S.LOGGING_OUT,
    (_S.LOGGING_OUT, _E.LEFT): _S.LOGGING_OUT,
    (_S.LOGGING_OUT, _E.HANGUP): _S.ENDED,
    (_S.LOGGING_OUT, _E.FAILED): _S.ENDED,
}
SESSION_TERMINAL = frozenset({_S.ENDED})

# Why a login call failed: OriginateResponse Reason, or the Hangup Cause (Q.850).
_FAILED_REASON = {"0": "failed", "1": "rejected", "3": "no_answer", "5": "busy", "8": "congestion"}
_CAUSE_REASON = {"17": "busy", "18": "no_answer", "19": "no_answer", "21": "rejected"}
_GRACE = 2.0  # how long an unexplained hangup waits for its OriginateResponse


class SessionError(OutboundError):
    """A login or logout could not be done; the message says why."""


class AlreadyLoggedIn(SessionError, Conflict):
    """The agent has a live session already."""


class NotLoggedIn(SessionError, Conflict):
    """The agent has no live session."""


def session_machine(agent_id: str, initial: SessionState = _S.LOGGING_IN) -> StateMachine[Any, Any]:
    return StateMachine(f"session {agent_id}", initial, SESSION_TRANSITIONS, SESSION_TERMINAL)


@dataclass(eq=False)
class AgentSession:
    agent_id: str
    phone: str  # what was originated (PJSIP/1001)
    channel_id: str  # our ChannelId = the Uniqueid of the phone's leg
    machine: StateMachine[Any, Any]
    channel: str = ""  # the channel's name, once Asterisk told it
    origin: str = "login"  # "login": originated by us; "phone": started by a feature code
    started: float = field(default_factory=time.time)
    up_since: float | None = None
    end_reason: str | None = None
    _up: asyncio.Event = field(default_factory=asyncio.Event)
    _ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def state(self) -> SessionState:
        return SessionState(self.machine.state)


SessionEndHook = Callable[[str, str], Any]
SessionUpHook = Callable[["AgentSession"], Any]


class AgentSessions:
    """Agent sessions on one Asterisk, tracked from AMI events (read=call suffices).

    `on_session_end(agent_id, reason)` (sync or async) runs once per session; reasons:
    "phone_hangup", "logout", "lost" (gone after a reconnect), or a failed login's
    "no_answer", "busy", "rejected", "congestion", "failed".
    `on_session_up(session)` (sync or async) runs once when a session first joins its
    conference: how the owner learns of a session a desk phone started."""

    def __init__(
        self,
        conn: AmiConnection,
        *,
        on_session_end: SessionEndHook | None = None,
        on_session_up: SessionUpHook | None = None,
        answer_timeout: float = 30.0,
        caller_id: str = "Outbound login",
    ) -> None:
        self.conn, self.on_session_end = conn, on_session_end
        self.on_session_up = on_session_up
        self.answer_timeout, self.caller_id = answer_timeout, caller_id
        self._sessions: dict[str, AgentSession] = {}
        self._by_channel: dict[str, AgentSession] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Uniqueids of phone logins being verified -> their events that arrived meanwhile.
        self._verifying: dict[str, list[Message]] = {}

    def attach(self) -> None:
        """Follow the events of the session channels; resync after reconnects."""
        for name in (
            "OriginateResponse",
            "ConfbridgeJoin",
            "ConfbridgeLeave",
            "Hangup",
            "UserEvent",
        ):
            self.conn.on_event(name, self._on_event)
        self.conn.on_ready(self.resync)

    # ------------------------------------------------------------ public API
    async def login(self, agent_id: str, phone: str) -> AgentSession:
        """Log in: AMI Originate of the agent's phone into `outbound-agent,<agent id>`.
        Returns at once (state logging_in); `wait_up` waits for the phone to be in the
        conference. Raises Invalid for a bad agent id / phone, AlreadyLoggedIn, and the
        AmiError of a refused Originate (the session is then ended, reason "failed")."""
        if not AGENT_ID.match(agent_id):
            raise Invalid(f"agent id {agent_id!r} must be 2-12 digits")
        if not PHONE.match(phone):
            raise Invalid(f"phone {phone!r} is not a channel like PJSIP/1001")
        old = self._sessions.get(agent_id)
        if old is not None and not old.machine.terminal:
            raise AlreadyLoggedIn(f"agent {agent_id} is already logged in ({old.state})")
        sess = AgentSession(
            agent_id, phone, f"agent-{agent_id}-{uuid.uuid4()}", session_machine(agent_id)
        )
        self._sessions[agent_id] = self._by_channel[sess.channel_id] = sess
        log.info("session %s: calling %s (channel id %s)", agent_id, phone, sess.channel_id)
        try:
            await actions.originate(
                self.conn,
                phone,
                context=names.CTX_AGENT,
                exten=agent_id,
                channel_id=sess.channel_id,
                variables={names.VAR_AGENT: agent_id},
                timeout_ms=int(self.answer_timeout * 1000),
                caller_id=f'"{self.caller_id}" <{agent_id}>',
            )
        except AmiError:
            self._apply(sess, SessionEvent.FAILED, "failed")
            raise
        return sess

    async def wait_up(self, agent_id: str, timeout: float | None = None) -> AgentSession:
        """Wait until the session is up; SessionError if it ended first (with the reason),
        TimeoutError past `timeout` (default: the answer timeout and a little more)."""
        sess = self._get(agent_id)
        up, ended = (
            asyncio.ensure_future(sess._up.wait()),
            asyncio.ensure_future(sess._ended.wait()),
        )
        try:
            await asyncio.wait(
                {up, ended},
                timeout=timeout if timeout is not None else self.answer_timeout + 5,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            up.cancel()
            ended.cancel()
        if sess.state is SessionState.UP:
            return sess
        if sess.machine.terminal:
            raise SessionError(f"agent {agent_id}: login failed ({sess.end_reason})")
        raise TimeoutError(f"agent {agent_id}: phone not in the conference yet ({sess.state})")

    async def logout(self, agent_id: str) -> None:
        """Log out: AMI Hangup of the agent's phone leg; the session ends (reason
        "logout") when Asterisk reports the hangup. NotLoggedIn if there is no session."""
        sess = self._sessions.get(agent_id)
        if sess is None or sess.machine.terminal:
            raise NotLoggedIn(f"agent {agent_id} is not logged in")
        if sess.state is not SessionState.LOGGING_OUT:
            sess.machine.fire(SessionEvent.LOGOUT)
        try:
            await actions.hangup(self.conn, sess.channel_id)
        except NoSuchChannel:  # already gone (its Hangup event may be lost): ended anyway
            self._apply(sess, SessionEvent.HANGUP, "logout")

    async def wait_ended(self, agent_id: str, timeout: float = PHONE_CODE_BRIDGE_S) -> AgentSession:
        """Wait for the session's end. The default is what a desk phone's *54 allows the
        bridge (outbound.commands.PHONE_CODE_BRIDGE_S; the phone itself waits longer)."""
        sess = self._get(agent_id)
        await asyncio.wait_for(sess._ended.wait(), timeout)
        return sess

    def session_state(self, agent_id: str) -> SessionState | None:
        """The agent's session state; None if the agent never logged in here."""
        sess = self._sessions.get(agent_id)
        return sess.state if sess is not None else None

    def session(self, agent_id: str) -> AgentSession | None:
        return self._sessions.get(agent_id)

    def active(self) -> list[AgentSession]:
        return [s for s in self._sessions.values() if not s.machine.terminal]

    def on_phone(self, phone: str) -> AgentSession | None:
        """The live session whose leg is on this phone (PJSIP/1001), if any: how a
        feature code dialled on the phone finds its agent."""
        for sess in self.active():
            if sess.phone == phone or (sess.channel and phone_of(sess.channel) == phone):
                return sess
        return None

    async def resync(self) -> None:
        """After a (re)connection events may have been missed: AMI Status of every live
        session's channel; a missing one ends the session ("lost")."""
        for sess in self.active():
            try:
                st = await actions.status(self.conn, sess.channel_id)
            except NoSuchChannel:
                self._apply(sess, SessionEvent.HANGUP, "lost")
                continue
            conference = str(st.get("Data", "")).split(",")[0]
            if sess.state is SessionState.LOGGING_IN and conference == names.agent_bridge(
                sess.agent_id
            ):
                self._apply(sess, SessionEvent.JOINED, "")
        await self._adopt_unknown_legs()

    async def _adopt_unknown_legs(self) -> None:
        """Sessions a desk phone started while we were not listening: the marked member
        (the agent's leg; contacts are not marked) of an agent conference we do not know
        (ConfbridgeListRooms, ConfbridgeList)."""
        prefix = names.agent_bridge("")
        try:
            rooms = await self.conn.send_list("ConfbridgeListRooms")
        except AmiError as exc:
            log.warning("cannot list conferences to adopt phone sessions: %s", exc)
            return
        for room in rooms:
            conference = str(room.get("Conference", ""))
            agent_id = conference[len(prefix) :]
            if not conference.startswith(prefix) or not AGENT_ID.match(agent_id):
                continue
            known = self._sessions.get(agent_id)
            if known is not None and not known.machine.terminal:
                continue
            try:
                members = await actions.confbridge_list(self.conn, conference)
            except AmiError:
                continue
            for m in members:
                if str(m.get("MarkedUser", "")).lower() != "yes":
                    continue
                channel = str(m.get("Channel", ""))
                sess = self._adopt(agent_id, phone_of(channel) or "", str(m.get("Uniqueid")))
                if sess is not None:
                    sess.channel = channel
                    self._apply(sess, SessionEvent.JOINED, "")
                break

    def _adopt(self, agent_id: str, phone: str, uniqueid: str) -> AgentSession | None:
        """A session a desk phone started (OutboundPhoneLogin): known from now on, state
        logging_in until its ConfbridgeJoin. None (and the newcomer hung up) if the agent
        has a live session on another leg already."""
        if not AGENT_ID.match(agent_id) or not uniqueid:
            log.warning("phone login event with agent %r / uniqueid %r ignored", agent_id, uniqueid)
            return None
        old = self._sessions.get(agent_id)
        if old is not None and not old.machine.terminal:
            if old.channel_id == uniqueid:
                return old
            log.warning(
                "agent %s logged in from %s but has a session on %s: hanging up the new leg",
                agent_id,
                phone,
                old.phone,
            )
            self._spawn(self._hangup_quietly(uniqueid))
            return None
        sess = AgentSession(agent_id, phone, uniqueid, session_machine(agent_id), origin="phone")
        self._sessions[agent_id] = self._by_channel[uniqueid] = sess
        log.info(
            "session %s: adopted the call of phone %s (uniqueid %s)", agent_id, phone, uniqueid
        )
        return sess

    def _on_phone_login(self, msg: Message) -> None:
        """An OutboundPhoneLogin UserEvent: checked here (headers), then by Asterisk."""
        agent_id = str(msg.get("Agent", "")).strip()
        phone = str(msg.get("Phone", "")).strip()
        uniqueid = str(msg.get("Uniqueid", ""))
        channel = str(msg.get("Channel", ""))
        problem = None
        if msg.get("Context") != names.CTX_PHONE_SESSION:
            problem = f"context {str(msg.get('Context', ''))[:40]!r} is not the phone session's"
        elif phone_of(channel) is None or phone_of(channel) != phone:
            problem = f"phone {phone[:80]!r} is not channel {channel[:80]!r}'s"
        elif not AGENT_ID.match(agent_id) or not uniqueid:
            problem = f"agent {agent_id[:20]!r} / uniqueid {uniqueid[:40]!r} malformed"
        if problem is not None:
            log.warning("phone login event ignored: %s", problem)
            return
        if uniqueid in self._verifying:
            return
        self._verifying[uniqueid] = []
        self._spawn(self._verify_phone_login(agent_id, phone, uniqueid))

    async def _verify_phone_login(self, agent_id: str, phone: str, uniqueid: str) -> None:
        """Ask Asterisk whether the event is true: the channel with this Uniqueid exists,
        belongs to `phone`, and the features AGI logged `agent_id` in on it. Then adopt it
        and replay its events that arrived meanwhile (its ConfbridgeJoin, its Hangup)."""
        verified = False
        try:
            st = await actions.status(self.conn, uniqueid)
            channel = str(st.get("Channel", ""))
            agent = await actions.getvar(self.conn, uniqueid, names.VAR_AGENT)
            if str(st.get("Uniqueid", "")) != uniqueid or phone_of(channel) != phone:
                log.warning(
                    "phone login event ignored: channel %s of uniqueid %s is not on %s",
                    channel,
                    uniqueid,
                    phone,
                )
            elif agent != agent_id:
                log.warning(
                    "phone login event ignored: channel %s logged in agent %r, not %s",
                    channel,
                    agent,
                    agent_id,
                )
            else:
                verified = True
        except AmiError as exc:  # gone already, or the connection dropped (resync adopts)
            log.warning("phone login of agent %s (%s) not verified: %s", agent_id, uniqueid, exc)
        finally:
            held = self._verifying.pop(uniqueid, [])
        if verified and self._adopt(agent_id, phone, uniqueid) is not None:
            for m in held:
                self._on_event(m)

    async def _hangup_quietly(self, channel: str) -> None:
        try:
            await actions.hangup(self.conn, channel)
        except AmiError as exc:
            log.warning("could not hang up %s: %s", channel, exc)

    # ------------------------------------------------------------ events
    def _get(self, agent_id: str) -> AgentSession:
        sess = self._sessions.get(agent_id)
        if sess is None:
            raise NotLoggedIn(f"agent {agent_id} has no session")
        return sess

    def _on_event(self, msg: Message) -> None:
        name = msg.get("Event")
        if name == "UserEvent":
            if msg.get("UserEvent") == names.EVENT_PHONE_LOGIN:
                self._on_phone_login(msg)
            return
        held = self._verifying.get(str(msg.get("Uniqueid", "")))
        if held is not None:  # a phone login being verified: its events wait for it
            held.append(msg)
            return
        sess = self._by_channel.get(str(msg.get("Uniqueid", "")))
        if sess is None or sess.machine.terminal:
            return
        if msg.get("Channel"):
            sess.channel = str(msg.get("Channel"))
        if name == "OriginateResponse":
            if msg.get("Response") == "Failure":
                self._apply(
                    sess, SessionEvent.FAILED, _FAILED_REASON.get(str(msg.get("Reason")), "failed")
                )
        elif name in ("ConfbridgeJoin", "ConfbridgeLeave"):
            if msg.get("Conference") == names.agent_bridge(sess.agent_id):
                event = SessionEvent.JOINED if name == "ConfbridgeJoin" else SessionEvent.LEFT
                self._apply(sess, event, "")
        elif name == "Hangup" and sess.state is SessionState.LOGGING_IN and sess.origin == "login":
            reason = _CAUSE_REASON.get(str(msg.get("Cause")))
            if reason is None:  # cause 0: the OriginateResponse that follows says why
                loop = asyncio.get_running_loop()
                loop.call_later(_GRACE, self._apply, sess, SessionEvent.HANGUP, "failed")
            else:
                self._apply(sess, SessionEvent.HANGUP, reason)
        elif name == "Hangup":
            self._apply(sess, SessionEvent.HANGUP, "phone_hangup")

    def _apply(self, sess: AgentSession, event: SessionEvent, reason: str) -> None:
        if not sess.machine.can(event):
            log.debug("session %s: %s ignored while %s", sess.agent_id, event, sess.state)
            return
        if sess.state is SessionState.LOGGING_OUT:
            reason = "logout"
        first_up = sess.up_since is None
        new = sess.machine.fire(event)
        if new is SessionState.UP:
            sess.up_since = time.time()
            sess._up.set()
            if first_up:
                log.info("session %s: up on %s (%s)", sess.agent_id, sess.phone, sess.origin)
                self._call_hook(self.on_session_up, sess)
        elif new is SessionState.ENDED:
            sess.end_reason = reason
            self._by_channel.pop(sess.channel_id, None)
            sess._ended.set()
            log.info("session %s: ended (%s)", sess.agent_id, reason)
            self._notify_end(sess.agent_id, reason)

    def _notify_end(self, agent_id: str, reason: str) -> None:
        self._call_hook(self.on_session_end, agent_id, reason)

    def _call_hook(self, hook: Callable[..., Any] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            res = hook(*args)
            if inspect.isawaitable(res):
                self._spawn(res)
        except Exception:
            log.exception("session hook %s failed for %r", getattr(hook, "__name__", hook), args)

    def _spawn(self, aw: Any) -> None:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

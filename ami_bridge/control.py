"""Call actions on a connected outbound call (SPEC "Call actions"), one state machine per
interaction; each transition is logged `state --event--> state`, an illegal event raises
IllegalTransition before anything is sent to Asterisk.

The agent's phone sits in its personal ConfBridge all session; a connected contact is a
member. Actions move legs between contexts of extensions_outbound.conf, never the agent's:
hold = Redirect to outbound-hold (music), resume = back to outbound-connect,<agent>;
instant transfer = Setvar the target's dial template, Redirect to outbound-transfer;
conference / consultation = Originate Local/<target>@outbound-target-dial into the agent's
conference (tracked by ChannelId: ConfbridgeJoin = answered; OriginateResponse Failure or
Hangup = declined); consultation completed as a transfer = Redirect the target to
outbound-pair, which Bridge()s it with the held contact; DTMF = PlayDTMF per digit.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from panoramisk.message import Message

from ami_bridge import actions
from ami_bridge.actions import NoSuchChannel
from ami_bridge.calls import CallEvent, CallState, StateMachine, call_machine
from ami_bridge.connection import AmiConnection, AmiError
from outbound import names
from outbound.errors import Invalid, OutboundError
from outbound.wire import check_value

log = logging.getLogger("ami_bridge.control")


class CallControlError(OutboundError):
    """A call action could not be done; the message says why, for the agent."""


class NoSuchCall(CallControlError):
    """The contact's (or the third party's) channel no longer exists."""


class InvalidTarget(CallControlError, Invalid, ValueError):
    """A transfer / conference / consultation target that cannot be dialled."""


class TargetKind(StrEnum):
    INTERNAL = "internal"  # an extension of this PBX: the internal dial template
    EXTERNAL = "external"  # a number through the trunk template


Kind = TargetKind | str | None


@dataclass(frozen=True)
class Target:
    number: str
    kind: TargetKind


@dataclass(frozen=True)
class TargetOutcome:
    target: Target
    channel_id: str
    answered: bool
    reason: str  # answered, busy, no_answer, rejected, congestion, cancelled, failed...


class TargetDeclined(CallControlError):
    """The third party did not take the call; `reason` says why (busy, no_answer...)."""

    def __init__(self, outcome: TargetOutcome) -> None:
        self.outcome, self.reason = outcome, outcome.reason
        super().__init__(f"{outcome.target.number} did not take the call: {outcome.reason}")


_SEPARATORS = re.compile(r"[\s\-().]")
_EXTERNAL = re.compile(r"^\+?[0-9*#]{2,31}\Z")
_DIALPLAN_CHARS = re.compile(r"^[0-9*#]+\Z")  # what the target contexts' patterns accept
_DTMF = re.compile(r"^[0-9*#A-D]{1,32}\Z")
_CHANNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9/@._;:+#*~=-]{0,199}\Z")  # Bridge() arg
_AGENT_ID = re.compile(r"^[0-9A-Za-z]{1,32}\Z")  # what outbound-connect's FILTER keeps


@dataclass(frozen=True)
class DialTemplates:
    """Where targets are dialled; `${NUMBER}` in a template becomes the target (passed
    as OUTBOUND_TARGET_DIAL, expanded by the dialplan). Sandbox:
    internal=Local/${NUMBER}@sim-phones, trunk=Local/${NUMBER}@sim-contacts."""

    internal: str = "PJSIP/${NUMBER}"
    trunk: str = "PJSIP/${NUMBER}@trunk"
    ring_timeout: int = 30
    extension_pattern: str = r"[0-9]{2,6}"

    def __post_init__(self) -> None:
        for label, tmpl in (("internal", self.internal), ("trunk", self.trunk)):
            check_value(f"{label} dial template", tmpl)
            if "${NUMBER}" not in tmpl:
                raise ValueError(f"{label} dial template {tmpl!r} lacks ${{NUMBER}}")
        if not 5 <= self.ring_timeout <= 300:
            raise ValueError("ring_timeout must be 5-300 seconds")
        re.compile(self.extension_pattern)

    def target(self, text: str, kind: Kind = None) -> Target:
        """Validate what an agent typed: an internal extension (extension_pattern) or an
        external number (digits, a leading +, * and #; spaces and dashes dropped)."""
        try:
            check_value("target", text, max_len=64)  # a line break is refused, not dropped
        except ValueError as exc:
            raise InvalidTarget(str(exc)) from None
        raw = _SEPARATORS.sub("", str(text))
        want = TargetKind(kind) if kind is not None else None
        is_ext = bool(re.fullmatch(self.extension_pattern, raw) and _DIALPLAN_CHARS.match(raw))
        if want is TargetKind.INTERNAL or (want is None and is_ext):
            if not is_ext:
                raise InvalidTarget(f"{text!r} is not an internal extension")
            return Target(raw, TargetKind.INTERNAL)
        if not _EXTERNAL.match(raw):
            raise InvalidTarget(f"{text!r} is not a phone number (digits, +, *, #)")
        return Target(raw, TargetKind.EXTERNAL)

    def template(self, target: Target) -> str:
        return self.internal if target.kind is TargetKind.INTERNAL else self.trunk


# Why a third party did not join: OriginateResponse Reason, or the Hangup Cause (Q.850).
_ORIGINATE_REASON = {"0": "failed", "1": "rejected", "3": "no_answer", "5": "busy"}
_ORIGINATE_REASON["8"] = "congestion"
_CAUSE_REASON = {"17": "busy", "18": "no_answer", "19": "no_answer", "21": "rejected"}
_CAUSE_REASON |= dict.fromkeys(("1", "3", "28"), "invalid_number")
_CAUSE_REASON |= dict.fromkeys(("34", "38", "41", "42"), "congestion")
_GRACE = 2.0  # how long an unexplained hangup waits for its OriginateResponse


@dataclass(eq=False)
class Interaction:
    """One connected outbound call as the agent works on it."""

    id: str
    agent_id: str
    contact_id: str  # Uniqueid of the contact's leg (the attempt's ChannelId)
    contact_channel: str  # its channel name, as last seen
    machine: StateMachine[Any, Any]
    target: Target | None = None
    target_id: str | None = None  # ChannelId of the third party's leg while it is ours
    last_outcome: TargetOutcome | None = None
    dtmf: list[str] = field(default_factory=list)  # digits sent, for the case history
    end_reason: str | None = None  # "agent" or "contact_gone"
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    outcome: asyncio.Future[TargetOutcome] | None = None

    @property
    def state(self) -> CallState:
        return CallState(self.machine.state)


class CallControl:
    """The call actions for connected calls over one AmiConnection (the dialer's
    least-privilege account suffices: write=originate,call,reporting). `on_change(call,
    event)` (sync or async) is called after every transition."""

    def __init__(
        self,
        conn: AmiConnection,
        dial: DialTemplates | None = None,
        *,
        on_change: Callable[[Interaction, CallEvent], Any] | None = None,
    ) -> None:
        self.conn, self.dial, self.on_change = conn, dial or DialTemplates(), on_change
        self._calls: dict[str, Interaction] = {}
        self._legs: dict[str, tuple[Interaction, str]] = {}  # Uniqueid -> (call, role)
        self._tasks: set[asyncio.Task[Any]] = set()

    def attach(self) -> None:
        """Follow the events that move interactions on; resync after reconnects."""
        self.conn.on_event("Hangup", self._on_hangup)
        self.conn.on_event("OriginateResponse", self._on_originate_response)
        self.conn.on_event("ConfbridgeJoin", self._on_confbridge_join)
        self.conn.on_ready(self.resync)

    async def open(self, agent_id: str, contact: str, iid: str | None = None) -> Interaction:
        """Take over a contact leg (channel name or Uniqueid) in the agent's conference
        (or on hold). AMI Status: NoSuchCall if it is gone, CallControlError if it is
        elsewhere. The interaction id defaults to the leg's Uniqueid."""
        if not _AGENT_ID.match(agent_id):
            raise CallControlError(f"invalid agent id {agent_id!r}")
        try:
            st = await actions.status(self.conn, contact)
        except NoSuchChannel as exc:
            raise NoSuchCall(f"contact channel {contact} does not exist") from exc
        uid, chan, app = (str(st.get(k)) for k in ("Uniqueid", "Channel", "Application"))
        conference = str(st.get("Data")).split(",")[0]
        if app.lower() == "confbridge" and conference == names.agent_bridge(agent_id):
            initial = CallState.CONNECTED
        elif st.get("Context") == names.CTX_HOLD:
            initial = CallState.HELD
        else:
            raise CallControlError(f"{chan} is not with agent {agent_id} (it runs {app})")
        iid = iid or uid
        old = self._calls.get(iid)
        if old is not None and not old.machine.terminal:
            raise CallControlError(f"interaction {iid} is already open ({old.state})")
        ix = Interaction(iid, agent_id, uid, chan, call_machine(f"call {iid}", initial))
        self._calls[iid], self._legs[uid] = ix, (ix, "contact")
        log.info("call %s: agent %s, contact %s (%s)", iid, agent_id, chan, initial)
        return ix

    def get(self, interaction_id: str) -> Interaction:
        try:
            return self._calls[interaction_id]
        except KeyError:
            raise NoSuchCall(f"no interaction {interaction_id!r}") from None

    def forget(self, interaction_id: str) -> None:
        """Drop a finished interaction (after Mark done)."""
        ix = self._calls.pop(interaction_id, None)
        for uid in (ix.contact_id, ix.target_id) if ix else ():
            if uid is not None and self._legs.get(uid, (None,))[0] is ix:
                del self._legs[uid]

    # ------------------------------------------------------------ call actions
    async def end_call(self, interaction_id: str) -> None:
        """End call: AMI Hangup of the contact (and of a third party, if any). The agent
        stays in the conference."""
        ix = self.get(interaction_id)
        async with ix.lock:
            self._check(ix, CallEvent.END)
            with self._leg(ix, ix.contact_id, untrack=True):
                await actions.hangup(self.conn, ix.contact_id)
            tid = self._release_target(ix, "ended")
            self._commit(ix, CallEvent.END)
            ix.end_reason = "agent"
            if tid is not None:
                await self._quiet_hangup(tid)

    async def hold(self, interaction_id: str) -> None:
        """Hold: AMI Redirect of the contact to `outbound-hold` (music on hold). In a
        conference the third party stays with the agent (a consultation)."""
        ix = self.get(interaction_id)
        async with ix.lock:
            self._check(ix, CallEvent.HOLD)
            with self._leg(ix, ix.contact_id):
                await actions.redirect(self.conn, ix.contact_id, names.CTX_HOLD, "s")
            self._commit(ix, CallEvent.HOLD)

    async def resume(self, interaction_id: str) -> None:
        """Resume: AMI Redirect of the held contact back into the agent's conference."""
        await self._back_to_agent(interaction_id, CallEvent.RESUME)

    async def complete_conference(self, interaction_id: str) -> None:
        """Complete a consultation as a conference: AMI Redirect of the held contact into
        the agent's conference, where the target already is."""
        await self._back_to_agent(interaction_id, CallEvent.COMPLETE_CONFERENCE)

    async def transfer(self, interaction_id: str, target: str, kind: Kind = None) -> Target:
        """Instant (blind) transfer: AMI Setvar of the target's dial template on the
        contact, Redirect to `outbound-transfer,<target>`; the agent is free at once."""
        t = self.dial.target(target, kind)
        ix = self.get(interaction_id)
        async with ix.lock:
            self._check(ix, CallEvent.TRANSFER)
            uid = ix.contact_id
            with self._leg(ix, uid, untrack=True):  # from now on the contact is the target's
                await actions.setvar(self.conn, uid, names.VAR_TARGET_DIAL, self.dial.template(t))
                await actions.setvar(self.conn, uid, names.VAR_RING_TIMEOUT, self.dial.ring_timeout)
                await actions.redirect(self.conn, uid, names.CTX_TRANSFER, t.number)
            ix.target = t
            self._commit(ix, CallEvent.TRANSFER)
            return t

    async def conference(self, interaction_id: str, target: str, kind: Kind = None) -> str:
        """Instant conference: AMI Originate of the target into the agent's conference.
        Returns its ChannelId at once; `wait_target` tells whether it joined."""
        t = self.dial.target(target, kind)
        ix = self.get(interaction_id)
        async with ix.lock:
            self._check(ix, CallEvent.CONFERENCE)
            return await self._call_target(ix, t, CallEvent.CONFERENCE)

    async def consult(self, interaction_id: str, target: str, kind: Kind = None) -> str:
        """Consultation: hold the contact (AMI Redirect) unless it is held, Originate the
        target into the agent's conference. Returns its ChannelId at once; `wait_target`
        tells whether it answered. A decline leaves the contact on hold."""
        t = self.dial.target(target, kind)
        ix = self.get(interaction_id)
        async with ix.lock:
            self._check(ix, CallEvent.CONSULT)
            if ix.state is CallState.CONNECTED:
                with self._leg(ix, ix.contact_id):
                    await actions.redirect(self.conn, ix.contact_id, names.CTX_HOLD, "s")
            return await self._call_target(ix, t, CallEvent.CONSULT)

    async def wait_target(self, interaction_id: str, timeout: float = 60.0) -> TargetOutcome:
        """The third party joined (returned) or did not (TargetDeclined with the reason);
        TimeoutError if neither happened within `timeout`."""
        ix = self.get(interaction_id)
        if ix.outcome is None:
            raise CallControlError(f"interaction {ix.id}: no third party was called")
        outcome = await asyncio.wait_for(asyncio.shield(ix.outcome), timeout)
        if not outcome.answered:
            raise TargetDeclined(outcome)
        return outcome

    async def cancel_consult(self, interaction_id: str) -> None:
        """End the consultation: AMI Hangup of the target; the contact stays on hold."""
        ix = self.get(interaction_id)
        async with ix.lock:
            self._check(ix, CallEvent.CANCEL_CONSULT)
            tid = ix.target_id
            if tid is not None:
                with contextlib.suppress(NoSuchCall), self._leg(ix, tid, untrack=True):
                    await actions.hangup(self.conn, tid)
            self._release_target(ix, "cancelled")
            if ix.machine.can(CallEvent.CANCEL_CONSULT):  # a vanished target: HELD already
                self._fire(ix, CallEvent.CANCEL_CONSULT)

    async def complete_transfer(self, interaction_id: str) -> None:
        """Complete a consultation as a transfer: AMI Setvar + Redirect of the target out
        of the agent's conference to `outbound-pair`, which bridges it with the held
        contact; the agent is free."""
        ix = self.get(interaction_id)
        async with ix.lock:
            self._check(ix, CallEvent.COMPLETE_TRANSFER)
            tid = ix.target_id
            assert tid is not None
            with self._leg(ix, ix.contact_id):
                peer = str((await actions.status(self.conn, ix.contact_id)).get("Channel"))
            if not _CHANNEL_NAME.match(peer):
                raise CallControlError(f"contact channel name {peer!r} cannot be bridged")
            ix.contact_channel = peer
            with self._leg(ix, tid):
                await actions.setvar(self.conn, tid, names.VAR_PEER, peer)
            # Both legs leave us: the pair's hangups are not this interaction's.
            with self._leg(ix, ix.contact_id, untrack=True), self._leg(ix, tid, untrack=True):
                await actions.redirect(self.conn, tid, names.CTX_PAIR, "s")
            self._release_target(ix, "transferred")
            self._commit(ix, CallEvent.COMPLETE_TRANSFER)

    async def send_dtmf(self, interaction_id: str, digits: str, duration_ms: int = 120) -> str:
        """Send DTMF into the call: AMI PlayDTMF per digit on the contact's channel.
        Returns the digits for the case history (also appended to `Interaction.dtmf`)."""
        digits = str(digits).upper()
        if not _DTMF.match(digits):
            raise CallControlError(f"not DTMF digits (0-9 * # A-D, at most 32): {digits!r}")
        ix = self.get(interaction_id)
        async with ix.lock:
            self._check(ix, CallEvent.DTMF)
            for digit in digits:
                with self._leg(ix, ix.contact_id):
                    await actions.play_dtmf(self.conn, ix.contact_id, digit, duration_ms)
                ix.dtmf.append(digit)
            self._commit(ix, CallEvent.DTMF)
            return digits

    # ------------------------------------------------------------ internals
    def _check(self, ix: Interaction, event: CallEvent) -> None:
        if ix.state is CallState.ENDED and ix.end_reason == "contact_gone":
            raise NoSuchCall(f"interaction {ix.id}: the contact has hung up")
        ix.machine.check(event)

    def _commit(self, ix: Interaction, event: CallEvent) -> None:
        """Fire a command's event once its AMI actions succeeded (events that arrived
        meanwhile may have moved the call on: NoSuchCall / IllegalTransition then)."""
        self._check(ix, event)
        self._fire(ix, event)

    def _fire(self, ix: Interaction, event: CallEvent) -> None:
        ix.machine.fire(event)
        if self.on_change is not None:
            try:
                res = self.on_change(ix, event)
                if inspect.isawaitable(res):
                    self._spawn(res)
            except Exception:
                log.exception("on_change hook failed for %s", ix.id)

    @contextlib.contextmanager
    def _leg(self, ix: Interaction, uid: str, *, untrack: bool = False) -> Iterator[None]:
        """AMI actions on one leg. "No such channel" means it hung up: treated like its
        Hangup event, raised as NoSuchCall. With `untrack` its events are ignored
        meanwhile (the action ends or hands over the leg, and its Hangup must not race
        the transition the action makes) unless the action fails."""
        leg = self._legs.pop(uid, None) if untrack else None
        try:
            yield
        except NoSuchChannel as exc:
            if leg is not None:
                self._legs.setdefault(uid, leg)
            self._on_hangup(Message({"Event": "Hangup", "Uniqueid": uid}))
            role = "contact" if uid == ix.contact_id else "third party"
            raise NoSuchCall(f"call {ix.id}: the {role}'s channel no longer exists") from exc
        except BaseException:
            if leg is not None:
                self._legs.setdefault(uid, leg)
            raise

    async def _back_to_agent(self, interaction_id: str, event: CallEvent) -> None:
        ix = self.get(interaction_id)
        async with ix.lock:
            self._check(ix, event)
            with self._leg(ix, ix.contact_id):
                await actions.redirect(self.conn, ix.contact_id, names.CTX_CONNECT, ix.agent_id)
            self._commit(ix, event)

    async def _call_target(self, ix: Interaction, t: Target, event: CallEvent) -> str:
        tid = f"tgt-{uuid.uuid4()}"
        ix.target, ix.target_id = t, tid
        ix.outcome = asyncio.get_running_loop().create_future()
        self._legs[tid] = (ix, "target")
        # Fired before the Originate: a busy target's OriginateResponse can be parsed in
        # the same read as the action's answer, before this coroutine resumes.
        self._fire(ix, event)
        try:
            await actions.originate(
                self.conn,
                f"Local/{t.number}@{names.CTX_TARGET_DIAL}",
                context=names.CTX_CONNECT,
                exten=ix.agent_id,
                channel_id=tid,
                variables={
                    names.VAR_TARGET_DIAL: self.dial.template(t),
                    names.VAR_RING_TIMEOUT: self.dial.ring_timeout,
                    names.VAR_ATTEMPT_ID: ix.id,
                },
                timeout_ms=(self.dial.ring_timeout + 5) * 1000,
            )
        except AmiError:
            self._target_failed(ix, tid, "failed")
            raise
        return tid

    def _release_target(self, ix: Interaction, reason: str) -> str | None:
        """Stop following the third party's leg; settle a pending outcome with `reason`."""
        tid, ix.target_id = ix.target_id, None
        if tid is None:
            return None
        self._legs.pop(tid, None)
        self._settle(ix, tid, answered=False, reason=reason)
        return tid

    def _settle(self, ix: Interaction, tid: str, *, answered: bool, reason: str) -> None:
        if ix.outcome is not None and not ix.outcome.done() and ix.target is not None:
            ix.last_outcome = TargetOutcome(ix.target, tid, answered, reason)
            ix.outcome.set_result(ix.last_outcome)

    def _target_failed(self, ix: Interaction, tid: str, reason: str) -> None:
        if ix.target_id != tid:
            return
        log.info("call %s: third party %s did not join (%s)", ix.id, tid, reason)
        self._release_target(ix, reason)
        if ix.machine.can(CallEvent.TARGET_FAILED):
            self._fire(ix, CallEvent.TARGET_FAILED)

    def _on_originate_response(self, msg: Message) -> None:
        uid = str(msg.get("Uniqueid", ""))
        leg = self._legs.get(uid)
        if leg is not None and leg[1] == "target" and msg.get("Response") == "Failure":
            self._target_failed(
                leg[0], uid, _ORIGINATE_REASON.get(str(msg.get("Reason")), "failed")
            )

    def _on_confbridge_join(self, msg: Message) -> None:
        uid = str(msg.get("Uniqueid", ""))
        leg = self._legs.get(uid)
        if leg is None or leg[1] != "target":
            return
        ix = leg[0]
        in_agent_bridge = msg.get("Conference") == names.agent_bridge(ix.agent_id)
        if in_agent_bridge and ix.machine.can(CallEvent.TARGET_ANSWERED):
            self._settle(ix, uid, answered=True, reason="answered")
            self._fire(ix, CallEvent.TARGET_ANSWERED)

    def _on_hangup(self, msg: Message) -> None:
        uid = str(msg.get("Uniqueid", ""))
        leg = self._legs.get(uid)
        if leg is None:
            return
        ix, role = leg
        if role == "contact":
            self._contact_gone(ix)
        elif ix.state in (CallState.CONSULT_DIALING, CallState.CONFERENCE_DIALING):
            reason = _CAUSE_REASON.get(str(msg.get("Cause")))
            if reason is None:  # cause 0: the OriginateResponse that follows says why
                loop = asyncio.get_running_loop()
                loop.call_later(_GRACE, self._target_failed, ix, uid, "failed")
            else:
                self._target_failed(ix, uid, reason)
        elif ix.target_id == uid:
            self._release_target(ix, "hung up")
            if ix.machine.can(CallEvent.TARGET_GONE):
                self._fire(ix, CallEvent.TARGET_GONE)

    def _contact_gone(self, ix: Interaction) -> None:
        self._legs.pop(ix.contact_id, None)
        if ix.machine.terminal:
            return
        # A third party belongs to the contact's interaction: left in the agent's
        # conference it would meet the agent's next contact.
        tid = self._release_target(ix, "contact hung up")
        ix.end_reason = "contact_gone"
        self._fire(ix, CallEvent.CONTACT_GONE)
        if tid is not None:
            self._spawn(self._quiet_hangup(tid))

    async def _quiet_hangup(self, channel: str) -> None:
        try:
            await actions.hangup(self.conn, channel)
        except NoSuchChannel:
            pass
        except AmiError as exc:
            log.warning("hangup of %s failed: %s", channel, exc)

    async def resync(self) -> None:
        """After a (re)connection events may have been missed: AMI Status of each live
        interaction's legs; a missing one counts as hung up."""
        for ix in [c for c in self._calls.values() if not c.machine.terminal]:
            for uid in (ix.contact_id, ix.target_id):
                if uid is not None and uid in self._legs:
                    try:
                        await actions.status(self.conn, uid)
                    except NoSuchChannel:
                        self._on_hangup(Message({"Event": "Hangup", "Uniqueid": uid}))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

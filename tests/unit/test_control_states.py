"""The call-action and agent-session state machines, target validation, and the control
logic over a fake AMI connection (no Asterisk): illegal events raise before anything is
sent, every transition is logged `state --event--> state`."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from panoramisk.message import Message

from ami_bridge.calls import (
    CALL_TERMINAL,
    CALL_TRANSITIONS,
    CallEvent,
    CallState,
    IllegalTransition,
    call_machine,
)
from ami_bridge.connection import AmiActionFailed
from ami_bridge.control import (
    CallControl,
    DialTemplates,
    InvalidTarget,
    NoSuchCall,
    TargetDeclined,
    TargetKind,
)
from ami_bridge.sessions import SESSION_TRANSITIONS, SessionEvent, SessionState, session_machine
from outbound import names
from outbound.errors import Conflict
from outbound.wire import UnsafeValue
from tests.helpers.until import async_until

# ------------------------------------------------------------------ pure state machines
ILLEGAL = [(s, e) for s in CallState for e in CallEvent if (s, e) not in CALL_TRANSITIONS]


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=lambda v: str(v))
def test_given_a_call_state_when_an_event_it_does_not_allow_arrives_then_it_raises_and_stays(
    state: CallState, event: CallEvent
) -> None:
    m = call_machine("call t", state)

    with pytest.raises(IllegalTransition) as exc:
        m.fire(event)

    assert m.state is state
    assert f"'{event}'" in str(exc.value) and f"'{state}'" in str(exc.value)
    assert isinstance(exc.value, Conflict)


def test_given_terminal_call_states_when_anything_happens_then_nothing_is_allowed() -> None:
    for state in CALL_TERMINAL:
        assert not [e for e in CallEvent if (state, e) in CALL_TRANSITIONS]


def test_given_any_live_call_when_the_contact_hangs_up_then_it_ends() -> None:
    for state in set(CallState) - CALL_TERMINAL:
        m = call_machine("call t", state)
        assert m.fire(CallEvent.CONTACT_GONE) is CallState.ENDED


@pytest.mark.parametrize(
    ("events", "final"),
    [
        (["hold", "resume", "dtmf", "end"], "ended"),
        (["consult", "target_answered", "complete_transfer"], "transferred"),
        (["consult", "target_answered", "complete_conference", "target_gone"], "connected"),
        (["consult", "target_failed", "consult", "cancel_consult", "resume"], "connected"),
        (["conference", "target_answered", "hold", "cancel_consult", "resume"], "connected"),
        (["hold", "transfer"], "transferred"),
    ],
)
def test_given_a_connected_call_when_the_agent_works_it_then_the_machine_follows(
    events: list[str], final: str
) -> None:
    m = call_machine("call t")

    for e in events:
        m.fire(CallEvent(e))

    assert m.state == final


def test_given_a_transition_when_fired_then_it_is_logged_state_event_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = call_machine("call a1")

    with caplog.at_level(logging.INFO, logger="ami_bridge.control"):
        m.fire(CallEvent.HOLD)

    assert "call a1: connected --hold--> held" in caplog.messages


def test_given_a_session_when_events_arrive_out_of_order_then_illegal_ones_raise() -> None:
    m = session_machine("1001")
    assert m.fire(SessionEvent.JOINED) is SessionState.UP
    assert m.fire(SessionEvent.LEFT) is SessionState.AWAY
    assert m.fire(SessionEvent.JOINED) is SessionState.UP
    assert m.fire(SessionEvent.LOGOUT) is SessionState.LOGGING_OUT
    assert m.fire(SessionEvent.HANGUP) is SessionState.ENDED

    for event in SessionEvent:
        with pytest.raises(IllegalTransition):
            m.fire(event)
    with pytest.raises(IllegalTransition):
        session_machine("1001").fire(SessionEvent.LEFT)  # never joined
    assert (SessionState.UP, SessionEvent.FAILED) not in SESSION_TRANSITIONS


# ------------------------------------------------------------------ targets
SANDBOX = DialTemplates(internal="Local/${NUMBER}@sim-phones", trunk="Local/${NUMBER}@sim-contacts")


@pytest.mark.parametrize(
    ("text", "kind", "number", "expected"),
    [
        ("1002", None, "1002", TargetKind.INTERNAL),
        ("+49 30 1234-560", None, "+49301234560", TargetKind.EXTERNAL),
        ("0301234567", None, "0301234567", TargetKind.EXTERNAL),
        ("*31#", "external", "*31#", TargetKind.EXTERNAL),
        ("1002", "external", "1002", TargetKind.EXTERNAL),
    ],
)
def test_given_what_an_agent_typed_when_valid_then_it_becomes_a_target(
    text: str, kind: str | None, number: str, expected: TargetKind
) -> None:
    t = SANDBOX.target(text, kind)

    assert (t.number, t.kind) == (number, expected)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("12ab", None),
        ("1002,Hangup", None),
        ("${NUMBER}", None),
        ("1002\r\nAction: Command", None),
        ("+", None),
        ("+4930123", "internal"),
        ("1+2", None),
    ],
)
def test_given_what_an_agent_typed_when_invalid_then_it_is_refused(
    text: str, kind: str | None
) -> None:
    with pytest.raises(InvalidTarget):
        SANDBOX.target(text, kind)


def test_given_dial_templates_when_they_lack_the_number_or_carry_cr_then_they_are_refused() -> None:
    with pytest.raises(ValueError, match="NUMBER"):
        DialTemplates(internal="PJSIP/1000")
    with pytest.raises(UnsafeValue):
        DialTemplates(trunk="PJSIP/${NUMBER}\r\nAction: Command")


# ------------------------------------------------------------------ control over a fake AMI
class FakeAmi:
    """Records actions; answers Status as a contact in agent 1001's conference."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.handlers: list[tuple[str, Callable[[Message], Any]]] = []
        self.fail: dict[str, str] = {}  # action -> Asterisk's error message

    def on_event(self, pattern: str, handler: Callable[[Message], Any]) -> None:
        self.handlers.append((pattern, handler))

    def on_ready(self, callback: Callable[[], Awaitable[None]]) -> None:
        pass

    def emit(self, **headers: str) -> None:
        msg = Message(headers)
        for pattern, handler in self.handlers:
            if fnmatch.fnmatch(headers["Event"], pattern):
                handler(msg)

    async def send(self, action: str, fields: Any = None, *, timeout: Any = None) -> Message:
        self.sent.append((action, dict(fields or {})))
        if action in self.fail:
            raise AmiActionFailed(
                action, Message({"Response": "Error", "Message": self.fail[action]})
            )
        return Message({"Response": "Success"})

    async def send_list(
        self, action: str, fields: Any = None, *, timeout: Any = None
    ) -> list[Message]:
        self.sent.append((action, dict(fields or {})))
        status = {"Event": "Status", "Channel": "Local/+4930@outbound-dial-1;1", "Uniqueid": "c1"}
        status |= {"Application": "ConfBridge", "Data": f"{names.agent_bridge('1001')},x,y"}
        return [Message(status)]

    def actions(self) -> list[str]:
        return [a for a, _ in self.sent]


@pytest.fixture
async def fake() -> tuple[FakeAmi, CallControl]:
    ami = FakeAmi()
    ctl = CallControl(ami, SANDBOX)  # type: ignore[arg-type]
    ctl.attach()
    await ctl.open("1001", "c1", "i1")
    ami.sent.clear()
    return ami, ctl


async def test_given_a_connected_call_when_an_illegal_action_is_asked_then_nothing_is_sent(
    fake: tuple[FakeAmi, CallControl],
) -> None:
    ami, ctl = fake

    for action in (ctl.resume, ctl.complete_transfer, ctl.complete_conference, ctl.cancel_consult):
        with pytest.raises(IllegalTransition):
            await action("i1")

    assert ami.sent == []
    assert ctl.get("i1").state is CallState.CONNECTED


async def test_given_a_consultation_when_the_target_is_busy_then_the_outcome_says_so_and_the_contact_stays_held(
    fake: tuple[FakeAmi, CallControl],
) -> None:
    ami, ctl = fake

    tid = await ctl.consult("i1", "1002")
    ami.emit(Event="Hangup", Uniqueid=tid, Cause="0")  # unexplained: wait for the reason
    ami.emit(Event="OriginateResponse", Uniqueid=tid, Response="Failure", Reason="5")

    with pytest.raises(TargetDeclined) as declined:
        await ctl.wait_target("i1", timeout=1)
    assert declined.value.reason == "busy"
    assert ami.actions() == ["Redirect", "Originate"]
    originate = ami.sent[1][1]
    assert originate["Channel"] == f"Local/1002@{names.CTX_TARGET_DIAL}"
    assert "OUTBOUND_TARGET_DIAL=Local/${NUMBER}@sim-phones" in originate["Variable"]
    assert ctl.get("i1").state is CallState.HELD


async def test_given_a_ringing_conference_target_when_it_joins_then_the_call_is_a_conference(
    fake: tuple[FakeAmi, CallControl],
) -> None:
    ami, ctl = fake
    tid = await ctl.conference("i1", "+4930123458")

    ami.emit(Event="ConfbridgeJoin", Uniqueid=tid, Conference=names.agent_bridge("1001"))

    assert (await ctl.wait_target("i1", timeout=1)).answered
    assert ctl.get("i1").state is CallState.CONFERENCE
    ami.emit(Event="Hangup", Uniqueid=tid, Cause="16")
    assert ctl.get("i1").state is CallState.CONNECTED


async def test_given_a_refused_originate_when_consulting_then_the_error_is_raised_and_the_contact_stays_held(
    fake: tuple[FakeAmi, CallControl],
) -> None:
    ami, ctl = fake
    ami.fail["Originate"] = "Permission denied"

    with pytest.raises(AmiActionFailed, match="Permission denied"):
        await ctl.consult("i1", "1002")

    assert ctl.get("i1").state is CallState.HELD
    with pytest.raises(TargetDeclined):
        await ctl.wait_target("i1", timeout=1)


async def test_given_a_vanished_contact_when_the_agent_holds_then_no_such_call_and_the_call_ends(
    fake: tuple[FakeAmi, CallControl],
) -> None:
    ami, ctl = fake
    ami.fail["Redirect"] = "Channel does not exist: c1"

    with pytest.raises(NoSuchCall):
        await ctl.hold("i1")

    assert ctl.get("i1").state is CallState.ENDED
    with pytest.raises(NoSuchCall):
        await ctl.end_call("i1")
    assert ami.actions() == ["Redirect"]


async def test_given_a_call_when_the_contact_hangs_up_in_a_conference_then_the_third_party_is_dropped(
    fake: tuple[FakeAmi, CallControl],
) -> None:
    ami, ctl = fake
    tid = await ctl.conference("i1", "1002")
    ami.emit(Event="ConfbridgeJoin", Uniqueid=tid, Conference=names.agent_bridge("1001"))

    ami.emit(Event="Hangup", Uniqueid="c1", Cause="16")

    assert ctl.get("i1").state is CallState.ENDED
    await async_until(lambda: ami.sent[-1] == ("Hangup", {"Channel": tid, "Cause": "16"}))


async def test_given_invalid_dtmf_when_sent_then_it_is_refused_before_asterisk(
    fake: tuple[FakeAmi, CallControl],
) -> None:
    ami, ctl = fake

    with pytest.raises(Exception, match="DTMF"):
        await ctl.send_dtmf("i1", "12\r\n")

    assert await ctl.send_dtmf("i1", "9*#") == "9*#"
    assert [f["Digit"] for a, f in ami.sent if a == "PlayDTMF"] == ["9", "*", "#"]

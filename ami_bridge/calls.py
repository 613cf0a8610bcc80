"""Call states of a connected outbound call and the small generic state machine that
drives them (pure: no I/O). control.py acts on Asterisk; this says what is legal."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Generic, TypeVar

from outbound.errors import Conflict

log = logging.getLogger("ami_bridge.control")

S = TypeVar("S", bound=StrEnum)
E = TypeVar("E", bound=StrEnum)


class IllegalTransition(Conflict):
    """The event is not allowed in the machine's current state; nothing was done."""

    def __init__(self, machine: str, state: StrEnum, event: StrEnum) -> None:
        self.state, self.event = state, event
        super().__init__(f"{machine}: '{event}' is not allowed while '{state}'")


class StateMachine(Generic[S, E]):
    """A named state and a transition table {(state, event): next state}."""

    def __init__(
        self, name: str, initial: S, table: Mapping[tuple[S, E], S], terminal: frozenset[S]
    ) -> None:
        self.name, self.state, self.table, self.terminal_states = name, initial, table, terminal

    @property
    def terminal(self) -> bool:
        return self.state in self.terminal_states

    def can(self, event: E) -> bool:
        return (self.state, event) in self.table

    def check(self, event: E) -> S:
        """The state `event` leads to; IllegalTransition if it is not allowed now."""
        try:
            return self.table[(self.state, event)]
        except KeyError:
            raise IllegalTransition(self.name, self.state, event) from None

    def fire(self, event: E) -> S:
        new = self.check(event)
        log.info("%s: %s --%s--> %s", self.name, self.state, event, new)
        self.state = new
        return new


class CallState(StrEnum):
    CONNECTED = "connected"  # contact and agent talk in the agent's conference
    HELD = "held"  # contact hears music outside the conference
    CONSULT_DIALING = "consult_dialing"  # contact held, target ringing
    CONSULTING = "consulting"  # contact held, target talks with the agent
    CONFERENCE_DIALING = "conference_dialing"  # contact with the agent, target ringing
    CONFERENCE = "conference"  # all three in the agent's conference
    TRANSFERRED = "transferred"  # contact handed over; the agent is free
    ENDED = "ended"


class CallEvent(StrEnum):
    END = "end"
    HOLD = "hold"
    RESUME = "resume"
    TRANSFER = "transfer"
    CONFERENCE = "conference"
    CONSULT = "consult"
    CANCEL_CONSULT = "cancel_consult"
    COMPLETE_TRANSFER = "complete_transfer"
    COMPLETE_CONFERENCE = "complete_conference"
    DTMF = "dtmf"
    TARGET_ANSWERED = "target_answered"
    TARGET_FAILED = "target_failed"
    TARGET_GONE = "target_gone"
    CONTACT_GONE = "contact_gone"


_C, _V = CallState, CallEvent
CALL_TRANSITIONS: dict[tuple[CallState, CallEvent], CallState] = {
    (_C.CONNECTED, _V.END): _C.ENDED,
    (_C.CONNECTED, _V.HOLD): _C.HELD,
    (_C.CONNECTED, _V.TRANSFER): _C.TRANSFERRED,
    (_C.CONNECTED, _V.CONFERENCE): _C.CONFERENCE_DIALING,
    (_C.CONNECTED, _V.CONSULT): _C.CONSULT_DIALING,
    (_C.CONNECTED, _V.DTMF): _C.CONNECTED,
    (_C.HELD, _V.RESUME): _C.CONNECTED,
    (_C.HELD, _V.END): _C.ENDED,
    (_C.HELD, _V.TRANSFER): _C.TRANSFERRED,
    (_C.HELD, _V.CONSULT): _C.CONSULT_DIALING,
    (_C.CONSULT_DIALING, _V.TARGET_ANSWERED): _C.CONSULTING,
    (_C.CONSULT_DIALING, _V.TARGET_FAILED): _C.HELD,
    (_C.CONSULT_DIALING, _V.CANCEL_CONSULT): _C.HELD,
    (_C.CONSULTING, _V.CANCEL_CONSULT): _C.HELD,
    (_C.CONSULTING, _V.TARGET_GONE): _C.HELD,
    (_C.CONSULTING, _V.COMPLETE_TRANSFER): _C.TRANSFERRED,
    (_C.CONSULTING, _V.COMPLETE_CONFERENCE): _C.CONFERENCE,
    (_C.CONFERENCE_DIALING, _V.TARGET_ANSWERED): _C.CONFERENCE,
    (_C.CONFERENCE_DIALING, _V.TARGET_FAILED): _C.CONNECTED,
    (_C.CONFERENCE_DIALING, _V.END): _C.ENDED,
    (_C.CONFERENCE_DIALING, _V.DTMF): _C.CONFERENCE_DIALING,
    (_C.CONFERENCE, _V.TARGET_GONE): _C.CONNECTED,
    (_C.CONFERENCE, _V.HOLD): _C.CONSULTING,  # the third party stays with the agent
    (_C.CONFERENCE, _V.END): _C.ENDED,
    (_C.CONFERENCE, _V.DTMF): _C.CONFERENCE,
}
CALL_TERMINAL = frozenset({_C.TRANSFERRED, _C.ENDED})
for _s in set(_C) - CALL_TERMINAL:  # the contact hanging up ends every live state
    CALL_TRANSITIONS[(_s, _V.CONTACT_GONE)] = _C.ENDED


def call_machine(name: str, initial: CallState = CallState.CONNECTED) -> StateMachine[Any, Any]:
    return StateMachine(name, initial, CALL_TRANSITIONS, CALL_TERMINAL)

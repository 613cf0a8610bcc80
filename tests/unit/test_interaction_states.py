"""The interaction state machine and its pure rules: transitions, derivation from the
attempt's columns, the Origin field, disposition codes and caller IDs."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbound.campaigns.interaction import (
    CALLBACK_ORIGIN,
    CONNECTING_ORIGIN,
    PERSONAL_CALLBACK_ORIGIN,
    TRANSITIONS,
    IllegalInteraction,
    IState,
    attempt_interaction_state,
    check_caller_id,
    check_disposition,
    derive_state,
    next_state,
    origin,
    step,
)
from outbound.errors import Conflict, Invalid, NotFound
from outbound.model import AttemptState, DialMode
from outbound.model.tables import Offer, OfferState

S = IState
EVENTS = sorted({e for _, e in TRANSITIONS})
PREVIEW_PATH = [("dial", S.DIALING), ("connect", S.CONNECTED), ("end", S.WRAPUP)]


def test_given_preview_when_dialed_connected_ended_marked_then_done() -> None:
    state = S.PREVIEWING
    for event, want in [*PREVIEW_PATH, ("mark_done", S.DONE)]:
        state = next_state(state, event)
        assert state is want


def test_given_progressive_when_accepted_then_connecting_then_connected() -> None:
    assert next_state(S.PREVIEWING, "accept") is S.CONNECTING
    assert next_state(S.CONNECTING, "connect") is S.CONNECTED
    assert next_state(S.CONNECTING, "end") is S.NOT_CONNECTED
    assert next_state(S.NOT_CONNECTED, "mark_done") is S.DONE


@pytest.mark.parametrize(
    ("state", "event", "why"),
    [
        (S.CONNECTED, "mark_done", "still connected"),
        (S.DONE, "mark_done", "already marked done"),
        (S.DECLINED, "dial", "declined"),
        (S.EXPIRED, "dial", "expired"),
        (S.DIALING, "decline", "being placed"),
        (S.WRAPUP, "dial", "wrapup"),
    ],
)
def test_given_illegal_event_then_raises_a_conflict_saying_why(
    state: IState, event: str, why: str
) -> None:
    with pytest.raises(IllegalInteraction, match=why) as exc:
        next_state(state, event)
    assert isinstance(exc.value, Conflict)


@given(st.sampled_from(list(IState)), st.sampled_from([*EVENTS, "bogus"]))
def test_given_any_state_and_event_then_legal_exactly_when_in_the_table(
    state: IState, event: str
) -> None:
    if (state, event) in TRANSITIONS:
        assert next_state(state, event) is TRANSITIONS[(state, event)]
    else:
        with pytest.raises(IllegalInteraction):
            next_state(state, event)


def test_terminal_states_have_no_way_out() -> None:
    for terminal in (S.DONE, S.DECLINED, S.EXPIRED):
        assert not [e for (s, e) in TRANSITIONS if s is terminal]


def test_given_transition_then_logged_as_state_event_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="outbound.interaction"):
        assert step("a1", S.WRAPUP, "mark_done") is S.DONE
    assert "interaction a1: wrapup --mark_done--> done" in caplog.text


@given(
    st.sampled_from(list(DialMode)),
    st.sampled_from(list(AttemptState)),
    st.booleans(),
    st.one_of(st.none(), st.sampled_from(["", "sale"])),
)
def test_given_attempt_columns_then_state_follows_the_dialer_contract(
    mode: DialMode, state: AttemptState, connected: bool, disposition: str | None
) -> None:
    got = attempt_interaction_state(mode, state, connected, disposition)
    live = state is not AttemptState.ENDED
    # wrap-up exactly when: ended, connected, no disposition (what agent_is_free reads)
    assert (got is S.WRAPUP) == (not live and connected and disposition is None)
    if live:
        assert got in (S.CONNECTED, S.DIALING, S.CONNECTING)
        if got is S.CONNECTING:
            assert mode in (DialMode.PROGRESSIVE, DialMode.PREDICTIVE)
    else:
        assert (got is S.DONE) == (disposition is not None)


def test_given_offer_states_then_derived() -> None:
    def offer(state: OfferState) -> Offer:
        return Offer(id=1, state=state)

    assert derive_state(DialMode.PREVIEW, offer(OfferState.OPEN), None) is S.PREVIEWING
    assert derive_state(DialMode.PREVIEW, offer(OfferState.CALL_LATER), None) is S.DECLINED
    assert derive_state(DialMode.PREVIEW, offer(OfferState.DO_NOT_CALL), None) is S.DECLINED
    assert derive_state(DialMode.PREVIEW, offer(OfferState.EXPIRED), None) is S.EXPIRED
    # Every offer state without an attempt maps to an interaction state (a rejected push
    # offer included); a dialed offer's state is its attempt's.
    for state in set(OfferState) - {OfferState.DIALED}:
        assert derive_state(DialMode.PUSH_PREVIEW, offer(state), None) in set(S)
    with pytest.raises(NotFound):
        derive_state(DialMode.PREVIEW, None, None)


@pytest.mark.parametrize(
    ("mode", "state", "name", "callback", "want"),
    [
        (DialMode.PROGRESSIVE, S.CONNECTING, "Ann", None, CONNECTING_ORIGIN),
        (DialMode.PREDICTIVE, S.CONNECTING, "Ann", None, CONNECTING_ORIGIN),
        (DialMode.PROGRESSIVE, S.CONNECTED, "Ann", None, "Ann"),
        (DialMode.PROGRESSIVE, S.CONNECTED, "  ", None, "+4930100"),
        (DialMode.PREVIEW, S.PREVIEWING, "Ann", None, "Ann"),
        (DialMode.PREVIEW, S.DIALING, "", None, "+4930100"),
        (DialMode.PREVIEW, S.PREVIEWING, "Ann", "pooled", CALLBACK_ORIGIN),
        (DialMode.PROGRESSIVE, S.CONNECTING, "Ann", "personal", PERSONAL_CALLBACK_ORIGIN),
        (DialMode.PROGRESSIVE, S.CONNECTED, "Ann", "pooled", CALLBACK_ORIGIN),
    ],
)
def test_origin_field(
    mode: DialMode, state: IState, name: str, callback: str | None, want: str
) -> None:
    assert origin(mode, state, name, "+4930100", callback) == want


CODES = ["sale", "no_interest"]


def test_disposition_rules() -> None:
    assert check_disposition(CODES, True, " sale ") == "sale"
    assert check_disposition(CODES, False, None) == ""
    assert check_disposition([], False, None) == ""
    assert check_disposition([], True, "") == ""
    with pytest.raises(Invalid, match="required.*sale, no_interest"):
        check_disposition(CODES, True, None)
    with pytest.raises(Invalid, match="unknown disposition code 'maybe'"):
        check_disposition(CODES, False, "maybe")
    with pytest.raises(Invalid, match="no disposition codes"):
        check_disposition([], False, "sale")


def test_caller_id_rules() -> None:
    ids = ["+4930111", "+4930222"]
    assert check_caller_id(True, ids, "+4930222") == "+4930222"
    assert check_caller_id(False, ids, None) == "+4930111"
    assert check_caller_id(False, [], None) is None
    with pytest.raises(Invalid, match="choose a caller ID"):
        check_caller_id(True, ids, None)
    with pytest.raises(Invalid, match="not one of"):
        check_caller_id(False, ids, "+4930999")
    with pytest.raises(Invalid, match="none are configured"):
        check_caller_id(False, [], "+4930999")

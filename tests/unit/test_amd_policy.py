"""AMD verdict + campaign policy -> result and route."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from outbound.campaigns.amd import (
    DEFAULT_POLICY,
    abandon_plan,
    agent_availability,
    amd_args,
    connect_delay_ms,
    connect_timing,
    decide,
    is_late_connect,
    is_sound_name,
    route_to_agent,
    validate_policy,
)
from outbound.errors import Invalid
from outbound.model.types import CallResult as R


@pytest.mark.parametrize(
    ("status", "cause", "policy", "agent", "result", "route"),
    [
        ("HUMAN", "HUMAN-300-500", {}, True, R.ANSWERED, "connect"),
        ("HUMAN", "HUMAN-300-500", {}, False, R.ABANDONED, "abandon"),
        ("MACHINE", "LONGGREETING-1500-1500", {}, True, R.ANSWERING_MACHINE, "hangup"),
        (
            "MACHINE",
            "MAXWORDS-2-2",
            {"machine": "message", "message": "vm-goodbye"},
            True,
            R.ANSWERING_MACHINE,
            "message",
        ),
        ("MACHINE", "INITIALSILENCE-2500-2500", {}, True, R.SILENCE, "hangup"),
        ("NOTSURE", "TOOLONG-5000", {}, True, R.ANSWERED, "connect"),
        ("NOTSURE", "TOOLONG-5000", {"notsure": "machine"}, True, R.ANSWERING_MACHINE, "hangup"),
        ("HANGUP", "", {}, True, R.HANGUP, "hangup"),
        ("", "", {}, False, R.ABANDONED, "abandon"),
    ],
)
def test_decisions(
    status: str, cause: str, policy: dict[str, str], agent: bool, result: R, route: str
) -> None:
    d = decide(status, cause, policy, agent)
    assert (d.result, d.route) == (result, route)


def test_amd_arguments_default_and_validated() -> None:
    assert amd_args({}) == ["2500", "1500", "800", "5000", "100", "50", "2", "256", "5000"]
    assert amd_args({"greeting": 1200})[1] == "1200"
    with pytest.raises(Invalid):
        amd_args({"greeting": "1200\nHANGUP"})


@pytest.mark.parametrize(
    "name",
    ["hello", "custom/acme-identification", "im-sorry&goodbye", "digits/9", "a_b-c"],
)
def test_given_a_plain_sound_name_then_it_is_safe(name: str) -> None:
    assert is_sound_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "../../etc/passwd",
        "hello.gsm",
        "hello,m",  # a comma would add Playback options
        "${EVIL}",
        "hello world",
        "a\nb",
        "a&&b",
        "a&b&c&d&e&f",  # more than five parts
        "x" * 65,
        None,
        7,
    ],
)
def test_given_an_unsafe_prompt_then_not_a_sound_name(name: object) -> None:
    assert not is_sound_name(name)


def test_given_no_settings_then_the_abandon_plan_is_the_default_with_key_9() -> None:
    plan = abandon_plan({})
    assert (plan.prompt, plan.optout_key, plan.optout_wait, plan.optout_confirm) == (
        "",
        "9",
        5,
        "removed",
    )
    assert abandon_plan({"abandon_message": "custom/acme", "optout_key": "*"}).prompt == (
        "custom/acme"
    )
    assert abandon_plan({"optout_key": ""}).optout_key == ""  # no opt-out offered


@pytest.mark.parametrize(
    "policy",
    [
        {"optout_key": "99"},
        {"optout_key": "a"},
        {"optout_key": 9},
        {"optout_key": "\n"},
        {"abandon_message": "id,m"},
        {"abandon_message": "../x"},
        {"optout_confirm": ""},
        {"optout_wait": 0},
        {"optout_wait": "5"},
        {"optout_wait": True},
    ],
)
def test_given_an_unsafe_abandon_setting_then_invalid(policy: dict[str, object]) -> None:
    with pytest.raises(Invalid):
        abandon_plan(policy)


@pytest.mark.parametrize(
    "policy",
    [
        {"notsure": "maybe"},
        {"machine": "voicemail"},
        {"message": "x.wav"},
        {"optout_scope": "everyone"},
        {"fax_detect": -1},
        {"fax_detect": 31},
        {"greeting": 0},
        {"optout_key": "12"},
    ],
)
def test_given_a_bad_policy_key_then_validate_policy_says_which(
    policy: dict[str, object],
) -> None:
    with pytest.raises(Invalid, match=next(iter(policy))):
        validate_policy(policy)


def test_given_a_valid_policy_then_defaults_filled_and_unknown_keys_kept() -> None:
    p = validate_policy({"optout_scope": "campaign", "owner_note": "x"})
    assert p["optout_scope"] == "campaign" and p["owner_note"] == "x"
    assert p["optout_key"] == DEFAULT_POLICY["optout_key"]


@pytest.mark.parametrize(
    ("parties", "marked", "free", "why"),
    [
        ("1", "1", True, ""),
        ("0", "0", False, "not in their conference"),
        ("", "", False, "not in their conference"),  # no such conference
        (None, None, False, "not in their conference"),
        ("2", "1", False, "busy"),  # a contact (or third party) is with the agent
        ("1", "0", False, "not in their conference"),  # someone waits, no agent
        ("x", "1", False, "unreadable"),
    ],
)
def test_agent_availability_from_confbridge_info(
    parties: str | None, marked: str | None, free: bool, why: str
) -> None:
    ok, reason = agent_availability(parties, marked)
    assert ok is free and why in reason


def test_given_a_connect_and_no_free_agent_then_abandoned_with_the_reason() -> None:
    connect = decide("HUMAN", "HUMAN-300-500", {}, agent_reserved=True)
    d = route_to_agent(connect, False, "agent busy")
    assert (d.result, d.route, d.why) == (R.ABANDONED, "abandon", "agent busy")
    assert route_to_agent(connect, True, "") == connect
    machine = decide("MACHINE", "LONGGREETING", {}, agent_reserved=True)
    assert route_to_agent(machine, False, "x") == machine  # only people are connected


def test_late_connect_counts_the_silence_amd_waited_for() -> None:
    t0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert connect_delay_ms(t0, t0 + timedelta(milliseconds=1234)) == 1234
    assert not is_late_connect(1200, {})  # 800 ms silence + 1200 ms = 2 s: in time
    assert is_late_connect(1201, {})
    assert is_late_connect(600, {"after_greeting_silence": 1500})
    assert not is_late_connect(None, {})  # never connected: not a late connect


def test_given_hash_as_the_optout_key_then_invalid_because_read_ends_input_on_it() -> None:
    # Read() takes "#" as the end of input: the digit read would be "", never "#".
    with pytest.raises(Invalid, match="cannot be '#'"):
        abandon_plan({"optout_key": "#"})
    with pytest.raises(Invalid, match="optout_key"):
        validate_policy({"abandon_message": "custom/acme", "optout_key": "#"})
    assert abandon_plan({"optout_key": "*"}).optout_key == "*"
    assert abandon_plan({"optout_key": "0"}).optout_key == "0"


def test_given_machine_message_without_a_message_then_invalid_and_says_so() -> None:
    with pytest.raises(Invalid, match="message .* required when machine is 'message'"):
        validate_policy({"machine": "message"})
    with pytest.raises(Invalid, match="message .* required"):
        validate_policy({"machine": "message", "message": ""})
    with pytest.raises(Invalid, match="message"):
        validate_policy({"machine": "message", "message": "x.wav"})
    assert validate_policy({"machine": "message", "message": "vm-goodbye"})["message"] == (
        "vm-goodbye"
    )
    assert validate_policy({"machine": "hangup", "message": ""})["machine"] == "hangup"


def test_given_decision_and_join_times_then_connect_timing_once_both_are_known() -> None:
    t0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    joined = t0 + timedelta(milliseconds=350)
    audit = {"decided_at": t0.isoformat()}
    assert connect_timing(audit, joined, {}) == {"connect_ms": 350, "late_connect": False}
    # Late: the greeting ended after_greeting_silence ms before the decision.
    late = connect_timing(audit, joined, {"after_greeting_silence": 1700})
    assert late == {"connect_ms": 350, "late_connect": True}
    # An invalid campaign policy counts as the defaults (800 ms), as classify did.
    assert connect_timing(audit, joined, {"notsure": "?"}) == {
        "connect_ms": 350,
        "late_connect": False,
    }
    assert connect_timing({}, joined, {}) is None  # the verdict not written yet
    assert connect_timing(audit, None, {}) is None  # not joined yet
    assert connect_timing({**audit, "connect_ms": 1}, joined, {}) is None  # stored already
    assert connect_timing({"decided_at": "yesterday"}, joined, {}) is None
    naive = {"decided_at": t0.replace(tzinfo=None).isoformat()}  # taken as UTC
    assert connect_timing(naive, joined, {}) == {"connect_ms": 350, "late_connect": False}

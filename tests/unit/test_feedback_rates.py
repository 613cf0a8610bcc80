"""Classification feedback arithmetic (pure): what each call counts as, the rates, the
grouping per campaign and trunk, and the input checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from outbound.campaigns.feedback import (
    DEFAULT_TRUNK,
    Rates,
    Row,
    cause_kind,
    check_attempt_id,
    check_note,
    check_page,
    check_verdict,
    fold,
    outcome,
    parse_since,
    rate,
)
from outbound.errors import Invalid

AM = "answering_machine"


@pytest.mark.parametrize(
    ("connected", "result", "feedback", "review", "expected"),
    [
        (True, None, None, None, "human_ok"),  # live call, nobody complained
        (True, "answered", "machine", None, "false_human"),  # agent flag counts at once
        (True, "answered", "machine", "human", "human_ok"),  # supervisor overruled the flag
        (True, "answered", "machine", "machine", "false_human"),  # confirmed
        (True, "answered", None, "machine", "false_human"),  # supervisor found it alone
        (False, AM, None, None, "machine_unreviewed"),
        (False, AM, None, "machine", "machine_ok"),
        (False, AM, None, "human", "false_machine"),
        (False, "silence", None, None, "other"),
        (False, "abandoned", None, None, "other"),  # human but nobody heard it
        (False, "hangup", None, "human", "other"),
    ],
)
def test_given_a_classified_call_and_its_feedback_then_it_counts_as_expected(
    connected: bool, result: str | None, feedback: str | None, review: str | None, expected: str
) -> None:
    assert outcome(connected, result, feedback, review) == expected


def test_given_nothing_measured_then_the_rate_is_unknown_not_zero() -> None:
    assert rate(0, 0) is None
    assert rate(0, 4) == 0.0
    assert rate(1, 4) == 0.25


def test_given_mixed_calls_when_added_then_rates_use_connected_and_reviewed_calls() -> None:
    r = Rates("c")
    r.add(True, "answered", None, None, "HUMAN-300-500", n=7)
    r.add(True, "answered", "machine", None, "HUMAN-200-800", n=2)  # unreviewed flags
    r.add(True, "answered", "machine", "human", "HUMAN-200-800")  # overruled
    r.add(False, AM, None, None, "LONGGREETING-1600-1500", n=5)  # not reviewed yet
    r.add(False, AM, None, "machine", "LONGGREETING-1600-1500", n=3)
    r.add(False, AM, None, "human", "MAXWORDS-3-3")
    r.add(False, "silence", None, None, "INITIALSILENCE-2500-2500", n=9)  # ignored
    assert (r.human, r.false_human, r.flags_unreviewed) == (10, 2, 2)
    assert r.false_human_rate == pytest.approx(0.2)
    assert (r.machine, r.machine_reviewed, r.machine_unreviewed, r.false_machine) == (9, 4, 5, 1)
    assert r.false_machine_rate == pytest.approx(0.25)
    d = r.as_dict()
    assert d["causes"] == {
        "HUMAN": {"judged": 10, "wrong": 2},
        "LONGGREETING": {"judged": 3, "wrong": 0},
        "MAXWORDS": {"judged": 1, "wrong": 1},
    }
    assert d["false_human_rate"] == pytest.approx(0.2) and d["machine_unreviewed"] == 5


def test_given_rows_of_two_campaigns_and_trunks_when_folded_then_grouped_each_way() -> None:
    rows = [
        Row("a", "PJSIP/${NUMBER}@t1", True, None, "machine", None, "HUMAN-1-1", 1),
        Row("a", "PJSIP/${NUMBER}@t1", True, None, None, None, "HUMAN-1-1", 3),
        Row("a", None, False, AM, None, "human", "TOOLONG-5000", 2),
        Row("b", "PJSIP/${NUMBER}@t1", True, None, None, None, "", 4),
    ]
    rep = fold(rows)
    camps = {r.key: r for r in rep.campaigns}
    trunks = {r.key: r for r in rep.trunks}
    assert list(camps) == ["a", "b"]
    assert camps["a"].false_human_rate == pytest.approx(0.25)
    assert camps["a"].false_machine_rate == 1.0
    assert camps["b"].false_human_rate == 0.0 and camps["b"].false_machine_rate is None
    assert trunks["PJSIP/${NUMBER}@t1"].human == 8
    assert trunks["PJSIP/${NUMBER}@t1"].false_human_rate == pytest.approx(1 / 8)
    assert trunks[DEFAULT_TRUNK].false_machine == 2
    assert rep.total.human == 8 and rep.total.machine == 2
    assert rep.total.as_dict()["causes"]["(none)"] == {"judged": 4, "wrong": 0}


@pytest.mark.parametrize(
    ("cause", "kind"),
    [
        ("LONGGREETING-1620-1500", "LONGGREETING"),
        ("HUMAN-300-500", "HUMAN"),
        ("TOOLONG-5000", "TOOLONG"),
        ("maxwords", "MAXWORDS"),
        ("", "(none)"),
        (None, "(none)"),
    ],
)
def test_given_an_amd_cause_then_its_kind_drops_the_measured_numbers(
    cause: str | None, kind: str
) -> None:
    assert cause_kind(cause) == kind


def test_given_relative_or_iso_since_then_parsed_in_utc() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since(" 12h ", now) == now - timedelta(hours=12)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2w", now) == now - timedelta(weeks=2)
    assert parse_since("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_since("2026-11-01T10:00+01:00", now) == datetime(2026, 11, 1, 9, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["yesterday", "7 days", "-3d", "", "2026-13-01"])
def test_given_a_bad_since_then_invalid(bad: str) -> None:
    with pytest.raises(Invalid, match="since"):
        parse_since(bad)


def test_given_bad_feedback_input_then_invalid_with_a_clear_message() -> None:
    assert check_verdict(" Human ") == "human"
    with pytest.raises(Invalid, match="human or machine"):
        check_verdict("robot")
    assert check_note(None) is None and check_note("   ") is None
    assert check_note("  beep at 3 s ") == "beep at 3 s"
    for bad in ("a\nb", "a\rb", "a\0b"):
        with pytest.raises(Invalid, match="control characters"):
            check_note(bad)
    with pytest.raises(Invalid, match="at most 500"):
        check_note("x" * 501)
    assert check_attempt_id("0b0e-11") == "0b0e-11"
    for bad_id in ("", "x" * 37, "a b", "a\0", "a\n"):
        with pytest.raises(Invalid, match="not a call attempt id"):
            check_attempt_id(bad_id)
    with pytest.raises(Invalid, match="limit"):
        check_page(0, 0)
    with pytest.raises(Invalid, match="offset"):
        check_page(10, -1)

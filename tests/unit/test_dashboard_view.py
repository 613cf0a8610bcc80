"""The dashboard's pure helpers: number masking, rates, the agent's status word, which
activity wins, durations and times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from status_page.dashboard import (
    Activity,
    _keep,
    agent_status,
    day_start,
    iso,
    mask,
    rate,
    seconds,
)


@pytest.mark.parametrize(
    ("number", "shown"),
    [
        ("+4930111222333", "+•••••••••2333"),
        ("+1 555 123 4567", "+• ••• ••• 4567"),
        ("1234", "1234"),
        ("12", "12"),
        ("", ""),
    ],
)
def test_given_a_number_then_only_its_last_4_digits_show(number: str, shown: str) -> None:
    assert mask(number) == shown


def test_given_no_denominator_then_there_is_no_rate() -> None:
    assert rate(0, 0) is None
    assert rate(1, 3) == pytest.approx(0.3333)
    assert rate(0, 5) == 0.0


@pytest.mark.parametrize(
    ("live", "word"),
    [
        ({}, "Logged out"),
        ({"session": "ended", "ready_voice": "1"}, "Logged out"),
        ({"session": "logging_in"}, "Logging in"),
        ({"session": "up", "ready_voice": "0", "ready_preview": "1"}, "Not ready"),
        ({"session": "up", "ready_voice": "1"}, "Ready"),
    ],
)
def test_given_live_state_then_the_status_word(live: dict[str, str], word: str) -> None:
    assert agent_status(live) == word


def test_given_several_rows_of_an_agent_then_the_call_wins_over_wrap_up_and_offer() -> None:
    t = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    out: dict[str, Activity] = {}
    _keep(out, "7", Activity("offer", t))
    _keep(out, "7", Activity("wrap_up", t, "w"))
    assert out["7"].kind == "wrap_up"
    _keep(out, "7", Activity("in_call", t, "c"))
    _keep(out, "7", Activity("dialing", t, "d"))
    _keep(out, None, Activity("in_call", t))
    assert out == {"7": Activity("in_call", t, "c")}


def test_given_times_then_seconds_iso_and_the_utc_day() -> None:
    now = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    assert seconds(now, now - timedelta(seconds=90.9)) == 90
    assert seconds(now, now + timedelta(seconds=5)) == 0  # clock skew is never negative
    assert seconds(now, None) is None
    assert iso(now) == "2026-03-29T00:30:00Z" and iso(None) is None
    assert day_start(now) == datetime(2026, 3, 29, tzinfo=UTC)

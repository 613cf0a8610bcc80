"""The connect time of an attempt is Asterisk's own (the event's Timestamp), so the
2-second rule is judged on when the contact joined, not on when the bridge read it."""

from __future__ import annotations

from datetime import UTC, datetime

from ami_bridge.originator import event_time


def test_given_a_timestamp_then_that_instant_in_utc() -> None:
    got = event_time({"Event": "ConfbridgeJoin", "Timestamp": "1795000000.250000"})
    assert got == datetime(2026, 11, 18, 11, 6, 40, 250000, tzinfo=UTC)


def test_given_no_or_a_bad_timestamp_then_none_and_the_caller_uses_now() -> None:
    assert event_time({"Event": "ConfbridgeJoin"}) is None
    assert event_time({"Timestamp": "soon"}) is None

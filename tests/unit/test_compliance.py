"""Pure compliance rules: calling hours on the contact's wall clock (DST included), unknown
zones, the 72-hour abandon rule, attempts left, and the next dialable time."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbound.compliance import (
    RULES,
    Facts,
    Lease,
    evaluate,
    in_window,
    next_in_window,
)
from outbound.errors import Invalid
from outbound.model import CallResult, CampaignState, ContactState


def _u(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


def facts(**kw: Any) -> Facts:
    base: dict[str, Any] = {
        "contact_id": 7,
        "campaign_name": "c",
        "campaign_state": CampaignState.RUNNING,
        "calling_hours_start": time(8, 0),
        "calling_hours_end": time(21, 0),
        "contact_state": ContactState.READY,
        "timezone": "Europe/Berlin",
        "attempts": 0,
        "max_attempts": 5,
        "e164": "+493012345678",
    }
    return Facts(**{**base, **kw})


def rule(v: Any, name: str) -> Any:
    return next(r for r in v.rules if r.name == name)


NOON_BERLIN = _u(2026, 1, 15, 11, 0)  # 12:00 CET


def test_given_a_clean_record_in_hours_then_allowed_every_rule_ok_and_audited() -> None:
    v = evaluate(facts(), NOON_BERLIN)
    assert v.allowed and not v.failed
    assert [r.name for r in v.rules] == list(RULES)
    assert v.next_dialable_at == NOON_BERLIN
    audit = v.audit()
    assert list(audit) == list(RULES) and all(x.startswith("ok: ") for x in audit.values())
    assert "12:00 in Europe/Berlin" in audit["calling_hours"]


@pytest.mark.parametrize(
    ("zone", "now", "allowed", "next_at"),
    [
        ("Europe/Berlin", _u(2026, 1, 15, 6, 59), False, _u(2026, 1, 15, 7, 0)),
        ("Europe/Berlin", _u(2026, 1, 15, 7, 0), True, None),
        ("Europe/Berlin", _u(2026, 1, 15, 19, 59, 59), True, None),
        ("Europe/Berlin", _u(2026, 1, 15, 20, 0), False, _u(2026, 1, 16, 7, 0)),
        ("Europe/Berlin", _u(2026, 7, 15, 5, 30), False, _u(2026, 7, 15, 6, 0)),  # CEST
        ("America/New_York", _u(2026, 7, 1, 11, 59), False, _u(2026, 7, 1, 12, 0)),  # EDT
        ("America/New_York", _u(2026, 1, 2, 1, 30), True, None),  # 20:30 EST, a day before
        ("Asia/Kolkata", _u(2026, 3, 1, 2, 0), False, _u(2026, 3, 1, 2, 30)),  # +05:30
        ("Australia/Sydney", _u(2026, 1, 10, 20, 0), False, _u(2026, 1, 10, 21, 0)),  # +11
        ("Pacific/Chatham", _u(2026, 1, 10, 18, 0), False, _u(2026, 1, 10, 18, 15)),  # +13:45
        ("UTC", _u(2026, 1, 10, 21, 0), False, _u(2026, 1, 11, 8, 0)),
    ],
)
def test_given_zones_when_checking_hours_then_the_contacts_wall_clock_decides(
    zone: str, now: datetime, allowed: bool, next_at: datetime | None
) -> None:
    v = evaluate(facts(timezone=zone), now)
    assert v.allowed is allowed, rule(v, "calling_hours").reason
    assert rule(v, "calling_hours").next_time == next_at
    assert v.next_dialable_at == (now if allowed else next_at)


@pytest.mark.parametrize(
    ("zone", "now", "next_at"),
    [
        # Spring forward (Berlin, 29 March 2026): 08:00 the next morning is already CEST.
        ("Europe/Berlin", _u(2026, 3, 28, 20, 30), _u(2026, 3, 29, 6, 0)),
        # Fall back (25 October 2026): 08:00 is CET again.
        ("Europe/Berlin", _u(2026, 10, 24, 20, 0), _u(2026, 10, 25, 7, 0)),
        # US spring forward (8 March 2026), night before in EST.
        ("America/New_York", _u(2026, 3, 8, 4, 0), _u(2026, 3, 8, 12, 0)),
        # Southern hemisphere: Sydney leaves DST on 5 April 2026.
        ("Australia/Sydney", _u(2026, 4, 4, 12, 0), _u(2026, 4, 4, 22, 0)),
    ],
)
def test_given_a_dst_change_overnight_then_next_opening_is_08_00_local_in_the_new_offset(
    zone: str, now: datetime, next_at: datetime
) -> None:
    v = evaluate(facts(timezone=zone), now)
    assert not v.allowed
    assert v.next_dialable_at == next_at
    assert next_at.astimezone(ZoneInfo(zone)).time() == time(8, 0)


def test_given_an_opening_in_the_skipped_hour_then_the_window_opens_when_the_clock_jumps() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 02:30 does not exist on 29 March 2026: at 01:00 UTC the clock jumps 02:00 -> 03:00.
    got = next_in_window(_u(2026, 3, 29, 0, 30), berlin, time(2, 30), time(21, 0))
    assert got == _u(2026, 3, 29, 1, 0)
    assert got.astimezone(berlin).time() == time(3, 0)


def test_given_an_opening_in_the_repeated_hour_then_its_first_occurrence() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 02:30 happens twice on 25 October 2026: first at 00:30 UTC (CEST).
    got = next_in_window(_u(2026, 10, 25, 0, 0), berlin, time(2, 30), time(21, 0))
    assert got == _u(2026, 10, 25, 0, 30)


def test_given_a_window_inside_the_repeated_hour_then_it_opens_again_on_the_second_pass() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 02:30-02:45 on 25 October 2026: once in CEST (00:30 UTC), again in CET (01:30 UTC).
    got = next_in_window(_u(2026, 10, 25, 0, 50), berlin, time(2, 30), time(2, 45))
    assert got == _u(2026, 10, 25, 1, 30)
    # A window across midnight that ends in that hour is re-entered when the clock goes back.
    got = next_in_window(_u(2026, 10, 25, 0, 50), berlin, time(20, 0), time(2, 45))
    assert got == _u(2026, 10, 25, 1, 0)


@pytest.mark.parametrize(
    ("local", "inside"),
    [(time(21, 59), False), (time(22, 0), True), (time(23, 30), True), (time(1, 59), True)]
    + [(time(2, 0), False), (time(12, 0), False)],
)
def test_given_a_window_across_midnight_then_it_is_supported(local: time, inside: bool) -> None:
    assert in_window(local, time(22, 0), time(2, 0)) is inside
    at = datetime.combine(datetime(2026, 1, 15).date(), local, tzinfo=UTC)
    got = next_in_window(at, ZoneInfo("UTC"), time(22, 0), time(2, 0))
    assert got == (at if inside else at.replace(hour=22, minute=0))


def test_given_calling_hours_with_start_equal_end_then_a_clear_refusal() -> None:
    v = evaluate(facts(calling_hours_start=time(9, 0), calling_hours_end=time(9, 0)), NOON_BERLIN)
    r = rule(v, "calling_hours")
    assert not r.ok and "start equals end" in r.reason and r.next_time is None
    assert v.next_dialable_at is None
    with pytest.raises(Invalid, match="start equals end"):
        in_window(time(9, 0), time(9, 0), time(9, 0))


@pytest.mark.parametrize(("tz", "said"), [(None, "unknown"), ("Mars/Olympus", "not a known")])
def test_given_an_unknown_time_zone_then_not_dialed_with_a_clear_reason_and_no_next_time(
    tz: str | None, said: str
) -> None:
    v = evaluate(facts(timezone=tz), NOON_BERLIN)
    assert not v.allowed
    assert said in rule(v, "timezone").reason and "not dialed" in rule(v, "timezone").reason
    assert not rule(v, "calling_hours").ok
    assert v.next_dialable_at is None


def test_given_an_abandoned_call_10h_ago_without_a_reserved_agent_then_blocked_72h() -> None:
    abandoned = NOON_BERLIN - timedelta(hours=10)
    v = evaluate(facts(abandoned_at=abandoned), NOON_BERLIN)
    r = rule(v, "abandon_72h")
    assert [x.name for x in v.failed] == ["abandon_72h"]
    assert r.next_time == abandoned + timedelta(hours=72)
    assert "no redial without a reserved agent" in r.reason


def test_given_an_abandoned_call_in_the_morning_then_dialable_72h_later_inside_hours() -> None:
    abandoned = NOON_BERLIN - timedelta(hours=2)  # 10:00 CET
    v = evaluate(facts(abandoned_at=abandoned), NOON_BERLIN)
    assert v.next_dialable_at == abandoned + timedelta(hours=72)


def test_given_an_abandoned_call_then_next_dialable_waits_for_both_72h_and_hours() -> None:
    abandoned = _u(2026, 1, 15, 1, 0)  # 02:00 CET
    v = evaluate(facts(abandoned_at=abandoned), NOON_BERLIN)
    assert rule(v, "abandon_72h").next_time == _u(2026, 1, 18, 1, 0)  # 02:00 CET: closed
    assert v.next_dialable_at == _u(2026, 1, 18, 7, 0)  # 08:00 CET that morning


def test_given_an_abandoned_call_with_an_agent_reserved_then_allowed_and_said_why() -> None:
    v = evaluate(
        facts(abandoned_at=NOON_BERLIN - timedelta(hours=1), agent_reserved=True), NOON_BERLIN
    )
    assert v.allowed
    assert "agent is reserved" in rule(v, "abandon_72h").reason


def test_given_an_abandoned_call_more_than_72h_ago_then_no_longer_blocks() -> None:
    v = evaluate(facts(abandoned_at=NOON_BERLIN - timedelta(hours=72)), NOON_BERLIN)
    assert v.allowed


def test_given_no_attempts_left_then_blocked_for_good_unless_a_callback_is_due() -> None:
    v = evaluate(facts(attempts=5, max_attempts=5), NOON_BERLIN)
    assert not v.allowed and "no attempts left: 5 of 5" in rule(v, "attempts").reason
    assert v.next_dialable_at is None
    due = evaluate(
        facts(attempts=5, max_attempts=5, callback_due=NOON_BERLIN - timedelta(minutes=1)),
        NOON_BERLIN,
    )
    assert due.allowed and "callback" in rule(due, "attempts").reason
    assert evaluate(facts(attempts=4, max_attempts=5), NOON_BERLIN).allowed


def test_given_a_retry_time_late_in_the_day_then_next_dialable_is_next_morning() -> None:
    late = _u(2026, 1, 15, 20, 30)  # 21:30 CET: after hours
    v = evaluate(facts(next_at=late, last_result=CallResult.BUSY), NOON_BERLIN)
    assert "retry after busy" in rule(v, "retry_time").reason
    assert rule(v, "retry_time").next_time == late
    assert rule(v, "calling_hours").ok
    assert v.next_dialable_at == _u(2026, 1, 16, 7, 0)
    soon = NOON_BERLIN + timedelta(minutes=10)
    assert evaluate(facts(next_at=soon), NOON_BERLIN).next_dialable_at == soon


def test_given_several_time_rules_then_next_dialable_is_when_all_pass_together() -> None:
    lease = Lease("queue-worker-1", NOON_BERLIN + timedelta(minutes=5))
    v = evaluate(
        facts(
            next_at=NOON_BERLIN + timedelta(hours=1),
            callback_due=NOON_BERLIN + timedelta(hours=2),
            lease=lease,
        ),
        NOON_BERLIN,
    )
    assert {r.name for r in v.failed} == {"lease", "retry_time", "callback"}
    assert "handed out to queue-worker-1" in rule(v, "lease").reason
    assert v.next_dialable_at == NOON_BERLIN + timedelta(hours=2)
    expired = dataclasses.replace(lease, expires_at=NOON_BERLIN)
    assert rule(evaluate(facts(lease=expired), NOON_BERLIN), "lease").ok


@pytest.mark.parametrize(
    ("kw", "name", "said"),
    [
        ({"campaign_state": CampaignState.STOPPED}, "campaign", "is stopped"),
        ({"contact_state": ContactState.DONE}, "contact", "done"),
        ({"contact_state": ContactState.DNC}, "contact", "do not call"),
        ({"contact_state": ContactState.CALLBACK}, "contact", "none is pending"),
        ({"dnc": ("global",)}, "dnc", "global do-not-call"),
        ({"dnc": ("global", "campaign")}, "dnc", "global and campaign"),
        ({"e164": None}, "number", "no phone number"),
        ({"live_attempt": "abc"}, "live_call", "already in call attempt abc"),
    ],
)
def test_given_a_blocking_rule_without_a_time_then_refused_and_no_next_time(
    kw: dict[str, Any], name: str, said: str
) -> None:
    v = evaluate(facts(**kw, timezone="Asia/Tokyo"), NOON_BERLIN)  # 20:00 in Tokyo: open
    assert not v.allowed and [r.name for r in v.failed] == [name]
    assert said in rule(v, name).reason
    assert v.next_dialable_at is None


def test_given_a_naive_time_then_refused() -> None:
    with pytest.raises(Invalid, match="naive"):
        evaluate(facts(), datetime(2026, 1, 15, 12, 0))


ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]
ZONES += ["America/Santiago", "Pacific/Chatham", "America/Havana", "Europe/London"]


@settings(max_examples=150, deadline=None)
@given(
    at=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1)),
    zone=st.sampled_from(ZONES),
    start=st.times(),
    length_min=st.integers(min_value=1, max_value=24 * 60 - 1),
)
def test_property_next_in_window_is_inside_and_nothing_earlier_is(
    at: datetime, zone: str, start: time, length_min: int
) -> None:
    start = start.replace(second=0, microsecond=0)
    end_dt = datetime.combine(at.date(), start) + timedelta(minutes=length_min)
    end = end_dt.time()
    z = ZoneInfo(zone)
    at = at.replace(tzinfo=UTC)
    got = next_in_window(at, z, start, end)

    def inside(u: datetime) -> bool:
        return in_window(u.astimezone(z).time(), start, end)

    assert got >= at and inside(got)
    assert got - at < timedelta(days=2)
    # Nothing earlier is inside: every whole minute before it (openings and offset
    # changes fall on whole minutes), and the second just before it.
    t = (at + timedelta(minutes=1)).replace(second=0, microsecond=0)
    while t < got:
        assert not inside(t), (t, got)
        t += timedelta(minutes=1)
    if got > at:
        assert not inside(max(at, got - timedelta(seconds=1)))

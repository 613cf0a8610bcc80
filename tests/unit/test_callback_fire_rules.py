"""The pure rules of outbound.callbacks_fire: a callback's window on the contact's wall
clock (DST gap and fold, half-hour zones, midnight), missed days, and the compliance
verdict at firing time (fire / wait / cancel)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from outbound.callbacks_fire import (
    CANCEL,
    EXPIRE,
    FIRE,
    RETRY_TRANSIENT,
    WAIT,
    Window,
    plan_compliance,
    plan_window,
    window_of,
)
from outbound.compliance import Facts, evaluate
from outbound.errors import Invalid
from outbound.model import CampaignState, ContactState


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def win(zone: str, start: str, end: str) -> Window:
    w = window_of(zone, time.fromisoformat(start), time.fromisoformat(end))
    assert w is not None
    return w


def test_given_no_window_when_planned_then_the_window_never_holds_it() -> None:
    assert plan_window(utc(2026, 1, 1, 3), utc(2026, 1, 1, 2), None, 0, 3) is None
    assert window_of("Europe/Berlin", None, time(9)) is None


def test_given_a_window_when_inside_then_it_may_fire() -> None:
    w = win("Europe/Berlin", "09:00", "11:00")
    # 10:00 CET = 09:00 UTC
    assert plan_window(utc(2026, 1, 5, 9), utc(2026, 1, 5, 8), w, 0, 3) is None


def test_given_a_window_when_before_it_then_it_waits_for_the_opening_same_day() -> None:
    w = win("America/New_York", "09:00", "11:00")
    d = plan_window(utc(2026, 1, 5, 12), utc(2026, 1, 5, 12), w, 1, 3)  # 07:00 EST
    assert d is not None and d.action == WAIT
    assert d.due_at == utc(2026, 1, 5, 14)  # 09:00 EST
    assert d.days_tried == 1  # not a missed day


def test_given_a_window_when_it_closed_before_firing_then_next_day_and_a_day_counted() -> None:
    w = win("Asia/Kolkata", "09:00", "11:00")  # +05:30: 03:30-05:30 UTC
    d = plan_window(utc(2026, 1, 5, 6), utc(2026, 1, 5, 4), w, 0, 3)
    assert d is not None and (d.action, d.days_tried) == (WAIT, 1)
    assert d.due_at == utc(2026, 1, 6, 3, 30)


def test_given_the_last_allowed_day_when_its_window_is_missed_then_expired() -> None:
    w = win("Asia/Kolkata", "09:00", "11:00")
    d = plan_window(utc(2026, 1, 7, 6), utc(2026, 1, 7, 4), w, 2, 3)
    assert d is not None and (d.action, d.days_tried, d.due_at) == (EXPIRE, 3, None)


def test_given_a_start_in_the_spring_gap_when_waiting_then_it_opens_when_the_clock_jumps() -> None:
    # Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 never exists.
    w = win("Europe/Berlin", "02:30", "04:00")
    d = plan_window(utc(2026, 3, 28, 23), utc(2026, 3, 28, 23), w, 0, 3)
    assert d is not None and d.action == WAIT
    assert d.due_at == utc(2026, 3, 29, 1)  # 03:00 CEST, the first wall time >= 02:30
    assert plan_window(utc(2026, 3, 29, 1, 59), utc(2026, 3, 29, 1), w, 0, 3) is None
    # 04:00 CEST = 02:00 UTC closes it
    assert w.close_after(utc(2026, 3, 29, 1)) == utc(2026, 3, 29, 2)


def test_given_new_york_spring_forward_when_window_spans_the_gap_then_it_is_shorter() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC). Window 01:00-04:00 opens 06:00 UTC
    # (01:00 EST) and closes 08:00 UTC (04:00 EDT): two real hours.
    w = win("America/New_York", "01:00", "04:00")
    assert w.next_opening(utc(2026, 3, 8, 0)) == utc(2026, 3, 8, 6)
    assert w.close_after(utc(2026, 3, 8, 6)) == utc(2026, 3, 8, 8)


def test_given_the_autumn_fold_when_the_window_is_in_the_repeated_hour_then_both_passes_count() -> (
    None
):
    # Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00 UTC); 02:15-02:45 is
    # on the wall clock twice: 00:15-00:45 UTC and 01:15-01:45 UTC.
    w = win("Europe/Berlin", "02:15", "02:45")
    assert w.next_opening(utc(2026, 10, 24, 22)) == utc(2026, 10, 25, 0, 15)
    assert w.close_after(utc(2026, 10, 25, 0, 20)) == utc(2026, 10, 25, 0, 45)
    assert not w.inside(utc(2026, 10, 25, 0, 50))
    # fired in neither pass of the first: missed, and the repeated pass is the next one
    d = plan_window(utc(2026, 10, 25, 0, 50), utc(2026, 10, 25, 0, 15), w, 0, 3)
    assert d is not None and (d.action, d.days_tried) == (WAIT, 1)
    assert d.due_at == utc(2026, 10, 25, 1, 15)
    assert w.close_after(utc(2026, 10, 25, 1, 15)) == utc(2026, 10, 25, 1, 45)


def test_given_lord_howe_half_hour_dst_end_when_waiting_then_the_opening_follows_the_offset() -> (
    None
):
    # Lord Howe: +11 until 2026-04-05 02:00 local, then +10:30 (clock back 30 min).
    w = win("Australia/Lord_Howe", "09:00", "10:00")
    assert w.next_opening(utc(2026, 4, 3, 12)) == utc(2026, 4, 3, 22)  # the 4th, +11
    # missed on the 4th: the 5th's 09:00 is after the change, 22:30 UTC (not 22:00)
    d = plan_window(utc(2026, 4, 3, 23), utc(2026, 4, 3, 22), w, 0, 3)
    assert d is not None and (d.action, d.days_tried) == (WAIT, 1)
    assert d.due_at == utc(2026, 4, 4, 22, 30)
    assert w.close_after(utc(2026, 4, 4, 22, 30)) == utc(2026, 4, 4, 23, 30)


def test_given_a_window_across_midnight_when_planned_then_it_opens_in_the_evening() -> None:
    w = win("Europe/Berlin", "22:00", "01:00")  # CET: 21:00-00:00 UTC
    assert w.inside(utc(2026, 1, 5, 23, 30))
    d = plan_window(utc(2026, 1, 5, 12), utc(2026, 1, 5, 12), w, 0, 3)
    assert d is not None and d.due_at == utc(2026, 1, 5, 21)
    assert w.close_after(utc(2026, 1, 5, 21)) == utc(2026, 1, 6, 0)


def test_given_an_unusable_window_when_read_then_invalid_not_guessed() -> None:
    with pytest.raises(Invalid, match="time zone unknown"):
        window_of(None, time(9), time(10))
    with pytest.raises(Invalid, match="start equals end"):
        window_of("Europe/Berlin", time(9), time(9))


# ---------------------------------------------------------------- compliance at firing time
NOW = utc(2026, 6, 1, 10)  # 12:00 in Berlin (CEST)


def facts(now: datetime = NOW, **kw: object) -> Facts:
    """A record in a callback due just before `now` (attempts spent: dialed regardless)."""
    base = Facts(
        contact_id=1,
        campaign_name="c",
        campaign_state=CampaignState.RUNNING,
        calling_hours_start=time(8),
        calling_hours_end=time(21),
        contact_state=ContactState.CALLBACK,
        timezone="Europe/Berlin",
        attempts=5,
        max_attempts=5,  # spent: a due callback is dialed regardless
        e164="+4930123456",
        callback_due=now - timedelta(seconds=1),
        agent_reserved=True,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_given_every_rule_passes_when_due_then_fire() -> None:
    d = plan_compliance(NOW, evaluate(facts(), NOW), None, 0, 3)
    assert (d.action, d.due_at) == (FIRE, NOW)


def test_given_the_number_on_dnc_at_firing_time_then_cancelled_with_the_reason() -> None:
    d = plan_compliance(NOW, evaluate(facts(dnc=("global",)), NOW), None, 0, 3)
    assert d.action == CANCEL and "do-not-call" in d.reason


def test_given_an_unknown_time_zone_then_cancelled_never_dialed_by_guess() -> None:
    d = plan_compliance(NOW, evaluate(facts(timezone=None), NOW), None, 0, 3)
    assert d.action == CANCEL and "timezone" in d.reason


def test_given_outside_calling_hours_then_it_waits_for_them() -> None:
    night = utc(2026, 6, 1, 21)  # 23:00 CEST
    d = plan_compliance(night, evaluate(facts(night), night), None, 0, 3)
    assert (d.action, d.due_at) == (WAIT, utc(2026, 6, 2, 6))  # 08:00 CEST


def test_given_a_call_in_progress_then_it_waits_a_short_while() -> None:
    d = plan_compliance(NOW, evaluate(facts(live_attempt="a1"), NOW), None, 0, 3)
    assert (d.action, d.due_at) == (WAIT, NOW + RETRY_TRANSIENT)


def test_given_calling_hours_open_after_the_window_closes_then_the_day_is_missed() -> None:
    # window 06:00-07:30 Berlin, calling hours from 08:00: never dialable that day
    early = utc(2026, 6, 1, 4, 30)  # 06:30 CEST
    w = win("Europe/Berlin", "06:00", "07:30")
    d = plan_compliance(early, evaluate(facts(early), early), w, 0, 3)
    assert (d.action, d.days_tried) == (WAIT, 1)
    assert d.due_at == utc(2026, 6, 2, 4)  # next day's 06:00 CEST
    d = plan_compliance(early, evaluate(facts(early), early), w, 2, 3)
    assert d.action == EXPIRE


def test_given_calling_hours_open_within_the_window_then_it_waits_for_them() -> None:
    early = utc(2026, 6, 1, 5, 30)  # 07:30 CEST, window until 09:00
    w = win("Europe/Berlin", "07:00", "09:00")
    d = plan_compliance(early, evaluate(facts(early), early), w, 0, 3)
    assert (d.action, d.due_at, d.days_tried) == (WAIT, utc(2026, 6, 1, 6), 0)


def test_zone_facts_used_here_are_what_zoneinfo_says() -> None:
    # guards the expectations above against a tzdata surprise
    berlin, howe = ZoneInfo("Europe/Berlin"), ZoneInfo("Australia/Lord_Howe")
    assert utc(2026, 3, 29, 1).astimezone(berlin).hour == 3
    assert utc(2026, 10, 25, 1, 15).astimezone(berlin).strftime("%H:%M %Z") == "02:15 CET"
    assert utc(2026, 4, 4, 22, 30).astimezone(howe).strftime("%H:%M") == "09:00"


# ---------------------------------------------------------------- bad input
def test_given_bad_sweep_arguments_then_a_clear_error_before_anything_is_touched() -> None:
    from outbound.callbacks_fire import sweep

    with pytest.raises(Invalid, match="batch size"):
        sweep(None, None, batch=0)  # type: ignore[arg-type]
    with pytest.raises(Invalid, match="aware"):
        sweep(None, None, now=datetime(2026, 1, 1))  # type: ignore[arg-type]


def test_given_bad_scheduler_settings_then_config_error_names_the_key() -> None:
    from outbound.config import ConfigError, load_config

    cfg = load_config(env={}, cwd=Path("/nonexistent"))
    assert cfg.get("scheduler", "sweep_interval") == 1.0
    assert cfg.broker_url == cfg.redis_url  # the [redis] url by default
    other = load_config(env={"OUTBOUND_SCHEDULER_BROKER": "redis://h:6379/3"})
    assert other.broker_url == "redis://h:6379/3"
    for key, value in [("BATCH_SIZE", "0"), ("SWEEP_INTERVAL", "-1"), ("BROKER", "amqp://x")]:
        with pytest.raises(ConfigError, match=f"\\[scheduler\\] {key.lower()}"):
            load_config(env={f"OUTBOUND_SCHEDULER_{key}": value})

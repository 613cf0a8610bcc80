"""The pure rules of callbacks (outbound/callback_rules.py, re-exported by
outbound.callbacks): the DST rule for the agent's entered time (a time in the
spring-forward gap moves forward by the gap, a time in the fold is its first occurrence,
both said in a note), zones without DST, unknown zones, the past, the reachability window
on the contact's clock, and the number to call back. Each error's message is checked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

import pytest

from outbound.callbacks import (
    Due,
    Request,
    check_future,
    check_new_number,
    check_window,
    parse_hhmm,
    parse_local,
    pick_number,
    resolve_due,
    window_of,
)
from outbound.errors import Invalid
from outbound.model import PhoneType


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


# ---------------------------------------------------------------- the DST rule
@pytest.mark.parametrize(
    ("zone", "entered", "want_utc", "want_local"),
    [
        # spring forward: 02:00 -> 03:00 (Berlin, last Sunday of March)
        ("Europe/Berlin", "2026-03-29 02:30", utc(2026, 3, 29, 1, 30), "03:30 CEST"),
        ("Europe/Berlin", "2026-03-29 02:00", utc(2026, 3, 29, 1, 0), "03:00 CEST"),
        # spring forward: 02:00 -> 03:00 (New York, second Sunday of March)
        ("America/New_York", "2026-03-08 02:30", utc(2026, 3, 8, 7, 30), "03:30 EDT"),
        ("America/New_York", "2026-03-08T02:59", utc(2026, 3, 8, 7, 59), "03:59 EDT"),
    ],
)
def test_given_a_time_in_the_gap_then_moved_forward_by_the_gap_and_said_so(
    zone: str, entered: str, want_utc: datetime, want_local: str
) -> None:
    due = resolve_due(entered, zone)
    assert due.utc == want_utc
    assert f"{due.local:%H:%M %Z}" == want_local
    assert due.adjusted and not due.ambiguous
    assert due.note is not None
    assert due.note.startswith("adjusted:") and "does not exist" in due.note
    assert want_local in due.note and zone in due.note


@pytest.mark.parametrize(
    ("zone", "entered", "first_utc", "local"),
    [
        # fall back: 03:00 -> 02:00 (Berlin, last Sunday of October): 02:30 happens twice
        ("Europe/Berlin", "2026-10-25 02:30", utc(2026, 10, 25, 0, 30), "02:30 CEST"),
        # fall back: 02:00 -> 01:00 (New York, first Sunday of November): 01:30 twice
        ("America/New_York", "2026-11-01 01:30", utc(2026, 11, 1, 5, 30), "01:30 EDT"),
    ],
)
def test_given_a_time_in_the_fold_then_its_first_occurrence_and_said_so(
    zone: str, entered: str, first_utc: datetime, local: str
) -> None:
    due = resolve_due(entered, zone)
    assert due.utc == first_utc  # the earlier instant: the second is an hour later
    assert f"{due.local:%H:%M %Z}" == local
    assert due.ambiguous and not due.adjusted
    assert due.note is not None
    assert due.note.startswith("ambiguous:") and "first occurrence" in due.note


@pytest.mark.parametrize(
    ("zone", "entered", "want"),
    [
        ("Europe/Berlin", "2026-06-01 10:00", utc(2026, 6, 1, 8, 0)),
        ("Europe/Berlin", "2026-03-29 03:30", utc(2026, 3, 29, 1, 30)),  # just after the gap
        ("America/New_York", "2026-11-01 02:30", utc(2026, 11, 1, 7, 30)),  # after the fold
        # Etc zones have no DST: Berlin's gap and fold times are ordinary there
        ("Etc/GMT-2", "2026-03-29 02:30", utc(2026, 3, 29, 0, 30)),
        ("Etc/GMT-2", "2026-10-25 02:30", utc(2026, 10, 25, 0, 30)),
        ("Etc/GMT+5", "2026-03-08 02:30", utc(2026, 3, 8, 7, 30)),
        ("UTC", "2026-03-29 02:30", utc(2026, 3, 29, 2, 30)),
    ],
)
def test_given_an_ordinary_time_then_one_instant_and_no_note(
    zone: str, entered: str, want: datetime
) -> None:
    due = resolve_due(entered, zone)
    assert due.utc == want
    assert not due.adjusted and not due.ambiguous and due.note is None
    assert due.local.replace(tzinfo=None) == due.entered


def test_given_a_naive_datetime_then_it_is_read_like_the_text() -> None:
    assert resolve_due(datetime(2026, 3, 29, 2, 30), "Europe/Berlin") == resolve_due(
        "2026-03-29 02:30", "Europe/Berlin"
    )


@pytest.mark.parametrize(
    ("zone", "msg"),
    [
        ("Mars/Olympus_Mons", "'Mars/Olympus_Mons' is not a known IANA time zone"),
        ("../../etc/passwd", "is not a known IANA time zone"),
        ("Europe", "is not a known IANA time zone"),
        ("", "the agent's time zone is unknown"),
    ],
)
def test_given_an_unknown_zone_then_a_clear_error(zone: str, msg: str) -> None:
    with pytest.raises(Invalid, match="the agent's time zone") as exc:
        resolve_due("2026-06-01 10:00", zone)
    assert msg in str(exc.value)


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("2026/06/01 10:00", "date and time must be YYYY-MM-DD HH:MM"),
        ("tomorrow", "date and time must be YYYY-MM-DD HH:MM"),
        ("2026-06-01", "date and time must be YYYY-MM-DD HH:MM"),
        ("2026-02-30 10:00", "no such date or time"),
        ("2026-06-01 25:00", "no such date or time"),
        ("0001-01-01 00:30", "date out of range"),
    ],
)
def test_given_a_malformed_date_time_then_a_clear_error(text: str, msg: str) -> None:
    with pytest.raises(Invalid, match=msg):
        resolve_due(text, "Europe/Berlin")


def test_given_an_aware_datetime_as_local_time_then_refused() -> None:
    with pytest.raises(Invalid, match="carries no time zone"):
        parse_local(utc(2026, 6, 1, 10, 0))


# ---------------------------------------------------------------- the past
def test_given_a_time_not_after_now_then_a_callback_in_the_past() -> None:
    due = resolve_due("2026-06-01 10:00", "Europe/Berlin")
    check_future(due, due.utc - timedelta(seconds=1))  # one second ahead: fine
    for now in (due.utc, due.utc + timedelta(minutes=1)):
        with pytest.raises(Invalid, match="a callback in the past") as exc:
            check_future(due, now)
        assert "2026-06-01 10:00 (Europe/Berlin)" in str(exc.value)


def test_given_a_time_more_than_a_year_ahead_then_refused() -> None:
    due = resolve_due("2027-06-03 10:00", "Europe/Berlin")
    with pytest.raises(Invalid, match="more than 366 days ahead"):
        check_future(due, utc(2026, 6, 1, 8, 0))


# ---------------------------------------------------------------- the window
def _due(at: datetime) -> Due:
    return Due(at, at, at.replace(tzinfo=None), "UTC")


@pytest.mark.parametrize(
    ("value", "ok"),
    [("07:30", time(7, 30)), ("00:00", time(0)), ("23:59", time(23, 59)), ("24:00", None)],
)
def test_given_hh_mm_then_a_time_or_a_clear_error(value: str, ok: time | None) -> None:
    if ok is not None:
        assert parse_hhmm(value, "From") == ok
        return
    with pytest.raises(Invalid, match="From must be a time of day HH:MM"):
        parse_hhmm(value, "From")


@pytest.mark.parametrize("bad", ["7:30", "0730", "aa:bb", "12:60", ""])
def test_given_a_malformed_time_of_day_then_named_in_the_error(bad: str) -> None:
    with pytest.raises(Invalid, match="To must be a time of day HH:MM"):
        parse_hhmm(bad, "To")


def test_given_the_window_then_checked_on_the_contacts_clock_half_open() -> None:
    # 16:00 UTC is 12:00 in New York (EDT) and 18:00 in Berlin (CEST)
    at = utc(2026, 6, 1, 16, 0)
    assert "12:00 America/New_York" in check_window(at, "America/New_York", time(9), time(17))
    with pytest.raises(Invalid, match="18:00 on the contact's clock") as exc:
        check_window(at, "Europe/Berlin", time(9), time(17))
    assert "outside the reachability window 09:00-17:00" in str(exc.value)
    check_window(at, "America/New_York", time(12), time(13))  # From itself is inside
    with pytest.raises(Invalid, match="outside the reachability window 11:00-12:00"):
        check_window(at, "America/New_York", time(11), time(12))  # To itself is not


@pytest.mark.parametrize(("start", "end"), [(time(17), time(9)), (time(9), time(9))])
def test_given_from_not_before_to_then_refused(start: time, end: time) -> None:
    with pytest.raises(Invalid, match="needs From before To"):
        check_window(utc(2026, 6, 1, 12, 0), "UTC", start, end)


def test_given_an_unknown_contact_zone_then_a_window_cannot_be_checked() -> None:
    with pytest.raises(Invalid, match="contact's time zone is unknown"):
        check_window(utc(2026, 6, 1, 12, 0), None, time(9), time(17))
    with pytest.raises(Invalid, match="the contact's time zone 'Nowhere/X'"):
        check_window(utc(2026, 6, 1, 12, 0), "Nowhere/X", time(9), time(17))


def test_given_window_fields_then_both_or_none() -> None:
    due = _due(utc(2026, 6, 1, 12, 0))
    assert window_of(Request("x", False), due, "UTC") is None
    assert window_of(Request("x", False, window_from="", window_to=""), due, "UTC") is None
    for half in (Request("x", False, window_from="09:00"), Request("x", False, window_to="17:00")):
        with pytest.raises(Invalid, match="needs both From and To"):
            window_of(half, due, "UTC")
    got = window_of(Request("x", False, window_from="09:00", window_to="17:00"), due, "UTC")
    assert got == (time(9), time(17))


# ---------------------------------------------------------------- the number
@dataclass
class Num:
    id: int
    e164: str


NUMBERS = [Num(1, "+493012345678"), Num(2, "+4915112345678")]


def test_given_a_new_number_then_e164_with_its_type() -> None:
    assert check_new_number("030 98765432", "home", "DE") == ("+493098765432", PhoneType.HOME)
    assert check_new_number("+49 151 2345 6789", PhoneType.MOBILE, "US") == (
        "+4915123456789",
        PhoneType.MOBILE,
    )


@pytest.mark.parametrize(
    ("raw", "kind", "msg"),
    [
        ("030 98765432", None, "give the new number's type: one of mobile, work, home, other"),
        ("030 98765432", "fax", "unknown number type 'fax'"),
        ("12", "home", "the new number is not a valid phone number"),
        ("hello", "work", "the new number is not a valid phone number"),
        ("", "work", "the new number is not a valid phone number: empty"),
    ],
)
def test_given_a_bad_new_number_then_a_clear_error(raw: str, kind: str | None, msg: str) -> None:
    with pytest.raises(Invalid, match=msg):
        check_new_number(raw, kind, "DE")


def test_given_no_number_then_the_dialed_one_when_it_is_the_contacts() -> None:
    req = Request("x", False)
    assert pick_number(NUMBERS, req, "DE", "+4915112345678") == (NUMBERS[1], None, None)
    assert pick_number(NUMBERS, req, "DE", "+4940999999") == (None, None, None)


def test_given_one_of_the_contacts_numbers_then_by_e164_national_or_id() -> None:
    assert (
        pick_number(NUMBERS, Request("x", False, number="+4915112345678"), "DE", None)[0]
        == (NUMBERS[1])
    )
    assert (
        pick_number(NUMBERS, Request("x", False, number="030 12345678"), "DE", None)[0]
        == (NUMBERS[0])
    )
    assert pick_number(NUMBERS, Request("x", False, number=2), "DE", None)[0] == NUMBERS[1]
    got = pick_number(
        NUMBERS, Request("x", True, new_number="+4940123456", new_number_type="work"), "DE", None
    )
    assert got == (None, "+4940123456", PhoneType.WORK)


@pytest.mark.parametrize(
    ("req", "msg"),
    [
        (
            Request("x", False, number="+493012345678", new_number="+4940123456"),
            "either one of the contact's numbers or a new number, not both",
        ),
        (Request("x", False, new_number_type="home"), "a number type was given without a new"),
        (
            Request("x", False, number="+4940123456"),
            "'\\+4940123456' is not one of the contact's numbers \\(\\+493012345678, ",
        ),
        (Request("x", False, number=7), "'7' is not one of the contact's numbers"),
        (Request("x", False, number="abc"), "the number is not a valid phone number"),
        (Request("x", False, number=True), "number must be one of the contact's numbers"),
    ],
)
def test_given_a_bad_number_choice_then_a_clear_error(req: Request, msg: str) -> None:
    with pytest.raises(Invalid, match=msg):
        pick_number(NUMBERS, req, "DE", None)

"""Pure rules of callbacks (outbound.callbacks): when a callback is due, its reachability
window and its number. No database here: tested without one.

Times. The agent enters date and time on *their* wall clock (`Agent.timezone`); the
From / To reachability window is on the *contact's* wall clock on the callback day.

The DST rule (`resolve_due`): a wall time becomes one instant like this.
- A time that does not exist because the clocks jump forward (the spring-forward gap,
  e.g. 02:30 in Europe/Berlin on the last Sunday of March) is moved forward by the length
  of the gap: 02:30 becomes 03:30 CEST. The result says so (`adjusted`, and a note).
- A time that exists twice because the clocks go back (the autumn fold, e.g. 02:30 in
  Europe/Berlin on the last Sunday of October) means its FIRST occurrence, the earlier
  instant (still summer time, fold=0). The result says so (`ambiguous`, and a note).
Both are what zoneinfo does with fold=0 (PEP 495); they are detected and reported here so
that the agent sees which instant was meant. Zones without DST (UTC, Etc/GMT-2) have
neither. An unknown zone is an error, never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Protocol, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import Invalid
from .model.types import PhoneType
from .phones import InvalidNumber, normalize

MAX_AHEAD = timedelta(days=366)  # a callback is a promise for the near future, not a diary
TYPES = ", ".join(t.value for t in PhoneType)
_LOCAL = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2})?")
_HHMM = re.compile(r"([01]\d|2[0-3]):[0-5]\d")


def zone(name: str | None, whose: str) -> ZoneInfo:
    """The IANA zone `name`; Invalid naming `whose` zone it is when unknown or unset."""
    if not isinstance(name, str) or not name.strip():
        raise Invalid(f"{whose} time zone is unknown")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise Invalid(
            f"{whose} time zone {name!r} is not a known IANA time zone (e.g. Europe/Berlin)"
        ) from None


def parse_local(value: str | datetime) -> datetime:
    """A naive wall-clock date-time from "YYYY-MM-DD HH:MM" (or ISO with T, seconds)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            raise Invalid("a local date and time carries no time zone")
        return value
    if not isinstance(value, str) or not _LOCAL.fullmatch(value.strip()):
        raise Invalid(f"date and time must be YYYY-MM-DD HH:MM, not {str(value)[:40]!r}")
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        raise Invalid(f"no such date or time: {value.strip()!r}") from None


@dataclass(frozen=True)
class Due:
    """When a callback is due: the instant (UTC) and how the entered wall time mapped."""

    utc: datetime
    local: datetime  # aware, on the agent's clock: the wall time it resolved to
    entered: datetime  # naive, as entered
    zone: str
    adjusted: bool = False  # in the spring-forward gap: moved forward by the gap
    ambiguous: bool = False  # in the autumn fold: the first occurrence

    @property
    def note(self) -> str | None:
        """What the DST rule did, for the agent (None: the time was unambiguous)."""
        at = f"{self.entered:%Y-%m-%d %H:%M}"
        if self.adjusted:
            return (
                f"adjusted: {at} does not exist in {self.zone} (the clocks jump forward); "
                f"moved forward by the gap to {self.local:%H:%M %Z}"
            )
        if self.ambiguous:
            return (
                f"ambiguous: {at} occurs twice in {self.zone} (the clocks go back); the "
                f"first occurrence is meant: {self.local:%H:%M %Z} ({self.utc:%H:%M} UTC)"
            )
        return None


def resolve_due(local_date_time: str | datetime, agent_tz: str) -> Due:
    """The instant a wall time on the agent's clock means, by the DST rule (module doc):
    a time in the gap moves forward by the gap, a time in the fold is its first occurrence.
    Invalid for a malformed date-time or an unknown zone."""
    z = zone(agent_tz, "the agent's")
    naive = parse_local(local_date_time)
    first = naive.replace(tzinfo=z, fold=0)
    try:
        utc = first.astimezone(UTC)
        local = utc.astimezone(z)
        later = naive.replace(tzinfo=z, fold=1).utcoffset()
    except OverflowError:
        raise Invalid(f"date out of range: {naive:%Y-%m-%d %H:%M}") from None
    adjusted = local.replace(tzinfo=None) != naive
    ambiguous = not adjusted and later != first.utcoffset()
    return Due(utc, local, naive, z.key, adjusted, ambiguous)


def check_future(due: Due, now: datetime) -> None:
    """Invalid when the callback is not in the future, or absurdly far ahead."""
    if due.utc <= now:
        mine = now.astimezone(ZoneInfo(due.zone))
        raise Invalid(
            f"a callback in the past: {due.local:%Y-%m-%d %H:%M} ({due.zone}) is not after "
            f"now ({mine:%Y-%m-%d %H:%M}); choose a later date and time"
        )
    if due.utc - now > MAX_AHEAD:
        raise Invalid(f"a callback more than {MAX_AHEAD.days} days ahead is not accepted")


def parse_hhmm(value: str | time, name: str) -> time:
    """A wall-clock time of day from "HH:MM"."""
    if isinstance(value, time):
        return value
    if not isinstance(value, str) or not _HHMM.fullmatch(value.strip()):
        raise Invalid(f"{name} must be a time of day HH:MM (00:00-23:59), not {str(value)[:20]!r}")
    hh, mm = value.strip().split(":")
    return time(int(hh), int(mm))


def check_window(due_utc: datetime, contact_tz: str | None, start: time, end: time) -> str:
    """The callback time must lie in [From, To) on the contact's clock on the callback
    day, and From must be before To (a window across midnight is not a reachability
    window of one day). Returns the contact's local time, for the record."""
    span = f"{start:%H:%M}-{end:%H:%M}"
    if start >= end:
        raise Invalid(f"the reachability window needs From before To: {span} is not")
    if not contact_tz:
        raise Invalid(
            "the contact's time zone is unknown, so a reachability window cannot be "
            "checked: leave From / To empty"
        )
    z = zone(contact_tz, "the contact's")
    there = due_utc.astimezone(z)
    if not start <= there.time() < end:
        raise Invalid(
            f"the callback time is {there:%H:%M} on the contact's clock ({z.key}), outside "
            f"the reachability window {span}"
        )
    return f"{there:%Y-%m-%d %H:%M} {z.key}"


def check_new_number(raw: str, kind: str | PhoneType | None, region: str) -> tuple[str, PhoneType]:
    """A new number's E.164 form and type; Invalid when it does not parse or has no type."""
    if kind is None or kind == "":
        raise Invalid(f"give the new number's type: one of {TYPES}")
    try:
        t = PhoneType(kind)
    except ValueError:
        raise Invalid(f"unknown number type {str(kind)[:20]!r}: one of {TYPES}") from None
    if not isinstance(raw, str):
        raise Invalid("the new number must be text")
    try:
        return normalize(raw, region), t
    except InvalidNumber as exc:
        raise Invalid(f"the new number is not a valid phone number: {exc}") from None


@dataclass(frozen=True)
class Request:
    """What the agent entered in "Schedule callback"."""

    when: str | datetime  # naive: the agent's wall clock; aware: that instant
    personal: bool
    number: str | int | None = None  # one of the contact's: E.164 or phone_number_id
    new_number: str | None = None
    new_number_type: str | PhoneType | None = None
    window_from: str | time | None = None
    window_to: str | time | None = None


def due_of(req: Request, agent_tz: str) -> Due:
    if isinstance(req.when, datetime) and req.when.tzinfo is not None:
        z = zone(agent_tz, "the agent's")
        local = req.when.astimezone(z)
        return Due(req.when.astimezone(UTC), local, local.replace(tzinfo=None), z.key)
    return resolve_due(req.when, agent_tz)


class NumberLike(Protocol):
    """One of the contact's numbers (a PhoneNumber row)."""

    @property
    def id(self) -> int: ...

    @property
    def e164(self) -> str: ...


N = TypeVar("N", bound=NumberLike)


def pick_number(
    numbers: Sequence[N], req: Request, region: str, dialed: str | None
) -> tuple[N | None, str | None, PhoneType | None]:
    """The number to call back: (one of the contact's `numbers`, None, None), or (None, a
    new number in E.164, its type). Without either: the number of the interaction
    (`dialed`) when it is one of the contact's. Invalid for both, a type without a new
    number, a number not the contact's, or a new one that does not parse."""
    if req.number is not None and req.new_number is not None:
        raise Invalid("give either one of the contact's numbers or a new number, not both")
    if req.new_number is not None:
        e164, kind = check_new_number(req.new_number, req.new_number_type, region)
        return None, e164, kind
    if req.new_number_type is not None:
        raise Invalid("a number type was given without a new number")
    if req.number is None:
        return next((n for n in numbers if n.e164 == dialed), None), None, None
    if isinstance(req.number, int) and not isinstance(req.number, bool):
        found = [n for n in numbers if n.id == req.number]
    elif isinstance(req.number, str):
        try:
            e164 = normalize(req.number, region)
        except InvalidNumber as exc:
            raise Invalid(f"the number is not a valid phone number: {exc}") from None
        found = [n for n in numbers if n.e164 == e164]
    else:
        raise Invalid("number must be one of the contact's numbers (E.164) or its id")
    if not found:
        mine = ", ".join(n.e164 for n in numbers) or "none"
        raise Invalid(
            f"{str(req.number)[:40]!r} is not one of the contact's numbers ({mine}): "
            "give a new number with its type instead"
        )
    return found[0], None, None


def window_of(req: Request, due: Due, contact_tz: str | None) -> tuple[time, time] | None:
    """The reachability window (From, To) checked against the due time on the contact's
    clock (`contact_tz`), or None when neither is given."""
    given = [v not in (None, "") for v in (req.window_from, req.window_to)]
    if not any(given):
        return None
    if not all(given):
        raise Invalid("a reachability window needs both From and To")
    assert req.window_from is not None and req.window_to is not None
    start, end = parse_hhmm(req.window_from, "From"), parse_hhmm(req.window_to, "To")
    check_window(due.utc, contact_tz, start, end)
    return start, end

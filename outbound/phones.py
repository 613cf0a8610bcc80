"""Phone numbers: parse, validate and normalise to E.164 with `phonenumbers`; derive time zones."""

from __future__ import annotations

import phonenumbers
from phonenumbers import NumberParseException, re_util
from phonenumbers import timezone as pn_timezone

from .model.types import PhoneType

MAX_RAW_LEN = 40

# phonenumbers compiles its metadata patterns on each use and leans on the re module's
# small cache, which thrashes across regions and number types: keeping them all (a few
# thousand patterns) makes a parse about twice as fast.
if hasattr(re_util, "enable_pattern_cache"):
    re_util.enable_pattern_cache()


class InvalidNumber(ValueError):
    """The text is not a valid phone number; the message says why."""


def normalize(raw: str, region: str) -> str:
    """Return the E.164 form of `raw` (national numbers are read in `region`).

    Raises InvalidNumber with a reason an admin or agent can act on."""
    text = raw.strip()
    if not text:
        raise InvalidNumber("empty phone number")
    if len(text) > MAX_RAW_LEN:
        raise InvalidNumber(f"phone number longer than {MAX_RAW_LEN} characters")
    if any(c in text for c in "\r\n\0"):
        raise InvalidNumber("phone number contains a control character")
    try:
        num = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        raise InvalidNumber(f"not a phone number ({exc._msg})") from None
    if not phonenumbers.is_valid_number(num):
        raise InvalidNumber(f"not a valid number: {text!r}")
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def _zones(e164: str) -> tuple[str, ...]:
    # No cache here: keyed by the whole number it would almost never hit.
    return tuple(pn_timezone.time_zones_for_number(phonenumbers.parse(e164)))


def timezone_for(e164: str) -> str | None:
    """The number's time zone when phonenumbers names exactly one, else None (unknown)."""
    try:
        zones = _zones(e164)
    except NumberParseException:
        return None
    zones = tuple(z for z in zones if z != "Etc/Unknown")
    return zones[0] if len(zones) == 1 else None


def number_type(e164: str) -> PhoneType:
    """A best guess of the number's type from its numbering plan (mobile or other)."""
    t = phonenumbers.number_type(phonenumbers.parse(e164))
    if t == phonenumbers.PhoneNumberType.MOBILE:
        return PhoneType.MOBILE
    return PhoneType.OTHER

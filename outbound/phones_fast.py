"""Phone numbers of an import, analysed fast: `Numbers` and what it returns, `Parsed`.

Split out of `contacts_import` because it is a self-contained mirror of phonenumbers'
parsing and classification (and the bulk of the importer's CPU time), with its own
fallback to `phones` and its own test comparing the two; the importer only calls
`Numbers.analyze` and `Numbers.timezone`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from . import phones
from .model.types import PhoneType


class Numbers:
    """phones.normalize, number_type and timezone_for for many numbers, fast.

    phonenumbers spends most of a parse on generic text handling (any script, letters,
    extensions, RFC 3966) and classifies a number once per question (valid? type? time
    zone?). The usual forms (digits with spaces, - . ( ) / and one leading +) are parsed
    here with phonenumbers' own steps and metadata and classified once, against patterns
    compiled once. Other forms, and every number this path does not find valid, go
    through `phones` itself, which also words the reason: a fast answer is phones' answer
    (a unit test compares the two on many generated inputs in many regions)."""

    _SHAPE = re.compile(r"[ ().\-/]*\+?[0-9 ().\-/]*[0-9][0-9 ().\-/]*")
    _DROP = str.maketrans("", "", " ().-/+")

    def __init__(self, region: str) -> None:
        self.region = region.upper()
        try:
            self._fast: _FastParser | None = _FastParser(self.region)
        except _NoFastPath:
            self._fast = None
            from phonenumbers import PhoneMetadata

            if PhoneMetadata.metadata_for_region(self.region, None) is None:
                raise ValueError(f"unknown region {region!r}") from None

    def analyze(self, raw: str) -> Parsed:
        """The number in a stripped, non-empty text; raises phones.InvalidNumber."""
        fast = self._fast
        if fast is not None and len(raw) <= phones.MAX_RAW_LEN and self._SHAPE.fullmatch(raw):
            hit = fast.parse(raw.translate(self._DROP), raw.find("+") >= 0)
            if hit is not None:
                return hit
        e164 = phones.normalize(raw, self.region)
        if fast is not None and (hit := fast.parse(e164[1:], True)) is not None:
            return hit
        return Parsed(e164, -1, 0, False, phones.number_type(e164) == PhoneType.MOBILE)

    def timezone(self, number: Parsed) -> str | None:
        """phones.timezone_for(number.e164)."""
        if self._fast is not None:
            zone = self._fast.timezone(number)
            if zone is not _DECLINED:
                return zone  # type: ignore[return-value]
        return phones.timezone_for(number.e164)


class Parsed(NamedTuple):
    e164: str
    kind: int  # phonenumbers.PhoneNumberType; -1: unknown (slow path)
    cc: int
    reparse_same: bool  # parsing e164 itself would take exactly these steps
    mobile: bool

    @property
    def guessed_type(self) -> PhoneType:
        return PhoneType.MOBILE if self.mobile else PhoneType.OTHER


class _NoFastPath(Exception):
    pass


_DECLINED = object()


class _FastParser:
    """phonenumbers' parse, region_code_for_number, is_valid_number_for_region,
    number_type and time_zones_for_number, mirrored for digit strings.

    Declines (returns None) whenever the input would take a branch not mirrored here: an
    IDD prefix, a leading zero in the national number ("Italian leading zero"), a number
    that is not valid. Relies on phonenumbers' private helpers and data; if they are
    missing, _NoFastPath and everything takes the slow path."""

    def __init__(self, region: str) -> None:
        try:
            import phonenumbers
            from phonenumbers import phonenumberutil, timezone

            # private helpers and data, typed loosely on purpose
            pn: Any = phonenumbers
            pu: Any = phonenumberutil
            pn_tz: Any = timezone

            md = pu.PhoneMetadata.metadata_for_region(region, None)
            if md is None:
                raise _NoFastPath(region)
            self.pu = pu
            self.region = region
            self.md = md
            self.cc_text = str(md.country_code)
            self.main_region = pu.region_code_for_country_code(md.country_code)
            self.idd = re.compile(md.international_prefix) if md.international_prefix else None
            self.unknown = pn.PhoneNumberType.UNKNOWN
            self.mobile = pn.PhoneNumberType.MOBILE
            self.types = pn.PhoneNumberType
            self.bad_lengths = (
                pu.ValidationResult.TOO_SHORT,
                pu.ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
                pu.ValidationResult.INVALID_LENGTH,
            )
            self.too_long = pu.ValidationResult.TOO_LONG
            self.extract_cc = pu._extract_country_code
            self.strip_national_prefix = pu._maybe_strip_national_prefix_carrier_code
            self.test_length = pu._test_number_length
            self.match_national = pu._match_national_number
            self.regions_of = pu.COUNTRY_CODE_TO_REGION_CODE
            self.min_nsn, self.max_nsn = pu._MIN_LENGTH_FOR_NSN, pu._MAX_LENGTH_FOR_NSN
            self.is_geographical = pu.is_number_type_geographical
            self.tz_data = pn_tz.TIMEZONE_DATA
            self.tz_longest = pn_tz.TIMEZONE_LONGEST_PREFIX
            self.unknown_zone = pn_tz.UNKNOWN_TIMEZONE
        except (ImportError, AttributeError) as exc:  # another phonenumbers: slow path
            raise _NoFastPath(str(exc)) from None
        self._cc: dict[int, list[tuple[_TypeMatcher | None, re.Pattern[str] | None]]] = {}
        self._prefixes: dict[int, re.Pattern[str] | None] = {}

    def _strip_national_prefix(self, number: str, md: Any) -> str:
        """_maybe_strip_national_prefix_carrier_code's number; it returns the number as
        given when the national prefix pattern does not match its start, checked first
        here (most numbers) with the pattern compiled once."""
        key = id(md)
        if key not in self._prefixes:
            npfp = md.national_prefix_for_parsing
            self._prefixes[key] = re.compile(npfp) if npfp else None
        prefix = self._prefixes[key]
        if not number or prefix is None or not prefix.match(number):
            return number
        return self.strip_national_prefix(number, md)[1]

    def parse(self, digits: str, plus: bool) -> Parsed | None:
        """The valid number in `digits` (after a + if `plus`), None if invalid or unsure."""
        pu = self.pu
        md = self.md
        same = True
        if plus:  # parse: _maybe_extract_country_code, plus-sign branch
            if len(digits) <= self.min_nsn:
                return None
            cc, national = self.extract_cc(digits)
            if cc == 0:
                return None
            main = pu.region_code_for_country_code(cc)
            if main != self.region:
                md = pu.PhoneMetadata.metadata_for_region_or_calling_code(cc, main)
                if md is None:
                    return None
        else:
            if self.idd is not None and self.idd.match(digits):
                return None
            cc, national = md.country_code, digits
            if digits.startswith(self.cc_text):  # the default country's code without +
                potential = digits[len(self.cc_text) :]
                potential = self._strip_national_prefix(potential, md)
                general = md.general_desc
                if (
                    not self.match_national(digits, general, False)
                    and self.match_national(potential, general, False)
                ) or self.test_length(digits, md) == self.too_long:
                    national = potential
                    same = False
                    if self.main_region != self.region:
                        md = pu.PhoneMetadata.metadata_for_region_or_calling_code(
                            cc, self.main_region
                        )
            if self.main_region != self.region:
                same = False  # parsing the E.164 form would read the main region's metadata
        if len(national) < self.min_nsn:
            return None
        stripped = self._strip_national_prefix(national, md)
        if stripped != national and self.test_length(stripped, md) not in self.bad_lengths:
            national = stripped
            same = False
        if len(national) > self.max_nsn or national[0] == "0":
            return None
        kind = self._classify(cc, national)
        if kind is None:
            return None
        return Parsed(f"+{cc}{national}", kind, cc, same, kind == self.mobile)

    def _classify(self, cc: int, nsn: str) -> int | None:
        """region_code_for_number, is_valid_number_for_region and number_type at once."""
        entries = self._cc.get(cc)
        if entries is None:
            entries = self._cc[cc] = self._entries(cc)
        unknown = self.unknown
        if len(entries) == 1:
            matcher = entries[0][0]
        else:  # _region_code_for_number_from_list: the first region that claims it
            for matcher, leading in entries:
                if leading is not None:
                    if leading.match(nsn):
                        break
                elif matcher is not None:
                    kind = matcher(nsn)
                    if kind != unknown:
                        return kind
            else:
                return None
        if matcher is None:
            return None
        kind = matcher(nsn)
        return None if kind == unknown else kind

    def _entries(self, cc: int) -> list[tuple[_TypeMatcher | None, re.Pattern[str] | None]]:
        pu = self.pu
        regions = self.regions_of.get(cc, ())
        out = []
        for rc in regions:
            leading = None
            # is_valid_number_for_region and number_type read this metadata
            md = pu.PhoneMetadata.metadata_for_region_or_calling_code(cc, rc.upper())
            if (
                md is not None
                and rc != pu.REGION_CODE_FOR_NON_GEO_ENTITY
                and cc != pu.country_code_for_valid_region(rc)
            ):
                md = None
            if len(regions) > 1:  # and _region_code_for_number_from_list this one
                detect = pu.PhoneMetadata.metadata_for_region(rc.upper(), None)
                if detect is None:
                    continue
                if detect.leading_digits is not None:
                    leading = re.compile(detect.leading_digits)
                elif detect is not md:  # never seen; one matcher cannot serve both
                    return []  # this country code always takes the slow path
            out.append((_TypeMatcher(md, self.types) if md is not None else None, leading))
        return out

    def timezone(self, number: Parsed) -> str | None | object:
        """phones.timezone_for(number.e164) (time_zones_for_number of its parse), or
        _DECLINED."""
        if not number.reparse_same or number.kind < 0:
            again = self.parse(number.e164[1:], True)
            if again is None:
                return _DECLINED
            number = again
        data = self.tz_data
        zones: Sequence[str] = (self.unknown_zone,)
        if self.is_geographical(number.kind, number.cc):  # time_zones_for_geographical_number
            digits = number.e164[1:]
            for n in range(self.tz_longest, 0, -1):
                if digits[:n] in data:
                    zones = data[digits[:n]]
                    break
        else:  # _country_level_time_zones_for_number
            cc = str(number.cc)
            for n in range(self.tz_longest, 0, -1):
                if cc[: 1 + n] in data:
                    zones = data[cc[: 1 + n]]
                    break
        found = tuple(z for z in zones if z != self.unknown_zone)
        return found[0] if len(found) == 1 else None


class _TypeMatcher:
    """phonenumberutil._number_type_helper for one region, its patterns compiled once."""

    _SPECIAL = (
        ("premium_rate", "PREMIUM_RATE"),
        ("toll_free", "TOLL_FREE"),
        ("shared_cost", "SHARED_COST"),
        ("voip", "VOIP"),
        ("personal_number", "PERSONAL_NUMBER"),
        ("pager", "PAGER"),
        ("uan", "UAN"),
        ("voicemail", "VOICEMAIL"),
    )

    def __init__(self, md: Any, types: Any) -> None:
        self.t = types
        self.general = self._desc(md.general_desc)
        # _is_number_matching_desc is False for a missing desc: those are left out
        self.specials = [
            (*d, getattr(types, kind))
            for attr, kind in self._SPECIAL
            if (d := self._desc(getattr(md, attr))) is not None
        ]
        self.fixed = self._desc(md.fixed_line)
        self.mobile = self._desc(md.mobile)
        self.same = bool(md.same_mobile_and_fixed_line_pattern)

    @staticmethod
    def _desc(d: Any) -> tuple[frozenset[int] | None, Callable[[str], Any]] | None:
        if d is None or not d.national_number_pattern:
            return None  # _match_national_number: no pattern never matches
        return frozenset(d.possible_length) or None, re.compile(d.national_number_pattern).fullmatch

    @staticmethod
    def _is(d: tuple[frozenset[int] | None, Callable[[str], Any]] | None, nsn: str) -> bool:
        if d is None:
            return False
        lengths, fullmatch = d
        return (lengths is None or len(nsn) in lengths) and fullmatch(nsn) is not None

    def __call__(self, nsn: str) -> int:
        t = self.t
        if not self._is(self.general, nsn):
            return t.UNKNOWN
        size = len(nsn)
        for lengths, fullmatch, kind in self.specials:
            if (lengths is None or size in lengths) and fullmatch(nsn) is not None:
                return kind
        if self._is(self.fixed, nsn):
            if self.same or self._is(self.mobile, nsn):
                return t.FIXED_LINE_OR_MOBILE
            return t.FIXED_LINE
        if not self.same and self._is(self.mobile, nsn):
            return t.MOBILE
        return t.UNKNOWN

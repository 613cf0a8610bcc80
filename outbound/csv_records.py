"""Reading a contacts CSV file: physical lines, records and the header's plan.

Split out of `contacts_import` so that the byte- and line-level concerns (decoding,
bounded record size, replaying the lines of a rejected record, delimiter sniffing,
which column means what) live apart from validating rows and writing them.
`ImportFormatError` is defined here because reading the header is what raises it;
`contacts_import` re-exports it as part of its public interface.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from .model.types import PhoneType

# One record (a line, or several when a quoted field holds line breaks) may not be longer
# than this nor span more lines: a stray quote would otherwise swallow the rest of the file.
# The lines after the first of a rejected record are read again as records of their own.
RECORD_MAX_BYTES = 1 << 20
RECORD_MAX_LINES = 200
CSV_FIELD_LIMIT = 1 << 20

_PHONE_COLUMN = re.compile(r"phone_?\d*")
_TYPED_COLUMNS = {t.value: t for t in PhoneType} | {f"phone_{t.value}": t for t in PhoneType}


class ImportFormatError(ValueError):
    """The file as a whole is unusable (empty, not CSV, no phone column): nothing imported."""


class _BadRecord(Exception):
    """A record the csv module cannot even split into fields."""


class Lines:
    """Physical lines of the file for csv.reader: numbered, decoded (invalid UTF-8 kept as
    surrogates so that the row, not the file, is rejected), bounded, and replayable.

    When a record fails, the lines after its first are served again: a stray quote then
    costs one rejected line instead of everything up to the next quote."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.bytes_read = 0
        self._next_no = 1
        self._replay: deque[tuple[int, str | None]] = deque()
        self._record: list[tuple[int, str | None]] = []
        self._record_bytes = 0
        self.bad_utf8 = False  # the record being read has invalid UTF-8 somewhere

    def begin_record(self) -> None:
        self._record = []
        self._record_bytes = 0
        self.bad_utf8 = False

    @property
    def record_line(self) -> int:
        """The first physical line of the record being read."""
        if self._record:
            return self._record[0][0]
        return self._replay[0][0] if self._replay else self._next_no

    def replay_after_first(self) -> None:
        self._replay.extendleft(reversed(self._record[1:]))
        self._record = []

    def push_back(self, line: tuple[int, str]) -> None:
        self._replay.appendleft(line)

    def read(self) -> tuple[int, str | None] | None:
        """The next physical line, None at the end; None as text: an over-long line."""
        if self._replay:
            return self._replay.popleft()
        data = self._raw.readline(RECORD_MAX_BYTES + 1)
        if not data:
            return None
        self.bytes_read += len(data)
        no = self._next_no
        self._next_no += 1
        if len(data) > RECORD_MAX_BYTES and not data.endswith(b"\n"):
            while data and not data.endswith(b"\n"):  # skip the rest of it, bounded memory
                data = self._raw.readline(1 << 16)
                self.bytes_read += len(data)
            return no, None
        if no == 1 and data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8) :]
        return no, data.decode("utf-8", "surrogateescape")

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = self.read()
        if line is None:
            raise StopIteration
        no, text = line
        self._record.append(line)
        if text is None:
            raise _BadRecord(f"line {no} is longer than {RECORD_MAX_BYTES} bytes")
        self._record_bytes += len(text)
        if self._record_bytes > RECORD_MAX_BYTES or len(self._record) > RECORD_MAX_LINES:
            raise _BadRecord(
                f"record longer than {RECORD_MAX_BYTES} bytes or {RECORD_MAX_LINES} lines"
                " (unbalanced quote?)"
            )
        if not text.isascii() and has_surrogate(text):
            self.bad_utf8 = True
        return text


def records(reader: Iterator[list[str]], lines: Lines) -> Iterator[tuple[int, list[str] | str]]:
    """(first physical line, fields) of each non-blank record; (line, reason) for a
    record the csv module cannot split."""
    while True:
        lines.begin_record()
        try:
            values = next(reader)
        except StopIteration:
            return
        except (csv.Error, _BadRecord) as exc:
            line = lines.record_line
            lines.replay_after_first()
            yield line, f"not a valid CSV record: {exc}"
            continue
        if not values or (len(values) == 1 and not values[0].strip()):
            continue
        yield lines.record_line, values


def _sniff_delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in ",;\t|"}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


@dataclass
class Plan:
    """Which column holds what, from the header."""

    width: int
    key: int | None = None
    name: int | None = None
    first_name: int | None = None
    last_name: int | None = None
    tz: int | None = None
    priority: int | None = None
    labels: list[str] = field(default_factory=list)  # header as written, stripped
    phones: list[tuple[int, PhoneType | None]] = field(default_factory=list)  # None: guess
    custom: list[tuple[int, str]] = field(default_factory=list)


def read_header(lines: Lines) -> tuple[Iterator[list[str]], Plan]:
    if csv.field_size_limit() < CSV_FIELD_LIMIT:  # bounded anyway by RECORD_MAX_BYTES
        csv.field_size_limit(CSV_FIELD_LIMIT)
    first = lines.read()
    while first is not None and first[1] is not None and not first[1].strip():
        first = lines.read()  # blank lines before the header
    if first is None:
        raise ImportFormatError("the file is empty")
    no, text = first
    if text is None:
        raise ImportFormatError(f"line {no} (the header) is longer than {RECORD_MAX_BYTES} bytes")
    if text.startswith(("\udcff\udcfe", "\udcfe\udcff")):
        raise ImportFormatError("the file is UTF-16; save it as CSV UTF-8")
    lines.push_back((no, text))
    reader = csv.reader(lines, delimiter=_sniff_delimiter(text), strict=True)
    lines.begin_record()
    try:
        header = next(reader)
    except (csv.Error, _BadRecord) as exc:
        raise ImportFormatError(f"the header (line {no}) is not valid CSV: {exc}") from None
    if lines.bad_utf8:
        raise ImportFormatError(f"the header (line {no}) is not valid UTF-8")
    return reader, _plan(header)


def _plan(header: list[str]) -> Plan:
    plan = Plan(width=len(header))
    seen: dict[str, str] = {}
    roles: dict[str, int] = {}
    for i, raw in enumerate(header):
        label = raw.strip()
        plan.labels.append(label)
        name = label.lower()
        if not name:
            continue  # an unnamed column (a trailing delimiter) carries nothing we keep
        if name in seen:
            raise ImportFormatError(f"duplicate column {label!r} (also {seen[name]!r})")
        seen[name] = label
        if name in _TYPED_COLUMNS:
            plan.phones.append((i, _TYPED_COLUMNS[name]))
        elif _PHONE_COLUMN.fullmatch(name):
            plan.phones.append((i, None))
        elif name in ("id", "external_id", "timezone", "tz"):
            role = "key" if name in ("id", "external_id") else "tz"
            if role in roles:
                raise ImportFormatError(
                    f"columns {header[roles[role]].strip()!r} and {label!r} mean the same"
                )
            roles[role] = i
        elif name in ("name", "first_name", "last_name", "priority"):
            roles[name] = i
        else:
            plan.custom.append((i, label))
    if not plan.phones:
        raise ImportFormatError(
            "no phone column: name one phone, phone1..phoneN, mobile, work, home, other"
            " or phone_<type>"
        )
    plan.key = roles.get("key")
    plan.tz = roles.get("tz")
    plan.priority = roles.get("priority")
    plan.name = roles.get("name")
    if plan.name is None:
        plan.first_name = roles.get("first_name")
        plan.last_name = roles.get("last_name")
    else:  # with a full name, first and last name are just case fields
        plan.custom.extend(
            (roles[n], header[roles[n]].strip()) for n in ("first_name", "last_name") if n in roles
        )
        plan.custom.sort()
    return plan


def has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False

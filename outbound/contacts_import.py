"""Bulk contact import from a CSV file: streamed, validated row by row, idempotent.

`outbound contacts import CAMPAIGN FILE.csv` calls `import_contacts`. The file is read
line by line (memory stays flat whatever its size); each good row becomes a READY contact
with its numbers, each bad row a `RowError` naming its physical line, and the good rows
are written in chunks, one transaction each, so an interrupted import leaves whole chunks
and running it again completes it: a contact's key (the `id` column, else a hash of its
name and numbers) is looked up before it is written, and a key already in the campaign
is counted, never written twice.

A large file is parsed in a child process while this one writes (2 cores: parsing and
the database each get one); a small one is parsed here, in between the writes.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from . import phones
from .model.tables import Campaign, Contact, ContactList, PhoneNumber
from .model.types import ContactState, PhoneType

NAME_MAX = 200  # Contact.name is String(200)
FIELD_MAX = 1000  # one custom field value
KEY_MAX = 64  # Contact.external_key is String(64)
TZ_MAX = 64  # Contact.timezone is String(64)
LIST_NAME_MAX = 200  # ContactList.name is String(200)
PRIORITY_RANGE = (-(2**31), 2**31 - 1)  # Contact.priority is a 32-bit Integer
# One record (a line, or several when a quoted field holds line breaks) may not be longer
# than this nor span more lines: a stray quote would otherwise swallow the rest of the file.
# The lines after the first of a rejected record are read again as records of their own.
RECORD_MAX_BYTES = 1 << 20
RECORD_MAX_LINES = 200
CSV_FIELD_LIMIT = 1 << 20
# Files at least this big are parsed in a child process (starting one costs about 1 s).
PARALLEL_MIN_BYTES = 4 << 20

_PHONE_COLUMN = re.compile(r"phone_?\d*")
_TYPED_COLUMNS = {t.value: t for t in PhoneType} | {f"phone_{t.value}": t for t in PhoneType}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PRIORITY = re.compile(r"[+-]?[0-9]{1,10}")


@dataclass(frozen=True)
class RowError:
    line: int  # 1-based physical line number in the file (the header is line 1)
    reason: str  # human readable, e.g. "phone: not a valid number: '12'"


@dataclass
class ImportReport:
    rows: int  # data records read (blank lines are not records)
    imported: int  # contacts written
    already_present: int  # key already in the campaign before this import
    duplicates_in_file: int  # key seen earlier in this file
    errors: list[RowError]  # the first `keep_errors` rejected rows
    elapsed_s: float
    failed: int = 0  # rejected rows, all of them (errors may stop at keep_errors)
    list_id: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0


class ImportFormatError(ValueError):
    """The file as a whole is unusable (empty, not CSV, no phone column): nothing imported."""


class UnknownCampaign(LookupError):
    """No campaign has the id given."""


def import_contacts(
    factory: sessionmaker[Session],
    campaign_id: int,
    path: Path,
    *,
    default_region: str,
    list_name: str | None = None,
    chunk_size: int = 2000,
    progress: Callable[[int, int], None] | None = None,
    on_error: Callable[[RowError], None] | None = None,
    keep_errors: int = 10_000,
) -> ImportReport:
    """Import the contacts of the CSV file `path` into the campaign, in list `list_name`
    (default: the file's name; created when missing).

    Header (case and surrounding spaces ignored): `id`/`external_id`, `name` or
    `first_name`+`last_name`, phone columns (`phone`, `phoneN`, `mobile`, `work`, `home`,
    `other`, `phone_<type>`), `timezone`/`tz`, `priority`; any other named column becomes
    a custom case field (unnamed columns are ignored). National numbers are read in
    `default_region`. `progress(bytes_done, bytes_total)` is called after each chunk,
    `on_error` for each rejected row.

    Raises ImportFormatError (nothing written) when the file cannot be used at all,
    UnknownCampaign for a wrong id, ValueError for an unknown region or a bad list name.
    A database error stops the import after the last committed chunk: running it again
    completes it."""
    started = time.perf_counter()
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    region = default_region.upper()
    _Numbers(region)  # an unknown region fails here, before anything is written
    path = Path(path)
    list_name = path.name if list_name is None else list_name
    if not list_name.strip() or len(list_name) > LIST_NAME_MAX:
        raise ValueError(f"the list name must be 1 to {LIST_NAME_MAX} characters")
    with open(path, "rb") as raw:
        _read_header(_Lines(raw))  # an unusable file fails here, before anything is written
    total = path.stat().st_size

    engine = factory.kw.get("bind")
    if not isinstance(engine, Engine):
        raise ValueError("the session factory must be bound to an Engine")
    with factory() as session, session.begin():
        if session.get(Campaign, campaign_id) is None:
            raise UnknownCampaign(f"no campaign with id {campaign_id}")
        watermark = session.execute(select(func.max(Contact.id))).scalar() or 0
    list_id = _get_or_create_list(factory, campaign_id, list_name)
    report = ImportReport(0, 0, 0, 0, [], 0.0, list_id=list_id)
    writer = _writer(engine, campaign_id, list_id, watermark)

    parallel = total >= PARALLEL_MIN_BYTES
    batches = (_batches_in_child if parallel else _batches)(path, region, chunk_size)
    try:
        with engine.connect() as conn:
            writer.setup(conn)
            try:
                for batch in batches:
                    report.rows += batch.records
                    for err in batch.errors:
                        report.failed += 1
                        if len(report.errors) < keep_errors:
                            report.errors.append(err)
                        if on_error is not None:
                            on_error(err)
                    if batch.rows:
                        with conn.begin():
                            writer.write(conn, batch.rows)
                    if progress is not None:
                        progress(batch.bytes_done, total)
            finally:
                writer.teardown(conn)
    finally:
        batches.close()  # stops a child process still parsing
    report.imported = writer.imported
    report.already_present = writer.already_present
    report.duplicates_in_file = writer.duplicates_in_file
    report.elapsed_s = time.perf_counter() - started
    return report


def identity_key(name: str, e164s: Sequence[str]) -> str:
    """The key of a contact without an id: its normalised name and its sorted numbers."""
    text = " ".join(name.split()).casefold() + "\x1f" + ",".join(sorted(e164s))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


# --- parsing ------------------------------------------------------------------------------


class _Row(NamedTuple):
    key: str
    name: str
    tz: str | None
    priority: int
    fields: dict[str, str]
    numbers: list[tuple[str, str]]  # (E.164, PhoneType value) in column order, no repeats


@dataclass
class _Batch:
    rows: list[_Row]
    errors: list[RowError]
    records: int  # data records read: rows, rejected ones and in-file repeats
    bytes_done: int


def _batches(path: Path, region: str, chunk_size: int) -> Generator[_Batch, None, None]:
    """Parse the file into batches of up to `chunk_size` good rows (or rejected ones)."""
    with open(path, "rb") as raw:
        lines = _Lines(raw)
        reader, plan = _read_header(lines)
        rows = _RowReader(plan, _Numbers(region))
        batch = _Batch([], [], 0, 0)
        for line, values in _records(reader, lines):
            batch.records += 1
            row = values if isinstance(values, str) else rows.read(values, lines.bad_utf8)
            if isinstance(row, str):
                batch.errors.append(RowError(line, row))
            else:
                batch.rows.append(row)
            if len(batch.rows) >= chunk_size or len(batch.errors) >= chunk_size:
                batch.bytes_done = lines.bytes_read
                yield batch
                batch = _Batch([], [], 0, 0)
        batch.bytes_done = lines.bytes_read
        yield batch


def _child_main() -> None:
    """`python -c "...; _child_main()" PATH REGION CHUNK_SIZE`: _batches to stdout as
    length-prefixed pickles, then ("done", None) or the failure."""
    path, region, chunk_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the stream
    try:  # room for a whole batch in the pipe: parsing goes on while the importer writes
        import fcntl

        fcntl.fcntl(out.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass

    def send(kind: str, payload: Any) -> None:
        data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
        out.write(len(data).to_bytes(8, "big") + data)
        out.flush()

    try:
        for batch in _batches(Path(path), region, chunk_size):
            send("batch", batch)
        send("done", None)
    except ImportFormatError as exc:
        send("format", str(exc))
    except BrokenPipeError:  # the importer stopped
        pass
    except BaseException:
        send("crash", traceback.format_exc())


def _batches_in_child(path: Path, region: str, chunk_size: int) -> Generator[_Batch, None, None]:
    """_batches run in a child process; the pipe's buffer keeps it a little ahead only.

    A plain subprocess, not multiprocessing: spawn would import the caller's __main__
    again, fork would copy our database connections, and daemonic processes (Celery's
    workers) may not have multiprocessing children."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)  # so the child imports this copy
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    code = "from outbound.contacts_import import _child_main; _child_main()"
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(path), region, str(chunk_size)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=env,
        )
    except OSError:  # no interpreter to start (embedded Python): parse here instead
        yield from _batches(path, region, chunk_size)
        return
    assert child.stdout is not None
    try:
        while True:
            head = child.stdout.read(8)
            data = child.stdout.read(int.from_bytes(head, "big")) if len(head) == 8 else b""
            if not data:
                raise RuntimeError(
                    f"the parsing process ended unexpectedly (exit code {child.wait()})"
                )
            kind, payload = pickle.loads(data)
            if kind == "batch":
                yield payload
            elif kind == "done":
                return
            elif kind == "format":
                raise ImportFormatError(payload)
            else:
                raise RuntimeError(f"the parsing process failed:\n{payload}")
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
        child.wait()


# --- reading the file ------------------------------------------------------------------


class _BadRecord(Exception):
    """A record the csv module cannot even split into fields."""


class _Lines:
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
        if not text.isascii() and _has_surrogate(text):
            self.bad_utf8 = True
        return text


def _records(reader: Iterator[list[str]], lines: _Lines) -> Iterator[tuple[int, list[str] | str]]:
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
class _Plan:
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


def _read_header(lines: _Lines) -> tuple[Iterator[list[str]], _Plan]:
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


def _plan(header: list[str]) -> _Plan:
    plan = _Plan(width=len(header))
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


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@lru_cache(maxsize=1024)
def _zone_ok(name: str) -> bool:
    if len(name) > TZ_MAX:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


class _RowReader:
    """One CSV record -> a _Row, or the reason it is rejected."""

    def __init__(self, plan: _Plan, numbers: _Numbers) -> None:
        self.plan = plan
        self.numbers = numbers
        self.phones = [(i, kind.value if kind else None) for i, kind in plan.phones]

    def read(self, v: list[str], bad_utf8: bool) -> _Row | str:
        plan = self.plan
        labels = plan.labels
        if len(v) != plan.width:
            return f"expected {plan.width} fields, found {len(v)}"
        if bad_utf8:
            for i, value in enumerate(v):
                if _has_surrogate(value):
                    return f"{labels[i] or f'column {i + 1}'}: not valid UTF-8"

        if plan.name is not None:
            name = v[plan.name].strip()
        else:
            parts = (v[i].strip() for i in (plan.first_name, plan.last_name) if i is not None)
            name = " ".join(p for p in parts if p)
        if len(name) > NAME_MAX:
            return f"name: longer than {NAME_MAX} characters"
        if _CONTROL.search(name):
            return "name: contains a control character (NUL, CR, LF...)"

        fields: dict[str, str] = {}
        for i, label in plan.custom:
            value = v[i].strip()
            if len(value) > FIELD_MAX:
                return f"{label}: longer than {FIELD_MAX} characters"
            if "\x00" in value:
                return f"{label}: contains a NUL character"
            fields[label] = value

        numbers: list[tuple[str, str]] = []
        first: _Parsed | None = None
        analyze = self.numbers.analyze
        for i, kind in self.phones:
            raw = v[i].strip()
            if not raw:
                continue
            try:
                number = analyze(raw)
            except phones.InvalidNumber as exc:
                return f"{labels[i]}: {exc}"
            if first is None:
                first = number
            elif any(number.e164 == n for n, _ in numbers):
                continue  # the same number twice in a row: kept once, first column wins
            numbers.append((number.e164, kind or ("mobile" if number.mobile else "other")))
        if first is None:
            return "no phone number"

        tz: str | None = None
        if plan.tz is not None:
            tz = v[plan.tz].strip() or None
            if tz is not None and not _zone_ok(tz):
                return f"{labels[plan.tz]}: unknown time zone {tz!r}"
        if tz is None:
            tz = self.numbers.timezone(first)

        priority = 0
        if plan.priority is not None and (text := v[plan.priority].strip()):
            if not _PRIORITY.fullmatch(text):
                return f"{labels[plan.priority]}: not an integer: {text!r}"
            priority = int(text)
            if not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
                return f"{labels[plan.priority]}: out of range: {text!r}"

        key = v[plan.key].strip() if plan.key is not None else ""
        if key:
            if len(key) > KEY_MAX:
                return f"{labels[plan.key]}: longer than {KEY_MAX} characters"  # type: ignore[index]
            if _CONTROL.search(key):
                return f"{labels[plan.key]}: contains a control character"  # type: ignore[index]
        else:
            key = identity_key(name, [n for n, _ in numbers])
        return _Row(key, name, tz, priority, fields, numbers)


# --- phone numbers ----------------------------------------------------------------------


class _Numbers:
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

    def analyze(self, raw: str) -> _Parsed:
        """The number in a stripped, non-empty text; raises phones.InvalidNumber."""
        fast = self._fast
        if fast is not None and len(raw) <= phones.MAX_RAW_LEN and self._SHAPE.fullmatch(raw):
            hit = fast.parse(raw.translate(self._DROP), raw.find("+") >= 0)
            if hit is not None:
                return hit
        e164 = phones.normalize(raw, self.region)
        if fast is not None and (hit := fast.parse(e164[1:], True)) is not None:
            return hit
        return _Parsed(e164, -1, 0, False, phones.number_type(e164) == PhoneType.MOBILE)

    def timezone(self, number: _Parsed) -> str | None:
        """phones.timezone_for(number.e164)."""
        if self._fast is not None:
            zone = self._fast.timezone(number)
            if zone is not _DECLINED:
                return zone  # type: ignore[return-value]
        return phones.timezone_for(number.e164)


class _Parsed(NamedTuple):
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

    def parse(self, digits: str, plus: bool) -> _Parsed | None:
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
        return _Parsed(f"+{cc}{national}", kind, cc, same, kind == self.mobile)

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

    def timezone(self, number: _Parsed) -> str | None | object:
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


# --- writing --------------------------------------------------------------------------------


def _get_or_create_list(factory: sessionmaker[Session], campaign_id: int, name: str) -> int:
    query = select(ContactList.id).where(
        ContactList.campaign_id == campaign_id, ContactList.name == name
    )
    for _ in range(2):
        with factory() as session, session.begin():
            found = session.execute(query).scalar()
            if found is not None:
                return found
        try:
            with factory() as session, session.begin():
                new = ContactList(campaign_id=campaign_id, name=name)
                session.add(new)
                session.flush()
                return new.id
        except IntegrityError:  # another import created it meanwhile: read it again
            continue
    raise RuntimeError(f"could not create the contact list {name!r}")


_CT: Table = Contact.__table__  # type: ignore[assignment]
_PT: Table = PhoneNumber.__table__  # type: ignore[assignment]


def _writer(engine: Engine, campaign_id: int, list_id: int, watermark: int) -> _Writer:
    kind = {"sqlite": _SqliteWriter, "postgresql": _PostgresWriter}.get(engine.dialect.name)
    if kind is None:
        raise NotImplementedError(
            f"contact import supports SQLite and PostgreSQL, not {engine.dialect.name}"
        )
    return kind(engine, campaign_id, list_id, watermark)


class _Writer:
    """Writes one chunk per transaction and counts what it did.

    A key found in the campaign with an id above `watermark` (the highest contact id when
    the import began) was written by this import: a repeat within the file; at or below
    it, the contact was there before. So no set of keys grows in memory.

    Why not insertmanyvalues with RETURNING ... sort_by_parameter_order: on SQLite that
    runs one INSERT per row, and psycopg rewrites the placeholders of every multi-VALUES
    statement in Python, which costs more than PostgreSQL's own work (measured 5,800
    contacts/s). Here: SQLite gets executemany (pysqlite loops in C) and one lookup of
    the new ids by key; PostgreSQL one INSERT ... SELECT from a JSON array per table."""

    def __init__(self, engine: Engine, campaign_id: int, list_id: int, watermark: int) -> None:
        self.campaign_id = campaign_id
        self.list_id = list_id
        self.watermark = watermark
        self.imported = self.already_present = self.duplicates_in_file = 0
        created_at = _CT.c.created_at.type
        process = created_at.dialect_impl(engine.dialect).bind_processor(engine.dialect)
        now = datetime.now(UTC)
        self.created_at = process(now) if process is not None else now

    def setup(self, conn: Connection) -> None:
        pass

    def teardown(self, conn: Connection) -> None:
        pass

    def write(self, conn: Connection, chunk: list[_Row]) -> None:
        known = self.ids(conn, list({r.key for r in chunk}))
        fresh: list[_Row] = []
        in_chunk: set[str] = set()
        present = repeats = 0
        for row in chunk:
            if row.key in in_chunk:
                repeats += 1
            elif row.key in known:
                if known[row.key] > self.watermark:
                    repeats += 1
                else:
                    present += 1
            else:
                in_chunk.add(row.key)
                fresh.append(row)
        if fresh:
            self.insert(conn, fresh)
        self.imported += len(fresh)
        self.already_present += present
        self.duplicates_in_file += repeats

    def ids(self, conn: Connection, keys: list[str]) -> dict[str, int]:
        """key -> contact id, for the keys found in the campaign."""
        params = {"campaign_id": self.campaign_id, "keys": json.dumps(keys)}
        return {key: cid for key, cid in conn.execute(self.IDS, params)}

    def insert(self, conn: Connection, rows: list[_Row]) -> None:
        raise NotImplementedError

    IDS: Any


def _json_rows(name: str, dialect: str) -> Any:
    """The elements of a JSON array bound as `name`: a table with one column, value."""
    if dialect == "sqlite":
        return func.json_each(bindparam(name, type_=Text)).table_valued("value")
    return func.jsonb_array_elements(cast(bindparam(name, type_=Text), JSONB)).table_valued(
        column("value", JSONB)
    )


def _ids_query(dialect: str) -> Any:
    if dialect == "sqlite":
        keys = func.json_each(bindparam("keys", type_=Text)).table_valued("value")
    else:
        texts = func.json_array_elements_text(cast(bindparam("keys", type_=Text), JSON))
        keys = texts.table_valued("value")
    return select(_CT.c.external_key, _CT.c.id).where(
        _CT.c.campaign_id == bindparam("campaign_id", type_=Integer),
        _CT.c.external_key.in_(select(keys.c.value)),
    )


_CONTACT_COLUMNS = (
    *("campaign_id", "list_id", "external_key", "name", "timezone", "fields", "state"),
    *("priority", "next_at", "attempts", "number_index", "last_result", "created_at"),
)
_NUMBER_COLUMNS = ("contact_id", "e164", "type", "position")


class _SqliteWriter(_Writer):
    IDS = _ids_query("sqlite")
    # For the import's connection only, restored afterwards. Random keys dirty pages all
    # over the indexes: more WAL between checkpoints (each checkpoint copied them all
    # again) and a bigger page cache (the default 2 MB keeps re-reading them).
    PRAGMAS = {"wal_autocheckpoint": 16384, "cache_size": -32768}

    def __init__(self, engine: Engine, campaign_id: int, list_id: int, watermark: int) -> None:
        super().__init__(engine, campaign_id, list_id, watermark)
        # Statements compiled by SQLAlchemy once, run with the driver's executemany: the
        # values are plain strings and numbers, already in their stored form.
        self.contacts_sql = _positional_insert(_CT, _CONTACT_COLUMNS, engine)
        self.numbers_sql = _positional_insert(_PT, _NUMBER_COLUMNS, engine)
        self.saved: dict[str, Any] = {}

    def setup(self, conn: Connection) -> None:
        pragma = conn.exec_driver_sql
        self.saved = {name: pragma(f"PRAGMA {name}").scalar() for name in self.PRAGMAS}
        for name, value in self.PRAGMAS.items():
            pragma(f"PRAGMA {name}={value}")
        conn.commit()

    def teardown(self, conn: Connection) -> None:
        for name, value in self.saved.items():
            conn.exec_driver_sql(f"PRAGMA {name}={int(value)}")
        conn.commit()

    def insert(self, conn: Connection, rows: list[_Row]) -> None:
        cid, lid, state, created = (
            self.campaign_id,
            self.list_id,
            ContactState.READY.value,
            self.created_at,
        )
        dumps = json.dumps
        conn.exec_driver_sql(
            self.contacts_sql,
            [
                (
                    cid,
                    lid,
                    r.key,
                    r.name,
                    r.tz,
                    dumps(r.fields),
                    state,
                    r.priority,
                    None,
                    0,
                    0,
                    None,
                    created,
                )
                for r in rows
            ],
        )
        ids = self.ids(conn, [r.key for r in rows])
        conn.exec_driver_sql(
            self.numbers_sql,
            [
                (ids[r.key], e164, kind, pos)
                for r in rows
                for pos, (e164, kind) in enumerate(r.numbers)
            ],
        )


def _positional_insert(table: Table, columns: Sequence[str], engine: Engine) -> str:
    compiled = insert(table).compile(dialect=engine.dialect, column_keys=list(columns))
    if list(compiled.positiontup or ()) != list(columns):
        raise RuntimeError(f"unexpected parameter order for {table.name}")
    return str(compiled)


class _PostgresWriter(_Writer):
    IDS = _ids_query("postgresql")

    def insert(self, conn: Connection, rows: list[_Row]) -> None:
        common = {
            "campaign_id": self.campaign_id,
            "list_id": self.list_id,
            "state": ContactState.READY.value,
            "created_at": self.created_at,
        }
        # fields as JSON text inside the array: jsonb would reorder the columns' keys
        dumps = json.dumps
        payload = [[r.key, r.name, r.tz, dumps(r.fields), r.priority] for r in rows]
        inserted = conn.execute(_PG_CONTACTS, common | {"rows": json.dumps(payload)})
        ids: dict[str, int] = {key: cid for key, cid in inserted}
        numbers = [
            [ids[r.key], e164, kind, pos]
            for r in rows
            for pos, (e164, kind) in enumerate(r.numbers)
        ]
        conn.execute(_PG_NUMBERS, {"rows": json.dumps(numbers)})


def _pg_statements() -> tuple[Any, Any]:
    def item(src: Any, i: int) -> Any:
        return src.c.value.op("->>")(literal_column(str(i)))

    src = _json_rows("rows", "postgresql")
    from_json = {
        "external_key": item(src, 0),
        "name": item(src, 1),
        "timezone": item(src, 2),
        "fields": cast(item(src, 3), JSON),
        "priority": cast(item(src, 4), Integer),
    }
    fixed = {
        "campaign_id": bindparam("campaign_id", type_=Integer),
        "list_id": bindparam("list_id", type_=Integer),
        "state": bindparam("state", type_=String),
        "next_at": literal_column("NULL"),
        "attempts": literal_column("0"),
        "number_index": literal_column("0"),
        "last_result": literal_column("NULL"),
        "created_at": bindparam("created_at", type_=_CT.c.created_at.type.impl),  # type: ignore[attr-defined]
    }
    values = [from_json.get(c, fixed.get(c)) for c in _CONTACT_COLUMNS]
    contacts = (
        insert(_CT)
        .from_select(list(_CONTACT_COLUMNS), select(*values).select_from(src))
        .returning(_CT.c.external_key, _CT.c.id)
    )
    nsrc = _json_rows("rows", "postgresql")
    numbers = insert(_PT).from_select(
        list(_NUMBER_COLUMNS),
        select(
            cast(item(nsrc, 0), Integer), item(nsrc, 1), item(nsrc, 2), cast(item(nsrc, 3), Integer)
        ).select_from(nsrc),
    )
    return contacts, numbers


_PG_CONTACTS, _PG_NUMBERS = _pg_statements()

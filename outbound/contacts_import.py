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

This module is the public interface (the CLI and the tests import from it) and holds
what ties the parts together: the rules a row must meet and the batching, here or in
the child process. The parts live in their own modules, each with one concern:
`csv_records` reads the file (lines, records, header), `phones_fast` analyses the phone
numbers, `contacts_store` writes to the database.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from . import phones
from .contacts_store import Row, get_or_create_list, make_writer
from .csv_records import ImportFormatError, Lines, Plan, has_surrogate, read_header, records
from .model.tables import Campaign, Contact
from .phones_fast import Numbers, Parsed

__all__ = [
    "ImportFormatError",
    "ImportReport",
    "RowError",
    "UnknownCampaign",
    "identity_key",
    "import_contacts",
]

NAME_MAX = 200  # Contact.name is String(200)
FIELD_MAX = 1000  # one custom field value
KEY_MAX = 64  # Contact.external_key is String(64)
TZ_MAX = 64  # Contact.timezone is String(64)
LIST_NAME_MAX = 200  # ContactList.name is String(200)
PRIORITY_RANGE = (-(2**31), 2**31 - 1)  # Contact.priority is a 32-bit Integer
# Files at least this big are parsed in a child process (starting one costs about 1 s).
PARALLEL_MIN_BYTES = 4 << 20

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
    Numbers(region)  # an unknown region fails here, before anything is written
    path = Path(path)
    list_name = path.name if list_name is None else list_name
    if not list_name.strip() or len(list_name) > LIST_NAME_MAX:
        raise ValueError(f"the list name must be 1 to {LIST_NAME_MAX} characters")
    with open(path, "rb") as raw:
        read_header(Lines(raw))  # an unusable file fails here, before anything is written
    total = path.stat().st_size

    engine = factory.kw.get("bind")
    if not isinstance(engine, Engine):
        raise ValueError("the session factory must be bound to an Engine")
    with factory() as session, session.begin():
        if session.get(Campaign, campaign_id) is None:
            raise UnknownCampaign(f"no campaign with id {campaign_id}")
        watermark = session.execute(select(func.max(Contact.id))).scalar() or 0
    list_id = get_or_create_list(factory, campaign_id, list_name)
    report = ImportReport(0, 0, 0, 0, [], 0.0, list_id=list_id)
    writer = make_writer(engine, campaign_id, list_id, watermark)

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


@dataclass
class _Batch:
    rows: list[Row]
    errors: list[RowError]
    records: int  # data records read: rows, rejected ones and in-file repeats
    bytes_done: int


def _batches(path: Path, region: str, chunk_size: int) -> Generator[_Batch, None, None]:
    """Parse the file into batches of up to `chunk_size` good rows (or rejected ones)."""
    with open(path, "rb") as raw:
        lines = Lines(raw)
        reader, plan = read_header(lines)
        rows = _RowReader(plan, Numbers(region))
        batch = _Batch([], [], 0, 0)
        for line, values in records(reader, lines):
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


# --- validating rows ------------------------------------------------------------------


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
    """One CSV record -> a Row, or the reason it is rejected."""

    def __init__(self, plan: Plan, numbers: Numbers) -> None:
        self.plan = plan
        self.numbers = numbers
        self.phones = [(i, kind.value if kind else None) for i, kind in plan.phones]

    def read(self, v: list[str], bad_utf8: bool) -> Row | str:
        plan = self.plan
        labels = plan.labels
        if len(v) != plan.width:
            return f"expected {plan.width} fields, found {len(v)}"
        if bad_utf8:
            for i, value in enumerate(v):
                if has_surrogate(value):
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
        first: Parsed | None = None
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
        return Row(key, name, tz, priority, fields, numbers)

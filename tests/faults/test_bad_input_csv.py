"""Malformed contact files through `outbound.contacts_import`, on the real PostgreSQL:
each bad row is reported by its physical line and never written, a file that cannot be
read at all writes nothing, and good rows around bad ones still arrive.

tests/unit/test_contacts_import.py covers the single cases on SQLite (latin-1 lines, a
2 MB field, UTF-16 with a little-endian BOM, no phone column, empty file); here the rest:
the other UTF-16 forms, control characters that would later reach AMI, short rows,
duplicates, header only, a 1 MB name, and a file whose every row is bad."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from outbound.contacts_import import ImportFormatError, ImportReport, import_contacts
from outbound.model import make_engine, session_factory, transaction, upgrade
from outbound.model.tables import Campaign, Contact, PhoneNumber
from outbound.model.types import DialMode
from tests.conftest import scratch_pg_database


@pytest.fixture(scope="module")
def pg_engine() -> Iterator[Engine]:
    with scratch_pg_database() as url:
        eng = make_engine(url)
        upgrade(eng)
        yield eng
        eng.dispose()


@pytest.fixture
def factory(pg_engine: Engine) -> sessionmaker[Session]:
    return session_factory(pg_engine)


@pytest.fixture
def campaign(factory: sessionmaker[Session]) -> int:
    with transaction(factory) as s:
        c = Campaign(name=f"bad-csv-{time.time_ns()}", mode=DialMode.PREDICTIVE)
        s.add(c)
        s.flush()
        return c.id


def run(factory: sessionmaker[Session], campaign: int, tmp_path: Path, data: bytes) -> ImportReport:
    path = tmp_path / "contacts.csv"
    path.write_bytes(data)
    return import_contacts(factory, campaign, path, default_region="US")


def stored(factory: sessionmaker[Session], campaign: int) -> list[tuple[str, list[str]]]:
    with factory() as s:
        found = s.scalars(
            select(Contact).where(Contact.campaign_id == campaign).order_by(Contact.id)
        ).all()
        return [(c.name, sorted(n.e164 for n in c.numbers)) for c in found]


def all_numbers(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return s.scalar(select(func.count()).select_from(PhoneNumber)) or 0


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xfe\xff" + "name,phone\nAna,2125550101\n".encode("utf-16-be"), "UTF-16"),
        (b"\xff\xfe" + "name,phone\nAna,2125550101\n".encode("utf-16-le"), "UTF-16"),
        # Without a BOM the NULs between letters hide every column name.
        ("name,phone\nAna,2125550101\n".encode("utf-16-le"), "no phone column"),
        (b"name,mobile_phone_number\nAna,2125550101\n", "no phone column"),
        (b"\n", "empty"),
    ],
    ids=["utf16-be-bom", "utf16-le-bom", "utf16-no-bom", "unknown-phone-header", "blank"],
)
def test_given_a_file_that_cannot_be_read_when_imported_then_a_clear_error_and_nothing_written(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path, data: bytes, reason: str
) -> None:
    before = all_numbers(factory)

    with pytest.raises(ImportFormatError, match=reason):
        run(factory, campaign, tmp_path, data)

    assert stored(factory, campaign) == []
    assert all_numbers(factory) == before


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (b"A\x00na,2125550101", "control character"),
        (b'"Ana\r\nAction: Originate",2125550101', "control character"),
        (b'"Ana\nChannel: Local/666@outbound-dial",2125550101', "control character"),
        (b"Jos\xe9,2125550101", "not valid UTF-8"),
        (b"Ana", "expected 2 fields, found 1"),
        (b"Ana,", "no phone number"),
        (b"N" * (1 << 20) + b",2125550101", "longer than 1048576 bytes"),
        (b"Ana,12", "not a valid number"),
    ],
    ids=[
        "nul",
        "crlf-ami-injection",
        "lf",
        "latin1",
        "short",
        "empty-phone",
        "1mb-name",
        "bad-number",
    ],
)
def test_given_one_bad_row_between_good_ones_when_imported_then_only_its_line_is_reported(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path, row: bytes, reason: str
) -> None:
    data = b"name,phone\nBen,2125550102\n" + row + b"\nCid,2125550103\n"

    report = run(factory, campaign, tmp_path, data)

    assert [e.line for e in report.errors] == [3]
    assert reason in report.errors[0].reason
    assert (report.imported, report.failed) == (2, 1)
    assert stored(factory, campaign) == [("Ben", ["+12125550102"]), ("Cid", ["+12125550103"])]


def test_given_every_row_bad_when_imported_then_each_line_reported_and_no_contact_written(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    before = all_numbers(factory)
    rows = 'Ana,12\nBen,not a number\n"Cid\r\nX",2125550101\nDé,2125550104\n'
    data = b"name,phone\n" + rows.encode("cp1252")

    report = run(factory, campaign, tmp_path, data)

    assert [e.line for e in report.errors] == [2, 3, 4, 6]
    assert (report.imported, report.failed) == (0, 4)
    assert stored(factory, campaign) == []
    assert all_numbers(factory) == before


def test_given_the_same_row_many_times_when_imported_then_one_contact_and_the_rest_counted(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    data = b"name,phone\n" + b"Ana,2125550101\n" * 5 + b"Ana,+1 212 555 0101\n"

    report = run(factory, campaign, tmp_path, data)

    assert (report.imported, report.duplicates_in_file, report.failed) == (1, 5, 0)
    assert stored(factory, campaign) == [("Ana", ["+12125550101"])]


@pytest.mark.parametrize("data", [b"name,phone\n", b"name,phone", b"\xef\xbb\xbfname,phone\r\n"])
def test_given_a_header_only_when_imported_then_zero_rows_and_no_contact(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path, data: bytes
) -> None:
    report = run(factory, campaign, tmp_path, data)

    assert (report.rows, report.imported, report.failed, report.errors) == (0, 0, 0, [])
    assert stored(factory, campaign) == []

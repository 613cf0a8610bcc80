"""Contact import from CSV into a real (file) SQLite database: good rows, every kind of bad
row with its physical line, idempotency, the fast phone path against `phones` itself,
and a generated 100,000-row file."""

from __future__ import annotations

import importlib.util
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import phonenumbers
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from outbound import contacts_import, contacts_store, phones, phones_fast
from outbound.contacts_import import (
    ImportFormatError,
    ImportReport,
    RowError,
    UnknownCampaign,
    identity_key,
    import_contacts,
)
from outbound.model.db import make_engine, transaction, upgrade
from outbound.model.tables import Campaign, Contact, ContactList, PhoneNumber
from outbound.model.types import ContactState, DialMode, PhoneType

ROOT = Path(__file__).resolve().parents[2]
NY = "America/New_York"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path_factory.mktemp('import') / 'import.db'}")
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def campaign(factory: sessionmaker[Session]) -> int:
    """A fresh campaign per test: everything the importer writes is scoped to it."""
    with transaction(factory) as s:
        c = Campaign(name=f"import-{time.time_ns()}", mode=DialMode.PREDICTIVE)
        s.add(c)
        s.flush()
        return c.id


def write(tmp_path: Path, text: str | bytes, name: str = "contacts.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def run(factory: sessionmaker[Session], campaign: int, path: Path, **kw: Any) -> ImportReport:
    kw.setdefault("default_region", "US")
    return import_contacts(factory, campaign, path, **kw)


def contacts(factory: sessionmaker[Session], campaign: int) -> list[Contact]:
    with factory() as s:
        found = s.scalars(
            select(Contact).where(Contact.campaign_id == campaign).order_by(Contact.id)
        ).all()
        for c in found:
            c.numbers  # noqa: B018 - load them while the session is open
        return list(found)


def count_contacts(factory: sessionmaker[Session], campaign: int) -> int:
    with factory() as s:
        return s.scalar(select(func.count()).where(Contact.campaign_id == campaign)) or 0


def bench_module() -> ModuleType:
    """bench/import.py, for its CSV generator."""
    name = "bench_import_for_tests"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "import.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# --- good rows ----------------------------------------------------------------------------


def test_given_good_rows_when_imported_then_contacts_are_ready_with_their_numbers(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        " ID , Name ,Phone,Mobile,Work,TZ,Priority,City,Notes\n"
        "c1,Ana Smith,(212) 555-0142,+44 7911 123456,,,5,Boston,VIP\n"
        "c2,Ben Jones,415.555.0199,,212-555-0100,Europe/Paris,,Reno,\n",
    )

    report = run(factory, campaign, path)

    assert (report.rows, report.imported, report.failed, report.errors) == (2, 2, 0, [])
    assert report.elapsed_s > 0 and report.rows_per_s > 0
    ana, ben = contacts(factory, campaign)
    assert (ana.external_key, ana.name, ana.priority, ana.timezone) == ("c1", "Ana Smith", 5, NY)
    assert (ana.state, ana.next_at, ana.attempts) == (ContactState.READY, None, 0)
    assert ana.fields == {"City": "Boston", "Notes": "VIP"}
    assert [(n.e164, n.type, n.position) for n in ana.numbers] == [
        ("+12125550142", PhoneType.OTHER, 0),
        ("+447911123456", PhoneType.MOBILE, 1),
    ]
    assert (ben.timezone, ben.priority) == ("Europe/Paris", 0)
    assert [(n.e164, n.type) for n in ben.numbers] == [
        ("+14155550199", PhoneType.OTHER),
        ("+12125550100", PhoneType.WORK),
    ]
    with factory() as s:
        lists = s.scalars(select(ContactList).where(ContactList.campaign_id == campaign)).all()
    assert [lst.name for lst in lists] == ["contacts.csv"]
    assert {ana.list_id, ben.list_id} == {lists[0].id} == {report.list_id}


def test_given_first_and_last_name_and_typed_phone_columns_when_imported_then_joined_and_typed(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "first_name,last_name,phone_home,phone1,phone2,other\n"
        "Zoë,,  212 555 0101 ,+447911123457,,+1 212 555 0102\n",
    )

    run(factory, campaign, path, list_name="spring")

    (zoe,) = contacts(factory, campaign)
    assert zoe.name == "Zoë"
    assert [(n.e164, n.type) for n in zoe.numbers] == [
        ("+12125550101", PhoneType.HOME),
        ("+447911123457", PhoneType.MOBILE),  # plain phone column: type guessed
        ("+12125550102", PhoneType.OTHER),
    ]
    assert zoe.external_key == identity_key(
        "Zoë", ["+12125550101", "+447911123457", "+12125550102"]
    )
    assert len(zoe.external_key) == 40


def test_given_custom_columns_when_imported_then_kept_as_strings_in_column_order(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        'zeta,name,phone,alpha,Account No,notes\n9,Ana,2125550142,,00123,"a, b\nc"\n',
    )

    run(factory, campaign, path)

    (ana,) = contacts(factory, campaign)
    assert list(ana.fields.items()) == [
        ("zeta", "9"),
        ("alpha", ""),
        ("Account No", "00123"),
        ("notes", "a, b\nc"),
    ]


def test_given_timezone_column_or_none_when_imported_then_given_zone_else_the_numbers(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "name,phone,timezone\n"
        "given,2125550142,Asia/Tokyo\n"
        "derived,2125550143,\n"
        "derived LA,+1 415 555 0100,\n"
        "unknown,+1 800 555 0100,\n",  # toll free: no single zone
    )

    run(factory, campaign, path)

    zones = [(c.name, c.timezone) for c in contacts(factory, campaign)]
    assert zones == [
        ("given", "Asia/Tokyo"),
        ("derived", NY),
        ("derived LA", "America/Los_Angeles"),
        ("unknown", None),
    ]


def test_given_the_same_number_twice_in_a_row_when_imported_then_kept_once(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    path = write(tmp_path, "name,mobile,work\nAna,2125550142,+1 (212) 555-0142\n")

    report = run(factory, campaign, path)

    (ana,) = contacts(factory, campaign)
    assert report.imported == 1
    assert [(n.e164, n.type, n.position) for n in ana.numbers] == [
        ("+12125550142", PhoneType.MOBILE, 0)
    ]


def test_given_a_semicolon_separated_file_when_imported_then_read_like_commas(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    path = write(tmp_path, "\ufeffname;phone;city\nAna;2125550142;Köln, DE\n")

    report = run(factory, campaign, path)

    (ana,) = contacts(factory, campaign)
    assert report.imported == 1 and ana.fields == {"city": "Köln, DE"}


# --- bad rows -------------------------------------------------------------------------------

HEADER = "id,name,phone,mobile,timezone,priority,notes\n"
GOOD = "g{n},Good {n},212555{n:04d},,,,\n"
BAD_ROWS = [
    ("b,Bad,12,,,,\n", "phone: not a valid number: '12'"),
    ("b,Bad,,call me,,,\n", "mobile: not a phone number"),
    ("b,Bad,2125550100,+999 1234,,,\n", "mobile: not a phone number"),
    ("b,Bad,,,,,\n", "no phone number"),
    ("b,Bad,2125550100,,,\n", "expected 7 fields, found 6"),
    ("b,Bad,2125550100,,,,,extra\n", "expected 7 fields, found 8"),
    ("b,Bad,2125550100,,Mars/Olympus,,\n", "timezone: unknown time zone 'Mars/Olympus'"),
    ("b,Bad,2125550100,,../../etc/passwd,,\n", "timezone: unknown time zone"),
    ("b,Bad,2125550100,,,high,\n", "priority: not an integer: 'high'"),
    ("b,Bad,2125550100,,,99999999999,\n", "priority: not an integer"),
    ("b,Bad,2125550100,,,3000000000,\n", "priority: out of range"),
    (f"b,{'N' * 201},2125550100,,,,\n", "name: longer than 200 characters"),
    ("b,Bo\x00b,2125550100,,,,\n", "name: contains a control character"),
    ('b,"Bob\rSmith",2125550100,,,,\n', "name: contains a control character"),
    ('b,"Bob\nSmith",2125550100,,,,\n', "name: contains a control character"),
    ('b,Bad,"212555\n0100",,,,\n', "phone: phone number contains a control character"),
    (f"b,Bad,2125550100,,,,{'x' * 1001}\n", "notes: longer than 1000 characters"),
    ("b,Bad,2125550100,,,,a\x00b\n", "notes: contains a NUL character"),
    (f"{'k' * 65},Bad,2125550100,,,,\n", "id: longer than 64 characters"),
    ('b,"Bad" x,2125550100,,,,\n', "not a valid CSV record"),
    (b"b,Jos\xe9,2125550100,,,,\n", "name: not valid UTF-8"),
]


@pytest.mark.parametrize(("row", "reason"), BAD_ROWS, ids=[r for _, r in BAD_ROWS])
def test_given_a_bad_row_between_good_ones_when_imported_then_it_alone_is_reported_by_line(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path, row: str | bytes, reason: str
) -> None:
    raw = row if isinstance(row, bytes) else row.encode()
    body = HEADER.encode() + GOOD.format(n=1).encode() + raw + GOOD.format(n=2).encode()
    path = write(tmp_path, body)
    seen: list[RowError] = []

    report = run(factory, campaign, path, on_error=seen.append)

    assert report.errors == seen
    assert len(report.errors) == 1, report.errors
    assert report.errors[0].line == 3
    assert reason in report.errors[0].reason
    assert (report.rows, report.imported, report.failed) == (3, 2, 1)
    assert [c.external_key for c in contacts(factory, campaign)] == ["g1", "g2"]


def test_given_quoted_fields_over_several_lines_when_imported_then_errors_name_physical_lines(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "name,phone,notes\n"  # 1
        'Ana,2125550142,"three\nline\nnote"\n'  # 2-4
        "Bad,12,\n"  # 5
        "\n"  # 6: blank, skipped
        'Bad too,"\n13",x\n'  # 7-8
        'Ben,2125550143,"two\r\nlines"\r\n'  # 9-10
        "Bad three,14,\n",  # 11
    )

    report = run(factory, campaign, path)

    assert [(e.line, e.reason.split(":")[0]) for e in report.errors] == [
        (5, "phone"),
        (7, "phone"),
        (11, "phone"),
    ]
    assert [c.fields["notes"] for c in contacts(factory, campaign)] == [
        "three\nline\nnote",
        "two\r\nlines",
    ]
    assert report.rows == 5


def test_given_an_unbalanced_quote_when_imported_then_only_its_line_is_lost(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    rows = "".join(f"Good {n},212555{n:04d}\n" for n in range(3, 40))
    path = write(tmp_path, 'name,phone\nGood 1,2125550001\n"Bad,2125550002\n' + rows)

    report = run(factory, campaign, path)

    assert [e.line for e in report.errors] == [3]
    assert "not a valid CSV record" in report.errors[0].reason
    assert report.imported == 38


def test_given_latin1_bytes_when_imported_then_each_such_line_is_reported(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    text = "name,phone,city\nJosé,2125550101,Bogotá\nRené,2125550102,Paris\nAnn,2125550103,Oslo\n"
    path = write(tmp_path, text.encode("latin-1"))

    report = run(factory, campaign, path)

    assert [(e.line, e.reason) for e in report.errors] == [
        (2, "name: not valid UTF-8"),
        (3, "name: not valid UTF-8"),
    ]
    assert [c.name for c in contacts(factory, campaign)] == ["Ann"]


def test_given_a_huge_field_when_imported_then_its_line_is_reported_and_the_rest_imported(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    huge_line = "Huge,2125550102," + "x" * (2 << 20) + "\n"
    huge_quoted = 'Quoted,2125550103,"' + ("y" * 1000 + "\n") * 1100 + '"\n'
    path = write(
        tmp_path,
        "name,phone,notes\nAna,2125550101,\n" + huge_line + huge_quoted + "Ben,2125550104,\n",
    )

    report = run(factory, campaign, path)

    assert [e.line for e in report.errors][:2] == [3, 4]
    assert "longer than" in report.errors[0].reason
    assert "longer than" in report.errors[1].reason
    assert {"Ana", "Ben"} <= {c.name for c in contacts(factory, campaign)}


def test_given_many_bad_rows_when_keep_errors_is_small_then_all_are_counted_some_kept(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    path = write(tmp_path, "name,phone\n" + "Bad,12\n" * 50 + "Ana,2125550142\n")
    progress: list[tuple[int, int]] = []

    report = run(
        factory,
        campaign,
        path,
        keep_errors=5,
        chunk_size=10,
        progress=lambda d, t: progress.append((d, t)),
    )

    assert (report.failed, len(report.errors), report.imported) == (50, 5, 1)
    assert [e.line for e in report.errors] == [2, 3, 4, 5, 6]
    size = path.stat().st_size
    assert progress[-1] == (size, size)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)


# --- whole-file problems ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("name,city\nAna,Boston\n", "no phone column"),
        ("name,phone,Phone \nAna,1,2\n", "duplicate column"),
        ("id,external_id,phone\n1,2,3\n", "mean the same"),
        ("", "empty"),
        ("\n\n", "empty"),
        (b"\xff\xfen\x00a\x00m\x00e\x00", "UTF-16"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not valid UTF-8"),
        (b"GIF89a\x00\x00;\x00", "no phone column"),
        (b"na\xefme,phone\n", "not valid UTF-8"),
    ],
)
def test_given_an_unusable_file_when_imported_then_format_error_and_nothing_written(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path, text: str | bytes, reason: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ImportFormatError, match=reason):
        run(factory, campaign, path)

    assert count_contacts(factory, campaign) == 0
    with factory() as s:
        assert s.scalar(select(func.count()).where(ContactList.campaign_id == campaign)) == 0


def test_given_a_wrong_campaign_or_region_when_imported_then_refused(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    path = write(tmp_path, "name,phone\nAna,2125550142\n")

    with pytest.raises(UnknownCampaign):
        run(factory, 10**9, path)
    with pytest.raises(ValueError, match="region"):
        run(factory, campaign, path, default_region="XX")


# --- idempotency ----------------------------------------------------------------------------


def test_given_an_imported_file_when_imported_again_then_nothing_is_added(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "name,phone\nAna,2125550142\nBen,2125550143\nBad,12\nAna,+1 212 555 0142\n",
    )
    first = run(factory, campaign, path)

    second = run(factory, campaign, path)

    assert (first.imported, first.duplicates_in_file, first.failed) == (2, 1, 1)
    assert (second.imported, second.already_present, second.duplicates_in_file) == (0, 3, 0)
    assert second.failed == 1
    assert count_contacts(factory, campaign) == 2
    with factory() as s:
        assert s.scalar(select(func.count()).where(ContactList.campaign_id == campaign)) == 1


def test_given_an_id_column_when_a_row_repeats_an_id_then_it_counts_as_a_duplicate(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    path = write(tmp_path, "id,name,phone\n7,Ana,2125550142\n7,Ana B,2125550199\n,Cy,2125550150\n")

    report = run(factory, campaign, path, chunk_size=1)

    assert (report.imported, report.duplicates_in_file) == (2, 1)
    keys = [c.external_key for c in contacts(factory, campaign)]
    assert keys == ["7", identity_key("Cy", ["+12125550150"])]


def test_given_a_crash_mid_import_when_run_again_then_whole_chunks_stay_and_it_completes(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "name,phone\n" + "".join(f"P{n},212555{n:04d}\n" for n in range(100)))
    real_insert = contacts_store.SqliteWriter.insert
    calls = 0

    def failing_insert(self: Any, conn: Any, rows: Any) -> None:
        nonlocal calls
        calls += 1
        real_insert(self, conn, rows)  # written, then the chunk's transaction fails
        if calls == 3:
            raise OSError("disk gone")

    monkeypatch.setattr(contacts_store.SqliteWriter, "insert", failing_insert)
    with pytest.raises(OSError, match="disk gone"):
        run(factory, campaign, path, chunk_size=30)
    assert count_contacts(factory, campaign) == 60  # two whole chunks of 30

    monkeypatch.setattr(contacts_store.SqliteWriter, "insert", real_insert)
    report = run(factory, campaign, path, chunk_size=30)

    assert (report.imported, report.already_present) == (40, 60)
    assert count_contacts(factory, campaign) == 100
    with factory() as s:
        numbers = s.scalar(
            select(func.count())
            .select_from(PhoneNumber)
            .join(Contact)
            .where(Contact.campaign_id == campaign)
        )
    assert numbers == 100


def test_given_a_file_parsed_in_a_child_process_then_same_result_as_in_process(
    factory: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "name,phone,notes\n" + "".join(
        f"P{n},212555{n:04d},\n" if n % 7 else f'Bad {n},12,"multi\nline"\n' for n in range(300)
    )
    path = write(tmp_path, text)
    reports = []
    for threshold in (10**12, 1):
        monkeypatch.setattr(contacts_import, "PARALLEL_MIN_BYTES", threshold)
        with transaction(factory) as s:
            c = Campaign(name=f"child-{threshold}-{time.time_ns()}", mode=DialMode.PREVIEW)
            s.add(c)
            s.flush()
            cid = c.id
        reports.append(run(factory, cid, path, chunk_size=50))

    inline, child = reports
    assert (inline.rows, inline.imported, inline.failed) == (300, 257, 43)
    assert (child.rows, child.imported, child.failed) == (300, 257, 43)
    assert child.errors == inline.errors


# --- the fast phone path ----------------------------------------------------------------------

REGIONS = ["US", "CA", "GB", "DE", "FR", "IT", "AU", "IN", "BR", "RU", "MX", "JP", "AG", "GG", "KZ"]


def _inputs(rnd: random.Random, region: str, n: int) -> Iterator[str]:
    kinds = [phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE]
    formats = list(phonenumbers.PhoneNumberFormat.__dict__.values())
    formats = [
        f for f in formats if isinstance(f, int) and f != phonenumbers.PhoneNumberFormat.RFC3966
    ]
    for _ in range(n):
        if rnd.random() < 0.5:
            example = phonenumbers.example_number_for_type(
                rnd.choice([*REGIONS, region, region]), rnd.choice(kinds)
            )
            if example is None:
                continue
            digits = list(phonenumbers.format_number(example, rnd.choice(formats)))
            for _ in range(rnd.randint(0, 3)):
                i = rnd.randrange(len(digits))
                if digits[i].isdigit():
                    digits[i] = str(rnd.randint(0, 9))
            text = "".join(digits)
            if text.startswith("+") and rnd.random() < 0.2:
                text = text[1:]  # the country code without +
            yield text
        else:
            yield "".join(
                rnd.choice("0123456789" * 5 + " -.()/+") for _ in range(rnd.randint(1, 18))
            )


@pytest.mark.parametrize("region", REGIONS)
def test_given_many_numbers_when_analyzed_fast_then_exactly_what_phones_says(region: str) -> None:
    rnd = random.Random(region)
    numbers = phones_fast.Numbers(region)
    valid = 0
    for raw in _inputs(rnd, region, 1500):
        raw = raw.strip()
        if not raw:
            continue
        try:
            expected: Any = phones.normalize(raw, region)
            expected = (expected, phones.number_type(expected), phones.timezone_for(expected))
            valid += 1
        except phones.InvalidNumber as exc:
            expected = str(exc)
        try:
            got: Any = numbers.analyze(raw)
            got = (got.e164, got.guessed_type, numbers.timezone(got))
        except phones.InvalidNumber as exc:
            got = str(exc)
        assert got == expected, raw
    assert valid > 200


def test_given_usual_forms_when_analyzed_then_the_fast_path_answers() -> None:
    numbers = phones_fast.Numbers("US")
    assert numbers._fast is not None
    for raw in [
        "(212) 555-0142",
        "212.555.0142",
        "+1 212 555 0142",
        "1-212-555-0142",
        "2125550142",
    ]:
        digits = raw.translate(numbers._DROP)
        assert numbers._fast.parse(digits, raw.startswith("+")) is not None, raw


# --- a generated file of 100,000 rows ---------------------------------------------------------


def test_given_100k_rows_with_1pct_bad_when_imported_twice_then_good_rows_once_every_bad_line(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    gen = bench_module().generate(tmp_path / "big.csv", 100_000, seed=11)

    first = run(factory, campaign, gen.path)
    second = run(factory, campaign, gen.path)

    assert first.rows == 100_000
    assert sorted(e.line for e in first.errors) == gen.bad_lines
    assert 900 <= len(gen.bad_lines) <= 1100
    assert (first.imported, first.duplicates_in_file) == (gen.good, gen.duplicates)
    assert count_contacts(factory, campaign) == gen.good
    assert second.imported == 0
    assert second.already_present == gen.good + gen.duplicates
    assert second.errors == first.errors

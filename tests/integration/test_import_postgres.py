"""Contact import into a real PostgreSQL: a scratch database of this module's own
(created, migrated and dropped here), the generated 100,000-row file, idempotency."""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from outbound import contacts_store
from outbound.contacts_import import import_contacts
from outbound.model.db import make_engine, transaction, upgrade
from outbound.model.tables import Campaign, Contact, PhoneNumber
from outbound.model.types import DialMode, PhoneType
from tests.conftest import scratch_pg_database

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with scratch_pg_database() as url:
        eng = make_engine(url)
        try:
            upgrade(eng)
            yield eng
        finally:
            eng.dispose()


@pytest.fixture
def campaign(factory: sessionmaker[Session]) -> int:
    with transaction(factory) as s:
        c = Campaign(name=f"pg-import-{time.time_ns()}", mode=DialMode.PREDICTIVE)
        s.add(c)
        s.flush()
        return c.id


def count(factory: sessionmaker[Session], campaign: int, what: Any = Contact) -> int:
    with factory() as s:
        query = select(func.count()).select_from(what)
        if what is PhoneNumber:
            query = query.join(Contact)
        return s.scalar(query.where(Contact.campaign_id == campaign)) or 0


def bench_module() -> ModuleType:
    name = "bench_import_for_tests"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "import.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_given_rows_when_imported_into_postgres_then_fields_numbers_and_zones_are_kept(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    path = tmp_path / "small.csv"
    path.write_text(
        "id,name,phone,mobile,tz,priority,zeta,alpha\n"
        'a1,Ana Müller,(212) 555-0142,+44 7911 123456,,3,"z, 1",é\n'
        "a2,Ben,415 555 0100,,Asia/Tokyo,-2,,\n"
    )

    report = import_contacts(factory, campaign, path, default_region="US")

    assert (report.imported, report.failed) == (2, 0)
    with factory() as s:
        ana, ben = s.scalars(
            select(Contact).where(Contact.campaign_id == campaign).order_by(Contact.external_key)
        ).all()
        numbers = [(n.e164, n.type, n.position) for n in ana.numbers]
    assert (ana.name, ana.priority, ana.timezone) == ("Ana Müller", 3, "America/New_York")
    assert list(ana.fields.items()) == [("zeta", "z, 1"), ("alpha", "é")]
    assert numbers == [("+12125550142", PhoneType.OTHER, 0), ("+447911123456", PhoneType.MOBILE, 1)]
    assert (ben.timezone, ben.priority, ben.fields) == ("Asia/Tokyo", -2, {"zeta": "", "alpha": ""})


def test_given_a_crash_mid_import_when_run_again_then_it_completes_on_postgres(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "crash.csv"
    path.write_text("name,phone\n" + "".join(f"P{n},212555{n:04d}\n" for n in range(100)))
    real_insert = contacts_store.PostgresWriter.insert
    calls = 0

    def failing_insert(self: Any, conn: Any, rows: Any) -> None:
        nonlocal calls
        calls += 1
        real_insert(self, conn, rows)
        if calls == 2:
            raise OSError("connection lost")

    monkeypatch.setattr(contacts_store.PostgresWriter, "insert", failing_insert)
    with pytest.raises(OSError):
        import_contacts(factory, campaign, path, default_region="US", chunk_size=40)
    assert count(factory, campaign) == 40

    monkeypatch.setattr(contacts_store.PostgresWriter, "insert", real_insert)
    report = import_contacts(factory, campaign, path, default_region="US", chunk_size=40)

    assert (report.imported, report.already_present) == (60, 40)
    assert (count(factory, campaign), count(factory, campaign, PhoneNumber)) == (100, 100)


def test_given_100k_rows_with_1pct_bad_when_imported_twice_into_postgres_then_once_and_every_bad_line(
    factory: sessionmaker[Session], campaign: int, tmp_path: Path
) -> None:
    gen = bench_module().generate(tmp_path / "big.csv", 100_000, seed=12)

    first = import_contacts(factory, campaign, gen.path, default_region="US")
    second = import_contacts(factory, campaign, gen.path, default_region="US")

    assert first.rows == 100_000
    assert sorted(e.line for e in first.errors) == gen.bad_lines
    assert (first.imported, first.duplicates_in_file) == (gen.good, gen.duplicates)
    assert count(factory, campaign) == gen.good
    assert second.imported == 0
    assert second.already_present == gen.good + gen.duplicates
    assert second.errors == first.errors
    assert count(factory, campaign) == gen.good

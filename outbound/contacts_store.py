"""Writing imported contacts: the contact list, and each chunk of rows in one transaction.

Split out of `contacts_import` because it is the only part that talks to the database:
a writer per dialect (SQLite: the driver's executemany; PostgreSQL: INSERT ... SELECT
from a JSON array) that skips keys already in the campaign, so a re-run import
completes an interrupted one instead of writing contacts twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

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

from .model.tables import Contact, ContactList, PhoneNumber
from .model.types import ContactState


class Row(NamedTuple):
    """One validated contact, ready to write (made by contacts_import's row reader)."""

    key: str
    name: str
    tz: str | None
    priority: int
    fields: dict[str, str]
    numbers: list[tuple[str, str]]  # (E.164, PhoneType value) in column order, no repeats


def get_or_create_list(factory: sessionmaker[Session], campaign_id: int, name: str) -> int:
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


def make_writer(engine: Engine, campaign_id: int, list_id: int, watermark: int) -> Writer:
    kind = {"sqlite": SqliteWriter, "postgresql": PostgresWriter}.get(engine.dialect.name)
    if kind is None:
        raise NotImplementedError(
            f"contact import supports SQLite and PostgreSQL, not {engine.dialect.name}"
        )
    return kind(engine, campaign_id, list_id, watermark)


class Writer:
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

    def write(self, conn: Connection, chunk: list[Row]) -> None:
        known = self.ids(conn, list({r.key for r in chunk}))
        fresh: list[Row] = []
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

    def insert(self, conn: Connection, rows: list[Row]) -> None:
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


class SqliteWriter(Writer):
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

    def insert(self, conn: Connection, rows: list[Row]) -> None:
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


class PostgresWriter(Writer):
    IDS = _ids_query("postgresql")

    def insert(self, conn: Connection, rows: list[Row]) -> None:
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

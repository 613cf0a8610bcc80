"""B7 import: contacts CSV import throughput (rows/s) and peak memory.

Generates a CSV (fixed seed; ~1% malformed rows of every kind the importer rejects, 1-3
numbers per row in mixed formats, a few custom columns, a few duplicate rows), imports it
into SQLite and PostgreSQL (a scratch database, created and dropped here), imports it
again (everything already present), and runs the import in child processes at two sizes
to read their peak RSS: flat memory means the larger file needs no more than the smaller.

    python bench/import.py              # full run, about 4 minutes on 2 cores
    python bench/import.py --quick      # smoke run, a few seconds
    python bench/import.py --rows 500000 --mem-rows 100000,1000000 --pg-mem

Writes the `## B7 import` section of docs/benchmarks.md ($OUTBOUND_BENCH_DOCS or --docs
to write elsewhere). PostgreSQL: $OUTBOUND_BENCH_PG_URL, default
postgresql+psycopg://postgres@127.0.0.1/test (skipped, and said so, when unreachable).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _common import markdown_table, print_table, write_section  # noqa: E402

SECTION = "B7 import"
GOAL_RATE = 20_000  # rows/s, each database
GOAL_PEAK_MB = 200  # at 1,000,000 rows
FLAT_TOLERANCE_MB = 25  # growth allowed from the smaller to the larger memory run
PG_URL = os.environ.get("OUTBOUND_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1/test")
REGION = "US"

HEADER = [
    "first_name",
    "last_name",
    "phone",
    "mobile",
    "work",
    "timezone",
    "priority",
    "city",
    "account",
    "notes",
]
FIRST = "Ana Ben Chloé Dmitri Emma Farid Grace Hugo Inès Jamal Kenji Lena Marco Nora Omar Paula Quinn Rosa Sven Tara Uma Victor Wen Xavier Yara Zoë".split()
LAST = "Smith Müller García Rossi Dubois Nowak Kim Silva Jensen O'Brien Costa Yılmaz Novak Santos Weber Moreau Fischer Ivanova Tanaka Hughes Lopez Schulz Bianchi Larsen Meyer".split()
CITIES = ["Springfield", "Portland", "Austin", "Boston", "Denver", "Phoenix", "Reno, NV"]
ZONES = ["America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"]
# US area codes whose every [2-9]XX exchange phonenumbers finds valid (checked once).
AREA_CODES = [
    201, 202, 203, 205, 206, 207, 208, 209, 210, 212, 213, 214, 215, 216, 217, 218, 219,
    224, 225, 228, 229, 231, 234, 239, 240, 248, 251, 252, 253, 254, 256, 260, 262, 267,
    269, 270, 276, 281, 301, 302, 303, 304, 305, 307, 308, 309, 310, 312, 313, 314, 315,
    316, 317, 318, 319, 320, 321, 323, 325, 330, 331, 334, 336, 337, 339, 346,
]  # fmt: skip
BAD_KINDS = [
    "bad_number",
    "field_count",
    "bad_timezone",
    "bad_priority",
    "no_phone",
    "latin1",
    "long_name",
    "nul_in_name",
    "long_field",
    "cr_in_name",
]


@dataclass
class Generated:
    path: Path
    rows: int  # data records
    bad_lines: list[int] = field(default_factory=list)
    bad_kinds: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0  # exact repeats of an earlier good row

    @property
    def good(self) -> int:
        return self.rows - len(self.bad_lines) - self.duplicates


def _quote(value: str) -> str:
    if any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _us_number(rnd: random.Random) -> str:
    area, exchange, line = rnd.choice(AREA_CODES), rnd.randint(200, 999), rnd.randint(0, 9999)
    style = rnd.random()
    if style < 0.3:
        return f"({area}) {exchange}-{line:04d}"
    if style < 0.5:
        return f"{area}-{exchange}-{line:04d}"
    if style < 0.6:
        return f"{area}.{exchange}.{line:04d}"
    if style < 0.75:
        return f"+1 {area} {exchange} {line:04d}"
    if style < 0.9:
        return f"{area}{exchange}{line:04d}"
    return f"1-{area}-{exchange}-{line:04d}"


def _number(rnd: random.Random) -> str:
    pick = rnd.random()
    if pick < 0.9:
        return _us_number(rnd)
    if pick < 0.95:  # UK mobile, valid for any digits in this range
        return f"+44 7{rnd.randint(1, 3)}{rnd.randint(10, 99)} {rnd.randint(0, 999999):06d}"
    return f"+49 151 {rnd.randint(0, 99999999):08d}"  # German mobile


def generate(
    path: Path, rows: int, *, seed: int = 7, bad_ratio: float = 0.01, dup_ratio: float = 0.005
) -> Generated:
    """Write a contacts CSV of `rows` data records and say which lines are bad."""
    rnd = random.Random(seed)
    out = Generated(path, rows)
    recent: list[bytes] = []
    line_no = 1
    with open(path, "wb") as f:
        f.write((",".join(HEADER) + "\r\n").encode())
        for _ in range(rows):
            line_no += 1
            if recent and rnd.random() < dup_ratio:
                data = rnd.choice(recent)
                out.duplicates += 1
                f.write(data)
                line_no += data.count(b"\n") - 1
                continue
            numbers = [_number(rnd) for _ in range(rnd.randint(1, 3))]
            columns = sorted(rnd.sample(range(3), len(numbers)))
            phone_cells = ["", "", ""]
            for col, number in zip(columns, numbers, strict=True):
                phone_cells[col] = number
            if len(numbers) > 1 and rnd.random() < 0.02:  # same number twice: kept once
                phone_cells[columns[-1]] = phone_cells[columns[0]]
            notes = rnd.choice(["", "", "call after 5pm", "prefers email, not SMS", "VIP"])
            if rnd.random() < 0.01:
                notes = "spoke to assistant\nwants a callback"
            cells = [
                rnd.choice(FIRST),
                rnd.choice(LAST),
                *phone_cells,
                rnd.choice(ZONES) if rnd.random() < 0.1 else "",
                str(rnd.randint(0, 9)) if rnd.random() < 0.2 else "",
                rnd.choice(CITIES),
                f"ACC-{rnd.randint(0, 10**8):08d}",
                notes,
            ]
            kind = rnd.choice(BAD_KINDS) if rnd.random() < bad_ratio else None
            raw_name: bytes | None = None
            if kind == "bad_number":
                cells[2 + columns[0]] = rnd.choice(["12", "555-0100", "+999 1234", "call me"])
            elif kind == "field_count":
                cells.pop()
            elif kind == "bad_timezone":
                cells[5] = "Mars/Olympus_Mons"
            elif kind == "bad_priority":
                cells[6] = "high"
            elif kind == "no_phone":
                cells[2:5] = ["", "", ""]
            elif kind == "latin1":
                raw_name = "Jos\xe9".encode("latin-1")
            elif kind == "long_name":
                cells[0] = "N" * 250
            elif kind == "nul_in_name":
                cells[1] = "Do\x00e"
            elif kind == "long_field":
                cells[9] = "x" * 1001
            elif kind == "cr_in_name":
                cells[1] = "Smith\rJones"
            text = ",".join(_quote(c) for c in cells) + "\r\n"
            data = text.encode()
            if raw_name is not None:
                data = raw_name + data[len(cells[0].encode()) :]
            f.write(data)
            if kind is not None:
                out.bad_lines.append(line_no)
                out.bad_kinds[kind] += 1
            else:
                recent.append(data)
                if len(recent) > 50:
                    recent.pop(0)
            line_no += data.count(b"\n") - 1
    return out


# --- running imports ------------------------------------------------------------------------


def _prepare(url: str) -> tuple[object, int]:
    """Migrated database at `url` with one campaign: (session factory, campaign id)."""
    from outbound.model import db
    from outbound.model.tables import Campaign
    from outbound.model.types import DialMode

    engine = db.make_engine(url)
    db.upgrade(engine)
    factory = db.session_factory(engine)
    with db.transaction(factory) as s:
        campaign = Campaign(name=f"bench-{os.getpid()}-{time.time_ns()}", mode=DialMode.PREDICTIVE)
        s.add(campaign)
        s.flush()
        return factory, campaign.id


def _import(factory: object, campaign_id: int, path: Path) -> dict[str, float]:
    from outbound.contacts_import import import_contacts

    report = import_contacts(factory, campaign_id, path, default_region=REGION)  # type: ignore[arg-type]
    return {
        "rows": report.rows,
        "imported": report.imported,
        "already_present": report.already_present,
        "duplicates_in_file": report.duplicates_in_file,
        "failed": report.failed,
        "elapsed_s": report.elapsed_s,
        "rows_per_s": report.rows_per_s,
    }


class ScratchPostgres:
    """A database of its own on the PostgreSQL server, dropped afterwards."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"ob_bench_{os.getpid()}_{time.time_ns() % 10**6}"
        self.url: str | None = None

    def __enter__(self) -> ScratchPostgres:
        from sqlalchemy import create_engine, text

        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        finally:
            admin.dispose()
        self.url = self.admin_url.rsplit("/", 1)[0] + "/" + self.name
        return self

    def __exit__(self, *exc: object) -> None:
        from sqlalchemy import create_engine, text

        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        finally:
            admin.dispose()


def postgres_reachable(url: str) -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        from sqlalchemy import create_engine, text

        engine = create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _child(url: str, campaign_id: int, path: Path) -> None:
    """In a fresh process: import, then print figures and peak RSS as JSON."""
    from outbound.model import db

    factory = db.session_factory(db.make_engine(url))
    before = _rss_mb()
    figures = _import(factory, campaign_id, path)
    figures["rss_before_mb"] = before
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # the parsing subprocess of a large file (0 when the file was parsed in-process)
    figures["parser_peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(figures))


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_run(url: str, rows: int, workdir: Path) -> dict[str, float]:
    path = workdir / f"mem-{rows}.csv"
    if not path.exists():
        generate(path, rows, seed=rows)
    _, campaign_id = _prepare(url)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", url, str(campaign_id), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _peak(m: dict[str, float]) -> float:
    """Peak RSS of the import: the importer's plus its parsing subprocess's."""
    return m["peak_rss_mb"] + m["parser_peak_mb"]


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help="rows of the throughput runs (default 100000)")
    parser.add_argument("--mem-rows", help="sizes of the memory runs, e.g. 100000,1000000")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes")
    parser.add_argument(
        "--docs", help="write the section to this file (default docs/benchmarks.md)"
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--pg-mem", action="store_true", help="also the largest memory run on PostgreSQL (+2 min)"
    )
    parser.add_argument(
        "--child", nargs=3, metavar=("URL", "CAMPAIGN", "CSV"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]), Path(args.child[2]))
        return 0

    rows = args.rows or (5_000 if args.quick else 100_000)
    mem_rows = [
        int(n) for n in (args.mem_rows or ("20000" if args.quick else "100000,1000000")).split(",")
    ]
    pg_problem = "--no-postgres given" if args.no_postgres else postgres_reachable(PG_URL)

    load_before = os.getloadavg()[0]
    results: list[tuple[str, dict[str, float], dict[str, float]]] = []
    memory: list[tuple[str, int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        gen = generate(workdir / "contacts.csv", rows)
        print(
            f"generated {rows} rows ({gen.path.stat().st_size / 1e6:.1f} MB,"
            f" {len(gen.bad_lines)} bad, {gen.duplicates} duplicates)"
            f" in {time.perf_counter() - started:.1f} s",
            flush=True,
        )

        sqlite_url = f"sqlite:///{workdir / 'bench.db'}"
        factory, campaign_id = _prepare(sqlite_url)
        first = _import(factory, campaign_id, gen.path)
        again = _import(factory, campaign_id, gen.path)
        results.append(("SQLite", first, again))
        print(f"SQLite: {first['rows_per_s']:.0f} rows/s", flush=True)
        for n in mem_rows:
            memory.append(
                ("SQLite", n, _memory_run(f"sqlite:///{workdir / f'mem-{n}.db'}", n, workdir))
            )
            print(f"SQLite memory run {n}: {_peak(memory[-1][2]):.0f} MB", flush=True)

        if pg_problem is None:
            with ScratchPostgres(PG_URL) as pg:
                assert pg.url is not None
                factory, campaign_id = _prepare(pg.url)
                first = _import(factory, campaign_id, gen.path)
                again = _import(factory, campaign_id, gen.path)
                factory.kw["bind"].dispose()  # type: ignore[attr-defined]
                results.append(("PostgreSQL", first, again))
                print(f"PostgreSQL: {first['rows_per_s']:.0f} rows/s", flush=True)
                if args.pg_mem:
                    n = mem_rows[-1]
                    memory.append(("PostgreSQL", n, _memory_run(pg.url, n, workdir)))
                    print(f"PostgreSQL memory run {n}: {_peak(memory[-1][2]):.0f} MB", flush=True)
        else:
            print(f"PostgreSQL skipped: {pg_problem}", flush=True)

    for name, first, again in results:
        if (first["imported"], first["failed"], first["duplicates_in_file"]) != (
            gen.good,
            len(gen.bad_lines),
            gen.duplicates,
        ) or again["imported"] != 0:
            print(f"{name}: counts differ from the generator's: {first} / {again}", file=sys.stderr)
            return 1

    columns = [
        "database",
        "rows",
        "import rows/s",
        "re-import rows/s",
        "imported",
        "rejected",
        "dups in file",
    ]
    table = [
        (
            name,
            f"{first['rows']:,.0f}",
            f"{first['rows_per_s']:,.0f}",
            f"{again['rows_per_s']:,.0f}",
            f"{first['imported']:,.0f}",
            f"{first['failed']:,.0f}",
            f"{first['duplicates_in_file']:,.0f}",
        )
        for name, first, again in results
    ]
    mem_columns = [
        "database",
        "rows",
        "RSS before import (MB)",
        "importer peak (MB)",
        "parser process peak (MB)",
        "both (MB)",
        "rows/s",
    ]
    mem_table = [
        (
            name,
            f"{n:,}",
            f"{m['rss_before_mb']:.0f}",
            f"{m['peak_rss_mb']:.0f}",
            f"{m['parser_peak_mb']:.0f}" if m["parser_peak_mb"] else "(in-process)",
            f"{_peak(m):.0f}",
            f"{m['rows_per_s']:,.0f}",
        )
        for name, n, m in memory
    ]
    print_table("B7 import: throughput", columns, table)
    print_table("B7 import: peak memory (child process, ru_maxrss)", mem_columns, mem_table)

    goals = []
    for name, first, _again in results:
        ok = first["rows_per_s"] >= GOAL_RATE
        goals.append(
            f"- ≥ {GOAL_RATE:,} rows/s on {name}: **{_met(ok)}** ({first['rows_per_s']:,.0f} rows/s)"
        )
    if not any(name == "PostgreSQL" for name, _f, _a in results):
        goals.append(f"- ≥ {GOAL_RATE:,} rows/s on PostgreSQL: **not measured** ({pg_problem})")
    sqlite_mem = {n: _peak(m) for name, n, m in memory if name == "SQLite"}
    small, large = min(sqlite_mem), max(sqlite_mem)
    growth = sqlite_mem[large] - sqlite_mem[small]
    peak = max(_peak(m) for _name, _n, m in memory)
    if large >= 1_000_000 and small < large:
        goals.append(
            f"- memory flat (peak grows ≤ {FLAT_TOLERANCE_MB} MB from {small:,} to {large:,} rows):"
            f" **{_met(growth <= FLAT_TOLERANCE_MB)}** ({round(growth) + 0:+d} MB)"
        )
        goals.append(
            f"- peak RSS ≤ {GOAL_PEAK_MB} MB at {large:,} rows: **{_met(peak <= GOAL_PEAK_MB)}**"
            f" ({peak:.0f} MB)"
        )
    else:
        goals.append(
            f"- memory (flat, ≤ {GOAL_PEAK_MB} MB at 1,000,000 rows): **not judged**: largest run"
            f" {large:,} rows (peak {peak:.0f} MB, {round(growth) + 0:+d} MB from {small:,} rows)"
        )

    body = (
        f"Generated CSV (seed 7): {rows:,} rows, 1-3 numbers each in mixed US formats (10% UK/DE"
        f" mobiles), 3 custom columns, {len(gen.bad_lines):,} malformed rows of"
        f" {len(BAD_KINDS)} kinds, {gen.duplicates:,} repeated rows; region {REGION}; default"
        " chunk size. The re-import finds every contact already present.\n\n"
        + markdown_table(columns, table)
        + "\nPeak memory: the import alone in a child process (fresh interpreter); `ru_maxrss`"
        " of the importer and of the parsing subprocess it starts for a large file, and their"
        " sum, which the goal is judged on. Both include the interpreter, SQLAlchemy and"
        " phonenumbers' metadata.\n\n"
        + markdown_table(mem_columns, mem_table)
        + f"\nLoad average (1 min) {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at"
        " the end (other work on the machine slows every figure).\n"
        + "\nGoals:\n\n"
        + "\n".join(goals)
        + ("\n\n_Quick run: sizes too small to judge the goals._" if args.quick else "")
    )
    target = write_section(SECTION, body, args.docs)
    print(f"wrote section '{SECTION}' of {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared by the benchmarks: machine facts, a printed table, and one section of
docs/benchmarks.md rewritten in place (other sections are left as they are).

`OUTBOUND_BENCH_DOCS=/some/file.md` sends the section elsewhere (tests use it so that a
smoke run never touches the real docs)."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
DOCS_ENV = "OUTBOUND_BENCH_DOCS"
DOCS_TITLE = (
    "# Benchmarks\n\nEach section is written by the script it names; rerun it to refresh.\n"
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: CPU model, cores, memory, OS and Python."""
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
                break
    except OSError:
        pass
    return (
        f"{cpu_model()}, {os.cpu_count()} cores{mem}; {platform.system()} {platform.release()};"
        f" Python {platform.python_version()}"
    )


def command() -> str:
    """How this benchmark was run, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(ROOT))
    except ValueError:
        shown = str(script)
    return shlex.join(["python", shown, *sys.argv[1:]])


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A table on stdout: rich when it is installed, plain text otherwise."""
    cells = [[str(c) for c in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(columns)]
        print(title)
        print("  ".join(h.ljust(w) for h, w in zip(columns, widths, strict=True)))
        print("  ".join("-" * w for w in widths))
        for row in cells:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        return
    table = Table(title=title)
    for name in columns:
        table.add_column(name)
    for row in cells:
        table.add_row(*row)
    Console(width=max(100, sum(len(c) for c in columns) * 2)).print(table)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def docs_path(override: str | Path | None = None) -> Path:
    if override:
        return Path(override)
    env = os.environ.get(DOCS_ENV)
    return Path(env) if env else DOCS


def write_section(heading: str, body: str, path: str | Path | None = None) -> Path:
    """Replace the `## heading` section of the benchmarks document (append it if new),
    prefixed with the machine, date and command, and return the file written."""
    target = docs_path(path)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"## {heading}\n\n"
        f"- Machine: {machine()}\n"
        f"- Date: {when}\n"
        f"- Command: `{command()}`\n\n"
        f"{body.strip()}\n"
    )
    text = target.read_text() if target.exists() else DOCS_TITLE
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target

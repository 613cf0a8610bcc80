"""bench/pacing.py (B1) and bench/fastagi.py (B5) in --quick mode run end to end, print
their table and write their section where they are told to (never the real docs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REAL_DOCS = ROOT / "docs" / "benchmarks.md"


def _run_quick(script: str, docs: Path) -> str:
    docs.write_text("# Benchmarks\n\n## Other\n\nkept as it is\n")
    before = REAL_DOCS.read_bytes() if REAL_DOCS.exists() else None
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick"],
        env={**os.environ, "OUTBOUND_BENCH_DOCS": str(docs), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (REAL_DOCS.read_bytes() if REAL_DOCS.exists() else None) == before
    text = docs.read_text()
    assert "## Other\n\nkept as it is" in text
    assert "- Machine: " in text and "--quick" in text and "Goals" in text
    return proc.stdout + "\n" + text


@pytest.mark.parametrize(
    ("script", "section", "needles"),
    [
        (
            "pacing.py",
            "B1 predictive pacing",
            ["predictive", "progressive", "fixed 2:1", "adaptive", "talk vs progressive"],
        ),
        # 40 FastAGI sessions, 20 people connected and 20 machines hung up; 1 process AGI
        # (a person): the route really ran against the database, for every session.
        (
            "fastagi.py",
            "B5 FastAGI",
            ["FastAGI", "process AGI", "sessions/s", "set-up", "| 20 / 20 / 0 |", "| 1 / 0 / 0 |"],
        ),
    ],
)
def test_given_quick_mode_when_the_bench_runs_then_table_printed_and_section_written(
    tmp_path: Path, script: str, section: str, needles: list[str]
) -> None:
    out = _run_quick(script, tmp_path / "benchmarks.md")
    assert f"## {section}" in out and section in out.split("## ")[0]
    for needle in needles:
        assert needle in out, needle
    assert "met" in out

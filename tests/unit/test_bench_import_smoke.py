"""bench/import.py --quick runs end to end and writes its section where it is told to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_given_quick_mode_when_the_import_bench_runs_then_table_printed_and_section_written(
    tmp_path: Path,
) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Other\n\nkept as it is\n")
    real_docs = ROOT / "docs" / "benchmarks.md"
    before = real_docs.read_bytes() if real_docs.exists() else None

    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "import.py"), "--quick"],
        env={**os.environ, "OUTBOUND_BENCH_DOCS": str(docs), "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "B7 import" in proc.stdout and "rows/s" in proc.stdout
    text = docs.read_text()
    assert "## Other\n\nkept as it is" in text
    assert "## B7 import" in text and "- Machine: " in text and "--quick" in text
    assert "Goals:" in text
    assert (real_docs.read_bytes() if real_docs.exists() else None) == before

"""bench/callbacks.py --quick runs end to end (scratch PostgreSQL, its own Redis, a real
Celery worker and beat), prints its table and writes its section only where told."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_given_quick_mode_when_the_callbacks_bench_runs_then_table_printed_and_section_written(
    tmp_path: Path,
) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Other\n\nkept as it is\n")
    real_docs = ROOT / "docs" / "benchmarks.md"
    before = real_docs.read_bytes() if real_docs.exists() else None
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOUND_BENCH")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "callbacks.py"), "--quick", "--docs", str(docs)],
        env={**env, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Callback firing" in proc.stdout and "1,000" in proc.stdout
    text = docs.read_text()
    assert "## Other\n\nkept as it is" in text and "## Callback firing" in text
    assert "| 1,000 |" in text and "| yes |" in text  # fired once
    assert (real_docs.read_bytes() if real_docs.exists() else None) == before

"""bench/amd.py --quick runs end to end on its own sandbox Asterisk (about 8 s), prints
AMD's verdicts and writes its section where it is told to, and leaves no instance behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from outbound.sandbox import list_instances

ROOT = Path(__file__).resolve().parents[2]

# serial: AMD hears live audio in real time; see scripts/test.
pytestmark = [pytest.mark.asterisk, pytest.mark.serial]


def test_given_quick_mode_when_the_amd_bench_runs_then_verdicts_printed_and_section_written(
    tmp_path: Path,
) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Other\n\nkept as it is\n")
    real_docs = ROOT / "docs" / "benchmarks.md"
    before = real_docs.read_bytes() if real_docs.exists() else None

    with subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "amd.py"), "--quick", "--docs", str(docs)],
        env={**os.environ, "COLUMNS": "160"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        out, _ = proc.communicate(timeout=120)

    assert proc.returncode == 0, out
    assert "AMD confusion matrix" in out
    assert "HUMAN/HUMAN-" in out and "MACHINE/INITIALSILENCE-" in out
    text = docs.read_text()
    assert "## Other\n\nkept as it is" in text
    assert "## AMD on the greeting corpus" in text and "- Machine: " in text
    assert "| human | 1 | · | · | · |" in text and "| silence | · | 1 | · | · |" in text
    assert (real_docs.read_bytes() if real_docs.exists() else None) == before
    assert f"bench-amd-{proc.pid}" not in list_instances()  # its sandbox is removed

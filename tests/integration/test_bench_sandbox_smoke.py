"""bench/time_to_agent.py (B2) and bench/control_plane.py (B4) run end to end on their
own sandbox Asterisk with tiny figures, print their tables and write their sections into
the document $OUTBOUND_BENCH_DOCS names (never the real one), and leave no instance
behind. The figures themselves are not judged here: benchmarks measure speed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from outbound.sandbox import list_instances

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.asterisk


def _run(script: str, args: list[str], docs: Path) -> tuple[subprocess.Popen[str], str]:
    docs.write_text("# Benchmarks\n\n## Other\n\nkept as it is\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOUND_BENCH")}
    with subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / script), *args],
        env={**env, "OUTBOUND_BENCH_DOCS": str(docs), "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        out, _ = proc.communicate(timeout=150)
    return proc, out


def test_given_two_agents_when_the_time_to_agent_bench_runs_then_times_printed_and_written(
    tmp_path: Path,
) -> None:
    real_docs = ROOT / "docs" / "benchmarks.md"
    before = real_docs.read_bytes() if real_docs.exists() else None
    docs = tmp_path / "benchmarks.md"

    proc, out = _run("time_to_agent.py", ["--agents", "2", "--calls", "4"], docs)

    assert proc.returncode == 0, out
    assert "B2 time to agent (4 calls, 2 agents)" in out
    text = docs.read_text()
    assert "## Other\n\nkept as it is" in text
    assert "## B2 time to agent" in text and "- Machine: " in text
    # Every person AMD heard was measured from Asterisk's events (one may be misheard).
    assert re.search(r"\| AMD decision -> agent's bridge \| [34] \| \d+ \|", text), text
    assert re.search(r"\| end of greeting -> agent's bridge \| [34] \| \d+ \|", text), text
    assert re.search(r"Goal p99 AMD decision -> bridge <= 250 ms: \*\*(met|NOT met)\*\*", text)
    assert (real_docs.read_bytes() if real_docs.exists() else None) == before
    assert f"bench-tta-{proc.pid}" not in list_instances()  # its sandbox is removed


def test_given_tiny_figures_when_the_control_plane_bench_runs_then_tables_printed_and_written(
    tmp_path: Path,
) -> None:
    real_docs = ROOT / "docs" / "benchmarks.md"
    before = real_docs.read_bytes() if real_docs.exists() else None
    docs = tmp_path / "benchmarks.md"
    args = "--rates 10 --seconds 1 --storm-channels 2 --storm-events 300 --hold 8 --idle 1"

    proc, out = _run("control_plane.py", args.split(), docs)

    assert proc.returncode == 0, out  # no failed call, every UserEvent handled
    assert "B4 (a) sustained originations" in out and "B4 (c) concurrent calls (ringing)" in out
    text = docs.read_text()
    assert "## Other\n\nkept as it is" in text and "## B4 control plane" in text
    assert re.search(r"\| 10 \| 10 \| [\d.]+ \| 0 \|", text), text  # 10 calls, none failed
    assert "| 600 | 600 |" in text  # UserEvents sent by Asterisk, handled by the bridge
    assert re.search(r"\| 8 \| 8 \| 32 active channels \|", text), text  # all held at once
    assert len(re.findall(r"^- Goal .*\*\*(met|NOT met)\*\*", text, re.M)) == 4
    assert (real_docs.read_bytes() if real_docs.exists() else None) == before
    assert f"bench-cp-{proc.pid}" not in list_instances()

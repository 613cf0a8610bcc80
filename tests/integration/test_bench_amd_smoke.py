"""bench/amd.py --quick runs end to end on its own sandbox Asterisk (about 10 s): Asterisk's
AMD defaults and our campaign default policy side by side in one run (plus a --policy
candidate, whose AMD() arguments must reach Asterisk), the goal lines, its section
written where it is told to, and no instance left behind."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from outbound.sandbox import CorpusFile, list_instances

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
        [
            *(sys.executable, str(ROOT / "bench" / "amd.py"), "--quick", "--docs", str(docs)),
            *("--policy", '{"after_greeting_silence": 700}'),
        ],
        env={**os.environ, "COLUMNS": "160"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        out, _ = proc.communicate(timeout=120)

    assert proc.returncode == 0, out
    assert "B3: answer classification side by side" in out
    # amd.conf's 800 ms for the two default configurations; the candidate's 700 ms shows
    # that a configuration's AMD() arguments are the ones Asterisk ran with.
    assert out.count("HUMAN/HUMAN-800-800") == 2 and "HUMAN/HUMAN-700-700" in out
    assert out.count("MACHINE/INITIALSILENCE-") == 3
    text = docs.read_text()
    assert "## Other\n\nkept as it is" in text
    assert "## AMD on the greeting corpus" in text and "- Machine: " in text
    default, ours = "Asterisk AMD defaults", "asterisk-outbound (campaign default policy)"
    candidate = 'candidate {"after_greeting_silence":700} (NOT the default)'
    header = f"|  | {default} | {ours} | ours / default | {candidate} |"
    assert header in text, text
    assert "| correct (route right) | 100.0% (2/2) | 100.0% (2/2) | 1.00 | 100.0% (2/2) |" in text
    for label in (default, ours, candidate):
        assert f"\n### {label}\n" in text
    # One confusion matrix per configuration, with the route: the person put through,
    # the silence not.
    assert text.count("| human | 1 | · | · | · | 1 |") == 3
    assert text.count("| silence | · | 1 | · | · | · |") == 3
    assert f"Goals (issue 10) for {ours}, on 2 calls" in text
    assert "- ≥ 98% correct: 100.0% (2/2): met." in text
    assert "- persons taken for machines ≤ 0.5%: 0.0% (0/1): met on this run" in text
    assert "after the end of the greeting (p95): " in text
    assert (real_docs.read_bytes() if real_docs.exists() else None) == before
    assert f"bench-amd-{proc.pid}" not in list_instances()  # its sandbox is removed


def _bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/amd.py as a module; sys.path (which it extends) and sys.modules are put
    back after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("bench_amd", ROOT / "bench" / "amd.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look it up there
    spec.loader.exec_module(module)
    return module


def test_given_verdicts_when_scored_then_ours_routes_as_classify_and_misses_not_met(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scoring itself (no Asterisk): ours goes through decide() (NOTSURE is a person
    under the default policy), the default puts only HUMAN through, and a missed goal is
    shown as NOT met with what limits it."""
    amd = _bench(monkeypatch)
    default, ours = amd.configs(None)
    assert not default.connects("NOTSURE", "TOOLONG-5000") and ours.connects("NOTSURE", "")
    assert not ours.connects("MACHINE", "INITIALSILENCE-2500-2500")
    assert ours.connects("HUMAN", "HUMAN-800-800") and not ours.connects("HANGUP", "")

    def made(name: str, kind: str, truth: str) -> CorpusFile:
        return CorpusFile(name, kind, truth, "", "", 160, f"{name}.wav", 0.5, 1.5)

    hello, short_vm = made("hello", "hello", "human"), made("vm", "short_voicemail", "machine")
    calls = [
        amd.Call(ours, hello, "1", "a", "NOTSURE", "TOOLONG-5000", 2.0, 0.5),
        amd.Call(ours, short_vm, "2", "b", "HUMAN", "HUMAN-800-800", 2.0, 0.8),
        amd.Call(default, hello, "3", "c", "NOTSURE", "TOOLONG-5000", 2.0, 0.5),
        amd.Call(default, short_vm, "4", "d", "HUMAN", "HUMAN-800-800", 2.0, 0.8),
    ]
    columns, rows = amd.side_by_side([default, ours], calls)
    assert rows[0][1:4] == ["0.0% (0/2)", "50.0% (1/2)", "∞ (default 0)"]
    assert rows[1][1:4] == ["100.0% (1/1)", "0.0% (0/1)", "0.00"]
    goals = amd.goals(ours, calls)
    assert "- ≥ 98% correct: 50.0% (1/2): **NOT met**. Wrong: vm (short_voicemail" in goals
    assert "What limits it: a voicemail greeting as short as a person's hello" in goals
    assert "(p95): 500 ms: met" in goals

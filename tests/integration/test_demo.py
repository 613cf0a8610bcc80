"""`outbound demo` places real calls on its own sandbox Asterisk; its summary must agree
with Asterisk's CDR (every placed call has a CDR row under its attempt id)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def test_demo_places_calls_and_its_summary_matches_asterisk_cdr(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OUTBOUND_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}",
        "OUTBOUND_REDIS_URL": "redis://127.0.0.1:6379/11",
        "COLUMNS": "120",
    }
    name = f"test-{os.getpid()}-demo"
    out = subprocess.run(
        [sys.executable, "-m", "outbound.cli", "demo", "--contacts", "5", "--sandbox-name", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    placed_db = re.search(r"placed \(database\)\s*│\s*(\d+)", out.stdout)
    placed_cdr = re.search(r"placed \(Asterisk CDR\)\s*│\s*(\d+)", out.stdout)
    assert placed_db and placed_cdr, out.stdout
    assert placed_db.group(1) == placed_cdr.group(1) == "5"
    # busy (digit 5) and congestion (digit 7) come from Asterisk; of the answered calls,
    # AMD and the campaign's policy keep the two people (digits 0, 1) and hang up on the
    # answering machine (digit 4).
    assert re.search(r"busy\s*│\s*1", out.stdout), out.stdout
    assert re.search(r"answered\s*│\s*2", out.stdout), out.stdout
    assert re.search(r"answering_machine\s*│\s*1", out.stdout), out.stdout

"""deploy/systemd: one unit per `outbound run` process, each as the dedicated user,
restarted on failure and hardened. Parsed here (and checked by systemd's own parser);
never installed."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from outbound.cli import run

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
BINARY = "/opt/outbound/venv/bin/outbound"
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictSUIDSGID": "yes",
    "CapabilityBoundingSet": "",
}


# `run all` is the single-box supervisor; under systemd each process has its own unit.
PROCESSES = sorted(set(run.commands) - {"all"})


def _units() -> dict[str, configparser.ConfigParser]:
    out = {}
    for path in sorted(UNITS.glob("*.service")):
        # systemd repeats keys (SystemCallFilter=): strict=False keeps the last one.
        cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        cp.read_string(path.read_text())
        out[path.name] = cp
    return out


def test_one_unit_per_run_subcommand() -> None:
    names = {f"outbound-{name}.service" for name in PROCESSES}
    assert names == set(_units()), "deploy/systemd and `outbound run` disagree"


@pytest.mark.parametrize("unit", sorted(f"outbound-{n}.service" for n in PROCESSES))
def test_unit_runs_its_process_as_the_dedicated_user_hardened(unit: str) -> None:
    service = _units()[unit]["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == BINARY and argv[1] == "run"
    assert argv[2] in run.commands and unit == f"outbound-{argv[2]}.service"
    assert service["User"] == "outbound" and service["Group"] == "outbound"
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"] == "/etc/outbound/env"
    for key, value in HARDENING.items():
        assert service.get(key) == value, f"{unit}: {key}"
    assert _units()[unit]["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_parses_every_unit_without_a_warning(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian package systemd) is needed to check the units"
    for path in UNITS.glob("*.service"):
        # verify wants the program to exist: point ExecStart at one that does.
        text = path.read_text().replace(BINARY, "/bin/true")
        (tmp_path / path.name).write_text(text)
    units = sorted(str(p) for p in tmp_path.glob("*.service"))
    out = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and (out.stdout + out.stderr).strip() == "", out.stdout + out.stderr

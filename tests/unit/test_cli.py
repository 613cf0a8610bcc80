"""The `outbound` CLI end to end on a real SQLite database (click's runner, no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from outbound.cli import main
from outbound.model import Agent, make_engine, session_factory, transaction
from outbound.security import verify_secret


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OUTBOUND_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.delenv("OUTBOUND_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def _run(*args: str, code: int = 0) -> str:
        r = runner.invoke(main, list(args), catch_exceptions=False)
        assert r.exit_code == code, f"{args}: exit {r.exit_code}\n{r.output}"
        return r.output

    _run("db", "upgrade")
    return _run


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, (*prefix, name))


def test_help_lists_every_command_of_the_brief() -> None:
    paths = {" ".join(p) for p in _all_commands(main)}
    needed = {
        "db upgrade",
        "campaign create",
        "campaign list",
        "campaign show",
        "campaign load",
        "campaign start",
        "campaign stop",
        "campaign unload",
        "contacts import",
        "agent add",
        "agent list",
        "agent passwd",
        "dnc add",
        "dnc import",
        "dnc check",
        "sandbox up",
        "sandbox down",
        "sandbox status",
        "sandbox cli",
    }
    assert needed <= paths, needed - paths
    top = CliRunner().invoke(main, ["--help"]).output
    for group in ("db", "campaign", "contacts", "agent", "dnc", "sandbox"):
        assert f"  {group} " in top


@pytest.mark.parametrize("path", sorted(" ".join(p) for p in _all_commands(main)))
def test_every_command_has_help(path: str) -> None:
    r = CliRunner().invoke(main, [*path.split(), "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage: " in r.output and len(r.output.splitlines()) > 3


def test_campaign_lifecycle_through_the_cli(run) -> None:  # type: ignore[no-untyped-def]
    out = json.loads(
        run(
            "campaign",
            "create",
            "spring",
            "--mode",
            "preview",
            "--caller-id",
            "030 1234567",
            "--disposition",
            "sale",
            "--disposition-required",
            "--description",
            "Spring promo",
            "--json",
        )
    )
    assert out["state"] == "created" and out["caller_ids"] == ["+49301234567"]
    assert out["delivery_mode"] == "manual"
    for ev, state in [
        ("load", "loaded"),
        ("start", "running"),
        ("stop", "stopped"),
        ("start", "running"),
        ("stop", "stopped"),
        ("unload", "unloaded"),
    ]:
        assert json.loads(run("campaign", ev, "spring", "--json"))["to"] == state
    err = run("campaign", "start", "spring", code=1)
    assert "cannot start campaign 'spring': it is unloaded" in err
    listed = json.loads(run("campaign", "list", "--json"))
    assert [c["name"] for c in listed] == ["spring"]
    assert json.loads(run("campaign", "show", "spring", "--json"))["state"] == "unloaded"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mode", "telepathic"], "Invalid value for '--mode'"),
        (["--mode", "preview", "--caller-id", "12"], "caller ID '12'"),
        (["--mode", "preview", "--calling-hours", "21:00-08:00"], "'from' must be before"),
        (["--mode", "preview", "--calling-hours", "8-9"], "not a time of day"),
        (["--mode", "preview", "--disposition-required"], "no disposition codes"),
        (["--mode", "preview", "--trunk", "PJSIP/x"], "${NUMBER}"),
        (["--mode", "preview", "--abandon-target", "3"], "abandon target"),
    ],
)
def test_bad_campaign_input_is_refused_and_changes_nothing(run, args, needle) -> None:  # type: ignore[no-untyped-def]
    r = CliRunner().invoke(main, ["campaign", "create", "bad", *args])
    assert r.exit_code != 0 and needle in r.output
    assert json.loads(run("campaign", "list", "--json")) == []


def test_duplicate_campaign_name_is_a_conflict(run) -> None:  # type: ignore[no-untyped-def]
    run("campaign", "create", "a", "--mode", "predictive")
    assert "already exists" in run("campaign", "create", "a", "--mode", "preview", code=1)


def test_agents_get_argon2_hashes_and_passwd_changes_them(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    run("campaign", "create", "c", "--mode", "progressive")
    run(
        "agent",
        "add",
        "1001",
        "--name",
        "Ann",
        "--extension",
        "PJSIP/1001",
        "--password",
        "correct horse",
        "--pin",
        "2468",
        "--campaign",
        "c",
    )
    rows = json.loads(run("agent", "list", "--json"))
    assert rows[0]["campaigns"] == ["c"] and rows[0]["has_pin"]
    assert "hash" not in run("agent", "list")
    f = session_factory(make_engine(f"sqlite:///{tmp_path / 'cli.db'}"))
    with transaction(f) as s:
        a = s.scalars(select(Agent)).one()
        assert a.password_hash and a.password_hash.startswith("$argon2id$")
        assert verify_secret(a.password_hash, "correct horse")
        assert verify_secret(a.pin_hash, "2468") and not verify_secret(a.pin_hash, "2469")
    run("agent", "passwd", "1001", "--pin", "1357")
    with transaction(f) as s:
        assert verify_secret(s.get(Agent, "1001").pin_hash, "1357")  # type: ignore[union-attr]
    assert "PIN must be 4 to 12 digits" in run("agent", "passwd", "1001", "--pin", "12", code=1)
    assert "no agent with id '9'" in run("agent", "passwd", "9", "--pin", "1234", code=1)
    assert "agent id must be" in run(
        "agent", "add", "x1", "--name", "B", "--extension", "PJSIP/2", code=1
    )
    assert "already exists" in run(
        "agent", "add", "1001", "--name", "B", "--extension", "PJSIP/2", code=1
    )


def test_dnc_add_check_and_import(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    run("campaign", "create", "c", "--mode", "predictive")
    assert json.loads(run("dnc", "add", "030 1234567", "--json"))["created"] is True
    assert json.loads(run("dnc", "add", "+49301234567", "--json"))["created"] is False
    out = json.loads(run("dnc", "check", "+49 30 1234567", "--json", code=3))
    assert out["blocked"] and out["entries"][0]["scope"] == "global"
    assert not json.loads(run("dnc", "check", "+49301234568", "--json"))["blocked"]
    csv_file = tmp_path / "dnc.csv"
    csv_file.write_text("phone\n+49301111111\nnot-a-number\n+49301111111\n030 2222222\n")
    out = json.loads(run("dnc", "import", str(csv_file), "--campaign", "c", "--json"))
    assert (out["added"], out["already_present"]) == (2, 1)
    assert out["errors"] == [
        {
            "line": 3,
            "reason": "not a phone number (The string supplied did not seem to be a phone number.)",
        }
    ]
    assert json.loads(run("dnc", "check", "+49301111111", "--campaign", "c", "--json", code=3))[
        "blocked"
    ]
    assert not json.loads(run("dnc", "check", "+49301111111", "--json"))["blocked"]
    assert "not a phone number" in run("dnc", "add", "hello", code=1)


def test_bad_config_value_is_reported_with_key_and_file(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ini = tmp_path / "bad.ini"
    ini.write_text("[web]\nport = seventy\n")
    r = CliRunner().invoke(main, ["--config", str(ini), "campaign", "list"])
    assert r.exit_code == 1 and str(ini) in r.output and "[web] port" in r.output


def test_contacts_import_reports_bad_rows_by_line_and_reimport_adds_nothing(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    run("campaign", "create", "c", "--mode", "predictive")
    f = tmp_path / "contacts.csv"
    f.write_text(
        "id,name,phone,plan\n1,Ann,030 1234567,gold\n2,Bob,12,silver\n3,Cid,+49 30 7654321,\n"
    )
    errors = tmp_path / "bad.csv"
    out = json.loads(run("contacts", "import", "c", str(f), "--errors", str(errors), "--json"))
    assert (out["rows"], out["imported"], out["error_count"]) == (3, 2, 1)
    assert out["errors"][0]["line"] == 3 and "phone" in out["errors"][0]["reason"]
    assert errors.read_text().splitlines()[1].startswith("3,")
    again = json.loads(run("contacts", "import", "c", str(f), "--json"))
    assert (again["imported"], again["already_present"]) == (0, 2)
    assert json.loads(run("campaign", "show", "c", "--json"))["contacts"]["ready"] == 2
    assert "no campaign named 'zz'" in run("contacts", "import", "zz", str(f), code=1)

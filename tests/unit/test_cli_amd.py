"""`outbound amd flag / review / report` on a real SQLite database (click's runner)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from outbound.cli import main
from outbound.model import (
    AttemptState,
    CallAttempt,
    CallResult,
    Contact,
    ContactList,
    make_engine,
    session_factory,
    transaction,
    utcnow,
)

Run = Callable[..., str]
TRUNK = "PJSIP/${NUMBER}@carrier"


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.setenv("OUTBOUND_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.delenv("OUTBOUND_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def _run(*args: str, code: int = 0) -> str:
        r = runner.invoke(main, list(args), catch_exceptions=False)
        assert r.exit_code == code, f"{args}: exit {r.exit_code}\n{r.output}"
        return r.output

    _run("db", "upgrade")
    _run("campaign", "create", "spring", "--mode", "predictive")
    for aid, role in (("11", "agent"), ("12", "agent"), ("90", "supervisor")):
        _run(
            "agent", "add", aid, "--name", f"A{aid}", "--extension", f"PJSIP/{aid}", "--role", role
        )
    return _run


def _attempts(tmp_path: Path) -> tuple[str, str]:
    """One call AMD passed as human (connected to agent 11) and one it called a machine."""
    f = session_factory(make_engine(f"sqlite:///{tmp_path / 'cli.db'}"))
    with transaction(f) as s:
        lst = ContactList(campaign_id=1, name="l")
        s.add(lst)
        s.flush()
        ct = Contact(campaign_id=1, list_id=lst.id, external_key="k")
        s.add(ct)
        s.flush()
        common = {"campaign_id": 1, "contact_id": ct.id, "e164": "+4930123", "trunk": TRUNK}
        human = CallAttempt(
            attempt_no=1,
            agent_id="11",
            state=AttemptState.ENDED,
            amd_status="HUMAN",
            amd_cause="HUMAN-300-500",
            result=CallResult.ANSWERED,
            connected_at=utcnow(),
            **common,
        )
        machine = CallAttempt(
            attempt_no=2,
            state=AttemptState.ENDED,
            amd_status="MACHINE",
            amd_cause="LONGGREETING-1600-1500",
            result=CallResult.ANSWERING_MACHINE,
            **common,
        )
        s.add_all([human, machine])
        s.flush()
        return human.id, machine.id


def test_given_classified_calls_when_flagged_and_reviewed_through_the_cli_then_reported(
    run: Run, tmp_path: Path
) -> None:
    human, machine = _attempts(tmp_path)
    assert json.loads(run("amd", "report", "--json"))["total"]["false_human"] == 0
    out = json.loads(run("amd", "flag", human, "--agent", "11", "--note", "beep", "--json"))
    assert out["changed"] and out["feedback"] == "machine"
    assert "already flagged" in run("amd", "flag", human, "--agent", "11")
    err = run("amd", "flag", human, "--agent", "12", code=1)
    assert f"call {human} was not connected to agent 12" in err

    pending = json.loads(run("amd", "review", "--json"))
    assert {p["attempt_id"]: p["why"] for p in pending} == {
        human: "agent flag",
        machine: "classified machine",
    }
    assert "calls waiting for review" in run("amd", "review", "--campaign", "spring")
    assert "--by is required" in run("amd", "review", machine, "human", code=2)
    assert "give a verdict" in run("amd", "review", machine, code=2)
    assert "Invalid value" in run("amd", "review", machine, "fax", "--by", "90", code=2)
    assert "not a supervisor" in run("amd", "review", machine, "human", "--by", "11", code=1)
    assert "reviewed human by 90" in run("amd", "review", machine, "human", "--by", "90")
    assert [p["attempt_id"] for p in json.loads(run("amd", "review", "--json"))] == [human]

    rep = json.loads(run("amd", "report", "--campaign", "spring", "--since", "1d", "--json"))
    (camp,) = rep["campaigns"]
    assert (camp["key"], camp["human"], camp["false_human"]) == ("spring", 1, 1)
    assert camp["false_human_rate"] == 1.0 and camp["false_machine_rate"] == 1.0
    assert [t["key"] for t in rep["trunks"]] == [TRUNK]
    text = run("amd", "report")
    assert "AMD errors per campaign" in text and "AMD errors per trunk" in text
    assert "100.0%" in text and "LONGGREETING" in text
    assert "since 'soon'" in run("amd", "report", "--since", "soon", code=1)
    assert "no campaign named 'winter'" in run("amd", "report", "--campaign", "winter", code=1)


def test_given_bad_input_when_flagging_then_a_clear_error_and_nothing_changed(
    run: Run, tmp_path: Path
) -> None:
    human, _ = _attempts(tmp_path)
    assert "not a call attempt id" in run("amd", "flag", "x;y", "--agent", "11", code=1)
    assert "no call attempt" in run("amd", "flag", "0" * 36, "--agent", "11", code=1)
    assert "control characters" in run(
        "amd", "flag", human, "--agent", "11", "--note", "a\nb", code=1
    )
    f = session_factory(make_engine(f"sqlite:///{tmp_path / 'cli.db'}"))
    with f() as s:
        assert s.scalars(select(CallAttempt.feedback)).all() == [None, None]

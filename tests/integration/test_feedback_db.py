"""Classification feedback in the database, on SQLite and on the real local PostgreSQL:
who may flag or review what, idempotence, nothing changed on refusal, the review queue
and the error-rate report."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from outbound.campaigns.feedback import (
    NotAllowed,
    error_rates,
    flag_machine,
    pending_review,
    review,
)
from outbound.errors import Conflict, Invalid, NotFound
from outbound.model import (
    Agent,
    AgentRole,
    AttemptState,
    CallAttempt,
    CallResult,
    Campaign,
    CaseEvent,
    Contact,
    ContactList,
    DialMode,
    session_factory,
    transaction,
    utcnow,
)

T1 = "PJSIP/${NUMBER}@carrier-a"
T2 = "PJSIP/${NUMBER}@carrier-b"
AMD_COLUMNS = ("amd_status", "amd_cause", "result", "audit", "state", "connected_at")


@pytest.fixture
def world(engine: Engine) -> dict[str, Any]:
    """Two campaigns, agents 11 and 12, supervisor 90, and one contact per campaign."""
    f = session_factory(engine)
    with transaction(f) as s:
        for aid, role in (("11", AgentRole.AGENT), ("12", AgentRole.AGENT), ("90", "supervisor")):
            s.add(Agent(id=aid, name=f"A{aid}", extension=f"PJSIP/{aid}", role=AgentRole(role)))
        ids = {}
        for name in ("spring", "autumn"):
            c = Campaign(name=name, mode=DialMode.PREDICTIVE)
            s.add(c)
            s.flush()
            lst = ContactList(campaign_id=c.id, name="l")
            s.add(lst)
            s.flush()
            ct = Contact(campaign_id=c.id, list_id=lst.id, external_key=name)
            s.add(ct)
            s.flush()
            ids[name] = (c.id, ct.id)
    return {"factory": f, "ids": ids, "n": [0]}


def _call(w: dict[str, Any], campaign: str = "spring", **fields: Any) -> str:
    """An ended, classified attempt; `human=True` makes it one connected to agent 11."""
    camp, contact = w["ids"][campaign]
    w["n"][0] += 1
    human = fields.pop("human", False)
    row: dict[str, Any] = {
        "campaign_id": camp,
        "contact_id": contact,
        "attempt_no": w["n"][0],
        "e164": "+4930123456",
        "state": AttemptState.ENDED,
        "trunk": T1,
        "agent_id": "11",
        "created_at": utcnow() - timedelta(minutes=100 - w["n"][0]),
    }
    if human:
        row |= {
            "amd_status": "HUMAN",
            "amd_cause": "HUMAN-300-500",
            "result": CallResult.ANSWERED,
            "connected_at": utcnow(),
            "audit": {"route": "connect"},
        }
    else:
        row |= {
            "amd_status": "MACHINE",
            "amd_cause": "LONGGREETING-1600-1500",
            "result": CallResult.ANSWERING_MACHINE,
            "audit": {"route": "hangup"},
        }
    row |= fields
    with transaction(w["factory"]) as s:
        a = CallAttempt(**row)
        s.add(a)
        s.flush()
        return a.id


def _row(f: sessionmaker[Session], aid: str) -> CallAttempt:
    with f() as s:
        a = s.get(CallAttempt, aid)
        assert a is not None
        return a


def _snapshot(f: sessionmaker[Session], aid: str) -> dict[str, Any]:
    a = _row(f, aid)
    cols = AMD_COLUMNS + ("feedback", "feedback_by", "feedback_at", "review", "reviewed_by")
    return {c: getattr(a, c) for c in cols}


def _events(f: sessionmaker[Session], aid: str) -> list[str]:
    with f() as s:
        return list(s.scalars(select(CaseEvent.kind).where(CaseEvent.attempt_id == aid)))


def test_given_a_call_connected_to_an_agent_when_that_agent_flags_it_then_stored_beside_amd(
    world: dict[str, Any],
) -> None:
    f = world["factory"]
    aid = _call(world, human=True)
    before = _snapshot(f, aid)
    out = flag_machine(f, aid, "11", note="beep after 4 s")
    assert out["changed"] and out["feedback"] == "machine" and out["feedback_by"] == "11"
    a = _row(f, aid)
    assert (a.feedback, a.feedback_by, a.feedback_note) == ("machine", "11", "beep after 4 s")
    assert a.feedback_at is not None and a.feedback_at.tzinfo is not None
    assert {c: getattr(a, c) for c in AMD_COLUMNS} == {c: before[c] for c in AMD_COLUMNS}
    assert _events(f, aid) == ["amd_flag"]
    # idempotent: a second flag changes nothing, not even the time
    again = flag_machine(f, aid, "11")
    assert not again["changed"] and _row(f, aid).feedback_at == a.feedback_at
    assert _events(f, aid) == ["amd_flag"]


def test_given_someone_elses_call_when_an_agent_flags_it_then_refused_and_nothing_changed(
    world: dict[str, Any],
) -> None:
    f = world["factory"]
    aid = _call(world, human=True)
    abandoned = _call(world, amd_status="HUMAN", result=CallResult.ABANDONED)  # reserved, lost
    preview = _call(world, human=True, amd_status=None, amd_cause=None)  # no AMD ran
    before = {x: _snapshot(f, x) for x in (aid, abandoned, preview)}
    with pytest.raises(NotAllowed, match="not connected to agent 12"):
        flag_machine(f, aid, "12")
    with pytest.raises(NotAllowed, match="not connected to agent 11"):
        flag_machine(f, abandoned, "11")
    with pytest.raises(Conflict, match="not classified by AMD"):
        flag_machine(f, preview, "11")
    with pytest.raises(NotFound, match="no call attempt"):
        flag_machine(f, "00000000-0000-0000-0000-000000000000", "11")
    with pytest.raises(Invalid, match="not a call attempt id"):
        flag_machine(f, "x\0y", "11")
    with pytest.raises(Invalid, match="control characters"):
        flag_machine(f, aid, "11", note="a\r\nFAKE LINE")
    assert {x: _snapshot(f, x) for x in before} == before
    assert _events(f, aid) == []


def test_given_a_machine_call_when_a_supervisor_reviews_it_then_verdict_stored_and_checked(
    world: dict[str, Any],
) -> None:
    f = world["factory"]
    machine = _call(world)
    human = _call(world, human=True)
    before = _snapshot(f, machine)
    with pytest.raises(NotAllowed, match="not a supervisor"):
        review(f, machine, "human", "11")
    with pytest.raises(NotFound, match="no supervisor"):
        review(f, machine, "human", "99")
    with pytest.raises(Invalid, match="human or machine"):
        review(f, machine, "fax", "90")
    with pytest.raises(Conflict, match="nothing to review"):
        review(f, human, "machine", "90")  # classified human and nobody flagged it
    assert _snapshot(f, machine) == before
    out = review(f, machine, "human", "90", note="a person said hello twice")
    assert out["changed"] and (out["review"], out["reviewed_by"]) == ("human", "90")
    assert not review(f, machine, "human", "90")["changed"]
    a = _row(f, machine)
    assert a.amd_status == "MACHINE" and a.result is CallResult.ANSWERING_MACHINE
    assert a.review_note == "a person said hello twice" and a.reviewed_at is not None
    # the supervisor changes their mind: the new verdict replaces the old, both logged
    assert review(f, machine, "machine", "90")["review"] == "machine"
    assert _events(f, machine) == ["amd_review", "amd_review"]


def test_given_an_agent_flag_when_a_supervisor_overrules_it_then_the_review_wins(
    world: dict[str, Any],
) -> None:
    f = world["factory"]
    aid = _call(world, human=True)
    flag_machine(f, aid, "11")
    assert [r["why"] for r in pending_review(f)] == ["agent flag"]
    review(f, aid, "human", "90")
    a = _row(f, aid)
    assert (a.feedback, a.review) == ("machine", "human")
    rep = error_rates(f)
    assert (rep.total.human, rep.total.false_human, rep.total.flags_unreviewed) == (1, 0, 0)
    assert pending_review(f) == []


def test_given_machine_calls_then_pending_review_lists_unreviewed_newest_first_and_paged(
    world: dict[str, Any],
) -> None:
    f = world["factory"]
    spring = [_call(world) for _ in range(5)]
    autumn = _call(world, campaign="autumn")
    _call(world, human=True)  # not a machine, not flagged: never listed
    _call(world, result=CallResult.SILENCE, amd_cause="INITIALSILENCE-2500-2500")
    review(f, spring[0], "machine", "90")
    listed = [r["attempt_id"] for r in pending_review(f, "spring")]
    assert listed == spring[:0:-1]  # newest first, the reviewed one gone
    assert [r["attempt_id"] for r in pending_review(f, "spring", limit=2, offset=1)] == [
        spring[3],
        spring[2],
    ]
    assert [r["attempt_id"] for r in pending_review(f)][0] == autumn
    row = pending_review(f, "autumn")[0]
    assert (row["campaign"], row["trunk"], row["why"]) == ("autumn", T1, "classified machine")
    with pytest.raises(NotFound, match="no campaign"):
        pending_review(f, "winter")
    with pytest.raises(Invalid, match="limit"):
        pending_review(f, limit=0)


def test_given_feedback_on_two_campaigns_and_trunks_then_error_rates_per_campaign_and_trunk(
    world: dict[str, Any],
) -> None:
    f = world["factory"]
    humans = [_call(world, human=True) for _ in range(4)]
    flag_machine(f, humans[0], "11")
    humans_b = [_call(world, "autumn", human=True, trunk=T2) for _ in range(2)]
    flag_machine(f, humans_b[1], "11")
    machines = [_call(world, trunk=T2, amd_cause=f"MAXWORDS-{i}-3") for i in range(3)]
    review(f, machines[0], "human", "90")
    review(f, machines[1], "machine", "90")
    old = _call(world, human=True, created_at=utcnow() - timedelta(days=40))
    flag_machine(f, old, "11")

    rep = error_rates(f)
    camps = {r.key: r for r in rep.campaigns}
    trunks = {r.key: r for r in rep.trunks}
    sp = camps["spring"]
    assert (sp.human, sp.false_human, sp.flags_unreviewed) == (5, 2, 2)
    assert sp.false_human_rate == pytest.approx(0.4)
    assert (sp.machine, sp.machine_reviewed, sp.false_machine) == (3, 2, 1)
    assert sp.false_machine_rate == 0.5 and sp.machine_unreviewed == 1
    assert camps["autumn"].false_human_rate == 0.5
    assert camps["autumn"].false_machine_rate is None
    assert trunks[T1].false_human_rate == pytest.approx(2 / 5)
    assert (trunks[T2].human, trunks[T2].false_human, trunks[T2].false_machine) == (2, 1, 1)
    assert rep.total.as_dict()["causes"]["MAXWORDS"] == {"judged": 2, "wrong": 1}

    recent = error_rates(f, since=utcnow() - timedelta(days=7), campaign="spring")
    assert [r.key for r in recent.campaigns] == ["spring"]
    assert (recent.total.human, recent.total.false_human) == (4, 1)
    assert recent.as_dict()["campaign"] == "spring"
    with pytest.raises(Invalid, match="time zone"):
        error_rates(f, since=datetime(2026, 1, 1))

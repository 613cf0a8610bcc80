"""Compliance on real rows, SQLite and PostgreSQL: `why` explains a record, every dial
through `create_attempt` is checked in its transaction (refused: nothing written;
allowed: the audit says which rules allowed it), and `outbound contacts why`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outbound.campaigns.attempts import create_attempt, settle
from outbound.cli import main
from outbound.compliance import RULES, NotDialable, why
from outbound.errors import Conflict
from outbound.model import (
    AttemptState,
    CallAttempt,
    Callback,
    CallResult,
    CampaignState,
    Contact,
    ContactState,
    DialMode,
    DncEntry,
    transaction,
)
from tests.helpers.db import add_agent, add_contact

NOON = datetime(2026, 1, 15, 11, 0, tzinfo=UTC)  # 12:00 in Berlin
NIGHT = datetime(2026, 1, 15, 22, 30, tzinfo=UTC)  # 23:30 in Berlin
BERLIN = "Europe/Berlin"
NUMBER = "+493055501234"


def _contact(factory: sessionmaker[Session], number: str = NUMBER, **kw: object) -> int:
    kw.setdefault("timezone", BERLIN)
    return add_contact(factory, number, **kw)  # type: ignore[arg-type]


def _dial(factory: sessionmaker[Session], cid: int, now: datetime, **kw: object) -> str:
    with transaction(factory) as s:
        return create_attempt(s, cid, now=now, **kw).id  # type: ignore[arg-type]


def _nothing_written(factory: sessionmaker[Session], cid: int) -> None:
    with factory() as s:
        assert s.scalars(select(CallAttempt).where(CallAttempt.contact_id == cid)).all() == []
        c = s.get(Contact, cid)
        assert c is not None and c.attempts == 0 and c.state is ContactState.READY


def test_given_a_clean_record_then_why_says_dialable_and_at_night_says_when(
    factory: sessionmaker[Session],
) -> None:
    cid = _contact(factory)
    with factory() as s:
        v = why(s, cid, NOON)
        assert v.allowed and v.next_dialable_at == NOON
        night = why(s, cid, NIGHT)
    assert [r.name for r in night.failed] == ["calling_hours"]
    assert "23:30 in Europe/Berlin" in night.failed[0].reason
    assert night.next_dialable_at == datetime(2026, 1, 16, 7, 0, tzinfo=UTC)
    assert night.to_dict()["next_dialable_local"] == "2026-01-16T08:00:00+01:00"


def test_given_real_rows_then_why_names_each_blocking_rule(
    factory: sessionmaker[Session],
) -> None:
    cid = _contact(factory, campaign="busy", mode=DialMode.PREDICTIVE)
    with transaction(factory) as s:
        c = s.get(Contact, cid)
        assert c is not None
        camp_id = c.campaign_id
        s.add(DncEntry(e164=NUMBER, campaign_id=None, reason="asked"))
        s.add(DncEntry(e164=NUMBER, campaign_id=camp_id, reason="asked too"))
        s.add(Callback(campaign_id=camp_id, contact_id=cid, due_at=NOON + timedelta(hours=3)))
        c.next_at = NOON + timedelta(hours=1)
        c.last_result = CallResult.NO_ANSWER
        # An abandoned call to the same number from another contact, 5 hours ago.
        other = Contact(campaign_id=camp_id, list_id=c.list_id, external_key="o", timezone=BERLIN)
        s.add(other)
        s.flush()
        s.add(
            CallAttempt(
                campaign_id=camp_id,
                contact_id=other.id,
                attempt_no=1,
                e164=NUMBER,
                state=AttemptState.ENDED,
                result=CallResult.ABANDONED,
                answered_at=NOON - timedelta(hours=5),
            )
        )
    with factory() as s:
        v = why(s, cid, NOON)
    failed = {r.name: r for r in v.failed}
    assert set(failed) == {"dnc", "retry_time", "callback", "abandon_72h"}
    assert "global and campaign" in failed["dnc"].reason
    assert failed["abandon_72h"].next_time == NOON + timedelta(hours=67)
    assert v.next_dialable_at is None  # DNC: no time makes it dialable
    with factory() as s:  # an agent reserved lifts the abandon rule only
        reserved = why(s, cid, NOON, agent_reserved=True)
    assert "abandon_72h" not in {r.name for r in reserved.failed}


def test_given_a_dnc_number_when_dialing_then_refused_and_nothing_written(
    factory: sessionmaker[Session],
) -> None:
    cid = _contact(factory)
    with transaction(factory) as s:
        s.add(DncEntry(e164=NUMBER, campaign_id=None, reason="asked"))
    with pytest.raises(NotDialable, match="dnc: .*global do-not-call") as exc:
        _dial(factory, cid, NOON)
    assert isinstance(exc.value, Conflict)
    _nothing_written(factory, cid)


def test_given_night_in_the_contacts_zone_when_dialing_then_refused_and_nothing_written(
    factory: sessionmaker[Session],
) -> None:
    cid = _contact(factory)
    with pytest.raises(NotDialable, match="calling_hours: it is 23:30 in Europe/Berlin"):
        _dial(factory, cid, NIGHT)
    _nothing_written(factory, cid)
    # Late in the evening in Berlin is still afternoon in New York.
    ny = _contact(factory, "+12125550123", timezone="America/New_York")
    assert _dial(factory, ny, NIGHT)


def test_given_an_unknown_zone_or_a_stopped_campaign_when_dialing_then_refused(
    factory: sessionmaker[Session],
) -> None:
    cid = _contact(factory, timezone=None)
    with pytest.raises(NotDialable, match="time zone unknown: not dialed"):
        _dial(factory, cid, NOON)
    _nothing_written(factory, cid)
    stopped = _contact(factory, campaign="stopped", state=CampaignState.STOPPED)
    with pytest.raises(NotDialable, match="campaign 'stopped' is stopped"):
        _dial(factory, stopped, NOON)
    _nothing_written(factory, stopped)


def test_given_a_dialable_record_when_dialing_then_the_audit_says_which_rules_allowed_it(
    factory: sessionmaker[Session],
) -> None:
    cid = _contact(factory)
    with transaction(factory) as s:
        a = create_attempt(s, cid, now=NOON, audit={"mode": "progressive"})
        aid = a.id
    with factory() as s:
        a2 = s.get(CallAttempt, aid)
        assert a2 is not None
        audit = a2.audit
    assert audit["mode"] == "progressive"
    assert list(audit["compliance"]) == list(RULES)
    assert all(v.startswith("ok: ") for v in audit["compliance"].values())
    assert audit["compliance"]["calling_hours"].startswith("ok: it is 12:00 in Europe/Berlin")
    # The same contact again while that call is live: refused, "never two calls at once".
    with pytest.raises(NotDialable, match=f"already in call attempt {aid}"):
        _dial(factory, cid, NOON)


def test_given_an_abandoned_call_when_redialed_within_72h_then_only_with_an_agent_reserved(
    factory: sessionmaker[Session],
) -> None:
    cid = _contact(factory, campaign="pred", mode=DialMode.PREDICTIVE)
    aid = _dial(factory, cid, NOON)
    with transaction(factory) as s:
        settle(s, aid, CallResult.ABANDONED, at=NOON + timedelta(minutes=1))
        c = s.get(Contact, cid)
        assert c is not None
        c.next_at = None  # leave the treatment's 72 h delay aside: the rule itself decides
    with pytest.raises(NotDialable, match="abandon_72h: call to this number abandoned"):
        _dial(factory, cid, NOON + timedelta(hours=1))
    agent = add_agent(factory, "42")
    assert _dial(factory, cid, NOON + timedelta(hours=1), agent_id=agent)


def _run_cli(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> str:
    monkeypatch.setenv("OUTBOUND_DATABASE_URL", db_url)
    monkeypatch.delenv("OUTBOUND_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["contacts", "why", *args], catch_exceptions=False)
    return f"{r.exit_code}\n{r.output}"


def test_given_a_record_when_asking_the_cli_why_then_rules_ticks_and_next_time(
    factory: sessionmaker[Session],
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    cid = _contact(factory, campaign="cli")
    with transaction(factory) as s:
        c = s.get(Contact, cid)
        assert c is not None
        c.external_key = "crm-17"
    out = _run_cli(db_url, monkeypatch, tmp_path, str(cid), "--at", NIGHT.isoformat())
    assert out.startswith("0\n"), out
    assert "NOT dialable now" in out
    assert "✗ calling_hours" in out and "✓ dnc" in out
    assert "next dialable: 2026-01-16 07:00 UTC = 2026-01-16 08:00 CET (Europe/Berlin)" in out
    js = _run_cli(
        db_url,
        monkeypatch,
        tmp_path,
        "crm-17",
        "--campaign",
        "cli",
        "--json",
        "--at",
        "2026-01-15T11:00",
    )
    data = json.loads(js.split("\n", 1)[1])
    assert data["allowed"] is True and data["contact_id"] == cid
    assert [r["name"] for r in data["rules"]] == list(RULES)
    missing = _run_cli(db_url, monkeypatch, tmp_path, "nope", "--campaign", "cli")
    assert missing.startswith("1\n") and "no contact 'nope' in campaign 'cli'" in missing


def test_given_hours_from_the_campaign_then_they_are_used(factory: sessionmaker[Session]) -> None:
    cid = _contact(
        factory, campaign="late", calling_hours_start=time(22, 0), calling_hours_end=time(2, 0)
    )
    with factory() as s:
        assert why(s, cid, NIGHT).allowed  # 23:30 in Berlin: inside 22:00-02:00
        assert not why(s, cid, NOON).allowed

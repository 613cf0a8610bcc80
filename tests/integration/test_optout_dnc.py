"""outbound.dnc.opt_out on both real databases (SQLite and PostgreSQL): the number of the
attempt goes on the global (or the campaign's) do-not-call list, the contact leaves the
campaign, the case history and the attempt say why; pressing twice adds nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from outbound import dnc
from outbound.campaigns.attempts import create_attempt, settle
from outbound.errors import Invalid, NotFound
from outbound.model import (
    CallAttempt,
    CallResult,
    CaseEvent,
    Contact,
    ContactState,
    DncEntry,
    session_factory,
    transaction,
)
from tests.helpers.db import add_contact


def _attempt(factory: sessionmaker[Session], number: str) -> str:
    cid = add_contact(factory, number)
    with transaction(factory) as s:
        return create_attempt(s, cid).id


def test_given_an_attempt_when_the_person_opts_out_then_global_dnc_and_contact_out(
    engine: Engine,
) -> None:
    factory = session_factory(engine)
    aid = _attempt(factory, "+493012345678")
    with transaction(factory) as s:
        rec = dnc.opt_out(s, aid, key="9")
    assert rec == {"number": "+493012345678", "scope": "global", "key": "9", "created": True}
    with transaction(factory) as s:  # a second press (or a retried AGI) adds nothing
        assert dnc.opt_out(s, aid, key="9")["created"] is False
        settle(s, aid, CallResult.ABANDONED)  # the treatment must not bring it back
    with factory() as s:
        (entry,) = s.scalars(select(DncEntry)).all()
        assert (entry.e164, entry.campaign_id, entry.source) == ("+493012345678", None, "optout")
        assert aid in entry.reason and "9" in entry.reason
        a = s.get(CallAttempt, aid)
        assert a is not None and a.audit["optout"]["scope"] == "global"
        c = s.get(Contact, a.contact_id)
        assert c is not None and c.state is ContactState.DNC
        events = s.scalars(select(CaseEvent).where(CaseEvent.attempt_id == aid)).all()
        assert [e.kind for e in events] == ["optout", "optout"]
        assert dnc.check(s, "+493012345678", "DE")["blocked"] is True


def test_given_campaign_scope_then_the_entry_is_the_campaigns_only(engine: Engine) -> None:
    factory = session_factory(engine)
    aid = _attempt(factory, "+493012345679")
    with transaction(factory) as s:
        dnc.opt_out(s, aid, key="#", scope="campaign")
    with factory() as s:
        (entry,) = s.scalars(select(DncEntry)).all()
        a = s.get(CallAttempt, aid)
        assert a is not None and entry.campaign_id == a.campaign_id
        assert dnc.check(s, "+493012345679", "DE")["blocked"] is False  # globally: no
        assert dnc.check(s, "+493012345679", "DE", a.campaign_id)["blocked"] is True


def test_given_a_dialled_number_phonenumbers_rejects_then_the_opt_out_still_counts(
    engine: Engine,
) -> None:
    factory = session_factory(engine)
    aid = _attempt(factory, "+999123456")  # E.164 in form, no valid country code
    with transaction(factory) as s:
        assert dnc.opt_out(s, aid, key="9")["created"] is True
    with factory() as s:
        assert [e.e164 for e in s.scalars(select(DncEntry)).all()] == ["+999123456"]


def test_given_an_unknown_attempt_or_bad_scope_then_refused_and_nothing_written(
    engine: Engine,
) -> None:
    factory = session_factory(engine)
    aid = _attempt(factory, "+493012345670")
    with pytest.raises(NotFound), transaction(factory) as s:
        dnc.opt_out(s, "no-such-attempt", key="9")
    with pytest.raises(Invalid), transaction(factory) as s:
        dnc.opt_out(s, aid, key="9", scope="everyone")
    with factory() as s:
        assert s.scalars(select(DncEntry)).all() == []

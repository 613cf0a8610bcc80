"""The data model on SQLite and on the real local PostgreSQL (each test runs on both)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import IntegrityError

from outbound.model import (
    Agent,
    AttemptState,
    CallAttempt,
    Callback,
    CallResult,
    Campaign,
    CaseEvent,
    Contact,
    ContactList,
    DialMode,
    DncEntry,
    PhoneNumber,
    PhoneType,
    make_engine,
    session_factory,
    transaction,
    upgrade,
)
from outbound.model.db import current_revision
from outbound.model.tables import Base

TABLES = {
    "campaigns",
    "contact_lists",
    "contacts",
    "phone_numbers",
    "call_attempts",
    "callbacks",
    "agents",
    "agent_campaigns",
    "dnc_entries",
    "case_events",
}


def test_given_empty_database_when_upgraded_then_schema_equals_the_model(db_url: str) -> None:
    e = make_engine(db_url)
    assert current_revision(e) is None
    upgrade(e)
    assert current_revision(e) is not None
    assert TABLES <= set(inspect(e).get_table_names())
    with e.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == [], f"migrations and model differ: {diff}"
    upgrade(e)  # a second upgrade is a no-op
    e.dispose()


def _seed(engine: Engine) -> tuple[int, int]:
    f = session_factory(engine)
    with transaction(f) as s:
        c = Campaign(name="c1", mode=DialMode.PREDICTIVE, caller_ids=["+49301111111"])
        s.add(c)
        s.flush()
        lst = ContactList(campaign_id=c.id, name="l1")
        s.add(lst)
        s.flush()
        ct = Contact(
            campaign_id=c.id,
            list_id=lst.id,
            external_key="k1",
            name="Ann",
            timezone="Europe/Berlin",
            fields={"plan": "gold", "ünï": "çödé"},
        )
        s.add(ct)
        s.flush()
        s.add_all(
            [
                PhoneNumber(contact_id=ct.id, e164="+49301234567", type=PhoneType.HOME, position=0),
                PhoneNumber(
                    contact_id=ct.id, e164="+491701234567", type=PhoneType.MOBILE, position=1
                ),
            ]
        )
        return c.id, ct.id


def test_given_contact_then_fields_numbers_and_order_round_trip(engine: Engine) -> None:
    _, ct_id = _seed(engine)
    with transaction(session_factory(engine)) as s:
        ct = s.get(Contact, ct_id)
        assert ct is not None
        assert ct.fields == {"plan": "gold", "ünï": "çödé"}
        assert [(n.e164, n.type) for n in ct.numbers] == [
            ("+49301234567", PhoneType.HOME),
            ("+491701234567", PhoneType.MOBILE),
        ]


def test_given_aware_times_then_stored_and_returned_as_utc(engine: Engine) -> None:
    camp, ct = _seed(engine)
    due = datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=-5)))
    with transaction(session_factory(engine)) as s:
        s.add(
            Callback(
                campaign_id=camp,
                contact_id=ct,
                due_at=due,
                personal=False,
                window_start=time(18, 0),
                window_end=time(19, 30),
                new_number="+4915112345678",
                new_number_type=PhoneType.MOBILE,
            )
        )
    with transaction(session_factory(engine)) as s:
        cb = s.scalars(select(Callback)).one()
        assert cb.due_at == due and cb.due_at.tzinfo == UTC
        assert (cb.window_start, cb.window_end) == (time(18, 0), time(19, 30))


def test_given_naive_datetime_then_refused(engine: Engine) -> None:
    camp, ct = _seed(engine)
    with pytest.raises(Exception, match="naive datetime"):
        with transaction(session_factory(engine)) as s:
            s.add(Callback(campaign_id=camp, contact_id=ct, due_at=datetime(2026, 1, 1)))


def test_attempt_numbers_are_unique_per_contact(engine: Engine) -> None:
    camp, ct = _seed(engine)
    f = session_factory(engine)
    with transaction(f) as s:
        s.add(
            CallAttempt(
                campaign_id=camp,
                contact_id=ct,
                attempt_no=1,
                e164="+49301234567",
                state=AttemptState.ENDED,
                result=CallResult.BUSY,
            )
        )
    with pytest.raises(IntegrityError):
        with transaction(f) as s:
            s.add(
                CallAttempt(
                    campaign_id=camp,
                    contact_id=ct,
                    attempt_no=1,
                    e164="+49301234567",
                    state=AttemptState.ENDED,
                )
            )


def test_database_refuses_two_live_attempts_for_one_contact(engine: Engine) -> None:
    """The last line of defence of 'never two calls at once': a partial unique index."""
    camp, ct = _seed(engine)
    f = session_factory(engine)
    with transaction(f) as s:
        a = CallAttempt(campaign_id=camp, contact_id=ct, attempt_no=1, e164="+49301234567")
        s.add(a)
    assert len(a.id) == 36  # a UUID: it becomes the Originate ChannelId
    with pytest.raises(IntegrityError):
        with transaction(f) as s:
            s.add(
                CallAttempt(
                    campaign_id=camp,
                    contact_id=ct,
                    attempt_no=2,
                    e164="+491701234567",
                    state=AttemptState.RINGING,
                )
            )
    with transaction(f) as s:
        s.get(CallAttempt, a.id).state = AttemptState.ENDED  # type: ignore[union-attr]
        s.add(CallAttempt(campaign_id=camp, contact_id=ct, attempt_no=2, e164="+491701234567"))


def test_dnc_is_unique_per_scope_and_global_separately(engine: Engine) -> None:
    camp, _ = _seed(engine)
    f = session_factory(engine)
    with transaction(f) as s:
        s.add_all([DncEntry(e164="+49301234567"), DncEntry(e164="+49301234567", campaign_id=camp)])
    for dup in (DncEntry(e164="+49301234567"), DncEntry(e164="+49301234567", campaign_id=camp)):
        with pytest.raises(IntegrityError):
            with transaction(f) as s:
                s.add(dup)


def test_deleting_a_campaign_cascades_to_its_contacts(engine: Engine) -> None:
    camp, ct = _seed(engine)
    f = session_factory(engine)
    with transaction(f) as s:
        s.add(CaseEvent(contact_id=ct, kind="dtmf", data={"digits": "12#"}))
        s.add(Agent(id="1001", name="A", extension="PJSIP/1001"))
    with transaction(f) as s:
        s.delete(s.get(Campaign, camp))
    with transaction(f) as s:
        assert s.scalars(select(Contact)).all() == []
        assert s.scalars(select(PhoneNumber)).all() == []
        assert s.scalars(select(CaseEvent)).all() == []
        assert s.get(Agent, "1001") is not None


def test_unknown_enum_value_is_refused(engine: Engine) -> None:
    with pytest.raises(Exception, match="not among the defined enum values|is not a valid"):
        with transaction(session_factory(engine)) as s:
            s.add(Campaign(name="x", mode="telepathic"))  # type: ignore[arg-type]

"""Scheduling callbacks (outbound/callbacks.py) on SQLite and the real local PostgreSQL,
with the dial queue on the real local Redis (db 12): on my call (during it, after hang-up,
until marked done) and on my open preview record; one pending callback per interaction
(again: edited); another agent's call / preview / callback refused with nothing changed;
an invalid schedule blocks mark done until fixed or cancelled; cancel puts the contact
back as if there had been no callback; the DST rule end to end; admin list / show /
cancel, also through the `outbound callbacks` CLI.

The AMI bridge's part (answer, connect, hang-up) is played by outbound.campaigns.attempts
`advance` / `settle`, which is what the bridge calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from outbound import callbacks as cb
from outbound.campaigns.attempts import create_attempt, settle
from outbound.campaigns.interaction import IllegalInteraction, NotAllowed, mark_done
from outbound.campaigns.preview import decline, dial, get_record
from outbound.cli import main as cli
from outbound.compliance import NotDialable, why
from outbound.errors import Conflict, Invalid, NotFound
from outbound.model import (
    Agent,
    CallAttempt,
    Callback,
    CallbackState,
    CallResult,
    CaseEvent,
    Contact,
    ContactState,
    DialMode,
    PhoneNumber,
    PhoneType,
    transaction,
    utcnow,
)
from tests.helpers.redis_url import redis_url
from tests.integration.interaction.world import CALLER_IDS, World, connect, make, preview_and_dial

REDIS_URL = redis_url(12)


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def w(factory: sessionmaker[Session], r: redis.Redis) -> Iterator[World]:
    """A preview campaign with required disposition codes ("call_again" retries)."""
    yield from make(
        factory,
        r,
        DialMode.PREVIEW,
        caller_ids=CALLER_IDS,
        disposition_codes=["sale", "call_again"],
        disposition_required=True,
        treatments={"call_again": {"action": "retry", "delay_min": 30}},
    )


@pytest.fixture
def prog(factory: sessionmaker[Session], r: redis.Redis) -> Iterator[World]:
    yield from make(factory, r, DialMode.PROGRESSIVE)


def agent_in(w: World, tz: str = "Europe/Berlin") -> str:
    agent = w.agent()
    with transaction(w.factory) as s:
        a = s.get(Agent, agent)
        assert a is not None
        a.timezone = tz
    return agent


def local(at: datetime, tz: str = "Europe/Berlin") -> str:
    """`at` as an agent in `tz` types it."""
    return at.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")


def tomorrow() -> str:
    return local(utcnow() + timedelta(days=1))


def rows(w: World) -> dict[str, Any]:
    """Everything a callback action could change."""
    with w.factory() as s:
        return {
            "callbacks": [
                (c.id, c.state, c.due_at, c.personal, c.agent_id, c.new_number, c.window_start)
                for c in s.scalars(select(Callback).order_by(Callback.id))
            ],
            "contacts": [
                (c.id, c.state, c.next_at) for c in s.scalars(select(Contact).order_by(Contact.id))
            ],
            "attempts": [
                (a.id, a.disposition, dict(a.audit)) for a in s.scalars(select(CallAttempt))
            ],
            "events": s.scalar(select(func.count()).select_from(CaseEvent)),
        }


def events(w: World, kind: str) -> list[CaseEvent]:
    with w.factory() as s:
        return list(s.scalars(select(CaseEvent).where(CaseEvent.kind == kind)))


def on_call(w: World, agent: str, end: bool = False) -> tuple[int, str]:
    w.fill()
    cid, attempt = preview_and_dial(w, agent)
    connect(w.factory, attempt, end=end)
    return cid, attempt


# ---------------------------------------------------------------- on a call
def test_given_my_connected_call_when_scheduling_then_the_contact_waits_for_it(w: World) -> None:
    agent = agent_in(w)
    cid, attempt = on_call(w, agent)
    when = tomorrow()
    out = cb.schedule(w.factory, agent, attempt_id=attempt, when=when, personal=True)
    assert out["replaced"] is False and out["notes"] == []
    got = out["callback"]
    assert (got["state"], got["personal"], got["agent_id"], got["created_by"]) == (
        "pending",
        True,
        agent,
        agent,
    )
    assert got["number"] == "+4930100001" and got["attempt_id"] == attempt
    row = w.row(Callback, got["id"])
    assert local(row.due_at) == when  # entered on the agent's (Berlin) clock
    with w.factory() as s:
        pn = s.scalar(select(PhoneNumber).where(PhoneNumber.contact_id == cid))
        assert pn is not None and row.phone_number_id == pn.id
    assert w.row(Contact, cid).state is ContactState.CALLBACK
    (ev,) = events(w, "callback_scheduled")
    assert ev.data["callback_id"] == got["id"] and ev.attempt_id == attempt
    assert ev.text.startswith("Callback scheduled: ") and "personal" in ev.text
    # The call ends and is marked done: the callback holds the record, whatever the code's
    # treatment would have done (call_again: retry in 30 minutes).
    with transaction(w.factory) as s:
        settle(s, attempt, CallResult.ANSWERED)
    assert w.row(Contact, cid).state is ContactState.CALLBACK
    mark_done(w.factory, attempt, agent, "call_again")
    assert w.row(Contact, cid).state is ContactState.CALLBACK
    with w.factory() as s:
        verdict = why(s, cid, utcnow())
        assert not verdict.allowed and "callback" in {x.name for x in verdict.failed}
        assert verdict.next_dialable_at is not None and verdict.next_dialable_at >= row.due_at
    # Marked done: closed. Nothing can change it any more.
    before = rows(w)
    with pytest.raises(Conflict, match="already marked done"):
        cb.schedule(w.factory, agent, attempt_id=attempt, when=tomorrow(), personal=False)
    with pytest.raises(Conflict, match="already marked done"):
        cb.edit(w.factory, agent, got["id"], when=tomorrow(), personal=False)
    with pytest.raises(Conflict, match="already marked done"):
        cb.cancel(w.factory, agent, got["id"])
    assert rows(w) == before


def test_given_a_callback_when_scheduled_again_then_the_same_one_is_edited(w: World) -> None:
    agent = agent_in(w)
    _, attempt = on_call(w, agent, end=True)  # after hang-up, in wrap-up
    first = cb.schedule(w.factory, agent, attempt_id=attempt, when=tomorrow(), personal=True)
    later = local(utcnow() + timedelta(days=2))
    again = cb.schedule(w.factory, agent, attempt_id=attempt, when=later, personal=False)
    assert again["replaced"] is True and again["callback"]["id"] == first["callback"]["id"]
    with w.factory() as s:
        (row,) = s.scalars(select(Callback)).all()
    assert (row.personal, row.agent_id, local(row.due_at)) == (False, None, later)
    edited = cb.edit(
        w.factory,
        agent,
        row.id,
        when=tomorrow(),
        personal=True,
        new_number="030 55512345",
        new_number_type="work",
    )
    assert edited["callback"]["id"] == row.id and edited["callback"]["number"] == "+493055512345"
    row = w.row(Callback, row.id)
    assert (row.new_number, row.new_number_type, row.phone_number_id) == (
        "+493055512345",
        PhoneType.WORK,
        None,
    )
    kinds = [e.data["replaced"] for e in events(w, "callback_scheduled")]
    assert sorted(kinds) == [False, True, True]


def test_given_another_agents_call_or_callback_then_refused_and_nothing_changed(
    w: World,
) -> None:
    a, b = agent_in(w), agent_in(w)
    _, attempt = on_call(w, a, end=True)
    mine = cb.schedule(w.factory, a, attempt_id=attempt, when=tomorrow(), personal=True)
    cid = mine["callback"]["id"]
    before = rows(w)
    with pytest.raises(NotAllowed, match="not agent .*'s interaction"):
        cb.schedule(w.factory, b, attempt_id=attempt, when=tomorrow(), personal=True)
    with pytest.raises(NotAllowed, match="only its creator"):
        cb.edit(w.factory, b, cid, when=tomorrow(), personal=False)
    with pytest.raises(NotAllowed, match="only its creator"):
        cb.cancel(w.factory, b, cid)
    with pytest.raises(NotAllowed):
        cb.discard(w.factory, b, attempt_id=attempt)
    # B's bad input on A's call is refused as not B's: it blocks nothing of A's.
    with pytest.raises(NotAllowed):
        cb.schedule(w.factory, b, attempt_id=attempt, when="1999-01-01 10:00", personal=True)
    with pytest.raises(NotFound, match="no callback 999999"):
        cb.cancel(w.factory, a, 999999)
    assert rows(w) == before


@pytest.mark.parametrize(
    ("fields", "msg"),
    [
        ({"when": "2020-01-01 10:00"}, "a callback in the past"),
        ({"when": "tomorrow 10:00"}, "date and time must be YYYY-MM-DD HH:MM"),
        ({"new_number": "12345", "new_number_type": "home"}, "not a valid phone number"),
        ({"new_number": "+493055512345"}, "give the new number's type"),
        ({"number": "+493099999999"}, "is not one of the contact's numbers"),
        ({"window_from": "18:00", "window_to": "09:00"}, "needs From before To"),
    ],
)
def test_given_invalid_input_then_mark_done_is_blocked_until_fixed(
    w: World, fields: dict[str, Any], msg: str
) -> None:
    agent = agent_in(w)
    cid, attempt = on_call(w, agent, end=True)
    args = {"when": tomorrow(), "personal": True, **fields}
    before = rows(w)
    with pytest.raises(Invalid, match=msg):
        cb.schedule(w.factory, agent, attempt_id=attempt, **args)
    audit = w.row(CallAttempt, attempt).audit
    assert msg in audit["callback_error"]
    after = rows(w)
    assert after["callbacks"] == before["callbacks"] and after["contacts"] == before["contacts"]
    blocked = rows(w)
    with pytest.raises(IllegalInteraction, match=f"fix or cancel the callback first: .*{msg}"):
        mark_done(w.factory, attempt, agent, "sale")
    assert rows(w) == blocked
    # Fixed: the error is gone and the call can be closed, the contact waits for it.
    cb.schedule(w.factory, agent, attempt_id=attempt, when=tomorrow(), personal=True)
    assert "callback_error" not in w.row(CallAttempt, attempt).audit
    mark_done(w.factory, attempt, agent, "sale")
    assert w.row(Contact, cid).state is ContactState.CALLBACK


def test_given_a_valid_callback_then_an_invalid_edit_blocks_until_cancelled(w: World) -> None:
    agent = agent_in(w)
    cid, attempt = on_call(w, agent, end=True)
    made = cb.schedule(w.factory, agent, attempt_id=attempt, when=tomorrow(), personal=True)
    with pytest.raises(Invalid, match="a callback in the past"):
        cb.edit(w.factory, agent, made["callback"]["id"], when="2020-01-01 10:00", personal=True)
    assert w.row(Callback, made["callback"]["id"]).state is CallbackState.PENDING  # unchanged
    with pytest.raises(IllegalInteraction, match="fix or cancel the callback first"):
        mark_done(w.factory, attempt, agent, "sale")
    out = cb.cancel(w.factory, agent, made["callback"]["id"])
    assert out["callback"]["state"] == "cancelled"
    assert "callback_error" not in w.row(CallAttempt, attempt).audit
    # as if there had been no callback: answered is final
    assert w.row(Contact, cid).state is ContactState.DONE
    (ev,) = events(w, "callback_cancelled")
    assert ev.data["callback_id"] == made["callback"]["id"]
    mark_done(w.factory, attempt, agent, "sale")
    with pytest.raises(Conflict, match="cancelled: it can no longer be changed"):
        cb.cancel(w.factory, agent, made["callback"]["id"])


def test_given_only_an_invalid_try_when_unchecked_then_mark_done_is_free(w: World) -> None:
    agent = agent_in(w)
    _, attempt = on_call(w, agent, end=True)
    with pytest.raises(Invalid):
        cb.schedule(w.factory, agent, attempt_id=attempt, when="2020-01-01 10:00", personal=True)
    out = cb.discard(w.factory, agent, attempt_id=attempt)
    assert out == {
        "cancelled": None,
        "error_cleared": True,
        "attempt_id": attempt,
        "offer_id": None,
    }
    assert mark_done(w.factory, attempt, agent, "sale")["state"] == "done"


def test_given_a_cancelled_callback_then_the_results_treatment_applies_again(
    prog: World,
) -> None:
    agent = agent_in(prog)
    cid = prog.contacts[0]
    with transaction(prog.factory) as s:
        attempt = create_attempt(s, cid, agent_id=agent).id
    # during the call: cancelled, the contact is back in its call
    made = cb.schedule(prog.factory, agent, attempt_id=attempt, when=tomorrow(), personal=False)
    assert prog.row(Contact, cid).state is ContactState.CALLBACK
    cb.cancel(prog.factory, agent, made["callback"]["id"])
    assert prog.row(Contact, cid).state is ContactState.IN_PROGRESS
    # busy: retry in 10 minutes; a callback holds it, a cancel gives the retry back
    with transaction(prog.factory) as s:
        settle(s, attempt, CallResult.BUSY)
    plain = prog.row(Contact, cid)
    assert plain.state is ContactState.READY and plain.next_at is not None
    made = cb.schedule(prog.factory, agent, attempt_id=attempt, when=tomorrow(), personal=False)
    assert prog.row(Contact, cid).state is ContactState.CALLBACK
    cb.cancel(prog.factory, agent, made["callback"]["id"])
    again = prog.row(Contact, cid)
    assert (again.state, again.next_at) == (ContactState.READY, plain.next_at)


# ---------------------------------------------------------------- on a preview
def test_given_my_open_preview_then_a_callback_postpones_it_until_closed(w: World) -> None:
    w.fill()
    agent = agent_in(w)
    got = get_record(w.factory, w.queue, agent, w.campaign_id)
    oid, cid = got["offer_id"], got["contact_id"]
    made = cb.schedule(w.factory, agent, offer_id=oid, when=tomorrow(), personal=True)
    assert made["callback"]["attempt_id"] is None and made["offer_id"] == oid
    assert w.row(Contact, cid).state is ContactState.CALLBACK
    # the record is postponed: it cannot be dialed before the callback is due
    with pytest.raises(NotDialable, match="callback"):
        dial(w.factory, w.queue, oid, agent, CALLER_IDS[0])
    again = cb.schedule(w.factory, agent, offer_id=oid, when=tomorrow(), personal=False)
    assert again["replaced"] and again["callback"]["id"] == made["callback"]["id"]
    other = agent_in(w)
    with pytest.raises(NotAllowed):
        cb.schedule(w.factory, other, offer_id=oid, when=tomorrow(), personal=True)
    with w.factory() as s:
        assert cb.show(s, made["callback"]["id"])["offer_id"] == oid
    decline(w.factory, w.queue, oid, agent, "later")  # closes the preview
    before = rows(w)
    with pytest.raises(Conflict, match="preview record .* is closed"):
        cb.cancel(w.factory, agent, made["callback"]["id"])
    with pytest.raises(Conflict, match="is closed"):
        cb.edit(w.factory, agent, made["callback"]["id"], when=tomorrow(), personal=True)
    assert rows(w) == before
    assert w.row(Contact, cid).state is ContactState.CALLBACK


def test_given_my_open_preview_when_cancelled_then_the_record_is_ready_again(w: World) -> None:
    w.fill()
    agent = agent_in(w)
    got = get_record(w.factory, w.queue, agent, w.campaign_id)
    made = cb.schedule(w.factory, agent, offer_id=got["offer_id"], when=tomorrow(), personal=True)
    cb.cancel(w.factory, agent, made["callback"]["id"])
    assert w.row(Contact, got["contact_id"]).state is ContactState.READY
    assert dial(w.factory, w.queue, got["offer_id"], agent, CALLER_IDS[0])["attempt_id"]


# ---------------------------------------------------------------- window, DST
def test_given_a_new_number_and_window_then_checked_on_the_contacts_clock(w: World) -> None:
    agent = agent_in(w, "Europe/Berlin")
    cid, attempt = on_call(w, agent, end=True)
    with transaction(w.factory) as s:
        c = s.get(Contact, cid)
        assert c is not None
        c.timezone = "America/New_York"
    # tomorrow 18:00 in Berlin is 12:00 in New York (both on summer or both on winter
    # time, except in the weeks between the two switches: then it is 11:00 or 13:00)
    day = (utcnow() + timedelta(days=1)).astimezone(ZoneInfo("Europe/Berlin")).date()
    when = f"{day} 18:00"
    ny = (
        datetime.fromisoformat(when)
        .replace(tzinfo=ZoneInfo("Europe/Berlin"))
        .astimezone(ZoneInfo("America/New_York"))
    )
    inside = (f"{ny.hour:02d}:00", f"{ny.hour + 1:02d}:00")
    outside = ("14:00", "17:00")
    with pytest.raises(Invalid, match="on the contact's clock \\(America/New_York\\), outside"):
        cb.schedule(
            w.factory,
            agent,
            attempt_id=attempt,
            when=when,
            personal=False,
            new_number="+1 212 736 5000",
            new_number_type="work",
            window_from=outside[0],
            window_to=outside[1],
        )
    out = cb.schedule(
        w.factory,
        agent,
        attempt_id=attempt,
        when=when,
        personal=False,
        new_number="+1 212 736 5000",
        new_number_type="work",
        window_from=inside[0],
        window_to=inside[1],
    )
    assert out["callback"]["window"] == f"{inside[0]}-{inside[1]}"
    assert out["callback"]["number"] == "+12127365000"
    assert out["callback"]["number_type"] == "work"


def _next_last_sunday_of_march(after: datetime) -> str:
    year = after.year if after.month < 3 else after.year + 1
    day = datetime(year, 3, 31)
    while day.weekday() != 6:
        day -= timedelta(days=1)
    return f"{day:%Y-%m-%d}"


def test_given_a_time_in_the_spring_gap_then_stored_moved_forward_and_said_so(
    w: World,
) -> None:
    agent = agent_in(w, "Europe/Berlin")
    _, attempt = on_call(w, agent, end=True)
    now = utcnow()
    sunday = _next_last_sunday_of_march(now)
    if datetime.fromisoformat(sunday).replace(tzinfo=UTC) - now > timedelta(days=360):
        now = datetime.fromisoformat(sunday).replace(tzinfo=UTC) - timedelta(days=30)
    out = cb.schedule(
        w.factory, agent, attempt_id=attempt, when=f"{sunday} 02:30", personal=True, now=now
    )
    (note,) = out["notes"]
    assert note.startswith("adjusted:") and "03:30 CEST" in note
    row = w.row(Callback, out["callback"]["id"])
    assert row.due_at == datetime.fromisoformat(f"{sunday}T01:30").replace(tzinfo=UTC)
    (ev,) = events(w, "callback_scheduled")
    assert ev.data["note"] == note


# ---------------------------------------------------------------- admin and CLI
def _invoke(db_url: str, *args: str) -> Any:
    res = CliRunner().invoke(cli, ["--set", f"database.url={db_url}", "callbacks", *args])
    return res


def test_given_callbacks_then_admin_lists_shows_and_cancels_them(w: World, db_url: str) -> None:
    agent = agent_in(w)
    cid, attempt = on_call(w, agent, end=True)
    made = cb.schedule(w.factory, agent, attempt_id=attempt, when=tomorrow(), personal=True)
    mark_done(w.factory, attempt, agent, "sale")
    kid = made["callback"]["id"]
    with w.factory() as s:
        assert [x["id"] for x in cb.list_callbacks(s, w.campaign_id, "pending")] == [kid]
        assert cb.list_callbacks(s, w.campaign_id, "queued") == []
        assert cb.list_callbacks(s, due_before=utcnow()) == []
        with pytest.raises(Invalid, match="unknown callback state 'soon'"):
            cb.list_callbacks(s, state="soon")
        with pytest.raises(NotFound, match="no campaign named 'nope'"):
            cb.list_callbacks(s, "nope")
    listed = _invoke(db_url, "list", "--campaign", str(w.campaign_id), "--json")
    assert listed.exit_code == 0, listed.output
    assert [x["id"] for x in json.loads(listed.output)] == [kid]
    soon = _invoke(db_url, "list", "--due-before", "2020-01-01T00:00", "--json")
    assert soon.exit_code == 0 and json.loads(soon.output) == []
    bad = _invoke(db_url, "list", "--due-before", "someday")
    assert bad.exit_code != 0 and "not an ISO date-time" in bad.output
    shown = _invoke(db_url, "show", str(kid), "--json")
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.output)
    assert doc["state"] == "pending" and doc["history"][0]["agent_id"] == agent
    cancelled = _invoke(db_url, "cancel", str(kid), "--reason", "customer wrote in")
    assert cancelled.exit_code == 0, cancelled.output
    assert w.row(Callback, kid).state is CallbackState.CANCELLED
    assert w.row(Contact, cid).state is ContactState.DONE  # answered: final, as without it
    (ev,) = events(w, "callback_cancelled")
    assert ev.text == "Callback cancelled: customer wrote in"
    twice = _invoke(db_url, "cancel", str(kid))
    assert twice.exit_code == 1 and "only pending or queued" in twice.output
    missing = _invoke(db_url, "show", "999999")
    assert missing.exit_code == 1 and "no callback 999999" in missing.output


def test_given_a_queued_callback_then_admin_cancel_takes_it(w: World) -> None:
    agent = agent_in(w)
    _, attempt = on_call(w, agent, end=True)
    made = cb.schedule(w.factory, agent, attempt_id=attempt, when=tomorrow(), personal=True)
    with transaction(w.factory) as s:
        row = s.get(Callback, made["callback"]["id"])
        assert row is not None
        row.state = CallbackState.QUEUED  # what the scheduler does when it is due
    with pytest.raises(Invalid, match="one line"):
        cb.admin_cancel(w.factory, row.id, "a\r\nb")
    assert cb.admin_cancel(w.factory, row.id, "")["state"] == "cancelled"
    with w.factory() as s:
        assert cb.my_callbacks(s, agent) == []


def test_given_a_contact_then_the_admin_schedules_a_callback_from_the_cli(
    w: World, db_url: str
) -> None:
    agent = agent_in(w)
    contact = w.contacts[0]
    when = tomorrow()
    # Bad input first: each refused with its reason, nothing written.
    past = _invoke(db_url, "schedule", str(contact), "--at", "2020-01-01 10:00", "--tz", "UTC")
    assert past.exit_code != 0 and "in the past" in past.output
    stranger = _invoke(db_url, "schedule", str(contact), "--at", when, "--agent", "nobody")
    assert stranger.exit_code != 0 and "not a member" in stranger.output
    bad_number = _invoke(
        db_url, "schedule", str(contact), "--at", when, "--new-number", "12", "--type", "mobile"
    )
    assert bad_number.exit_code != 0 and "number" in bad_number.output
    with w.factory() as s:
        assert cb.list_callbacks(s, w.campaign_id) == []
    # Then a personal one to a new mobile number with a window: pending, the contact waits.
    ok = _invoke(
        db_url,
        "schedule",
        str(contact),
        "--at",
        when,
        "--agent",
        agent,
        "--new-number",
        "+491701234567",
        "--type",
        "mobile",
        "--from",
        "00:00",
        "--to",
        "23:59",
        "--json",
    )
    assert ok.exit_code == 0, ok.output
    made = json.loads(ok.output)["callback"]
    assert (made["state"], made["personal"], made["agent_id"]) == ("pending", True, agent)
    assert made["number"] == "+491701234567" and made["window"]
    assert w.row(Contact, contact).state is ContactState.CALLBACK
    # A second one for the same contact: refused (edit or cancel the first).
    again = _invoke(db_url, "schedule", str(contact), "--at", when)
    assert again.exit_code != 0 and "already waits for callback" in again.output

"""The callback endpoints on the real app, database (SQLite and PostgreSQL) and Redis:
schedule on my preview or call, my pending callbacks, edit, cancel, uncheck; each
endpoint's errors (422 with the core's message, e.g. "a callback in the past"; 404; 409
once the interaction is closed; 403 without the CSRF header); a standing invalid callback
blocks mark done (409) until unchecked; agent B cannot touch agent A's callback, call or
preview (403, nothing changed)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select

from outbound.model import CallAttempt, Callback, CallbackState, Contact, ContactState, utcnow
from tests.helpers.world import World

from .conftest import Person, Site, agent_with_password


def when(days: int = 1) -> dict[str, str]:
    """A date and time `days` ahead on the agents' clock (UTC, the default zone)."""
    at = utcnow() + timedelta(days=days)
    return {"date": f"{at:%Y-%m-%d}", "time": f"{at:%H:%M}"}


async def put(p: Person, path: str, body: Any, csrf: str | None = None) -> httpx.Response:
    return await p.client.put(
        path, json=body, headers={"X-CSRF-Token": p.csrf if csrf is None else csrf}
    )


async def record(p: Person, w: World) -> dict[str, Any]:
    resp = await p.post(f"/api/campaigns/{w.campaign_id}/record")
    assert resp.status_code == 200 and resp.json()["status"] == "record", resp.text
    return dict(resp.json())


async def ended_call(p: Person, w: World) -> str:
    """My call that ended unanswered (no bridge here: the dial is cancelled), not yet
    marked done: still my open interaction."""
    got = await record(p, w)
    assert (await p.post(f"/api/offers/{got['offer_id']}/dial", {})).status_code == 504
    with w.factory() as s:
        (a,) = s.scalars(select(CallAttempt).where(CallAttempt.agent_id == p.agent_id)).all()
        return a.id


def snapshot(w: World) -> list[Any]:
    with w.factory() as s:
        return [
            [(c.id, c.state, c.due_at, c.personal) for c in s.scalars(select(Callback))],
            [(c.id, c.state) for c in s.scalars(select(Contact).order_by(Contact.id))],
            [(a.id, a.disposition, dict(a.audit)) for a in s.scalars(select(CallAttempt))],
        ]


async def test_given_my_preview_then_schedule_list_edit_and_cancel(site: Site) -> None:
    w = site.w
    p = await site.login(agent_with_password(w))
    got = await record(p, w)
    made = await p.post("/api/callbacks", {"offer_id": got["offer_id"], **when(), "personal": True})
    assert made.status_code == 200, made.text
    kid = made.json()["callback"]["id"]
    assert made.json()["offer_id"] == got["offer_id"] and made.json()["replaced"] is False
    assert w.row(Contact, got["contact_id"]).state is ContactState.CALLBACK
    mine = (await p.get("/api/callbacks")).json()["callbacks"]
    assert [(c["id"], c["personal"], c["state"]) for c in mine] == [(kid, True, "pending")]
    assert mine[0]["due_local"].endswith("UTC")
    edited = await put(p, f"/api/callbacks/{kid}", {**when(2), "personal": False})
    assert edited.status_code == 200, edited.text
    assert edited.json()["replaced"] is True and edited.json()["callback"]["id"] == kid
    assert w.row(Callback, kid).personal is False
    gone = await p.delete(f"/api/callbacks/{kid}")
    assert gone.status_code == 200 and gone.json()["callback"]["state"] == "cancelled"
    assert w.row(Contact, got["contact_id"]).state is ContactState.READY
    assert (await p.get("/api/callbacks")).json()["callbacks"] == []
    again = await p.delete(f"/api/callbacks/{kid}")
    assert again.status_code == 409 and "cancelled" in again.json()["error"]


async def test_given_a_callback_in_the_past_then_422_and_mark_done_is_blocked(
    site: Site,
) -> None:
    w = site.w
    p = await site.login(agent_with_password(w))
    aid = await ended_call(p, w)
    past = await p.post(
        "/api/callbacks",
        {"attempt_id": aid, "date": "2020-01-01", "time": "10:00", "personal": True},
    )
    assert past.status_code == 422 and past.json()["error"].startswith("a callback in the past")
    done = await p.post(f"/api/calls/{aid}/done", {})
    assert done.status_code == 409
    assert done.json()["error"].startswith("fix or cancel the callback first: a callback in the")
    assert w.row(CallAttempt, aid).disposition is None
    cleared = await p.delete(f"/api/callbacks?attempt_id={aid}")
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["error_cleared"] is True and cleared.json()["cancelled"] is None
    assert (await p.post(f"/api/calls/{aid}/done", {})).status_code == 200
    # closed: no callback on it any more
    late = await p.post("/api/callbacks", {"attempt_id": aid, **when(), "personal": True})
    assert late.status_code == 409 and "already marked done" in late.json()["error"]


async def test_given_my_call_then_a_valid_callback_keeps_the_contact_after_done(
    site: Site,
) -> None:
    w = site.w
    p = await site.login(agent_with_password(w))
    aid = await ended_call(p, w)
    made = await p.post(
        "/api/callbacks",
        {
            "attempt_id": aid,
            **when(),
            "personal": False,
            "new_number": "030 55512345",
            "new_number_type": "mobile",
        },
    )
    assert made.status_code == 200, made.text
    assert made.json()["callback"]["number"] == "+493055512345"
    assert (await p.post(f"/api/calls/{aid}/done", {})).status_code == 200
    cid = w.row(CallAttempt, aid).contact_id
    assert w.row(Contact, cid).state is ContactState.CALLBACK
    kid = made.json()["callback"]["id"]
    closed = await put(p, f"/api/callbacks/{kid}", {**when(), "personal": True})
    assert closed.status_code == 409 and "already marked done" in closed.json()["error"]
    assert w.row(Callback, kid).state is CallbackState.PENDING


async def test_given_agent_a_callback_then_agent_b_gets_403_and_nothing_changes(
    site: Site,
) -> None:
    w = site.w
    a = await site.login(agent_with_password(w))
    b = await site.login(agent_with_password(w))
    aid = await ended_call(a, w)
    made = await a.post("/api/callbacks", {"attempt_id": aid, **when(), "personal": True})
    assert made.status_code == 200, made.text
    kid = made.json()["callback"]["id"]
    got = await record(a, w)  # A also previews the next record (Bert)
    before = snapshot(w)
    for resp in (
        await b.post("/api/callbacks", {"attempt_id": aid, **when(), "personal": True}),
        await b.post("/api/callbacks", {"offer_id": got["offer_id"], **when(), "personal": True}),
        await put(b, f"/api/callbacks/{kid}", {**when(2), "personal": False}),
        await b.delete(f"/api/callbacks/{kid}"),
        await b.delete(f"/api/callbacks?attempt_id={aid}"),
        await b.delete(f"/api/callbacks?offer_id={got['offer_id']}"),
    ):
        assert resp.status_code == 403, resp.text
        assert "agent" in resp.json()["error"]
    assert snapshot(w) == before
    assert (await b.get("/api/callbacks")).json()["callbacks"] == []
    assert [c["id"] for c in (await a.get("/api/callbacks")).json()["callbacks"]] == [kid]


async def test_given_bad_input_then_422_with_the_reason_and_nothing_changed(site: Site) -> None:
    w = site.w
    p = await site.login(agent_with_password(w))
    got = await record(p, w)
    oid = got["offer_id"]
    base = {"offer_id": oid, **when(), "personal": True}
    before = snapshot(w)
    cases: list[tuple[dict[str, Any], str]] = [
        ({**base, "date": "2020-01-01"}, "a callback in the past"),
        ({**base, "date": "01.06.2026"}, "date and time must be YYYY-MM-DD HH:MM"),
        ({**base, "time": "25:00"}, "no such date or time"),
        ({**base, "new_number": "12", "new_number_type": "home"}, "not a valid phone number"),
        ({**base, "new_number": "+493055512345"}, "give the new number's type"),
        ({**base, "new_number_type": "fax"}, "new_number_type must be one of"),
        ({**base, "number": "+493099999999"}, "is not one of the contact's numbers"),
        ({**base, "number": "+4930\r\nAction: Hangup"}, "must not contain CR, LF or NUL"),
        ({**base, "window_from": "18:00", "window_to": "09:00"}, "needs From before To"),
        ({**base, "window_from": "09:00"}, "needs both From and To"),
        ({**base, "personal": "yes"}, "personal must be true or false"),
        ({k: v for k, v in base.items() if k != "date"}, "date is required"),
        ({**base, "attempt_id": "a1"}, "either attempt_id (a call) or offer_id"),
        ({k: v for k, v in base.items() if k != "offer_id"}, "either attempt_id"),
        ({**base, "when": "now"}, "unknown field(s): when"),
    ]
    for body, msg in cases:
        resp = await p.post("/api/callbacks", body)
        assert resp.status_code == 422, (body, resp.text)
        assert msg in resp.json()["error"], (msg, resp.json())
    bad_put = await put(p, "/api/callbacks/1", {"date": "x"})
    assert bad_put.status_code == 422 and "time is required" in bad_put.json()["error"]
    assert (await p.delete("/api/callbacks/abc")).status_code == 422
    assert (await p.delete("/api/callbacks?attempt_id=x%0Ay")).status_code == 422
    assert snapshot(w) == before


async def test_given_what_does_not_exist_then_404_and_without_csrf_403(site: Site) -> None:
    w = site.w
    p = await site.login(agent_with_password(w))
    body = {**when(), "personal": True}
    for resp in (
        await p.post("/api/callbacks", {"offer_id": 999999, **body}),
        await p.post("/api/callbacks", {"offer_id": 99999999999, **body}),
        await p.post("/api/callbacks", {"attempt_id": "0000-none", **body}),
        await put(p, "/api/callbacks/999999", body),
        await p.delete("/api/callbacks/9999999999"),
        await p.delete("/api/callbacks?offer_id=999999"),
    ):
        assert resp.status_code == 404, resp.text
        assert "error" in resp.json()
    got = await record(p, w)
    before = snapshot(w)
    no_csrf = await p.post("/api/callbacks", {"offer_id": got["offer_id"], **body}, csrf="")
    assert no_csrf.status_code == 403 and "X-CSRF-Token" in no_csrf.json()["error"]
    assert (await put(p, "/api/callbacks/1", body, csrf="wrong")).status_code == 403
    anon = await site.browser().get("/api/callbacks")
    assert anon.status_code == 401
    assert snapshot(w) == before

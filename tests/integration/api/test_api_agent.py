"""The agent's endpoints on the real app, database (SQLite and PostgreSQL) and Redis:
me, my campaigns, Ready on the preview channel, get record, decline (later: back on top
of the queue; do not call), the current interaction, an agent acting on another's offer
or call (403, nothing changed), 404 / 409 / 422, a dial the bridge does not take."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from outbound import live
from outbound.errors import Conflict
from outbound.model import AttemptState, CallAttempt, CallResult, Contact, ContactState, DncEntry
from outbound.model.tables import Offer, OfferState
from tests.helpers.world import World

from .conftest import Person, Site, agent_with_password


async def _record(p: Person, w: World) -> dict[str, Any]:
    resp = await p.post(f"/api/campaigns/{w.campaign_id}/record")
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "record"
    return dict(resp.json())


def _snapshot(w: World) -> dict[str, Any]:
    with w.factory() as s:
        return {
            "offers": [(o.id, o.state, o.agent_id, o.attempt_id) for o in s.scalars(select(Offer))],
            "attempts": [(a.id, a.state, a.disposition) for a in s.scalars(select(CallAttempt))],
            "contacts": [(c.id, c.state) for c in s.scalars(select(Contact).order_by(Contact.id))],
            "dnc": s.scalar(select(func.count()).select_from(DncEntry)),
            "queue": [(e.contact_id, e.section) for e in w.queue.peek(10)],
            "leases": {c: w.queue.lease_of(c) for c in w.contacts},
        }


async def test_given_an_agent_then_me_and_my_campaigns(site: Site) -> None:
    w = site.w
    p = await site.login(agent_with_password(w))
    me = (await p.get("/api/me")).json()
    assert me["agent"]["id"] == p.agent_id
    assert me["live"]["session"] == "up" and me["live"]["ready_voice"] is True
    mine = (await p.get("/api/campaigns")).json()["campaigns"]
    assert [(c["id"], c["status"], c["delivery_mode"]) for c in mine] == [
        (w.campaign_id, "running", "manual")
    ]
    assert set(mine[0]) >= {"name", "description"}
    outsider = await site.login(agent_with_password(w, member=False))
    assert (await outsider.get("/api/campaigns")).json()["campaigns"] == []
    refused = await outsider.post(f"/api/campaigns/{w.campaign_id}/record")
    assert refused.status_code == 403 and "not a member" in refused.json()["error"]


async def test_given_a_record_when_declined_later_then_it_is_back_on_top(site: Site) -> None:
    w = site.w
    p = await site.login(agent_with_password(w))
    got = await _record(p, w)
    assert got["contact_id"] == w.contacts[0]
    assert got["case"]["origin"] == "Anna"
    assert w.queue.peek(1)[0].contact_id == w.contacts[1]  # Anna is leased to the agent
    ix = (await p.get("/api/interaction")).json()["interaction"]
    assert ix["kind"] == "offer" and ix["case"]["offer_id"] == got["offer_id"]
    assert ix["case"]["state"] == "previewing"

    resp = await p.post(f"/api/offers/{got['offer_id']}/decline", {"choice": "later"})
    assert resp.status_code == 200 and resp.json()["state"] == "declined"
    top = w.queue.peek(1)[0]
    assert (top.contact_id, top.section) == (w.contacts[0], "top")
    assert w.queue.lease_of(w.contacts[0]) is None
    assert w.row(Offer, got["offer_id"]).state is OfferState.CALL_LATER
    assert (await p.get("/api/interaction")).json()["interaction"] is None
    # Declined twice: a conflict, nothing changed.
    before = _snapshot(w)
    again = await p.post(f"/api/offers/{got['offer_id']}/decline", {"choice": "later"})
    assert again.status_code == 409 and "declined" in again.json()["error"]
    assert _snapshot(w) == before
    # The next "get record" shows the same record again.
    assert (await _record(p, w))["contact_id"] == w.contacts[0]


async def test_given_a_record_when_declined_do_not_call_then_it_leaves_the_list(
    site: Site,
) -> None:
    w = site.w
    p = await site.login(agent_with_password(w))
    got = await _record(p, w)
    resp = await p.post(f"/api/offers/{got['offer_id']}/decline", {"choice": "dnc"})
    assert resp.status_code == 200
    assert w.row(Contact, w.contacts[0]).state is ContactState.DNC
    with w.factory() as s:
        dnc = s.scalars(select(DncEntry)).all()
        assert [(d.campaign_id, d.source) for d in dnc] == [(w.campaign_id, "agent")]
    assert w.queue.locate(w.contacts[0]).section == "absent"
    assert [e.contact_id for e in w.queue.peek(10)] == [w.contacts[1]]


async def test_given_another_agents_offer_then_403_and_it_is_unchanged(site: Site) -> None:
    w = site.w
    a = await site.login(agent_with_password(w))
    b = await site.login(agent_with_password(w))
    got = await _record(a, w)
    before = _snapshot(w)
    for path, body in (
        (f"/api/offers/{got['offer_id']}/dial", {}),
        (f"/api/offers/{got['offer_id']}/decline", {"choice": "dnc"}),
        (f"/api/offers/{got['offer_id']}/accept", {}),
        (f"/api/offers/{got['offer_id']}/reject", None),
    ):
        resp = await b.post(path, body)
        assert resp.status_code == 403, (path, resp.text)
        assert "own" in resp.json()["error"] or "not agent" in resp.json()["error"]
    assert _snapshot(w) == before
    assert (await b.get("/api/interaction")).json()["interaction"] is None


async def test_given_another_agents_call_then_403_and_no_command_is_sent(
    site: Site, r: redis.Redis
) -> None:
    w = site.w
    a = await site.login(agent_with_password(w))
    b = await site.login(agent_with_password(w))
    got = await _record(a, w)
    # A's dial: written, then the bridge (absent here) does not answer in time.
    dialed = await a.post(f"/api/offers/{got['offer_id']}/dial", {})
    assert dialed.status_code == 504 and "no answer from the bridge" in dialed.json()["error"]
    (aid,) = (x[0] for x in _snapshot(w)["attempts"])
    stream = f"outbound:commands:{site.app.state.ctx.server}"
    sent = r.xlen(stream)
    before = _snapshot(w)
    for action, body in (
        ("end", None),
        ("hold", None),
        ("transfer", {"target": "2001"}),
        ("dtmf", {"digits": "1"}),
        ("consult_start", {"target": "2001"}),
        ("done", {}),
    ):
        resp = await b.post(f"/api/calls/{aid}/{action}", body)
        assert resp.status_code == 403, (action, resp.text)
    assert r.xlen(stream) == sent  # nothing reached the bridge
    assert _snapshot(w) == before


async def test_given_no_bridge_when_dialing_then_the_attempt_is_cancelled_and_can_be_done(
    site: Site,
) -> None:
    w = site.w
    p = await site.login(agent_with_password(w))
    got = await _record(p, w)
    resp = await p.post(f"/api/offers/{got['offer_id']}/dial", {})
    assert resp.status_code == 504
    with w.factory() as s:
        (a,) = s.scalars(select(CallAttempt)).all()
        assert (a.state, a.result) == (AttemptState.ENDED, CallResult.CANCELLED)
        assert a.agent_id == p.agent_id
    ix = (await p.get("/api/interaction")).json()["interaction"]
    assert ix["kind"] == "call" and ix["case"]["state"] == "not_connected"
    done = await p.post(f"/api/calls/{a.id}/done", {"stop": True})
    assert done.status_code == 200, done.text
    assert done.json()["stopped"] is True and done.json()["state"] == "done"
    assert w.row(CallAttempt, a.id).disposition == ""
    assert live.preview_stopped(w.r, p.agent_id)
    again = await p.post(f"/api/calls/{a.id}/done", {})
    assert again.status_code == 409 and "already marked done" in again.json()["error"]


async def test_given_bad_input_then_422_and_nothing_changed(site: Site) -> None:
    w = site.w
    p = await site.login(agent_with_password(w))
    got = await _record(p, w)
    oid = got["offer_id"]
    before = _snapshot(w)
    cases: list[tuple[str, Any]] = [
        (f"/api/offers/{oid}/decline", {"choice": "maybe"}),
        (f"/api/offers/{oid}/decline", {}),
        (f"/api/offers/{oid}/decline", {"choice": "later", "extra": 1}),
        (f"/api/offers/{oid}/decline", ["later"]),
        (f"/api/offers/{oid}/dial", {"caller_id": "+4930\r\nAction: Hangup"}),
        (f"/api/offers/{oid}/dial", {"caller_id": 4930}),
        ("/api/offers/abc/dial", {}),
        ("/api/calls/x%0Ay/end", None),
        ("/api/calls/a1/transfer", {"target": "2001\r\nChannel: x"}),
        ("/api/calls/a1/transfer", {}),
        ("/api/calls/a1/conference", {"target": "sip:evil"}),
        ("/api/calls/a1/dtmf", {"digits": "12\n"}),
        ("/api/calls/a1/dtmf", {"digits": "1" * 33}),
        ("/api/calls/a1/done", {"stop": "yes"}),
        ("/api/agent/ready", {"channel": "fax", "ready": True}),
        ("/api/agent/ready", {"channel": "voice", "ready": "1"}),
        ("/api/notifications/abc/ack", None),
    ]
    for path, body in cases:
        resp = await p.post(path, body)
        assert resp.status_code == 422, (path, body, resp.text)
        assert isinstance(resp.json()["error"], str)
    raw = await p.client.post(
        f"/api/offers/{oid}/decline",
        content=b"choice=later",
        headers={"X-CSRF-Token": p.csrf, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert raw.status_code == 422
    big = await p.post(f"/api/offers/{oid}/decline", {"choice": "x" * 20000})
    assert big.status_code == 413
    assert _snapshot(w) == before


async def test_given_what_does_not_exist_then_404(site: Site) -> None:
    p = await site.login(agent_with_password(site.w))
    for path, body in (
        ("/api/offers/999999/dial", {}),
        ("/api/offers/9999999999/decline", {"choice": "later"}),  # beyond any 32-bit id
        ("/api/calls/00000000-0000-0000-0000-000000000000/hold", None),
        ("/api/calls/00000000-0000-0000-0000-000000000000/done", {}),
        ("/api/campaigns/999999/record", None),
        ("/api/notifications/1-1/ack", None),
        ("/api/nothing/here", None),
    ):
        resp = await p.post(path, body)
        assert resp.status_code == 404, (path, resp.text)
        assert "error" in resp.json()


async def test_given_a_not_ready_agent_then_get_record_is_a_conflict(
    site: Site, r: redis.Redis
) -> None:
    w = site.w
    p = await site.login(agent_with_password(w))
    r.hset(live.agent_key(p.agent_id), mapping=live.agent_fields("up", ready=False))
    resp = await p.post(f"/api/campaigns/{w.campaign_id}/record")
    assert resp.status_code == 409 and "Ready" in resp.json()["error"]
    assert w.queue.lease_of(w.contacts[0]) is None


async def test_given_the_preview_channel_then_ready_only_with_a_phone_session(
    site: Site, r: redis.Redis
) -> None:
    p = await site.login(agent_with_password(site.w))
    key = live.agent_key(p.agent_id)
    r.hset(key, mapping=live.agent_fields("up", ready=False))
    on = await p.post("/api/agent/ready", {"channel": "preview", "ready": True})
    assert on.status_code == 200 and on.json() == {
        "agent_id": p.agent_id,
        "channel": "preview",
        "ready": True,
    }
    assert r.hget(key, "ready_preview") == b"1" and r.hget(key, "ready_voice") == b"0"
    assert (await p.get("/api/me")).json()["live"]["ready_preview"] is True
    r.hset(key, mapping=live.agent_fields("ended", ready=False))
    refused = await p.post("/api/agent/ready", {"channel": "preview", "ready": True})
    assert refused.status_code == 409 and "log in the phone" in refused.json()["error"]
    assert r.hget(key, "ready_preview") == b"0"
    # The voice channel is the bridge's: with no bridge, no answer in time.
    voice = await p.post("/api/agent/ready", {"channel": "voice", "ready": True})
    assert voice.status_code == 504
    assert r.hget(key, "ready_voice") == b"0"


async def test_given_a_pushed_record_then_only_its_agent_accepts_or_rejects_it(
    site: Site, r: redis.Redis
) -> None:
    from outbound.campaigns import push
    from outbound.model import Campaign, DialMode, transaction

    w = site.w
    with transaction(w.factory) as s:
        c = s.get(Campaign, w.campaign_id)
        assert c is not None
        c.mode = DialMode.PUSH_PREVIEW
    a = await site.login(agent_with_password(w))
    b = await site.login(agent_with_password(w))
    # "Get record" in a push preview campaign pushes the next record at once (it also
    # ends "done and stop"); the dialer's own push then finds the agent busy with it.
    pulled = await a.post(f"/api/campaigns/{w.campaign_id}/record")
    assert pulled.status_code == 200 and pulled.json()["status"] == "record", pulled.text
    oid = pulled.json()["offer_id"]
    with pytest.raises(Conflict, match="already has an open record"):
        push.push_offer(w.factory, w.queue, a.agent_id, w.campaign_id)
    assert (await b.post(f"/api/offers/{oid}/accept", {})).status_code == 403
    assert (await b.post(f"/api/offers/{oid}/reject")).status_code == 403
    acc = await a.post(f"/api/offers/{oid}/accept", {})
    assert acc.status_code == 200 and acc.json()["state"] == "accepted"
    assert acc.json()["case"]["contact"]["id"] == w.contacts[0]
    rej = await a.post(f"/api/offers/{oid}/reject")
    assert rej.status_code == 200 and rej.json()["state"] == "rejected"
    top = w.queue.peek(1)[0]
    assert (top.contact_id, top.section) == (w.contacts[0], "top")
    assert w.row(Offer, oid).state is OfferState.REJECTED
    assert (await a.post(f"/api/offers/{oid}/accept", {})).status_code == 409

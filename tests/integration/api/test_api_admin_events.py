"""Supervisor endpoints, notifications, server-sent events and the health check on the
real app, database (SQLite and PostgreSQL) and Redis."""

from __future__ import annotations

import json
from typing import Any

import redis

from outbound import names
from outbound.model import AgentRole, Campaign, CampaignState
from tests.helpers.world import World

from .conftest import Site, agent_with_password


def _id(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _sse(text: str) -> list[dict[str, Any]]:
    """The messages of an event stream (comments kept as {"comment": ...})."""
    out: list[dict[str, Any]] = []
    for block in text.split("\n\n"):
        msg: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                msg["comment"] = line[1:].strip()
            elif ": " in line:
                k, v = line.split(": ", 1)
                msg[k] = json.loads(v) if k == "data" else v
        if msg:
            out.append(msg)
    return out


def _stopped(w: World) -> None:
    from outbound.model import transaction

    with transaction(w.factory) as s:
        c = s.get(Campaign, w.campaign_id)
        assert c is not None
        c.state = CampaignState.STOPPED


async def test_given_a_supervisor_when_starting_a_campaign_then_members_are_notified(
    site: Site,
) -> None:
    w = site.w
    _stopped(w)
    boss = await site.login(agent_with_password(w, AgentRole.SUPERVISOR, member=False))
    a = await site.login(agent_with_password(w))
    name = f"c{w.campaign_id}"
    resp = await boss.post(f"/api/admin/campaigns/{name}/start")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["old"], body["new"]) == ("stopped", "running")
    assert a.agent_id in body["notified"]["delivered"]
    assert w.row(Campaign, w.campaign_id).state is CampaignState.RUNNING
    again = await boss.post(f"/api/admin/campaigns/{name}/start")
    assert again.status_code == 409 and "running" in again.json()["error"]
    assert (await boss.post("/api/admin/campaigns/no-such/start")).status_code == 404
    assert (await boss.post(f"/api/admin/campaigns/{name}/explode")).status_code == 422

    items = (await a.get("/api/notifications")).json()["notifications"]
    assert [(n["kind"], n["campaign_id"], n["actions"]) for n in items] == [
        ("campaign_started", w.campaign_id, ["join", "get_record"])
    ]
    assert items[0]["delivery_mode"] == "manual"
    ack = await a.post(f"/api/notifications/{items[0]['id']}/ack")
    assert ack.status_code == 200
    assert (await a.get("/api/notifications")).json()["notifications"] == []
    assert (await a.post(f"/api/notifications/{items[0]['id']}/ack")).status_code == 404


async def test_given_a_supervisor_then_why_explains_a_record(site: Site) -> None:
    w = site.w
    boss = await site.login(agent_with_password(w, AgentRole.SUPERVISOR, member=False))
    resp = await boss.get(f"/api/admin/contacts/{w.contacts[0]}/why")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["contact_id"] == w.contacts[0] and body["allowed"] is True
    assert {"campaign", "contact", "live_call", "calling_hours"} <= {
        r["name"] for r in body["rules"]
    }
    assert all(r["ok"] for r in body["rules"])
    # A record on the do-not-call list: the rule that fails says so.
    from outbound.model import DncEntry, transaction

    with transaction(w.factory) as s:
        s.add(DncEntry(e164=body["number"], source="test", reason="asked"))
    refused = (await boss.get(f"/api/admin/contacts/{w.contacts[0]}/why")).json()
    assert refused["allowed"] is False
    assert [r["name"] for r in refused["rules"] if not r["ok"]] != []
    assert (await boss.get("/api/admin/contacts/99999999999999/why")).status_code == 404
    assert (await boss.get("/api/admin/contacts/987654321/why")).status_code == 404
    bad = await boss.get(f"/api/admin/contacts/{w.contacts[0]}/why", params={"campaign": "a\nb"})
    assert bad.status_code == 422


async def test_given_events_then_the_stream_carries_only_the_agents_own(
    site: Site, r: redis.Redis
) -> None:
    w = site.w
    a = await site.login(agent_with_password(w))
    other = agent_with_password(w)
    mark = _id(r.xadd(names.KEY_EVENTS, {"event": "test-mark"}))
    inbox = _id(r.xadd(names.key_agent_inbox(a.agent_id), {"kind": "old"}))
    r.xadd(names.KEY_EVENTS, {"event": "agent_ready", "agent_id": a.agent_id})
    r.xadd(names.KEY_EVENTS, {"event": "agent_ready", "agent_id": other})
    r.xadd(
        names.KEY_EVENTS,
        {"event": "call_connecting", "attempt_id": "att-1", "agent_id": a.agent_id},
    )
    r.xadd(names.KEY_EVENTS, {"event": "call_connected", "attempt_id": "att-1"})
    r.xadd(names.KEY_EVENTS, {"event": "call_connected", "attempt_id": "att-2"})
    # A pooled callback of the agent's campaign is theirs; another campaign's, or another
    # agent's personal one, is not.
    cid = str(w.campaign_id)
    r.xadd(names.KEY_EVENTS, {"event": "callback_due", "campaign_id": cid, "callback_id": "7"})
    r.xadd(names.KEY_EVENTS, {"event": "callback_due", "campaign_id": "999999999"})
    r.xadd(names.KEY_EVENTS, {"event": "callback_due", "campaign_id": cid, "agent_id": other})
    r.xadd(
        names.key_agent_inbox(a.agent_id),
        {"kind": "campaign_loaded", "campaign_id": str(w.campaign_id), "actions": '["join"]'},
    )
    resp = await a.get("/api/events", headers={"Last-Event-ID": f"{mark},{inbox}"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    msgs = _sse(resp.text)
    events = [m for m in msgs if "event" in m]
    got = [(m["event"], m["data"].get("attempt_id") or m["data"].get("kind")) for m in events]
    assert got == [
        ("agent_ready", None),
        ("call_connecting", "att-1"),
        ("call_connected", "att-1"),
        ("callback_due", None),
        ("notification", "campaign_loaded"),
    ]
    assert [m["data"].get("callback_id") for m in events if m["event"] == "callback_due"] == ["7"]
    assert all(m["data"].get("agent_id") in (None, a.agent_id) for m in events)
    assert any(m.get("comment") == "heartbeat" for m in msgs)  # sse_max 1 s, beat 0.3 s
    # Reconnecting from the last id gives nothing old again, and then what is new.
    last = events[-1]["id"]
    r.xadd(names.KEY_EVENTS, {"event": "agent_not_ready", "agent_id": a.agent_id})
    again = _sse((await a.get("/api/events", headers={"Last-Event-ID": last})).text)
    assert [m["event"] for m in again if "event" in m] == ["agent_not_ready"]
    bad = await a.get("/api/events", headers={"Last-Event-ID": "0-0\n"})
    assert bad.status_code == 422


async def test_given_the_service_then_healthz_and_openapi_answer_without_a_session(
    site: Site,
) -> None:
    c = site.browser()
    health = await c.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"ok": True, "database": "ok", "redis": "ok"}
    doc = (await c.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert "post" in doc["paths"]["/api/offers/{offer_id}/decline"]

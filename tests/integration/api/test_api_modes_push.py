"""Push preview end to end on the sandbox Asterisk, the agents driven only through the JSON
API: the bridge pushes a record to a Ready agent (SSE `offer_pushed`, GET
/api/interaction), a push left past the campaign's push timeout goes back to the top and
is pushed again (`offer_expired`), a rejected one goes back to the top and is pushed to
the next Ready agent, who accepts and dials it: the person joins that agent's conference
(ConfbridgeJoin), is dialed exactly once (AstDB simcount / simdup). A contact on the DNC
list and one where it is night are never offered nor dialed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from outbound import names
from outbound.campaigns import push
from outbound.model import (
    AttemptState,
    CaseEvent,
    Contact,
    ContactState,
    DialMode,
    DncEntry,
    transaction,
)
from outbound.model.tables import Offer, OfferState
from outbound.sandbox import SandboxInfo
from tests.helpers.ami import AmiClient
from tests.helpers.until import async_until
from tests.integration.test_dialer_progressive import night_zone

from .modes import Stack, dial_cdrs, running

pytestmark = pytest.mark.asterisk

TIMEOUT_S = 3  # the campaign's push timeout


def _open_offer(st: Stack, agent_id: str, not_id: int | None = None) -> Offer | None:
    with st.factory() as s:
        q = select(Offer).where(Offer.agent_id == agent_id, Offer.state == OfferState.OPEN)
        found = s.scalar(q)
        return found if found is not None and found.id != not_id else None


def _offers(st: Stack, contact_id: int) -> list[Offer]:
    with st.factory() as s:
        return list(s.scalars(select(Offer).where(Offer.contact_id == contact_id)))


def _contact(st: Stack, contact_id: int) -> Contact:
    with st.factory() as s:
        c = s.get(Contact, contact_id)
        assert c is not None
        return c


async def test_given_push_preview_when_agents_act_through_the_api_then_pushed_rejected_expired_and_dialed_once(
    sandbox: SandboxInfo,
    tmp_path: Path,
    admin_ami: AmiClient,
    cdr_rows: Callable[[], list[dict[str, str]]],
) -> None:
    # In queue order: a contact where it is night, one on the DNC list, then two persons
    # who talk long (the sandbox's human_long).
    scenarios = {"night": 8, "dnc": 8, "first": 8, "second": 8}
    async with running(
        sandbox,
        tmp_path,
        mode=DialMode.PUSH_PREVIEW,
        scenarios=scenarios,
        zones={"night": night_zone()},
        prefix="push",
        push_timeout_s=TIMEOUT_S,
    ) as st:
        first = st.contacts["first"]
        with transaction(st.factory) as s:
            s.add(DncEntry(e164=st.numbers["dnc"], source="test", reason="asked"))
        a = await st.login(st.agents[0])
        b = await st.login(st.agents[1])
        mark = st.mark()

        # Given agent A Ready (voice and the outbound preview channel): the first
        # dialable record is pushed to A; the night and DNC ones are skipped.
        await a.ready("voice")
        await a.ready("preview")
        o1 = await async_until(lambda: _open_offer(st, a.agent_id), 15, message="no push")
        assert o1.contact_id == first
        ix = await a.interaction()
        assert ix is not None and ix["kind"] == "offer"
        assert ix["case"]["offer_id"] == o1.id and ix["case"]["contact"]["id"] == first

        # When A lets the push timeout pass: the offer expires, the record is back on top
        # and pushed again (to A, the only Ready agent).
        o2 = await async_until(
            lambda: _open_offer(st, a.agent_id, not_id=o1.id), TIMEOUT_S + 10, message="no re-push"
        )
        assert o2.contact_id == first
        assert [o.state for o in _offers(st, first) if o.id == o1.id] == [OfferState.EXPIRED]
        # Accepting the expired offer is refused.
        late = await a.post(f"/api/offers/{o1.id}/accept", {})
        assert late.status_code == 409, late.text

        # When A stops taking pushed records and rejects the one held: back to the top.
        await a.ready("preview", False)
        rej = await a.ok("POST", f"/api/offers/{o2.id}/reject")
        assert rej["state"] == "rejected"
        top = st.queue().peek(1)[0]
        assert (top.contact_id, top.section) == (first, "top")
        with st.factory() as s:
            kinds = s.scalars(select(CaseEvent.kind).where(CaseEvent.contact_id == first)).all()
            assert push.REJECTED in kinds

        # Then agent B, Ready, is pushed that same record (not the second one), accepts
        # and dials it through the API.
        await b.ready("voice")
        await b.ready("preview")
        o3 = await async_until(lambda: _open_offer(st, b.agent_id), 15, message="no push to B")
        assert o3.contact_id == first
        acc = await b.ok("POST", f"/api/offers/{o3.id}/accept", {"dial": True})
        assert acc["state"] == "accepted"
        aid = acc["dial"]["attempt_id"]

        # Asterisk placed the call under the attempt's id and the person joined B's
        # conference.
        await admin_ami.wait_event("Newchannel", 15, Uniqueid=aid)
        await admin_ami.wait_event(
            "ConfbridgeJoin", 20, Conference=names.agent_bridge(b.agent_id), Uniqueid=aid
        )
        await async_until(lambda: st.attempts(id=aid)[0].state is AttemptState.CONNECTED, 10)
        ix = await b.interaction()
        assert ix is not None and ix["kind"] == "call" and ix["case"]["state"] == "connected"

        # B ends the call and marks it done, stopping further pushes.
        await b.ok("POST", f"/api/calls/{aid}/end")
        await admin_ami.wait_event(
            "ConfbridgeLeave", 10, Conference=names.agent_bridge(b.agent_id), Uniqueid=aid
        )
        await async_until(lambda: st.attempts(id=aid)[0].state is AttemptState.ENDED, 10)
        done = await b.ok("POST", f"/api/calls/{aid}/done", {"stop": True})
        assert done["state"] == "done" and done["stopped"] is True
        att = st.attempts(id=aid)[0]
        assert att.agent_id == b.agent_id and att.disposition == ""

        # The pages heard it on their event streams.
        seen_a = [(k, d.get("offer_id")) for k, d in await a.events(mark)]
        assert ("offer_pushed", str(o1.id)) in seen_a
        assert ("offer_expired", str(o1.id)) in seen_a
        assert ("offer_pushed", str(o2.id)) in seen_a
        seen_b = [k for k, _ in await b.events(mark)]
        assert "offer_pushed" in seen_b and "call_connected" in seen_b

        # Asterisk: the first person dialed exactly once, never twice at once; nobody
        # else dialed at all (night, DNC, and the second record nobody accepted).
        assert await admin_ami.db_get("simcount", st.numbers["first"]) == "1"
        assert await admin_ami.db_get("simdup", st.numbers["first"]) is None
        for key in ("night", "dnc", "second"):
            assert await admin_ami.db_get("simcount", st.numbers[key]) is None, key
        assert [x.contact_id for x in st.attempts()] == [first]
        # Its CDR: one Dial of that number under the attempt's id, answered.
        want = [(st.numbers["first"], "ANSWERED")]
        await async_until(lambda: dial_cdrs(cdr_rows(), aid) == want, 10, message="CDR")
        # The night and DNC records were never even offered; the night one waits in the
        # queue until 08:00 where it lives, the DNC one left it.
        assert _offers(st, st.contacts["night"]) == [] and _offers(st, st.contacts["dnc"]) == []
        night = _contact(st, st.contacts["night"])
        assert night.state is ContactState.READY
        where = st.queue().locate(night.id)
        assert where.section == "later" and where.due is not None
        local = where.due.astimezone(ZoneInfo(night.timezone or "UTC"))
        assert (local.hour, local.minute) == (8, 0) and where.due > datetime.now(UTC)
        assert st.queue().locate(st.contacts["dnc"]).section == "absent"

"""Progressive dialing end to end on the sandbox Asterisk, the agents driven only through
the JSON API: two agents go Ready, the bridge dials one record per Ready, free agent
(reserved before the dial); each person joins their reserved agent's conference
(ConfbridgeJoin), the agent ends the call and marks it done with a disposition via the
API (refused without one: the campaign requires it); a busy contact is retried only after
its treatment's delay; a machine never reaches an agent; nobody is dialed twice at once
(AstDB simcount / simdup)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from ami_bridge.service import Bridge
from outbound import names
from outbound.model import AttemptState, CallAttempt, CallResult, DialMode
from outbound.sandbox import SandboxInfo
from tests.helpers.ami import AmiClient
from tests.helpers.until import async_until

from .modes import Stack, WebAgent, contact_joins, dial_cdrs, one_contact_at_a_time, running

pytestmark = pytest.mark.asterisk

BUSY_RETRY_S = 8  # the campaign's busy treatment: retry after 8 s
CODES = ["sale", "no_sale"]


def _connected(st: Stack) -> list[CallAttempt]:
    return [a for a in st.attempts() if a.state is AttemptState.CONNECTED]


async def _end_and_mark_done(
    st: Stack, admin: AmiClient, agent: WebAgent, call: CallAttempt, code: str
) -> None:
    """The agent sees the call, ends it and marks it done, all through the API."""
    ix = await agent.interaction()
    assert ix is not None and ix["kind"] == "call", ix
    assert ix["case"]["attempt_id"] == call.id and ix["case"]["state"] == "connected"
    await agent.ok("POST", f"/api/calls/{call.id}/end")
    await admin.wait_event(
        "ConfbridgeLeave", 10, Conference=names.agent_bridge(agent.agent_id), Uniqueid=call.id
    )
    await async_until(lambda: st.attempts(id=call.id)[0].state is AttemptState.ENDED, 10)
    # In wrap-up: a disposition is required, an unknown one refused; nothing changes.
    for body in ({}, {"disposition": "maybe"}):
        bad = await agent.post(f"/api/calls/{call.id}/done", body)
        assert bad.status_code in (400, 422), bad.text
    assert st.attempts(id=call.id)[0].disposition is None
    done = await agent.ok("POST", f"/api/calls/{call.id}/done", {"disposition": code})
    assert done["state"] == "done"
    assert st.attempts(id=call.id)[0].disposition == code


async def test_given_two_agents_ready_through_the_api_then_progressive_serves_each_person_and_retries_busy_after_its_delay(
    sandbox: SandboxInfo,
    tmp_path: Path,
    admin_ami: AmiClient,
    cdr_rows: Callable[[], list[dict[str, str]]],
) -> None:
    def tune(bridge: Bridge) -> None:
        assert bridge.dialer is not None
        bridge.dialer.sweep_s = 1.0  # enqueue_due every second: the retry comes back quickly

    scenarios = {"human0": 0, "busy": 5, "human1": 1, "machine": 4}
    async with running(
        sandbox,
        tmp_path,
        mode=DialMode.PROGRESSIVE,
        scenarios=scenarios,
        prefix="prog",
        ring_timeout=10,
        tune=tune,
        max_attempts=2,
        treatments={"busy": {"action": "retry", "delay_min": BUSY_RETRY_S / 60}},
        disposition_codes=CODES,
        disposition_required=True,
    ) as st:
        agents = {a.agent_id: a for a in [await st.login(x) for x in st.agents]}

        # Given both agents Ready through the API.
        for a in agents.values():
            got = await a.ready("voice")
            assert got["channel"] == "voice"

        # Then both persons are connected, each into the conference of the agent the
        # call was reserved for.
        calls = await async_until(lambda: len(_connected(st)) == 2 and _connected(st), 30)
        assert {c.contact_id for c in calls} == {st.contacts["human0"], st.contacts["human1"]}
        assert {c.agent_id for c in calls} == set(agents)
        for c in calls:
            assert c.agent_id is not None
            await admin_ami.wait_event(
                "ConfbridgeJoin", 5, Conference=names.agent_bridge(c.agent_id), Uniqueid=c.id
            )

        # When each agent ends their call and marks it done with a disposition.
        for c, code in zip(calls, CODES, strict=True):
            assert c.agent_id is not None
            await _end_and_mark_done(st, admin_ami, agents[c.agent_id], c, code)

        # Then every record is dialed and ended: the busy one twice (max_attempts 2).
        def finished() -> list[CallAttempt] | None:
            mine = st.attempts()
            busy = [a for a in mine if a.contact_id == st.contacts["busy"]]
            ended = all(a.state is AttemptState.ENDED for a in mine)
            return mine if len(mine) == 5 and len(busy) == 2 and ended else None

        attempts = await async_until(finished, 40, interval=0.3, message="not all dialed")

        # Asterisk saw each number dialed once (busy twice), never twice at once.
        for key, n in st.numbers.items():
            want = "2" if key == "busy" else "1"
            assert await admin_ami.db_get("simcount", n) == want, key
            assert await admin_ami.db_get("simdup", n) is None, key
        # Every call was reserved for one of the two agents; the persons joined their
        # own agent's conference, one contact at a time, and the machine nobody's.
        ids = {a.id for a in attempts}
        assert all(a.agent_id in agents for a in attempts)
        for agent_id in agents:
            one_contact_at_a_time(admin_ami, agent_id, ids)
        for c in calls:
            assert c.agent_id is not None
            assert contact_joins(admin_ami, c.agent_id, ids)[0] == ("join", c.id)
        machine = [a for a in attempts if a.contact_id == st.contacts["machine"]]
        for agent_id in agents:
            assert ("join", machine[0].id) not in contact_joins(admin_ami, agent_id, ids)

        # Asterisk's CDR: one row per attempt (its id as account code), with the result.
        want_cdr = {CallResult.ANSWERED: "ANSWERED", CallResult.ANSWERING_MACHINE: "ANSWERED"}
        want_cdr[CallResult.BUSY] = "BUSY"

        def cdr_seen() -> bool:
            rows = cdr_rows()
            return all(
                dial_cdrs(rows, a.id) == [(a.e164, want_cdr[a.result])]
                for a in attempts
                if a.result
            )

        await async_until(cdr_seen, 10, message="CDR rows missing")
        # The database: results, dispositions, and the busy retry only after its delay.
        result = {
            k: [a.result for a in attempts if a.contact_id == c] for k, c in st.contacts.items()
        }
        assert result == {
            "human0": [CallResult.ANSWERED],
            "busy": [CallResult.BUSY, CallResult.BUSY],
            "human1": [CallResult.ANSWERED],
            "machine": [CallResult.ANSWERING_MACHINE],
        }
        assert sorted(a.disposition or "" for a in attempts if a.connected_at) == sorted(CODES)
        b1, b2 = (a for a in attempts if a.contact_id == st.contacts["busy"])
        assert b1.ended_at is not None
        assert b2.created_at >= b1.ended_at + timedelta(seconds=BUSY_RETRY_S)

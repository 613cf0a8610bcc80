"""Predictive dialing end to end on the sandbox Asterisk, the agents driven only through
the JSON API: with warm estimates (earlier attempts today) the pacer dials ahead, so
Asterisk has more contact calls up at once than agents (its Newchannel / Hangup events);
every person who answers is connected to an agent (joins that agent's conference, the
agent picked on answer) or abandoned; the agents end and mark done each call via the API;
each number is dialed once, never twice at once (AstDB simcount / simdup)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from outbound import names, pacing
from outbound.model import AttemptState, CallAttempt, CallResult, DialMode
from outbound.sandbox import SandboxInfo
from tests.helpers.ami import AmiClient
from tests.helpers.until import async_until
from tests.integration.test_dialer_predictive import _history, _max_concurrent_contacts

from .modes import Stack, one_contact_at_a_time, running, serve_calls

pytestmark = pytest.mark.asterisk

HISTORY = "+494000000005"  # the number of test_dialer_predictive._history's old contact
# Mostly calls nobody answers live (busy, congestion, machine), two persons. The first
# few (one planned batch) stay up a while (machines, a person): Asterisk sees them at once.
DIGITS = [4, 0, 5, 4, 7, 5, 7, 1, 5, 7, 5, 7]


def _tune(bridge: Any) -> None:
    """Warm-up thresholds and priors as in test_dialer_predictive: 100 dials of history
    (20 live) make the estimates warm; safety 1.0 dials ahead of the agents."""
    p = bridge.dialer.predictive
    p.min_dials, p.min_calls = 20, 5
    p.priors = pacing.Priors(
        answer_rate=0.25, ring_s=(2.0, 1.0), talk_s=(20.0, 5.0), wrap_s=(1.0, 0.5)
    )
    p.tuning = pacing.Tuning(safety=1.0)


def _mine(st: Stack) -> list[CallAttempt]:
    return [a for a in st.attempts() if a.e164 != HISTORY]


async def test_given_warm_history_and_agents_ready_through_the_api_then_predictive_dials_ahead_and_serves_or_abandons_every_person(
    sandbox: SandboxInfo, tmp_path: Path, admin_ami: AmiClient
) -> None:
    scenarios = {f"c{i}": d for i, d in enumerate(DIGITS)}
    async with running(
        sandbox,
        tmp_path,
        mode=DialMode.PREDICTIVE,
        scenarios=scenarios,
        prefix="pred",
        number_prefix="+4940",
        history=lambda f, cid: _history(f, cid, lives=20, abandoned=0, dials=100),
        tune=_tune,
        max_attempts=1,
        abandon_target=0.1,
    ) as st:
        agents = [await st.login(a) for a in st.agents]
        stop, handled = asyncio.Event(), list[str]()
        for a in agents:
            await a.ready("voice")
        workers = [asyncio.ensure_future(serve_calls(a, stop, handled)) for a in agents]
        try:

            def finished() -> list[CallAttempt] | None:
                mine = _mine(st)
                ended = all(a.state is AttemptState.ENDED for a in mine)
                served = all(a.disposition is not None for a in mine if a.connected_at)
                return mine if len(mine) == len(DIGITS) and ended and served else None

            attempts = await async_until(finished, 60, interval=0.5, message="not all dialed")
        finally:
            stop.set()
            await asyncio.gather(*workers)

        # Asterisk had more contact calls up at once than there are agents.
        assert _max_concurrent_contacts(admin_ami, set(st.numbers.values())) > len(agents)
        plans = [a.audit["pacing"] for a in attempts]
        assert any(
            p["mode"] == "predictive" and p["calls"] + p["ringing"] > p["ready"] for p in plans
        )
        # Every person got an agent (picked on answer, into that agent's conference) or
        # was abandoned; nobody reserved before the dial.
        persons = [a for a in attempts if a.amd_status == "HUMAN"]
        assert len(persons) == 2
        for a in persons:
            assert a.result in (CallResult.ANSWERED, CallResult.ABANDONED), a.result
            if a.result is CallResult.ABANDONED:
                assert a.audit.get("abandon_reason") and a.connected_at is None
                continue
            assert a.agent_id in st.agents and a.audit.get("agent_picked") == a.agent_id
            await admin_ami.wait_event(
                "ConfbridgeJoin", 1, Conference=names.agent_bridge(a.agent_id), Uniqueid=a.id
            )
        served = [a for a in attempts if a.connected_at is not None]
        assert served, "no person was connected to an agent"
        # The agents marked each of their calls done through the API (and only those).
        assert sorted(handled) == sorted(a.id for a in served)
        assert all(a.disposition == "" for a in served)
        # Asterisk: each number dialed once, never twice at once; one contact at a time
        # in each agent's conference.
        for n in st.numbers.values():
            assert await admin_ami.db_get("simcount", n) == "1", n
            assert await admin_ami.db_get("simdup", n) is None, n
        for agent_id in st.agents:
            one_contact_at_a_time(admin_ami, agent_id, {a.id for a in attempts})

"""Classification feedback on a real call: the sandbox Asterisk's AMD hears a "hello",
our `classify` route connects the contact into the reserved agent's conference, the agent
flags the call as really a machine, another agent may not, and the report shows the
false-human rate for that campaign and trunk. The AMD decision itself is left untouched."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from outbound import names
from outbound.campaigns.feedback import NotAllowed, error_rates, flag_machine
from outbound.cli import main
from outbound.model import AttemptState, CallResult
from outbound.sandbox import SandboxInfo
from tests.helpers.ami import AmiClient
from tests.helpers.db import add_agent, add_contact
from tests.helpers.stack import TRUNK, attempt_row, call_stack, conference_members
from tests.helpers.until import async_until

AMD_COLUMNS = ("amd_status", "amd_cause", "audit", "agent_id", "trunk", "connected_at")


@pytest.fixture
async def stack(sandbox: SandboxInfo, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    async with call_stack(sandbox, tmp_path / "f.db") as st:
        yield st


async def test_given_a_real_call_amd_passed_as_human_when_its_agent_flags_it_then_reported(
    stack: dict[str, Any], admin_ami: AmiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = stack["factory"]
    agent = add_agent(f, str(50000 + uuid.uuid4().int % 9999))
    other = add_agent(f, str(60000 + uuid.uuid4().int % 9999))
    await stack["sessions"].login(agent, f"Local/{uuid.uuid4().int % 10**6}@sim-phones")
    await stack["sessions"].wait_up(agent, timeout=10)
    number = "+4930" + str(uuid.uuid4().int)[:6] + "8"  # "hello", then listens
    aid = await stack["originator"].dial(add_contact(f, number), agent_id=agent)
    conf = names.agent_bridge(agent)

    # Asterisk itself has the contact in the agent's conference, classified human by AMD.
    async def in_bridge() -> bool:
        return aid in await conference_members(admin_ami, conf)

    await async_until(in_bridge, 15, message="human not connected to the agent's bridge")
    await async_until(lambda: attempt_row(f, aid).state is AttemptState.CONNECTED, 5)
    # The verdict is written after the AGI let the call go on: wait for it.
    before = await async_until(lambda: (x := attempt_row(f, aid)) and "route" in x.audit and x, 10)
    assert before.amd_status == "HUMAN" and before.audit["route"] == "connect"
    decision = {c: getattr(before, c) for c in AMD_COLUMNS}

    # Another agent may not flag it: refused, nothing stored.
    with pytest.raises(NotAllowed, match=f"not connected to agent {other}"):
        flag_machine(f, aid, other)
    assert attempt_row(f, aid).feedback is None

    # The agent on the call flags it while talking; the call is not disturbed.
    out = flag_machine(f, aid, agent, note="voicemail after the hello")
    assert out["changed"] and out["feedback_by"] == agent
    assert await in_bridge(), "flagging must not touch the live call"
    assert not flag_machine(f, aid, agent)["changed"]  # idempotent

    await stack["sessions"].logout(agent)  # the agent leaves: the contact's call ends
    await async_until(lambda: attempt_row(f, aid).state is AttemptState.ENDED, 10)
    after = attempt_row(f, aid)
    assert {c: getattr(after, c) for c in AMD_COLUMNS} == decision
    assert after.result is CallResult.ANSWERED  # the call's result is the AMD route's
    assert (after.feedback, after.feedback_by) == ("machine", agent)

    rep = error_rates(f)
    camp = {r.key: r for r in rep.campaigns}["test"]
    trunk = {r.key: r for r in rep.trunks}[TRUNK]
    for r in (camp, trunk):
        assert (r.human, r.false_human, r.flags_unreviewed) == (1, 1, 1)
        assert r.false_human_rate == 1.0 and r.false_machine_rate is None
    assert rep.total.as_dict()["causes"] == {"HUMAN": {"judged": 1, "wrong": 1}}

    # The same through the CLI an admin would use.
    monkeypatch.setenv("OUTBOUND_DATABASE_URL", f"sqlite:///{stack['db']}")
    monkeypatch.delenv("OUTBOUND_CONFIG", raising=False)
    monkeypatch.chdir(stack["db"].parent)
    r = CliRunner().invoke(main, ["amd", "report", "--campaign", "test", "--json"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output)
    assert shown["campaigns"][0]["false_human_rate"] == 1.0
    assert shown["trunks"][0]["key"] == TRUNK

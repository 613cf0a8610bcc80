"""Agent sessions on the sandbox Asterisk, with the dialer's least-privilege AMI account;
every outcome is checked by asking Asterisk (admin AMI: ConfbridgeList, CoreShowChannels)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from ami_bridge.connection import AmiConnection
from ami_bridge.sessions import (
    AgentSessions,
    AlreadyLoggedIn,
    NotLoggedIn,
    SessionError,
    SessionState,
)
from outbound import names
from outbound.sandbox import SandboxInfo
from tests.helpers.ami import AmiClient, AmiError
from tests.helpers.until import async_until

pytestmark = pytest.mark.asterisk


def agent_id() -> str:
    """An agent id (and desk phone extension) no other test uses."""
    return f"5{random.randrange(10**6, 10**7)}"


@pytest.fixture
async def conn(sandbox: SandboxInfo) -> AsyncIterator[AmiConnection]:
    c = AmiConnection(
        sandbox.ami_host, sandbox.ami_port, sandbox.ami_user, sandbox.ami_secret, action_timeout=5
    )
    await c.start(wait=10)
    yield c
    await c.close()


class Ended(list[tuple[str, str]]):
    """Records on_session_end calls."""

    def __call__(self, agent: str, reason: str) -> None:
        self.append((agent, reason))


@pytest.fixture
def ended() -> Ended:
    return Ended()


@pytest.fixture
async def sessions(conn: AmiConnection, ended: Ended) -> AsyncIterator[AgentSessions]:
    s = AgentSessions(conn, on_session_end=ended, answer_timeout=5)
    s.attach()
    yield s
    for sess in s.active():
        try:
            await s.logout(sess.agent_id)
        except Exception:  # best effort: the test may have ended it already
            pass


async def members(admin: AmiClient, agent: str) -> dict[str, dict[str, str]]:
    """Uniqueid -> ConfbridgeList entry of the agent's conference, as Asterisk sees it."""
    try:
        _, events = await admin.collect("ConfbridgeList", Conference=names.agent_bridge(agent))
    except AmiError:  # "No active conferences" / "No Conference by that name found"
        return {}
    return {e["Uniqueid"]: dict(e) for e in events}


async def channel_ids(admin: AmiClient) -> set[str]:
    _, events = await admin.collect("CoreShowChannels")
    return {e["Uniqueid"] for e in events}


async def test_given_a_desk_phone_when_the_agent_logs_in_then_the_phone_sits_in_the_agents_conference(
    sessions: AgentSessions, admin_ami: AmiClient
) -> None:
    agent = agent_id()

    sess = await sessions.login(agent, f"Local/{agent}@sim-phones")
    await sessions.wait_up(agent, timeout=5)

    conf = await members(admin_ami, agent)
    assert list(conf) == [sess.channel_id]
    assert conf[sess.channel_id]["MarkedUser"] == "Yes"
    assert sessions.session_state(agent) is SessionState.UP
    assert sess.channel.startswith(f"Local/{agent}@sim-phones-")
    assert await admin_ami.db_get("simphonecount", agent) == "1"


async def test_given_a_logged_in_agent_when_the_phone_hangs_up_then_the_session_ends_and_the_hook_is_told(
    sessions: AgentSessions, admin_ami: AmiClient, ended: Ended
) -> None:
    agent = agent_id()
    sess = await sessions.login(agent, f"Local/{agent}@sim-phones")
    await sessions.wait_up(agent, timeout=5)

    # The desk phone's side of the Local channel hangs up (the agent puts it down).
    await admin_ami.send("Hangup", Channel=f"{sess.channel_id};2")

    await sessions.wait_ended(agent, timeout=5)
    assert ended == [(agent, "phone_hangup")]
    assert sessions.session_state(agent) is SessionState.ENDED
    assert await members(admin_ami, agent) == {}
    assert sess.channel_id not in await channel_ids(admin_ami)


async def test_given_a_logged_in_agent_when_it_logs_out_then_its_phone_leg_is_gone_and_the_hook_says_logout(
    sessions: AgentSessions, admin_ami: AmiClient, ended: Ended
) -> None:
    agent = agent_id()
    sess = await sessions.login(agent, f"Local/{agent}@sim-phones")
    await sessions.wait_up(agent, timeout=5)

    await sessions.logout(agent)

    await sessions.wait_ended(agent, timeout=5)
    assert ended == [(agent, "logout")]
    assert sess.channel_id not in await channel_ids(admin_ami)
    assert await members(admin_ami, agent) == {}
    with pytest.raises(NotLoggedIn):
        await sessions.logout(agent)


async def test_given_a_busy_phone_when_the_agent_logs_in_then_the_login_fails_with_the_reason(
    sessions: AgentSessions, admin_ami: AmiClient, ended: Ended
) -> None:
    agent = agent_id()
    busy_phone = f"+4930{random.randrange(10**6, 10**7)}5"  # a sim number ending in 5: busy

    await sessions.login(agent, f"Local/{busy_phone}@sim-contacts")

    with pytest.raises(SessionError, match="busy"):
        await sessions.wait_up(agent, timeout=5)
    assert ended == [(agent, "busy")]
    assert await members(admin_ami, agent) == {}
    assert await admin_ami.db_get("simcount", busy_phone) == "1"


async def test_given_a_live_session_when_the_agent_logs_in_again_then_it_is_refused_and_nothing_is_dialled(
    sessions: AgentSessions, admin_ami: AmiClient
) -> None:
    agent = agent_id()
    await sessions.login(agent, f"Local/{agent}@sim-phones")
    await sessions.wait_up(agent, timeout=5)

    with pytest.raises(AlreadyLoggedIn):
        await sessions.login(agent, f"Local/{agent}@sim-phones")

    assert len(await members(admin_ami, agent)) == 1
    assert await admin_ami.db_get("simphonecount", agent) == "1"


async def test_given_missed_events_when_resyncing_then_the_sessions_follow_what_asterisk_has(
    conn: AmiConnection, admin_ami: AmiClient, ended: Ended
) -> None:
    # Not attached: this instance sees no events at all, as after a lost connection.
    blind = AgentSessions(conn, on_session_end=ended, answer_timeout=5)
    agent = agent_id()
    sess = await blind.login(agent, f"Local/{agent}@sim-phones")
    await async_until(
        lambda: _has_member(admin_ami, agent, sess.channel_id), timeout=5, message="phone in"
    )

    await blind.resync()
    assert blind.session_state(agent) is SessionState.UP

    await admin_ami.send("Hangup", Channel=sess.channel_id)
    await async_until(
        lambda: _gone(admin_ami, sess.channel_id), timeout=5, message="phone leg gone"
    )
    await blind.resync()

    assert blind.session_state(agent) is SessionState.ENDED
    assert ended == [(agent, "lost")]


async def _has_member(admin: AmiClient, agent: str, uid: str) -> bool:
    return uid in await members(admin, agent)


async def _gone(admin: AmiClient, uid: str) -> bool:
    return uid not in await channel_ids(admin)

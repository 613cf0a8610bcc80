"""Desk-phone feature codes on the sandbox: a simulated desk phone (sim-deskphone) dials
*51 / *52 / *53 / *54 and types keys; our FastAGI `features` route checks the PIN, the
dialplan takes the call into the agent's conference, and the AMI bridge adopts it as the
agent's session and runs ready / not ready / log out. Asserted on what Asterisk reports
(ConfbridgeList, ConfbridgeJoin, Hangup) and on the bridge's live state in Redis."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from agi_scripts.features import make_features
from agi_scripts.server import AgiServer
from ami_bridge.service import Bridge, health_key
from ami_bridge.sessions import SessionState
from outbound import live, names
from outbound.agents import add_agent
from outbound.commands import PHONE_CODE_WAIT_S
from outbound.config import Config, load_config
from outbound.model import transaction
from outbound.sandbox import SandboxInfo
from tests.helpers.ami import AmiClient, AmiError
from tests.helpers.db import migrated_factory
from tests.helpers.redis_url import redis_url
from tests.helpers.until import async_until

# Keys are typed on fixed pauses against live IVR prompts: judged in real time, so alone.
pytestmark = pytest.mark.serial

REDIS_URL = redis_url(14)
PIN = "918273"
# Keys typed after a refusal wait for the AGI's next prompt: digits that arrive while
# no AGI command listens are dropped by res_agi, as they would be for a person.
NEXT = "wwwwww"
EVENT_CODE = names.EVENT_PHONE_CODE


def _config(sandbox: SandboxInfo, tmp_path: Path, server: str) -> Config:
    return load_config(env={}, cwd=tmp_path, overrides=_settings(sandbox, tmp_path, server))


def _settings(sandbox: SandboxInfo, tmp_path: Path, server: str) -> dict[str, str]:
    return {
        "database.url": f"sqlite:///{tmp_path / 'p.db'}",
        "redis.url": REDIS_URL,
        "ami.port": str(sandbox.ami_port),
        "ami.username": sandbox.ami_user,
        "ami.secret": sandbox.ami_secret,
        "dialer.server": server,
        "ami.ping_interval": "1",
        "agents.pin_attempts": "3",
        "agents.pin_lockout": "120",
    }


@pytest.fixture
async def stack(sandbox: SandboxInfo, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    server = f"phones-{uuid.uuid4().hex[:6]}"
    cfg = _config(sandbox, tmp_path, server)
    factory = migrated_factory(tmp_path / "p.db")
    ar = aredis.Redis.from_url(REDIS_URL)
    agi = AgiServer("127.0.0.1", sandbox.agi_port, header_timeout=5, answer_timeout=30)
    agi.route(names.AGI_FEATURES, make_features(factory, ar, cfg))
    await agi.start()
    bridge = Bridge(cfg, factory, ar)
    task = asyncio.ensure_future(bridge.run())
    r = redis.Redis.from_url(REDIS_URL)
    await async_until(lambda: r.get(health_key(server)) is not None, 15, message="no bridge")
    yield {"factory": factory, "bridge": bridge, "redis": r, "server": server, "task": task}
    bridge.stop()
    await asyncio.wait_for(task, 10)
    await agi.close()
    await ar.aclose()


def _agent(stack: dict[str, Any]) -> str:
    agent_id = str(10_000 + uuid.uuid4().int % 89_999)
    with transaction(stack["factory"]) as s:
        add_agent(s, agent_id, f"Agent {agent_id}", "PJSIP/unused", pin=PIN)
    return agent_id


def _phone() -> str:
    return str(200_000 + uuid.uuid4().int % 700_000)


async def _dial(admin: AmiClient, ext: str, code: str, keys: str = "") -> tuple[str, str]:
    """The desk phone `ext` dials `code` and types `keys`: (uniqueid of the phone's call
    into the PBX, uniqueid of the person's side that can type more keys)."""
    call, person = str(uuid.uuid4()), str(uuid.uuid4())
    await admin.send(
        "Originate",
        Channel=f"Local/{ext}@sim-deskphone",
        Context=names.CTX_PHONE_CODES,
        Exten=code,
        Priority="1",
        ChannelId=call,
        OtherChannelId=person,
        Async="true",
        variables={"SIMKEYS": keys} if keys else None,
    )
    return call, person


async def _members(admin: AmiClient, conference: str) -> dict[str, dict[str, str]]:
    try:
        _, ev = await admin.collect("ConfbridgeList", Conference=conference)
    except AmiError:  # no such conference
        return {}
    return {e["Uniqueid"]: dict(e.items()) for e in ev}


async def _type(admin: AmiClient, person: str, keys: str) -> None:
    """Keys pressed on the phone during the call (AMI PlayDTMF on the person's side)."""
    _, chans = await admin.collect("CoreShowChannels")
    channel = next(c["Channel"] for c in chans if c.get("Uniqueid") == person)
    for k in keys:
        await admin.send("PlayDTMF", Channel=channel, Digit=k, Duration="200")


async def _hangup(admin: AmiClient, uniqueid: str) -> None:
    _, chans = await admin.collect("CoreShowChannels")
    for c in chans:
        if c.get("Uniqueid") == uniqueid:
            await admin.send("Hangup", Channel=c["Channel"])


def _count_is(fn: Callable[[], list[Any]], n: int) -> Callable[[], bool]:
    return lambda: len(fn()) >= n


def _live(r: redis.Redis, agent_id: str) -> dict[str, str]:
    got: Any = r.hgetall(live.agent_key(agent_id))
    return live.decode(got)


def _events(r: redis.Redis, agent_id: str) -> list[dict[str, str]]:
    entries: Any = r.xrange(names.KEY_EVENTS)
    return [live.decode(f) for _, f in entries if f.get(b"agent_id") == agent_id.encode()]


async def test_given_the_right_pin_when_dialling_51_then_the_call_is_the_agents_session(
    stack: dict[str, Any], admin_ami: AmiClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    agent, ext, r = _agent(stack), _phone(), stack["redis"]
    conf = names.agent_bridge(agent)
    call, _ = await _dial(admin_ami, ext, "*51", f"ww{agent}#ww{PIN}#")

    # Asterisk: the phone's own call is the marked member of the agent's conference.
    async def joined() -> bool:
        return (await _members(admin_ami, conf)).get(call, {}).get("MarkedUser") == "Yes"

    await async_until(joined, 20, message="phone's call not in the agent's conference")
    # The bridge adopted it: session up, not ready until *52.
    await async_until(lambda: _live(r, agent).get("session") == "up", 5)
    assert _live(r, agent)["ready_voice"] == "0"
    assert _live(r, agent)["reason"] == "phone_login"
    sess = stack["bridge"].sessions.session(agent)
    assert sess.state is SessionState.UP and sess.origin == "phone" and sess.channel_id == call
    assert sess.phone == f"Local/{ext}@sim-deskphone"

    # *52 from a second line: ready; that call ends, the session leg stays.
    second, _ = await _dial(admin_ami, ext, "*52")
    await admin_ami.wait_event(
        "UserEvent", timeout=15, Uniqueid=second, UserEvent=names.EVENT_PHONE_CODE, Result="ok"
    )
    assert _live(r, agent).get("ready_voice") == "1"
    await admin_ami.wait_event("Hangup", timeout=15, Uniqueid=second)
    assert call in await _members(admin_ami, conf)
    # *53: not ready.
    await _dial(admin_ami, ext, "*53")
    await async_until(lambda: _live(r, agent).get("ready_voice") == "0", 15)
    assert call in await _members(admin_ami, conf)
    kinds = [e["event"] for e in _events(r, agent)]
    assert kinds[-3:] == ["agent_session_up", "agent_ready", "agent_not_ready"]

    # *54: log out; the leg leaves the conference and hangs up.
    await _dial(admin_ami, ext, "*54")
    await admin_ami.wait_event("Hangup", timeout=15, Uniqueid=call)
    assert call not in await _members(admin_ami, conf)
    await async_until(lambda: _live(r, agent).get("session") == "ended", 5)
    assert _live(r, agent)["reason"] == "logout"
    assert stack["bridge"].sessions.session_state(agent) is SessionState.ENDED
    assert PIN not in caplog.text


async def test_given_a_session_when_pressing_codes_in_the_conference_then_state_follows(
    stack: dict[str, Any], admin_ami: AmiClient
) -> None:
    agent, ext, r = _agent(stack), _phone(), stack["redis"]
    conf = names.agent_bridge(agent)
    call, person = await _dial(admin_ami, ext, "*51", f"ww{agent}#ww{PIN}#")
    await async_until(lambda: _live(r, agent).get("session") == "up", 20, message="no session")

    def codes_done() -> list[Any]:
        return admin_ami.find_events("UserEvent", Uniqueid=call, UserEvent=names.EVENT_PHONE_CODE)

    for n, (code, ready) in enumerate((("*52", "1"), ("*53", "0"), ("*52", "1")), 1):
        await _type(admin_ami, person, code)
        # Asterisk ran the code on the session leg and played its confirmation ...
        await async_until(_count_is(codes_done, n), 15, message=f"{code} not run in the bridge")
        assert codes_done()[-1].get("Result") == "ok"
        # ... and the bridge changed the live state.
        assert _live(r, agent).get("ready_voice") == ready, code
    assert call in await _members(admin_ami, conf)  # the menu returned it to the conference
    await _type(admin_ami, person, "*54")
    await admin_ami.wait_event("Hangup", timeout=15, Uniqueid=call)
    assert call not in await _members(admin_ami, conf)
    await async_until(lambda: _live(r, agent).get("session") == "ended", 5)


async def test_given_three_wrong_pins_then_that_phone_is_locked_for_the_agent_not_others(
    stack: dict[str, Any], admin_ami: AmiClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    agent, ext, r = _agent(stack), _phone(), stack["redis"]
    conf, phone = names.agent_bridge(agent), f"Local/{ext}@sim-deskphone"
    wrong = ["551234", "551235", "551236"]
    keys = NEXT.join(f"ww{agent}#ww{p}#" for p in wrong)
    call, _ = await _dial(admin_ami, ext, "*51", keys)
    # Three refusals in one call, then "try again later" and the call ends.
    await admin_ami.wait_event("Hangup", timeout=40, Uniqueid=call)
    assert not admin_ami.find_events("ConfbridgeJoin", Uniqueid=call)
    assert 100 < r.ttl(names.key_pin_lock("pair", f"{agent}@{phone}")) <= 120
    # Whoever typed them did not lock the agent out everywhere.
    assert r.exists(names.key_pin_lock("agent", agent)) == 0
    locked = [e for e in _events(r, agent) if e["event"] == "agent_pin_locked"]
    assert [(e["locked"], e["phone"], e["lockout_s"]) for e in locked] == [("pair", phone, "120")]
    assert any(
        rec.levelno == logging.WARNING
        and f"agent {agent} on phone {phone} locked" in rec.getMessage()
        for rec in caplog.records
    )

    # The right PIN on that phone: still refused while the lock lasts.
    call2, _ = await _dial(admin_ami, ext, "*51", f"ww{agent}#ww{PIN}#")
    await admin_ami.wait_event("Hangup", timeout=20, Uniqueid=call2)
    assert not admin_ami.find_events("ConfbridgeJoin", Uniqueid=call2)
    assert call2 not in await _members(admin_ami, conf)
    assert any("refused: locked" in rec.getMessage() for rec in caplog.records)
    # The right PIN on another phone: the agent logs in.
    call3, _ = await _dial(admin_ami, _phone(), "*51", f"ww{agent}#ww{PIN}#")
    await admin_ami.wait_event("ConfbridgeJoin", timeout=20, Uniqueid=call3, Conference=conf)
    await async_until(lambda: _live(r, agent).get("session") == "up", 5)
    for p in [*wrong, PIN]:
        assert p not in caplog.text
    await _hangup(admin_ami, call3)


@pytest.mark.slow  # the per-phone lockout above runs in CI; this one adds ~40 s of prompts
async def test_given_wrong_pins_from_many_phones_then_the_agent_id_locks_at_the_global_count(
    sandbox: SandboxInfo, tmp_path: Path, admin_ami: AmiClient
) -> None:
    # Its own AGI server (and no bridge: none is needed to refuse) with a global limit of 4.
    settings = _settings(sandbox, tmp_path, f"glob-{uuid.uuid4().hex[:6]}")
    cfg = load_config(
        env={}, cwd=tmp_path, overrides={**settings, "agents.pin_attempts_global": "4"}
    )
    factory = migrated_factory(tmp_path / "p.db")
    ar = aredis.Redis.from_url(REDIS_URL)
    agi = AgiServer("127.0.0.1", sandbox.agi_port, header_timeout=5, answer_timeout=30)
    agi.route(names.AGI_FEATURES, make_features(factory, ar, cfg))
    await agi.start()
    try:
        agent, r = _agent({"factory": factory}), redis.Redis.from_url(REDIS_URL)
        # Two wrong PINs from each of two phones: no pair reaches 3, the id reaches 4.
        for _ in range(2):
            keys = NEXT.join(f"ww{agent}#ww55123{n}#" for n in range(2))
            call, _ = await _dial(admin_ami, _phone(), "*51", keys)
            await admin_ami.wait_event("Hangup", timeout=40, Uniqueid=call)
        assert 0 < r.ttl(names.key_pin_lock("agent", agent)) <= 120
        locked = [e["locked"] for e in _events(r, agent) if e["event"] == "agent_pin_locked"]
        assert locked == ["agent"]
        # Now refused from any phone, a fresh one with the right PIN too.
        call, _ = await _dial(admin_ami, _phone(), "*51", f"ww{agent}#ww{PIN}#")
        await admin_ami.wait_event("Hangup", timeout=20, Uniqueid=call)
        assert not admin_ami.find_events("ConfbridgeJoin", Uniqueid=call)
    finally:
        await agi.close()
        await ar.aclose()


async def test_given_an_unknown_or_a_malformed_agent_id_then_refused(
    stack: dict[str, Any], admin_ami: AmiClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    agent, ext, r = _agent(stack), _phone(), stack["redis"]
    unknown = str(int(agent) + 100_000)  # digits, but nobody's id
    malformed = f"{agent[:2]}*{agent[3:]}"  # a star where a digit belongs
    phone = f"Local/{ext}@sim-deskphone"
    keys = f"ww{unknown}#ww{PIN}#{NEXT}{malformed}#ww{PIN}#"
    call, _ = await _dial(admin_ami, ext, "*51", keys)
    # Both refusals counted against the phone (not against any agent) ...
    await async_until(
        lambda: r.get(names.key_pin_failures("phone", phone)) == b"2",
        30,
        message="two refusals not counted",
    )
    assert r.get(names.key_pin_failures("agent", unknown)) is None
    assert r.get(names.key_pin_failures("agent", agent)) is None
    # ... and Asterisk never took the call into any conference.
    assert not admin_ami.find_events("ConfbridgeJoin", Uniqueid=call)
    assert call not in await _members(admin_ami, names.agent_bridge(agent))
    text = caplog.text
    # Logged, but not as typed: an "id" may be a PIN typed at the wrong prompt.
    assert "unknown agent id <6 digits, #" in text and "malformed agent id <5 digits" in text
    assert unknown not in text and malformed not in text
    # The third try gets no keys: the caller gave up; goodbye, hung up, not counted.
    await admin_ami.wait_event("Hangup", timeout=20, Uniqueid=call)
    assert r.get(names.key_pin_failures("phone", phone)) == b"2"
    assert not admin_ami.find_events("ConfbridgeJoin", Uniqueid=call)


async def test_given_a_phone_session_started_while_the_bridge_was_away_then_resync_adopts_it(
    stack: dict[str, Any], admin_ami: AmiClient, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    agent, ext, r = _agent(stack), _phone(), stack["redis"]
    call, _ = await _dial(admin_ami, ext, "*51", f"ww{agent}#ww{PIN}#")
    await async_until(lambda: _live(r, agent).get("session") == "up", 20, message="no session")
    # A bridge that was not connected when the phone logged in (it missed the UserEvent)
    # finds the leg as the marked member of the agent's conference when it connects.
    server = f"late-{uuid.uuid4().hex[:6]}"
    late = Bridge(
        _config(sandbox, tmp_path, server), stack["factory"], aredis.Redis.from_url(REDIS_URL)
    )
    task = asyncio.ensure_future(late.run())
    try:
        await async_until(lambda: late.sessions.session_state(agent) is SessionState.UP, 15)
        sess = late.sessions.session(agent)
        assert sess is not None and sess.origin == "phone" and sess.channel_id == call
        assert sess.phone == f"Local/{ext}@sim-deskphone"
        # It follows the leg from then on: hanging up the phone ends its session too.
        _, chans = await admin_ami.collect("CoreShowChannels")
        channel = next(c["Channel"] for c in chans if c.get("Uniqueid") == call)
        await admin_ami.send("Hangup", Channel=channel)
        await async_until(lambda: late.sessions.session_state(agent) is SessionState.ENDED, 10)
        assert late.sessions.session(agent).end_reason == "phone_hangup"  # type: ignore[union-attr]
    finally:
        late.stop()
        await asyncio.wait_for(task, 10)


async def test_given_the_bridge_down_when_54_times_out_then_a_later_bridge_does_not_log_out(
    stack: dict[str, Any],
    admin_ami: AmiClient,
    sandbox: SandboxInfo,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    agent, ext, r = _agent(stack), _phone(), stack["redis"]
    conf = names.agent_bridge(agent)
    call, _ = await _dial(admin_ami, ext, "*51", f"ww{agent}#ww{PIN}#")
    await async_until(lambda: _live(r, agent).get("session") == "up", 20, message="no session")
    # The bridge goes away; the session leg stays in the agent's conference.
    stack["bridge"].stop()
    await asyncio.wait_for(stack["task"], 10)
    # *54 from a second line: nobody answers, so the phone beeps "error" ...
    second, _ = await _dial(admin_ami, ext, "*54")
    done = await admin_ami.wait_event(
        "UserEvent", timeout=PHONE_CODE_WAIT_S + 20, Uniqueid=second, UserEvent=EVENT_CODE
    )
    assert done.get("Result") == "error"
    await asyncio.sleep(1.5)  # surely past the command's deadline
    # ... and a bridge that comes back later must not log the agent out after all.
    late = Bridge(
        _config(sandbox, tmp_path, stack["server"]),
        stack["factory"],
        aredis.Redis.from_url(REDIS_URL),
    )
    task = asyncio.ensure_future(late.run())
    try:
        await async_until(lambda: "logout" in caplog.text and "expired, not run" in caplog.text, 15)
        assert late.sessions.session_state(agent) is SessionState.UP  # it adopted the leg
        await asyncio.sleep(1)  # a logout, had it run, would have hung the leg up by now
        assert (await _members(admin_ami, conf)).get(call, {}).get("MarkedUser") == "Yes"
        assert not admin_ami.find_events("Hangup", Uniqueid=call)
        assert _live(r, agent).get("session") == "up"
    finally:
        await _hangup(admin_ami, call)
        late.stop()
        await asyncio.wait_for(task, 10)


async def test_given_a_forged_phone_login_event_then_the_bridge_adopts_nothing(
    stack: dict[str, Any], admin_ami: AmiClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    agent, ext, r = _agent(stack), _phone(), stack["redis"]
    phone = f"Local/{ext}@sim-deskphone"
    # A real call of a phone, at the log-in prompt (no PIN typed, no agent logged in).
    call, _ = await _dial(admin_ami, ext, "*51")

    async def at_prompt() -> dict[str, str] | None:
        _, chans = await admin_ami.collect("CoreShowChannels")
        found = [dict(c.items()) for c in chans if c.get("Uniqueid") == call]
        return found[0] if found and found[0].get("Context") == names.CTX_PHONE_SESSION else None

    await async_until(at_prompt, 15, message="the phone's call is not at the login prompt")
    chan = await at_prompt()
    assert chan is not None
    # Any AMI client with write=user can send any headers: first what the old bridge
    # trusted, then a forgery with every header a real one has.
    forged = {"Agent": agent, "Phone": phone, "Uniqueid": call}
    full = {**forged, "Channel": chan["Channel"], "Context": names.CTX_PHONE_SESSION}
    for n, headers in enumerate((forged, full), 1):
        await admin_ami.send("UserEvent", UserEvent=names.EVENT_PHONE_LOGIN, **headers)
        await async_until(lambda n=n: caplog.text.count("phone login event ignored") >= n, 10)
    assert "is not the phone session's" in caplog.text
    assert f"logged in agent None, not {agent}" in caplog.text  # Asterisk said no
    assert stack["bridge"].sessions.session(agent) is None
    assert _live(r, agent).get("session") is None
    await _hangup(admin_ami, call)


async def test_given_a_pin_login_then_the_dialer_account_sees_none_of_its_keys(
    stack: dict[str, Any], admin_ami: AmiClient, dialer_ami: AmiClient
) -> None:
    agent, ext, r = _agent(stack), _phone(), stack["redis"]
    call, person = await _dial(admin_ami, ext, "*51", f"ww{agent}#ww{PIN}#")
    await async_until(lambda: _live(r, agent).get("session") == "up", 20, message="no session")
    # An account with read=dtmf and no filter gets every key of the log-in, PIN included ...
    keys = "".join(e["Digit"] for e in admin_ami.find_events("DTMFEnd", Uniqueid=call))
    assert f"{agent}#{PIN}#" in keys
    # ... the dialer's account (manager_outbound.conf) gets none of them.
    for event in ("DTMFBegin", "DTMFEnd"):
        assert dialer_ami.find_events(event, Uniqueid=call) == []
    # Only the log-in is filtered: keys typed in the agent's conference still reach it.
    await _type(admin_ami, person, "*53")
    await async_until(lambda: dialer_ami.find_events("DTMFEnd", Uniqueid=call), 10)
    await _hangup(admin_ami, call)

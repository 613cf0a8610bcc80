"""AmiConnection against a tiny fake AMI server on loopback.

The server speaks the AMI text protocol with packets recorded from the sandbox Asterisk 22
(banner, Login, FullyBooted, Ping, Originate, CoreShowChannels, Hangup); ActionIDs are
substituted. It records every byte and every action it receives, per connection, and can
be told to withhold answers, drop the connection on an action, refuse logins, hold back
FullyBooted or freeze (keep TCP open, answer nothing) as a SIGSTOPped Asterisk does.

Each panoramisk defect that ami_bridge.connection covers is shown here: the resend after
a reconnect (with a reproduction on plain panoramisk), no deadlines, the blind ping, the
fixed reconnect, actions before FullyBooted, unchecked values.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from panoramisk import Manager

from ami_bridge.connection import (
    AmiConnection,
    AmiConnectionLost,
    AmiNotReady,
    AmiTimeout,
)
from outbound.wire import UnsafeValue
from tests.helpers.fake_ami import (
    DEVICE_STATE,
    EOM,
    FULLY_BOOTED,
    ORIGINATE,
    ORIGINATE_RESPONSE,
    SECRET,
    FakeAmi,
)
from tests.helpers.until import async_until


@pytest.fixture
async def server() -> AsyncIterator[FakeAmi]:
    srv = FakeAmi()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def connect(server: FakeAmi) -> AsyncIterator[Callable[..., AmiConnection]]:
    """Makes AmiConnections to the fake server (fast test timings); closes them after."""
    made: list[AmiConnection] = []

    def make(**kw: Any) -> AmiConnection:
        params: dict[str, Any] = {
            "ping_interval": 5.0,
            "action_timeout": 1.0,
            "connect_timeout": 0.5,
            "backoff": (0.05, 0.4),
        } | kw
        conn = AmiConnection("127.0.0.1", server.port, "outbound", SECRET, **params)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        await conn.close()


# ------------------------------------------------------------------ (a) FullyBooted gate


async def test_given_logged_in_but_not_fully_booted_when_sending_then_refused_and_nothing_written(
    server: FakeAmi, connect: Callable[..., AmiConnection]
) -> None:
    server.fully_booted = False
    server.after_login = DEVICE_STATE  # proves the client has read past the login answer
    conn = connect()
    seen = asyncio.Event()
    conn.on_event("DeviceStateChange", lambda _msg: seen.set())
    await conn.start()
    await asyncio.wait_for(seen.wait(), 2)
    written = len(server.raw)

    for action, fields in (("Originate", ORIGINATE), ("Ping", {})):
        with pytest.raises(AmiNotReady):
            await conn.send(action, fields)

    assert len(server.raw) == written
    assert [r.name for r in server.received] == ["login"]
    assert not conn.healthy
    server.broadcast(FULLY_BOOTED)
    await asyncio.wait_for(conn.up.wait(), 2)
    await conn.send("Originate", ORIGINATE)
    assert [r.name for r in server.received] == ["login", "originate"]


# ------------------------------------------------------------------ (b) deadlines


async def test_given_an_action_never_answered_when_its_deadline_passes_then_amitimeout_and_a_late_answer_is_harmless(
    server: FakeAmi, connect: Callable[..., AmiConnection], caplog: pytest.LogCaptureFixture
) -> None:
    server.withhold.add("hangup")
    conn = connect()
    await conn.start(wait=2)

    started = time.monotonic()
    with pytest.raises(AmiTimeout):
        await conn.send("Hangup", {"Channel": "att-1"}, timeout=0.3)
    waited = time.monotonic() - started

    assert 0.3 <= waited < 0.6
    server.withhold.clear()
    with caplog.at_level(logging.DEBUG):
        server.answer_withheld()  # the late answer, then business as usual
        await async_until(lambda: not server.sessions[0].withheld, timeout=1)
        assert (await conn.send("Ping")).get("Ping") == "Pong"
        answer = await conn.send("Hangup", {"Channel": "att-2"})
    assert answer.action_id == server.actions("hangup")[-1].get("ActionID")
    assert conn.healthy and conn.connects == 1 and len(server.sessions) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ------------------------------------------------------------------ (c) no resend


async def test_panoramisk_alone_resends_originate_after_reconnect(server: FakeAmi) -> None:
    """The library defect, reproduced: plain panoramisk queues an unanswered Originate and
    writes it again on the next connection's FullyBooted: the contact is dialled twice."""
    server.close_on.add("originate")
    manager = Manager(
        host="127.0.0.1",
        port=server.port,
        username="outbound",
        secret=SECRET,
        loop=asyncio.get_running_loop(),
        ping_delay=3600,
        reconnect_timeout=0,
    )
    booted = asyncio.Event()
    manager.register_event("FullyBooted", lambda *_: booted.set())
    manager.connect()
    try:
        await asyncio.wait_for(booted.wait(), 2)

        answer = manager.send_action({"Action": "Originate", **ORIGINATE})

        await async_until(lambda: len(server.actions("originate")) == 2, timeout=3)
        originates = server.actions("originate")
        assert [r.session for r in originates] == [0, 1]  # once per connection
        assert originates[0].get("ActionID") == originates[1].get("ActionID")
        assert originates[1].get("ChannelId") == "att-1"
        # ...and the caller is never told: it gets the second call's result as its own.
        server.broadcast(ORIGINATE_RESPONSE.format(aid=originates[1].get("ActionID")))
        queued, result = await asyncio.wait_for(answer, 2)
        assert (queued.response, result.event) == ("Success", "OriginateResponse")
    finally:
        manager.close()


async def test_given_the_connection_drops_after_an_originate_when_it_comes_back_then_the_originate_is_never_sent_again(
    server: FakeAmi, connect: Callable[..., AmiConnection]
) -> None:
    server.close_on.add("originate")
    conn = connect()
    await conn.start(wait=2)

    started = time.monotonic()
    with pytest.raises(AmiConnectionLost, match="Originate"):
        await conn.send("Originate", ORIGINATE)
    assert time.monotonic() - started < conn.action_timeout / 2  # told at once, not at a deadline

    await async_until(
        lambda: conn.healthy and conn.connects == 2, timeout=3, message="reconnected by itself"
    )
    await conn.send("Ping")  # the server has read everything written before this
    assert [r.session for r in server.actions("originate")] == [0]
    assert [r.session for r in server.actions("login")] == [0, 1]


async def test_given_the_connection_drops_during_a_ping_when_it_reconnects_at_once_then_the_lost_ping_does_not_drop_the_new_one(
    server: FakeAmi, connect: Callable[..., AmiConnection]
) -> None:
    conn = connect(ping_interval=0.3)
    await conn.start(wait=2)
    server.close_on.add("ping")  # e.g. a firewall that dropped the idle connection

    await async_until(lambda: conn.connects == 2, timeout=3, message="reconnected")
    # The next Ping is sent only after the lost one's deadline has passed.
    await async_until(
        lambda: [r for r in server.actions("ping") if r.session == 1],
        timeout=3,
        message="a ping on the second connection",
    )

    await conn.send("Ping")
    assert conn.healthy and conn.connects == 2
    assert len(server.sessions) == 2


# ------------------------------------------------------------------ (d) checked pings


async def test_given_the_server_stops_answering_when_two_ping_intervals_pass_then_unhealthy_refused_and_back_by_itself(
    server: FakeAmi, connect: Callable[..., AmiConnection]
) -> None:
    interval = 0.4
    conn = connect(ping_interval=interval, action_timeout=0.5, connect_timeout=0.2)
    await conn.start(wait=2)
    # Freeze right after a Pong: the worst case for noticing it.
    await async_until(lambda: server.actions("ping"), timeout=2 * interval, interval=0.005)

    server.freeze()
    frozen_at = time.monotonic()
    await async_until(lambda: not conn.healthy, timeout=3 * interval, interval=0.01)
    noticed = time.monotonic() - frozen_at

    assert noticed <= 2 * interval + 0.1, f"noticed after {noticed:.2f} s"  # + a round trip
    written = len(server.raw)
    with pytest.raises(AmiNotReady):
        await conn.send("Originate", ORIGINATE)
    assert len(server.raw) == written
    assert "ping unanswered" in conn.last_error
    server.thaw()
    await async_until(lambda: conn.healthy, timeout=5, message="healthy again by itself")
    await conn.send("Originate", ORIGINATE)
    assert len(server.actions("originate")) == 1


# ------------------------------------------------------------------ (e) values checked


@pytest.mark.parametrize(
    "fields",
    [
        {**ORIGINATE, "CallerID": '"Eve" <1>\r\nAction: Originate\r\nChannel: Local/666@x'},
        {**ORIGINATE, "CallerID": "Eve\r\n\r\nAction: Hangup\r\nChannel: att-0"},
        {**ORIGINATE, "Variable": ["OUTBOUND_ATTEMPT_ID=att-1", "CONTACT_NAME=Eve\nMallory"]},
        {**ORIGINATE, "Account": "a\0b"},
        {**ORIGINATE, "X\r\nAction": "Hangup"},
        {**ORIGINATE, "CallerID": "x" * 5000},
    ],
    ids=["crlf-callerid", "crlfcrlf-second-action", "lf-variable", "nul", "crlf-key", "too-long"],
)
async def test_given_a_value_that_would_change_the_stream_when_sent_then_unsafevalue_and_no_byte_written(
    server: FakeAmi, connect: Callable[..., AmiConnection], fields: dict[str, Any]
) -> None:
    conn = connect()
    await conn.start(wait=2)
    written = len(server.raw)

    with pytest.raises(UnsafeValue):
        await conn.send("Originate", fields)

    await conn.send("Ping")  # the next bytes on the wire are the Ping, and only it
    assert server.raw[written:].startswith(b"Action: Ping\r\n")
    assert server.raw[written:].count(EOM) == 1
    assert [r.name for r in server.received] == ["login", "ping"]
    assert conn.healthy


# ------------------------------------------------------------------ (f) login, back-off


async def test_given_a_refused_login_when_it_keeps_failing_then_last_error_says_so_and_attempts_back_off(
    server: FakeAmi, connect: Callable[..., AmiConnection]
) -> None:
    server.login_ok = False
    # Back-off gaps (0.05 .. 1.6 s) grow past the connect+login deadline (0.5 s).
    conn = connect(backoff=(0.05, 1.6), connect_timeout=0.2, action_timeout=0.3)
    await conn.start()
    errors: set[str] = set()  # what a health page would have shown meanwhile

    def six_attempts() -> bool:
        errors.add(conn.last_error)
        return len(server.accepted_at) >= 6

    await async_until(six_attempts, timeout=6, interval=0.01, message="6 attempts")
    gaps = [b - a for a, b in zip(server.accepted_at, server.accepted_at[1:], strict=False)]

    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps
    assert errors - {""} == {"login failed: Authentication failed"}
    assert not conn.healthy
    with pytest.raises(AmiNotReady):
        await conn.send("Ping")
    server.login_ok = True
    await async_until(lambda: conn.healthy, timeout=4, message="logged in once allowed")
    assert conn.last_error == ""


async def test_given_a_successful_login_when_the_connection_drops_then_the_back_off_starts_over(
    server: FakeAmi, connect: Callable[..., AmiConnection]
) -> None:
    server.login_ok = False
    conn = connect(backoff=(0.05, 1.0))
    await conn.start()
    await async_until(lambda: len(server.accepted_at) >= 4, timeout=3)  # back-off grown
    server.login_ok = True
    await async_until(lambda: conn.healthy, timeout=3)
    before = len(server.accepted_at)

    for s in server.sessions:
        s.writer.transport.abort()
    cut_at = time.monotonic()
    await async_until(lambda: len(server.accepted_at) > before, timeout=2)

    assert server.accepted_at[before] - cut_at < 0.05 * 1.2 + 0.1


async def test_given_a_peer_that_stops_accepting_when_a_reconnect_hangs_in_connect_then_it_is_retried_and_recovers(
    server: FakeAmi, connect: Callable[..., AmiConnection]
) -> None:
    """A frozen Asterisk whose accept queue is full drops SYNs: connect() itself hangs."""
    conn = connect(connect_timeout=0.2, action_timeout=0.3, backoff=(0.05, 0.2))
    await conn.start(wait=2)
    await server.stop_listening()
    jammed = socket.socket()
    jammed.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    jammed.bind(("127.0.0.1", server.port))
    jammed.listen(0)
    filler = socket.create_connection(("127.0.0.1", server.port))  # fills the queue
    try:
        for s in server.sessions:
            s.writer.transport.abort()
        await async_until(lambda: not conn.healthy, timeout=2)
        await async_until(
            lambda: conn.last_error == "connect/login timed out", timeout=2, message="deadline"
        )
    finally:
        filler.close()
        jammed.close()
    await server.start(server.port)

    await async_until(lambda: conn.healthy, timeout=3, message="reconnected once accepting")
    assert conn.connects == 2


# ------------------------------------------------------------------ (g) resync


async def test_given_on_ready_callbacks_when_reconnecting_then_they_run_first_and_healthy_only_after(
    server: FakeAmi, connect: Callable[..., AmiConnection]
) -> None:
    conn = connect()
    runs: list[dict[str, Any]] = []
    release = asyncio.Event()

    async def resync() -> None:
        run: dict[str, Any] = {"healthy_at_start": conn.healthy}
        runs.append(run)
        run["channels"] = await conn.send_list("CoreShowChannels")
        if len(runs) > 1:
            await release.wait()
        run["done"] = True

    conn.on_ready(resync)
    await conn.start(wait=2)
    assert runs[0]["done"] and len(runs[0]["channels"]) == 1
    for s in server.sessions:
        s.writer.transport.abort()

    await async_until(lambda: len(runs) == 2 and "channels" in runs[1], timeout=3)
    assert not conn.healthy and not conn.up.is_set()
    assert [r.name for r in server.received if r.session == 1] == ["login", "coreshowchannels"]
    release.set()
    await async_until(lambda: conn.healthy, timeout=2)
    assert runs[1]["healthy_at_start"] is False
    assert runs[1]["channels"][0].get("Uniqueid") == "att-1"
    assert conn.connects == 2


async def test_given_a_failing_resync_when_connected_then_never_healthy_and_it_reconnects(
    server: FakeAmi, connect: Callable[..., AmiConnection]
) -> None:
    conn = connect()
    calls = 0

    async def resync() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("state could not be rebuilt")

    conn.on_ready(resync)
    await conn.start()

    await async_until(lambda: conn.healthy, timeout=3)
    assert calls == 2 and conn.connects == 1
    assert len(server.sessions) == 2


async def test_given_a_connection_closed_while_connecting_when_the_connect_completes_then_it_is_dropped_unused(
    server: FakeAmi, connect: Callable[..., AmiConnection]
) -> None:
    conn = connect()
    await conn.start()  # the connect is under way
    await conn.close()

    await async_until(
        lambda: server.sessions and server.sessions[0].done.is_set(),
        timeout=2,
        message="the late connection closed by the client",
    )
    assert server.received == []

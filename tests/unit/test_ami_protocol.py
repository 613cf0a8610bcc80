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
from tests.helpers.until import async_until

SECRET = "s3cret"
EOM = b"\r\n\r\n"

# Recorded from the sandbox Asterisk 22 ({aid} = the request's ActionID).
BANNER = "Asterisk Call Manager/11.0.0\r\n"
LOGIN_OK = "Response: Success\r\nActionID: {aid}\r\nMessage: Authentication accepted\r\n\r\n"
LOGIN_FAILED = "Response: Error\r\nActionID: {aid}\r\nMessage: Authentication failed\r\n\r\n"
FULLY_BOOTED = (
    "Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: 1\r\nLastReload: 1\r\n"
    "Status: Fully Booted\r\n\r\n"
)
PONG = "Response: Success\r\nActionID: {aid}\r\nPing: Pong\r\nTimestamp: 1795387401.378822\r\n\r\n"
ORIGINATE_QUEUED = (
    "Response: Success\r\nActionID: {aid}\r\nMessage: Originate successfully queued\r\n\r\n"
)
HUNGUP = "Response: Success\r\nActionID: {aid}\r\nMessage: Channel Hungup\r\n\r\n"
CORE_SHOW_CHANNELS = (
    "Response: Success\r\nActionID: {aid}\r\nEventList: start\r\n"
    "Message: Channels will follow\r\n\r\n"
    "Event: CoreShowChannel\r\nActionID: {aid}\r\n"
    "Channel: Local/123@sim-contacts-00000000;1\r\nChannelState: 6\r\n"
    "ChannelStateDesc: Up\r\nCallerIDNum: <unknown>\r\nCallerIDName: <unknown>\r\n"
    "ConnectedLineNum: <unknown>\r\nConnectedLineName: <unknown>\r\nLanguage: en\r\n"
    "AccountCode: \r\nContext: sim-hold\r\nExten: s\r\nPriority: 2\r\nUniqueid: att-1\r\n"
    "Linkedid: att-1\r\nApplication: Wait\r\nApplicationData: 3600\r\n"
    "Duration: 00:00:02\r\nBridgeId: \r\n\r\n"
    "Event: CoreShowChannelsComplete\r\nActionID: {aid}\r\nEventList: Complete\r\n"
    "ListItems: 1\r\n\r\n"
)
ORIGINATE_RESPONSE = (
    "Event: OriginateResponse\r\nPrivilege: call,all\r\nTimestamp: 1795387403.991189\r\n"
    "ActionID: {aid}\r\nResponse: Success\r\nChannel: Local/123@sim-contacts-00000000;1\r\n"
    "Context: sim-hold\r\nExten: s\r\nReason: 4\r\nUniqueid: att-1\r\n"
    "CallerIDNum: <unknown>\r\nCallerIDName: <unknown>\r\n\r\n"
)
GOODBYE = "Response: Goodbye\r\nActionID: {aid}\r\nMessage: Thanks for all the fish.\r\n\r\n"
DEVICE_STATE = (
    "Event: DeviceStateChange\r\nPrivilege: call,all\r\nTimestamp: 1795387402.986094\r\n"
    "Device: Local/123@sim-contacts\r\nState: INUSE\r\n\r\n"
)
ANSWERS = {
    "ping": PONG,
    "originate": ORIGINATE_QUEUED,
    "hangup": HUNGUP,
    "coreshowchannels": CORE_SHOW_CHANNELS,
}

# What the originator sends for one attempt (extensions_outbound.conf).
ORIGINATE = {
    "Channel": "Local/+49301234560@outbound-dial",
    "Context": "sim-hold",
    "Exten": "s",
    "Priority": "1",
    "ChannelId": "att-1",
    "Async": "true",
    "Timeout": "30000",
    "Variable": ["OUTBOUND_ATTEMPT_ID=att-1", "OUTBOUND_TRUNK_DIAL=Local/${NUMBER}@sim-contacts"],
}


class Received:
    """One action as the fake server read it."""

    def __init__(self, session: int, raw: bytes) -> None:
        self.session = session
        self.raw = raw
        self.pairs = []
        for line in raw.decode("utf-8", "replace").split("\r\n"):
            key, sep, value = line.partition(": ")
            if sep:
                self.pairs.append((key.lower(), value))

    def get(self, key: str) -> str:
        return next((v for k, v in self.pairs if k == key.lower()), "")

    @property
    def name(self) -> str:
        return self.get("Action").lower()

    def __repr__(self) -> str:
        return f"Received(session={self.session}, {self.raw!r})"


class FakeAmi:
    """The AMI end of the wire; every knob is a plain attribute a test sets."""

    def __init__(self) -> None:
        self.login_ok = True
        self.fully_booted = True  # send FullyBooted right after the login response
        self.after_login = ""  # packets sent right after the login response
        self.withhold: set[str] = set()  # actions (lower case) never answered
        self.close_on: set[str] = set()  # actions that close the connection unanswered, once
        self.awake = asyncio.Event()  # cleared: frozen (TCP open, nothing read or answered)
        self.awake.set()
        self.sessions: list[_Session] = []
        self.accepted_at: list[float] = []
        self.received: list[Received] = []
        self.raw = bytearray()  # every byte read, all connections
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def stop(self) -> None:
        await self.stop_listening()
        self.thaw()  # a frozen session would never notice it is gone
        for s in self.sessions:
            s.writer.transport.abort()
        for s in self.sessions:
            await asyncio.wait_for(s.done.wait(), 5)

    def actions(self, name: str) -> list[Received]:
        return [r for r in self.received if r.name == name.lower()]

    def freeze(self) -> None:
        self.awake.clear()

    def thaw(self) -> None:
        self.awake.set()

    def broadcast(self, packet: str) -> None:
        for s in self.sessions:
            if not s.writer.is_closing():
                s.writer.write(packet.encode())

    def answer_withheld(self) -> None:
        """The late answers to everything withheld so far."""
        for s in self.sessions:
            for r in s.withheld:
                if not s.writer.is_closing():
                    s.writer.write(ANSWERS[r.name].format(aid=r.get("ActionID")).encode())
            s.withheld.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(self, len(self.sessions), reader, writer)
        self.sessions.append(session)
        self.accepted_at.append(time.monotonic())
        try:
            await session.run()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()  # after what was written (a refused login's answer)
            session.done.set()


class _Session:
    def __init__(
        self,
        server: FakeAmi,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server, self.index, self.reader, self.writer = server, index, reader, writer
        self.logged_in = False
        self.withheld: list[Received] = []
        self.done = asyncio.Event()

    def send(self, text: str) -> None:
        self.writer.write(text.encode())

    async def run(self) -> None:
        await self.server.awake.wait()
        self.send(BANNER)
        buf = b""
        while True:
            await self.server.awake.wait()
            chunk = await self.reader.read(65536)
            if not chunk:
                return
            self.server.raw += chunk
            buf += chunk
            while EOM in buf:
                msg, buf = buf.split(EOM, 1)
                await self.server.awake.wait()
                if not self.handle(Received(self.index, msg + EOM)):
                    return

    def handle(self, r: Received) -> bool:
        """Answer one action; False ends the connection."""
        srv = self.server
        srv.received.append(r)
        aid = r.get("ActionID")
        if r.name in srv.close_on:
            srv.close_on.discard(r.name)
            return False
        if r.name in srv.withhold:
            self.withheld.append(r)
            return True
        if r.name == "login":
            if not srv.login_ok or r.get("Secret") != SECRET:
                self.send(LOGIN_FAILED.format(aid=aid))
                return False  # as Asterisk does after a failed login
            self.logged_in = True
            self.send(LOGIN_OK.format(aid=aid) + srv.after_login)
            if srv.fully_booted:
                self.send(FULLY_BOOTED)
            return True
        if r.name == "logoff":
            self.send(GOODBYE.format(aid=aid))
            return False
        self.send(ANSWERS[r.name].format(aid=aid))
        return True


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

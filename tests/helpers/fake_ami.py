"""A tiny fake AMI server on loopback for protocol tests: packets recorded from the sandbox
Asterisk 22 (banner, Login, FullyBooted, Ping, Originate, CoreShowChannels, Hangup), with
ActionIDs substituted. It records every byte and action per connection, and can withhold
answers, drop the connection on an action, refuse logins, hold back FullyBooted or freeze
(keep TCP open, answer nothing) as a SIGSTOPped Asterisk does."""

from __future__ import annotations

import asyncio
import time

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

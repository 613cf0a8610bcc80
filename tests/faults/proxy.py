"""A small asyncio TCP proxy that breaks an AMI connection on purpose.

It forwards 127.0.0.1:<port> to the real AMI port, message by message (AMI messages end
with a blank line), and keeps what it saw, so a test can say both what the client tried
to send and what reached Asterisk:

    proxy = FaultProxy(ami_port); await proxy.start()
    proxy.cut_after(b"Action: Originate")  # forward that action, then cut before any answer
    proxy.hold(b"Action: Originate")       # keep such actions back (other traffic flows)
    proxy.blackhole()                      # connections stay open, nothing gets through
    proxy.refuse_connections = True        # accept and drop at once (the far end is away)
    proxy.cut_all()
    proxy.accepted, proxy.open_connections, proxy.from_client, proxy.to_server
    await proxy.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

EOM = b"\r\n\r\n"


class _Link:
    """One client connection and its connection to the server."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.cut = False
        self.held: list[bytes] = []

    def cut_now(self) -> None:
        """The client sees the connection reset at once; the server gets what was already
        forwarded, then an orderly close (it reads the last action before the EOF)."""
        self.cut = True
        self.client.transport.abort()
        self.server.close()


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0  # connections accepted from clients, refused ones included
        self.from_client = bytearray()  # every byte clients sent, whether forwarded or not
        self.to_server = bytearray()  # every byte forwarded to the server
        self.refuse_connections = False
        self.cuts = 0  # connections cut by cut_after()
        self._links: set[_Link] = set()
        self._cut_pattern: bytes | None = None
        self._hold_pattern: bytes | None = None
        self._blackhole = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ faults
    def cut_after(self, pattern: bytes) -> None:
        """Once: forward the next client message containing `pattern`, then cut that
        connection before anything more (the server's answer above all) is forwarded."""
        self._cut_pattern = pattern

    def hold(self, pattern: bytes) -> None:
        """Keep client messages containing `pattern` back (not forwarded) until
        `release()`; everything else flows. Held messages die with their connection."""
        self._hold_pattern = pattern

    def release(self) -> None:
        self._hold_pattern = None
        for link in list(self._links):
            for msg in link.held:
                self._forward(link, msg)
            link.held.clear()

    @property
    def held(self) -> list[bytes]:
        return [msg for link in self._links for msg in link.held]

    def blackhole(self, on: bool = True) -> None:
        """Drop every byte in both directions; connections stay open (as a frozen or
        partitioned peer whose kernel still holds the TCP connection)."""
        self._blackhole = on

    def cut_all(self) -> None:
        for link in list(self._links):
            link.cut_now()

    @property
    def open_connections(self) -> int:
        return len(self._links)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut_all()  # each connection's handler then ends by itself
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------ forwarding
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        try:
            if self.refuse_connections:
                writer.transport.abort()
                return
            try:
                s_reader, s_writer = await asyncio.open_connection(*self.target)
            except OSError:
                writer.transport.abort()
                return
            link = _Link(writer, s_writer)
            self._links.add(link)
            pumps = {
                asyncio.ensure_future(self._pump(self._client_to_server(link, reader))),
                asyncio.ensure_future(self._pump(self._server_to_client(link, s_reader))),
            }
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.wait(pumps)
                self._links.discard(link)
                if not link.cut:
                    writer.close()
                    s_writer.close()
        finally:
            self._tasks.discard(task)

    @staticmethod
    async def _pump(direction: Awaitable[None]) -> None:
        with contextlib.suppress(ConnectionError):  # a reset ends the direction as EOF does
            await direction

    def _forward(self, link: _Link, msg: bytes) -> None:
        if link.cut or link.server.is_closing():
            return
        self.to_server += msg
        link.server.write(msg)

    async def _client_to_server(self, link: _Link, reader: asyncio.StreamReader) -> None:
        pending = b""
        while not link.cut:
            chunk = await reader.read(65536)
            if not chunk:
                return
            self.from_client += chunk
            if self._blackhole:
                continue
            pending += chunk
            while EOM in pending:  # whole messages only, so that a rule sees all of one
                msg, pending = pending.split(EOM, 1)
                msg += EOM
                if self._hold_pattern is not None and self._hold_pattern in msg:
                    link.held.append(msg)
                    continue
                self._forward(link, msg)
                if self._cut_pattern is not None and self._cut_pattern in msg:
                    # At once, without yielding: no answer can slip through; the server
                    # still gets the message (close() flushes before the FIN).
                    self._cut_pattern = None
                    self.cuts += 1
                    link.cut_now()
                    return
            await link.server.drain()

    async def _server_to_client(self, link: _Link, reader: asyncio.StreamReader) -> None:
        while not link.cut:
            chunk = await reader.read(65536)
            if not chunk:
                return
            if self._blackhole or link.cut:
                continue
            link.client.write(chunk)
            await link.client.drain()

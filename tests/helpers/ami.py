"""A tiny test-side AMI client on a raw asyncio socket.

Independent of the product's AMI code on purpose: tests use it to arrange state and to
check what Asterisk itself saw. Every wait has a deadline; every event received since
login is kept, so a test cannot miss an event that arrived before it started waiting.

    ami = await AmiClient.connect(info.ami_host, info.ami_port, user, secret)
    resp = await ami.send("Originate", Channel="Local/123@sim-contacts", ...)
    ev = await ami.wait_event("OriginateResponse", ActionID=resp["ActionID"], timeout=10)
    _, channels = await ami.collect("CoreShowChannels")
    await ami.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["AmiClient", "AmiError", "Message"]

_ids = itertools.count(1)


class AmiError(Exception):
    """The AMI connection failed or an action was refused."""


class Message(dict[str, str]):
    """One AMI packet. ``msg[key]`` is the first value of a header; ``msg.all(key)``
    gives every value of a repeated header (``Output``, ``ChanVariable``...)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        super().__init__()
        self.multi: dict[str, list[str]] = {}
        for key, value in pairs:
            self.multi.setdefault(key, []).append(value)
            self.setdefault(key, value)

    def all(self, key: str) -> list[str]:
        return list(self.multi.get(key, []))

    def matches(self, event: str | None, match: Mapping[str, Any]) -> bool:
        if event is not None and self.get("Event") != event:
            return False
        return all(self.get(k) == str(v) for k, v in match.items())

    def __repr__(self) -> str:
        return f"Message({dict(self)!r})"


def _parse(raw: bytes) -> Message:
    pairs = []
    for line in raw.decode(errors="replace").split("\r\n"):
        if not line:
            continue
        key, sep, value = line.partition(":")
        pairs.append((key.strip(), value.strip()) if sep else ("Output", line))
    return Message(pairs)


class AmiClient:
    """One logged-in AMI session."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._lists: dict[str, list[Message]] = {}
        self._list_done: dict[str, asyncio.Future[None]] = {}
        self._cond = asyncio.Condition()
        self.events: list[Message] = []
        self.banner = ""
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        username: str,
        secret: str,
        timeout: float = 5.0,
        events: bool = True,
    ) -> AmiClient:
        """Connect and log in; raises AmiError if the login is refused."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=2**20), timeout
        )
        client = cls(reader, writer)
        banner = await asyncio.wait_for(reader.readline(), timeout)
        client.banner = banner.decode().strip()
        client._task = asyncio.get_running_loop().create_task(client._read_loop())
        resp = await client.send(
            "Login",
            timeout=timeout,
            check=False,
            Username=username,
            Secret=secret,
            Events="on" if events else "off",
        )
        if resp.get("Response") != "Success":
            await client.close()
            raise AmiError(f"AMI login as {username} refused: {resp.get('Message')}")
        return client

    async def _read_loop(self) -> None:
        try:
            while True:
                raw = await self._reader.readuntil(b"\r\n\r\n")
                msg = _parse(raw)
                aid = msg.get("ActionID", "")
                if "Response" in msg and aid in self._pending:
                    fut = self._pending.pop(aid)
                    if not fut.done():
                        fut.set_result(msg)
                    continue
                if "Event" in msg and aid in self._lists:
                    if msg.get("EventList") == "Complete":
                        done = self._list_done.pop(aid, None)
                        if done is not None and not done.done():
                            done.set_result(None)
                    else:
                        self._lists[aid].append(msg)
                    continue
                if "Event" in msg:
                    async with self._cond:
                        self.events.append(msg)
                        self._cond.notify_all()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError) as exc:
            self._error = exc
        finally:
            err = AmiError(f"AMI connection closed ({self._error!r})")
            waiters: list[asyncio.Future[Any]] = [*self._pending.values()]
            waiters += self._list_done.values()
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(err)
            async with self._cond:
                self._cond.notify_all()

    def _write(self, action: str, aid: str, headers: Mapping[str, Any]) -> None:
        if self._task is not None and self._task.done():
            raise AmiError(f"AMI connection closed ({self._error!r})")
        lines = [f"Action: {action}", f"ActionID: {aid}"]
        for key, value in headers.items():
            values = value if isinstance(value, list | tuple) else [value]
            lines.extend(f"{key}: {v}" for v in values)
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def send(
        self, action: str, timeout: float = 5.0, check: bool = True, **headers: Any
    ) -> Message:
        """Send an action and return its Response. With ``check``, a Response other
        than Success raises AmiError. ``variables={"K": "v"}`` becomes Variable headers."""
        aid = headers.pop("ActionID", None) or f"t{next(_ids)}"
        variables = headers.pop("variables", None)
        if variables:
            headers["Variable"] = [f"{k}={v}" for k, v in variables.items()]
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[aid] = fut
        self._write(action, aid, headers)
        await self._writer.drain()
        try:
            resp = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._pending.pop(aid, None)
            raise AmiError(f"no response to {action} within {timeout}s") from None
        if check and resp.get("Response") != "Success":
            raise AmiError(f"{action} failed: {resp.get('Message')} {dict(resp)}")
        return resp

    async def collect(
        self, action: str, timeout: float = 5.0, **headers: Any
    ) -> tuple[Message, list[Message]]:
        """Send a list action (CoreShowChannels, DBGet, Status...) and return its
        Response and the events up to the ``EventList: Complete`` one."""
        aid = headers.pop("ActionID", None) or f"t{next(_ids)}"
        self._lists[aid] = []
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._list_done[aid] = done
        try:
            resp = await self.send(action, timeout=timeout, ActionID=aid, **headers)
            if resp.get("EventList") == "start":
                await asyncio.wait_for(done, timeout)
            return resp, self._lists[aid]
        except TimeoutError:
            raise AmiError(f"{action} list not complete within {timeout}s") from None
        finally:
            self._lists.pop(aid, None)
            self._list_done.pop(aid, None)

    async def command(self, command: str, timeout: float = 5.0) -> str:
        """Run a CLI command over AMI (needs write=command) and return its output."""
        resp = await self.send("Command", timeout=timeout, Command=command)
        return "\n".join(resp.all("Output"))

    async def db_get(self, family: str, key: str, timeout: float = 5.0) -> str | None:
        """Asterisk's internal database value, or None if the key does not exist."""
        try:
            _, events = await self.collect("DBGet", timeout=timeout, Family=family, Key=key)
        except AmiError:
            return None
        return events[0].get("Val") if events else None

    def find_events(self, event: str | None = None, **match: Any) -> list[Message]:
        """Events received so far with that name and those header values."""
        return [m for m in self.events if m.matches(event, match)]

    async def wait_event(
        self, event: str | None = None, timeout: float = 5.0, **match: Any
    ) -> Message:
        """The first event (received at any time since login) with that name and
        those header values; AssertionError if none arrives within ``timeout``."""

        async def first() -> Message:
            async with self._cond:
                while True:
                    found = self.find_events(event, **match)
                    if found:
                        return found[0]
                    if self._task is not None and self._task.done():
                        raise AmiError(f"AMI connection closed ({self._error!r})")
                    await self._cond.wait()

        try:
            return await asyncio.wait_for(first(), timeout)
        except TimeoutError:
            seen = [f"{m.get('Event')}" for m in self.events[-15:]]
            raise AssertionError(
                f"no AMI event {event} {match} within {timeout:g}s; last events seen: {seen}"
            ) from None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._task is not None and not self._task.done():
                await self.send("Logoff", timeout=1, check=False)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

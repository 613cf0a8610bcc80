"""The safe AMI connection: panoramisk for the wire protocol, our own rules for everything
that decides whether a call is placed twice.

What panoramisk does and we keep: framing and parsing of the AMI stream (AMIProtocol,
Message), ActionID bookkeeping, EventList collection, event dispatch by pattern.

What panoramisk does and we replace (each covered by a test in tests/faults/):
- After a reconnect it *resends* every action that got no answer (Originate included), from
  `Manager.send_awaiting_actions`. We fail those futures with `AmiConnectionLost` instead:
  an unanswered Originate is settled by the reconciler that looks for its ChannelId.
- Actions have no deadline. Every `send` here has one; a late answer is dropped.
- Its Ping is fire-and-forget, so a frozen Asterisk (SIGSTOP) is never noticed. We send Ping
  with a deadline of one interval and tear the connection down when it is missed: a freeze
  is noticed within two intervals, `healthy` turns False and dialing pauses.
- It reconnects every 2 s forever; we back off exponentially (with a cap) and bound connect
  and login with deadlines (a frozen Asterisk still accepts TCP in the kernel's backlog).
- It lets actions through before Asterisk is `FullyBooted`. We refuse them until then.
- It writes whatever values it is given. We check every header key and value first
  (`outbound.wire`): CR, LF, NUL or an over-long value never reach the socket.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from panoramisk import Manager
from panoramisk.actions import Action
from panoramisk.message import Message

from outbound.wire import check_fields

log = logging.getLogger("ami_bridge.connection")

EventHandler = Callable[[Message], Any]


class AmiError(Exception):
    """Any failure of an AMI action; the message says which action and why."""


class AmiNotReady(AmiError):
    """Not connected, not logged in, or Asterisk not FullyBooted: nothing was sent."""


class AmiTimeout(AmiError):
    """No answer within the action's deadline. The action may or may not have run."""


class AmiConnectionLost(AmiError):
    """The connection dropped before the answer came. The action may or may not have run;
    it is never resent."""


class AmiActionFailed(AmiError):
    """Asterisk answered with Error (e.g. Permission denied, No such channel)."""

    def __init__(self, action: str, response: Message) -> None:
        self.response = response
        super().__init__(f"{action}: {response.get('Message') or response.get('Response')}")


class _NoResendManager(Manager):
    """panoramisk's Manager with the resend, the blind ping and the fixed reconnect removed."""

    owner: AmiConnection

    def send_awaiting_actions(self, *_: Any) -> None:
        # panoramisk would resend here (on FullyBooted after a reconnect). Never.
        self._fail_awaiting()

    def _fail_awaiting(self) -> None:
        while self.awaiting_actions:
            action = self.awaiting_actions.popleft()
            if not action.future.done():
                action.future.set_exception(
                    AmiConnectionLost(f"{action.get('Action')}: connection lost before answer")
                )

    def ping(self) -> None:  # the owner's health loop pings, and checks the answer
        self.pinger = None

    def connection_made(self, f: asyncio.Future[Any]) -> None:
        try:
            transport, _protocol = f.result()
        except (OSError, asyncio.CancelledError) as exc:  # cancelled: the connect deadline
            self.owner._on_connect_failed(exc)
            return
        if self.owner._closing:  # closed while this attempt was connecting
            transport.close()
            return
        super().connection_made(f)
        if self.pinger is not None:
            self.pinger.cancel()
            self.pinger = None

    def login(self, future: asyncio.Future[Any]) -> bool:
        self.authenticated_future = None
        try:
            resp = future.result()
        except Exception as exc:  # lost connection or timed out while logging in
            self.owner._on_login(False, str(exc))
            return False
        self.authenticated = bool(resp.success)
        self.owner._on_login(self.authenticated, resp.get("Message", ""))
        return self.authenticated

    def connection_lost(self, exc: Any) -> None:
        self._connected = False
        self.authenticated = False
        self._fail_awaiting()
        self.owner._on_disconnect(exc)


class AmiConnection:
    """One AMI session to one Asterisk, kept alive and checked.

    `ready` is set while logged in and Asterisk is FullyBooted; `healthy` is what the
    health endpoint and the dialer read (False while disconnected or after a missed ping).
    `on_ready` callbacks run after every (re)connection, before anything else is sent:
    that is where state is resynchronised (CoreShowChannels, BridgeList, ConfbridgeList).
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        ping_interval: float = 5.0,
        action_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        backoff: tuple[float, float] = (0.2, 10.0),
    ) -> None:
        check_fields({"Username": username, "Secret": secret})
        self.host, self.port = host, port
        self.username, self.secret = username, secret
        self.ping_interval = ping_interval
        self.action_timeout = action_timeout
        self.connect_timeout = connect_timeout
        self.backoff_min, self.backoff_max = backoff
        self._backoff = self.backoff_min
        self.ready = asyncio.Event()  # sends allowed (resync callbacks run in this state)
        self.up = asyncio.Event()  # resync done: healthy
        self.healthy = False
        self.last_error = ""
        self.connects = 0  # successful logins so far (1 = first, >1 = reconnects)
        self.last_pong = 0.0
        self._handlers: list[tuple[str, EventHandler]] = []
        self._on_ready: list[Callable[[], Awaitable[None]]] = []
        self._on_down: list[Callable[[str], Any]] = []
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._manager: _NoResendManager | None = None
        self._logged_in = False
        self._booted = False
        self._connect_deadline: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ public API
    def on_event(self, pattern: str, handler: EventHandler) -> None:
        """Call `handler(message)` for every event whose name matches (fnmatch) `pattern`."""
        self._handlers.append((pattern, handler))
        if self._manager is not None:
            self._manager.register_event(pattern, self._wrap(handler))

    def on_ready(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_ready.append(callback)

    def on_down(self, callback: Callable[[str], Any]) -> None:
        self._on_down.append(callback)

    async def start(self, wait: float | None = None) -> None:
        """Connect in the background; with `wait`, until ready or raise AmiNotReady."""
        loop = asyncio.get_running_loop()
        m = _NoResendManager(
            host=self.host,
            port=self.port,
            username=self.username,
            secret=self.secret,
            loop=loop,
            ping_delay=10**9,
            reconnect_timeout=1,
            forgetable_actions=("ping", "login", "logoff"),
        )
        m.owner = self
        m.register_event("FullyBooted", self._fully_booted)
        m.register_event("Shutdown", self._shutdown_event)
        for pattern, handler in self._handlers:
            m.register_event(pattern, self._wrap(handler))
        self._manager = m
        self._connect()
        self._spawn(self._health_loop())
        if wait is not None:
            try:
                await asyncio.wait_for(self.up.wait(), wait)
            except TimeoutError:
                raise AmiNotReady(
                    f"AMI {self.host}:{self.port} not ready after {wait:.0f} s: "
                    f"{self.last_error or 'no answer'}"
                ) from None

    async def close(self) -> None:
        self._closing = True
        self.ready.clear()
        self.healthy = False
        for t in list(self._tasks):
            t.cancel()
        if self._manager is not None:
            try:
                if self._logged_in:
                    await self.send("Logoff", timeout=1)
            except AmiError:
                pass
            self._manager.close()

    async def send(
        self, action: str, fields: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Message:
        """Send one action and return its response (Success). Raises AmiActionFailed on an
        Error response, AmiTimeout past the deadline, AmiConnectionLost if the connection
        drops first, AmiNotReady if not connected. Values are checked before sending."""
        resp = await self._send(action, fields, timeout, as_list=False)
        assert isinstance(resp, Message)
        if not resp.success:
            raise AmiActionFailed(action, resp)
        return resp

    async def send_list(
        self, action: str, fields: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> list[Message]:
        """Send an EventList action (CoreShowChannels, BridgeList, ...) and return its events
        (without the opening response and the closing *Complete event)."""
        resp = await self._send(action, fields, timeout, as_list=None)
        msgs = resp if isinstance(resp, list) else [resp]
        if msgs and not msgs[0].success:
            if "no active conferences" in str(msgs[0].get("Message", "")).lower():
                return []
            raise AmiActionFailed(action, msgs[0])
        return [m for m in msgs[1:] if not str(m.get("Event", "")).endswith("Complete")]

    # ------------------------------------------------------------ internals
    async def _send(
        self, action: str, fields: Mapping[str, Any] | None, timeout: float | None, as_list: Any
    ) -> Message | list[Message]:
        checked = check_fields({"Action": action, **(fields or {})})
        m = self._manager
        if (
            m is None
            or not self.ready.is_set()
            or m.protocol is None
            or getattr(m.protocol, "closed", True)
        ):
            raise AmiNotReady(f"{action}: AMI not ready ({self.last_error or 'not connected'})")
        return await self._write(m, checked, timeout, as_list)

    async def _write(
        self, m: _NoResendManager, checked: dict[str, Any], timeout: float | None, as_list: Any
    ) -> Message | list[Message]:
        act = Action(checked, as_list=as_list)
        fut = m.protocol.send(act, as_list=as_list)
        deadline = self.action_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(fut), deadline)
        except TimeoutError:
            # Forget it: a late answer must not complete anything, and it is never resent.
            m.protocol.responses.pop(act.id, None)
            if not fut.done():
                fut.cancel()
            raise AmiTimeout(f"{checked['Action']}: no answer within {deadline:.1f} s") from None

    def _wrap(self, handler: EventHandler) -> Callable[[Manager, Message], Any]:
        def call(_m: Manager, msg: Message) -> Any:
            try:
                return handler(msg)
            except Exception:  # one bad handler must not kill the event stream
                log.exception("event handler failed for %s", msg.get("Event"))
                return None

        return call

    def _spawn(self, coro: Awaitable[Any]) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _connect(self) -> None:
        if self._closing or self._manager is None:
            return
        loop = asyncio.get_running_loop()
        task = self._manager.connect()
        # A frozen peer may accept TCP (kernel backlog) and never answer: bound the login.
        if self._connect_deadline is not None:
            self._connect_deadline.cancel()
        self._connect_deadline = loop.call_later(
            self.connect_timeout + self.action_timeout, self._login_deadline, task
        )

    def _login_deadline(self, task: asyncio.Task[Any]) -> None:
        if self._logged_in or self._closing:
            return
        self.last_error = "connect/login timed out"
        log.warning("AMI %s:%s: %s", self.host, self.port, self.last_error)
        if not task.done():
            # Still connecting (a frozen peer with a full accept queue drops SYNs): the
            # cancellation reaches connection_made, which reconnects with back-off.
            task.cancel()
        elif not task.cancelled() and task.exception() is None:
            # Connected, login unanswered: abort this attempt's own transport (not
            # m.protocol, which may still be the previous, closed connection).
            transport, _protocol = task.result()
            transport.abort()  # -> connection_lost -> reconnect with back-off

    def _schedule_reconnect(self) -> None:
        if self._closing:
            return
        delay = self._backoff * (0.8 + 0.4 * random.random())
        self._backoff = min(self.backoff_max, self._backoff * 2)
        log.info("AMI %s:%s: reconnecting in %.1f s", self.host, self.port, delay)
        asyncio.get_running_loop().call_later(delay, self._connect)

    def _on_connect_failed(self, exc: BaseException) -> None:
        self._cancel_connect_deadline()
        if isinstance(exc, OSError):  # else cancelled by the deadline, which said so
            self.last_error = f"cannot connect: {exc.strerror or exc}"
        self._mark_down(self.last_error)
        self._schedule_reconnect()

    def _on_login(self, ok: bool, message: str) -> None:
        if not ok:
            self.last_error = f"login failed: {message}"
            log.error("AMI %s:%s: %s", self.host, self.port, self.last_error)
            m = self._manager
            if m is not None and m.protocol is not None:
                m.protocol.transport.abort()
            return
        self._logged_in = True
        self.last_pong = time.monotonic()
        # Asterisk sends FullyBooted right after the login response when it is up; it is
        # often parsed (and dispatched) before this callback runs, so either side may go on.
        if self._booted:
            self._spawn(self._become_ready())

    def _fully_booted(self, _m: Manager, _msg: Message) -> None:
        self._booted = True
        if self._logged_in and not self.ready.is_set():
            self._spawn(self._become_ready())

    async def _become_ready(self) -> None:
        m = self._manager
        assert m is not None
        if self.ready.is_set():
            return
        self.ready.set()  # resync below needs to send
        try:
            for cb in list(self._on_ready):
                await cb()
        except Exception as exc:
            self.last_error = f"resync failed: {exc}"
            log.exception("AMI resync failed; reconnecting")
            self.ready.clear()
            if m.protocol is not None:
                m.protocol.transport.abort()
            return
        self.connects += 1
        self._backoff = self.backoff_min
        self.healthy = True
        self.up.set()
        self.last_error = ""
        self._cancel_connect_deadline()
        log.info("AMI %s:%s ready (connection #%d)", self.host, self.port, self.connects)

    def _shutdown_event(self, _m: Manager, msg: Message) -> None:
        self.last_error = f"Asterisk shutting down ({msg.get('Restart', '')})"
        self._mark_down(self.last_error)

    def _cancel_connect_deadline(self) -> None:
        # The deadline guards one attempt; once that attempt has ended it must not fire
        # during the back-off (it would replace e.g. "login failed" in last_error).
        if self._connect_deadline is not None:
            self._connect_deadline.cancel()
            self._connect_deadline = None

    def _on_disconnect(self, exc: Any) -> None:
        self._cancel_connect_deadline()
        self._logged_in = False
        self._booted = False
        self._mark_down(self.last_error or f"connection lost: {exc}")
        self._schedule_reconnect()

    def _mark_down(self, why: str) -> None:
        was = self.healthy or self.ready.is_set()
        self.ready.clear()
        self.up.clear()
        self.healthy = False
        if was:
            log.warning("AMI %s:%s down: %s", self.host, self.port, why)
            for cb in list(self._on_down):
                try:
                    cb(why)
                except Exception:
                    log.exception("on_down callback failed")

    async def _health_loop(self) -> None:
        """Ping every interval and check the answer: a missed Pong tears the connection
        down (reconnect follows), so a frozen Asterisk is noticed within two intervals."""
        while not self._closing:
            await asyncio.sleep(self.ping_interval)
            m = self._manager
            if not self.ready.is_set() or m is None:
                continue
            proto = m.protocol
            try:
                await self.send("Ping", timeout=self.ping_interval)
                self.last_pong = time.monotonic()
            except AmiNotReady:
                continue
            except AmiError as exc:
                if proto is None or proto.closed or m.protocol is not proto:
                    # That connection is already gone (and being replaced): a Ping lost
                    # with it must not tear down the new one.
                    continue
                self.last_error = f"ping unanswered: {exc}"
                self._mark_down(self.last_error)
                proto.transport.abort()

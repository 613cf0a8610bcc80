"""The dialer's FastAGI server: asyncio, loopback by default, safe against its peers.

    server = AgiServer(host="127.0.0.1", port=4573)
    server.route(names.AGI_CLASSIFY, classify)      # async def classify(session): ...
    await server.start()
    ...
    await server.close()

A handler gets an `AgiSession`: the ``agi_*`` header (`AgiSession.variables`) and a few
commands (`get_variable`, `set_variable`, `exec`, `stream_file`, `hangup`). It reads
variables, calls the core, sets variables; the dialplan does the rest.

Why our own server and not a library's:

* pyst2 (the named AGI library) escapes no argument, so a value with a quote or a line
  break changes the command or becomes a second one; it crashes on the ``HANGUP`` line;
  its AGI class fails outside the main thread (``signal.signal``), and its FastAGI
  server is Python 2 only. Nothing of it runs in a call (the part-by-part verdict is in
  `agi_scripts.process`, which covers pyst2's own use case, the process AGI); it is a
  test-only dependency, and tests/unit/test_pyst2_defects.py reproduces each defect.
* panoramisk's FastAGI `Application` reads the header with ``while b"\\n\\n" not in
  buffer: buffer += await reader.read(100)``: a peer that sends half a header and
  closes makes that loop spin at 100% CPU forever, blocking the event loop
  (tests/unit/test_agi_protocol.py shows it); it has no deadlines or limits either.

What this server guarantees:

* the header is bounded (`max_header_lines`, `max_header_bytes`, `max_line_bytes`) and
  must arrive within `header_timeout`; an oversize, garbage or half header is logged and
  the connection closed; an early EOF ends the session at once (no busy loop);
* every command answer must arrive within `answer_timeout` (or the per-call timeout);
* at most `max_sessions` connections are open; when full, the oldest connection still
  waiting for its header is dropped for the new one (Asterisk sends its header at once,
  so only a stalled peer waits there), else the new one is refused;
* a hangup (``HANGUP`` line, ``511``, ``200 result=-1``) raises `AgiHangup` in the
  handler; the server swallows it and closes the session;
* an unknown route sets ``OUTBOUND_NEXT=hangup`` (the dialplan hangs up) and ends;
* every argument is quoted and escaped, and CR/LF/NUL refused (`agi_scripts.protocol`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from outbound import names

from .protocol import (
    AgiError,
    AgiHangup,
    AgiProtocolError,
    AgiTimeout,
    Answer,
    UnsafeValue,
    format_command,
    parse_answer,
    parse_header_line,
    variable_name,
)

__all__ = ["AgiServer", "AgiSession", "Handler"]

log = logging.getLogger(__name__)

Handler = Callable[["AgiSession"], Awaitable[None]]

# A variable name that can travel as a Gosub argument (no parentheses, commas, quotes).
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,79}")

# What an unknown route sets OUTBOUND_NEXT to (an extension of outbound-after-classify).
NEXT_HANGUP = "hangup"


class AgiSession:
    """One FastAGI call: the header and the commands a handler may send."""

    def __init__(
        self,
        variables: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        answer_timeout: float,
    ) -> None:
        self.variables = variables
        self.route = route_of(variables)
        # The call's arguments after the route's name, whatever the mode: the process
        # AGI drops agi_arg_1 when that named the route (agi_scripts.process).
        self.args: list[str] = call_args(variables)
        self._reader = reader
        self._writer = writer
        self._answer_timeout = answer_timeout
        self.hung_up = False

    @property
    def channel(self) -> str:
        return self.variables.get("agi_channel", "")

    async def command(self, command: str, *args: object, timeout: float | None = None) -> Answer:
        """Send one command (arguments quoted; an UnsafeValue means nothing was sent)
        and return its answer; AgiHangup if the channel is gone, AgiTimeout past the
        deadline."""
        line = format_command(command, *args)
        if self.hung_up:
            raise AgiHangup("channel already hung up")
        deadline = self._answer_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(deadline):
                self._writer.write(line)
                await self._writer.drain()
                return await self._read_answer()
        except TimeoutError:
            raise AgiTimeout(f"{command}: no answer within {deadline:g}s") from None
        except ConnectionError as exc:
            self.hung_up = True
            raise AgiHangup(f"{command}: connection lost ({exc})") from None

    async def _read_answer(self) -> Answer:
        while True:
            text = await self._read_line()
            if text == "HANGUP":
                # Asterisk's note that the channel hung up; the answer (511) may follow.
                self.hung_up = True
                raise AgiHangup("HANGUP")
            if text.startswith("520-"):
                # Usage text spans lines up to "520 End of proper usage.".
                usage = [text]
                while not text.startswith("520 "):
                    text = await self._read_line()
                    usage.append(text)
                raise AgiError("AGI usage error: " + " / ".join(usage))
            if text.startswith("100 "):
                continue  # "100 Trying...": the real answer follows
            try:
                return parse_answer(text)
            except AgiHangup:
                self.hung_up = True
                raise

    async def _read_line(self) -> str:
        try:
            raw = await self._reader.readline()
        except ValueError:  # longer than the stream's limit
            raise AgiProtocolError("answer line too long") from None
        if not raw.endswith(b"\n"):
            self.hung_up = True
            raise AgiHangup("connection closed by Asterisk")
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    async def get_variable(self, name: str) -> str | None:
        """GET VARIABLE: the value, or None if the variable is not set."""
        answer = await self.command("GET VARIABLE", variable_name(name))
        return answer.data if answer.result == 1 else None

    async def set_variable(self, name: str, value: object) -> None:
        """SET VARIABLE: `value` arrives exactly (quotes, backslashes, `${...}` too);
        CR/LF/NUL raise UnsafeValue before anything is sent."""
        await self.command("SET VARIABLE", variable_name(name), value)

    async def set_text(self, name: str, value: str) -> None:
        """Set `name` to any text, line breaks included, exactly. A value without CR/LF
        goes as SET VARIABLE; one with them travels base64-encoded and Asterisk decodes it
        (AGI ``GOSUB outbound-agi-set s 1 NAME,B64`` runs ``Set(NAME=${BASE64_DECODE(B64)})``):
        no line break is ever on the wire, so no value can become a second command.
        (EXEC does not evaluate ``${...}`` in its arguments, which is why the dialplan
        helper is needed.) NUL cannot live in an Asterisk variable: UnsafeValue."""
        if "\0" in value:
            raise UnsafeValue(f"{name}: contains NUL; refused before sending")
        if "\r" not in value and "\n" not in value:
            await self.set_variable(name, value)
            return
        if not _PLAIN_NAME.fullmatch(name):
            raise UnsafeValue(f"variable name {name!r}: only letters, digits and _ here")
        b64 = base64.b64encode(value.encode("utf-8")).decode("ascii")
        answer = await self.command("GOSUB", names.CTX_AGI_SET, "s", "1", f"{name},{b64}")
        if answer.result != 0:
            raise AgiError(f"set_text {name}: GOSUB {names.CTX_AGI_SET} failed ({answer.line})")

    async def get_text(self, name: str) -> str:
        """`name`'s value, line breaks included, exactly ("" when unset): read as
        ``${BASE64_ENCODE(${NAME})}``, so the answer is one line whatever the value holds
        (GET VARIABLE of a value with a line break would split Asterisk's answer)."""
        if not _PLAIN_NAME.fullmatch(name):
            raise UnsafeValue(f"variable name {name!r}: only letters, digits and _ here")
        answer = await self.command("GET FULL VARIABLE", f"${{BASE64_ENCODE(${{{name}}})}}")
        return base64.b64decode(answer.data or "").decode("utf-8", "replace")

    async def exec(self, app: str, *args: object, timeout: float | None = None) -> int:
        """EXEC an application with `args` joined by commas (the application's own
        argument separator); returns its result. A comma inside an argument would
        split it, so it is refused."""
        for i, a in enumerate(args):
            if "," in str(a):
                raise AgiError(f"EXEC {app}: argument {i + 1} holds a comma; refused")
        answer = await self.command(
            "EXEC", variable_name(app), ",".join(map(str, args)), timeout=timeout
        )
        return answer.result

    async def stream_file(
        self, prompt: str, escape_digits: str = "", timeout: float | None = None
    ) -> str:
        """STREAM FILE: play `prompt`; returns the digit that interrupted it, or ""."""
        answer = await self.command("STREAM FILE", prompt, escape_digits, timeout=timeout)
        return chr(answer.result) if answer.result > 0 else ""

    async def hangup(self) -> None:
        """HANGUP the channel; the session ends after it."""
        await self.command("HANGUP")
        self.hung_up = True

    def release(self) -> None:
        """End the AGI conversation now, leaving the channel alive: Asterisk continues
        the dialplan when the AGI stream closes, not when a handler has set its
        variables; the handler may go on with work that needs no command (a database
        write) while the call proceeds. No command can follow."""
        self.hung_up = True
        self._writer.close()


def call_args(variables: dict[str, str]) -> list[str]:
    """``agi_arg_1``, ``agi_arg_2``, ... in order, up to the first one missing."""
    out: list[str] = []
    while (value := variables.get(f"agi_arg_{len(out) + 1}")) is not None:
        out.append(value)
    return out


def route_of(variables: dict[str, str]) -> str:
    """The route name: the path of ``agi_request`` (``agi://host:port/classify?x`` ->
    ``classify``), else ``agi_network_script`` without its query."""
    request = variables.get("agi_request", "")
    path = urlsplit(request).path.strip("/") if "://" in request else ""
    if not path:
        path = variables.get("agi_network_script", "").split("?", 1)[0].strip("/")
    return path


class AgiServer:
    """A FastAGI server; routes by name, one task per connection."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 4573,
        *,
        max_sessions: int = 200,
        header_timeout: float = 5.0,
        answer_timeout: float = 30.0,
        max_header_lines: int = 64,
        max_header_bytes: int = 16384,
        max_line_bytes: int = 8192,
        backlog: int = 1024,
    ) -> None:
        self.host = host
        self.port = port
        self.max_sessions = max_sessions
        self.header_timeout = header_timeout
        self.answer_timeout = answer_timeout
        self.max_header_lines = max_header_lines
        self.max_header_bytes = max_header_bytes
        self.max_line_bytes = max_line_bytes
        self.backlog = backlog
        # Per kind of warning: when last logged, and how many were suppressed since.
        self._last_warned: dict[str, tuple[float, int]] = {}
        self._routes: dict[str, Handler] = {}
        self._server: asyncio.Server | None = None
        # Open connections; value: None while the header is awaited, else the route.
        self._conns: dict[asyncio.StreamWriter, str | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "sessions",
                "completed",
                "hangups",
                "errors",
                "header_timeouts",
                "header_rejected",
                "early_eof",
                "evicted",
                "refused",
                "unknown_route",
            ),
            0,
        )

    def route(self, name: str, handler: Handler) -> None:
        """Serve `handler` for ``agi://host:port/<name>``."""
        if name in self._routes:
            raise ValueError(f"route {name!r} already registered")
        self._routes[name] = handler

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(
            self._accept,
            self.host,
            self.port,
            limit=self.max_line_bytes,
            reuse_address=True,
            backlog=self.backlog,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("FastAGI listening on %s:%d", self.host, self.port)
        return self.port

    async def close(self) -> None:
        """Stop listening and end every open session."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            self._server = None

    def _warn(self, kind: str, msg: str, *args: object) -> None:
        """Log a warning, at most once a second per kind: a flood of bad peers must
        not flood the log too (the count of the suppressed ones is logged next time)."""
        now = time.monotonic()
        last, suppressed = self._last_warned.get(kind, (-1e9, 0))
        if now - last < 1.0:
            self._last_warned[kind] = (last, suppressed + 1)
            return
        self._last_warned[kind] = (now, 0)
        if suppressed:
            msg += f" (and {suppressed} more like it in the last second)"
        log.warning(msg, *args)

    @property
    def open_sessions(self) -> int:
        return len(self._conns)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if len(self._conns) >= self.max_sessions and not self._evict_one(peer):
            self.stats["refused"] += 1
            self._warn("refused", "FastAGI: %d sessions open, refusing %s", len(self._conns), peer)
            writer.close()
            return
        self._conns[writer] = None
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _evict_one(self, peer: object) -> bool:
        for old, route in self._conns.items():  # insertion order: oldest first
            if route is None:
                self.stats["evicted"] += 1
                self._warn(
                    "evicted",
                    "FastAGI: %d sessions open; dropping %s (still no header) for %s",
                    len(self._conns),
                    old.get_extra_info("peername"),
                    peer,
                )
                del self._conns[old]
                old.transport.abort()
                return True
        return False

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object
    ) -> None:
        started = time.monotonic()
        route = "?"
        try:
            variables = await self._read_header(reader, writer, peer)
            if variables is None:
                return
            session = AgiSession(variables, reader, writer, self.answer_timeout)
            route = session.route
            if writer not in self._conns:
                return  # evicted while the header was being parsed
            self._conns[writer] = route
            self.stats["sessions"] += 1
            handler = self._routes.get(route)
            if handler is None:
                self.stats["unknown_route"] += 1
                log.error("FastAGI: no route %r (from %s); %s=hangup", route, peer, names.VAR_NEXT)
                await session.set_variable(names.VAR_NEXT, NEXT_HANGUP)
                return
            await handler(session)
            self.stats["completed"] += 1
            log.info(
                "FastAGI %s on %s done in %.3fs", route, session.channel, time.monotonic() - started
            )
        except AgiHangup as exc:
            self.stats["hangups"] += 1
            log.info("FastAGI %s from %s: hangup (%s)", route, peer, exc)
        except AgiError as exc:
            self.stats["errors"] += 1
            log.warning("FastAGI %s from %s failed: %s", route, peer, exc)
        except Exception:
            self.stats["errors"] += 1
            log.exception("FastAGI %s from %s: handler raised", route, peer)
        finally:
            self._conns.pop(writer, None)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await writer.wait_closed()

    async def _read_header(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object
    ) -> dict[str, str] | None:
        """The ``agi_*`` lines up to the blank line, or None (logged) if the peer sent
        too much, garbage, stopped early or took longer than `header_timeout`."""
        variables: dict[str, str] = {}
        size = 0
        try:
            async with asyncio.timeout(self.header_timeout):
                while True:
                    try:
                        raw = await reader.readline()
                    except ValueError:
                        raise AgiProtocolError(
                            f"header line longer than {self.max_line_bytes} bytes"
                        ) from None
                    if not raw.endswith(b"\n"):
                        if writer not in self._conns:
                            return None  # evicted: already logged
                        self.stats["early_eof"] += 1
                        self._warn(
                            "early_eof",
                            "FastAGI: %s closed after %d header lines",
                            peer,
                            len(variables),
                        )
                        return None
                    size += len(raw)
                    text = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if not text:
                        if not variables:
                            raise AgiProtocolError("empty header")
                        return variables
                    if size > self.max_header_bytes or len(variables) >= self.max_header_lines:
                        raise AgiProtocolError(
                            f"header over {self.max_header_lines} lines or "
                            f"{self.max_header_bytes} bytes"
                        )
                    key, value = parse_header_line(text)
                    variables[key] = value
        except TimeoutError:
            self.stats["header_timeouts"] += 1
            self._warn(
                "header_timeout",
                "FastAGI: no complete header from %s within %gs (%d lines); closed",
                peer,
                self.header_timeout,
                len(variables),
            )
        except AgiProtocolError as exc:
            self.stats["header_rejected"] += 1
            self._warn("header_rejected", "FastAGI: rejected header from %s: %s; closed", peer, exc)
        except ConnectionError as exc:
            self.stats["early_eof"] += 1
            self._warn("early_eof", "FastAGI: %s dropped during the header: %s", peer, exc)
        return None

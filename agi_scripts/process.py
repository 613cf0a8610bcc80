"""Classic process AGI: the FastAGI routes, run by Asterisk as a program per call.

For a small install without a long-running `outbound run agi`, the dialplan starts the
program itself and talks AGI over its stdin/stdout::

    same => n,AGI(/usr/local/bin/outbound-agi,classify)

Asterisk then writes the ``agi_*`` header (``agi_request: /usr/local/bin/outbound-agi``,
``agi_arg_1: classify``) to our stdin, reads commands from our stdout and answers on
stdin, exactly as over a FastAGI socket. So nothing here is a second implementation:

* `ProcessAgi` *is* an `AgiServer` that never listens: `agi_scripts.routes.register`
  fills its route table exactly as it fills the FastAGI server's, and the header is read
  by the server's own bounded, deadline-guarded reader (same limits, same timeouts);
* the handler gets the same `AgiSession` (same quoting, the same refusal of CR/LF/NUL
  before anything is written, the same answer deadline), so a handler is byte for byte
  the code the FastAGI server runs.

What differs, and why:

* the route comes from the command line (``outbound agi classify``), else from
  ``agi_arg_1`` when it names a route, else from the script's name (a symlink
  ``agi-bin/classify -> outbound-agi`` called as ``AGI(classify)``); a handler reads
  its arguments as `AgiSession.args`, the ones after the route's name, so
  ``AGI(outbound-agi,features,login)`` gives the features handler ``["login"]`` exactly
  as ``AGI(agi://127.0.0.1:4573/features,login)`` does (`route_and_args`);
* Asterisk signals a hangup to a process AGI with SIGHUP (not the ``HANGUP`` line it
  sends over FastAGI), and SIGHUP's default action kills the process, maybe in the
  middle of a database write. `run` turns it into an event: the session is marked hung
  up, so the handler's next command raises `AgiHangup` (a command in flight gets
  Asterisk's own 511 / ``result=-1``), and the handler ends the way it does on FastAGI;
* file descriptor 1 belongs to Asterisk: `run` moves the AGI stream to a private
  descriptor and points fd 1 (and ``sys.stdout``) at stderr, so a stray ``print`` from
  any library can never reach Asterisk as a command.

The price of a process per call: Python starts and imports the dialer on every call,
0.6-0.9 s before the first command on a busy 2-core test machine. For `classify` that
time falls into the contact's greeting, so AMD may miss a short "hello" (and report
INITIALSILENCE); installs that classify answers at any volume should run the FastAGI
server (`outbound run agi`), which answers in milliseconds.

Why not pyst2 (the named AGI library, whose ``asterisk.agi.AGI`` is the usual way to
write a process AGI in Python): we weighed each part of it, and none is sound enough to
run in a call, so it stays a test-only dependency (the ``dev`` extra), kept to reproduce
its defects in tests/unit/test_pyst2_defects.py:

* arguments: ``AGI._quote`` wraps a value in double quotes and escapes nothing, so a
  quote ends the argument early, a backslash is eaten by res_agi, and a line break in a
  value makes the rest of it a second AGI command (``set_variable("N", 'x"\\nEXEC ..')``);
  some methods quote twice (``database_get`` sends ``""family""``). Its command
  catalogue is therefore only as safe as its quoting, and our handlers need five
  commands, which `AgiSession` sends through `agi_scripts.protocol.format_command`;
* answers: ``get_result`` crashes with ``ValueError`` on the ``HANGUP`` line (hangup as
  a crash, not an event), reports the dead-channel code 511 as an unknown error, and
  takes any value that reads ``hangup`` (``200 result=1 (hangup)``, e.g. a stored
  ``OUTBOUND_NEXT``) for a hangup; `agi_scripts.protocol.parse_answer` does none of it;
* the environment: ``_get_agi_env`` reads an unbounded header with no deadline, strips
  values, and copies every line (caller ids included) to stderr; the server's header
  reader is bounded and timed, and reused here;
* signals: ``AGI.__init__`` calls ``signal.signal(SIGHUP, ...)``, which raises
  ``ValueError`` outside the main thread (so it cannot serve FastAGI from a thread pool);
  `run` installs its SIGHUP handler once, in the main thread, through the event loop;
* blocking file I/O without timeouts, where our handlers are asyncio coroutines;
* ``asterisk.fastagi`` imports ``SocketServer`` and writes ``str`` to a binary socket
  file: Python 2 only.

What pyst2 gets right, we keep as ideas, not as code: SIGHUP becomes a flag the next
command checks (``AGI.test_hangup``), and a broken pipe is a hangup (`AgiSession` maps
ConnectionError to `AgiHangup`).

Exit status (Asterisk logs it as "AGI Script ... completed, returning N"): 0 when the
handler finished or the channel hung up, 1 when it failed, 2 for a bad header or an
unknown route (then ``OUTBOUND_NEXT=hangup`` was set, as the FastAGI server does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import PurePosixPath

from outbound import names

from .protocol import AgiError, AgiHangup
from .server import NEXT_HANGUP, AgiServer, AgiSession, call_args

__all__ = [
    "EXIT_BAD_CALL",
    "EXIT_FAILED",
    "EXIT_OK",
    "ProcessAgi",
    "route_and_args",
    "run",
    "select_route",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CALL = 2


def select_route(variables: dict[str, str], pinned: str | None, known: set[str]) -> str:
    """The route of a process-AGI call: `pinned` (the command line's) if given, else
    ``agi_arg_1`` when it names a known route, else the basename of ``agi_request``
    (the script's name, minus a ``.py``/``.sh`` style extension)."""
    return route_and_args(variables, pinned, known)[0]


def route_and_args(
    variables: dict[str, str], pinned: str | None, known: set[str]
) -> tuple[str, list[str]]:
    """The route (as `select_route`) and the handler's arguments: those after the
    route's name. ``AGI(outbound-agi,features,login)`` -> ("features", ["login"]), like
    ``AGI(agi://127.0.0.1/features,login)`` over FastAGI, so a handler reads its own
    first argument as `AgiSession.args[0]` in both modes. The symlink form
    ``AGI(agi-bin/outbound/features,login)`` (route = script name) gives ["login"] too."""
    args = call_args(variables)
    if pinned and args and args[0] == pinned:
        # Asterisk passes AGI()'s arguments on the command line too: a "route" from the
        # command line that is agi_arg_1 came from there, not from a wrapper script.
        pinned = None
    if pinned:
        return pinned, args
    if args and args[0] in known:
        return args[0], args[1:]
    script = PurePosixPath(variables.get("agi_request", "")).name
    return (script.rsplit(".", 1)[0] if "." in script else script), args


class ProcessAgi(AgiServer):
    """The route table and the header reader of `AgiServer`, for one call on a pair of
    streams (stdin/stdout). Never listens: `start` is not called."""

    def __init__(
        self,
        *,
        header_timeout: float = 5.0,
        answer_timeout: float = 30.0,
        max_header_lines: int = 64,
        max_header_bytes: int = 16384,
        max_line_bytes: int = 8192,
    ) -> None:
        super().__init__(
            max_sessions=1,
            header_timeout=header_timeout,
            answer_timeout=answer_timeout,
            max_header_lines=max_header_lines,
            max_header_bytes=max_header_bytes,
            max_line_bytes=max_line_bytes,
        )
        self.session: AgiSession | None = None

    @property
    def route_names(self) -> set[str]:
        return set(self._routes)

    def hangup_signalled(self) -> None:
        """SIGHUP from Asterisk: the channel is gone. Mark the session so the next
        command raises AgiHangup instead of the process dying where it stands."""
        log.info("process AGI: SIGHUP from Asterisk (channel hung up)")
        if self.session is not None:
            self.session.hung_up = True

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pinned: str | None = None,
    ) -> int:
        """Read the header, run the route's handler, return the exit status."""
        self._conns[writer] = None  # the server's header reader tracks its streams here
        route = "?"
        try:
            variables = await self._read_header(reader, writer, "stdin")
            if variables is None:
                return EXIT_BAD_CALL
            route, args = route_and_args(variables, pinned, self.route_names)
            session = AgiSession(variables, reader, writer, self.answer_timeout)
            session.route, session.args = route, args
            self.session = session
            self._conns[writer] = route
            self.stats["sessions"] += 1
            handler = self._routes.get(route)
            if handler is None:
                self.stats["unknown_route"] += 1
                log.error(
                    "process AGI: no route %r (agi_arg_1 %r; known: %s); %s=%s",
                    route,
                    variables.get("agi_arg_1", ""),
                    ", ".join(sorted(self.route_names)) or "none",
                    names.VAR_NEXT,
                    NEXT_HANGUP,
                )
                await session.set_variable(names.VAR_NEXT, NEXT_HANGUP)
                return EXIT_BAD_CALL
            await handler(session)
            self.stats["completed"] += 1
            log.info("process AGI %s on %s done", route, session.channel)
            return EXIT_OK
        except AgiHangup as exc:
            self.stats["hangups"] += 1
            log.info("process AGI %s: hangup (%s)", route, exc)
            return EXIT_OK
        except AgiError as exc:
            self.stats["errors"] += 1
            log.warning("process AGI %s failed: %s", route, exc)
            return EXIT_FAILED
        except Exception:
            self.stats["errors"] += 1
            log.exception("process AGI %s: handler raised", route)
            return EXIT_FAILED
        finally:
            self._conns.pop(writer, None)
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()


def _check_stream_fd(fd: int, what: str) -> None:
    # asyncio's pipe transports take pipes, sockets and terminals; Asterisk gives pipes.
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        raise AgiError(f"process AGI: {what} (fd {fd}) must be a pipe, socket or terminal")


async def open_streams(
    in_fd: int, out_fd: int, limit: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams over two file descriptors (which they then own and close), so
    `AgiSession` reads and writes them exactly like a FastAGI socket."""
    _check_stream_fd(in_fd, "stdin")
    _check_stream_fd(out_fd, "stdout")
    in_st, out_st = os.fstat(in_fd), os.fstat(out_fd)
    if stat.S_ISSOCK(out_st.st_mode):
        # One socket as stdin and stdout (a relay, inetd): one socket stream. A write
        # pipe transport would watch the socket for readability and take Asterisk's
        # first answer for "the reader closed the pipe".
        if (in_st.st_dev, in_st.st_ino) != (out_st.st_dev, out_st.st_ino):
            raise AgiError("process AGI: stdout is a socket other than stdin")
        os.close(out_fd)
        return await asyncio.open_connection(sock=socket.socket(fileno=in_fd), limit=limit)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(in_fd, "rb", buffering=0)
    )
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(out_fd, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


def run(
    register: Callable[[AgiServer], None],
    route: str | None = None,
    *,
    header_timeout: float = 5.0,
    answer_timeout: float = 30.0,
) -> int:
    """Serve one process-AGI call on this process's stdin/stdout; returns the exit
    status. Call from the main thread (SIGHUP is handled there). `register` fills the
    route table (``lambda s: routes.register(s, factory, redis)``)."""
    agi = ProcessAgi(header_timeout=header_timeout, answer_timeout=answer_timeout)
    register(agi)
    # The AGI stream gets private descriptors; fd 1 and sys.stdout now go to stderr.
    sys.stdout.flush()
    in_fd, out_fd = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    async def go() -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, agi.hangup_signalled)
        try:
            reader, writer = await open_streams(in_fd, out_fd, agi.max_line_bytes)
        except AgiError as exc:
            log.error("%s", exc)
            return EXIT_BAD_CALL
        return await agi.serve(reader, writer, route)

    return asyncio.run(go())

"""pyst2, the named AGI library, against its known defects, reproduced on the real pyst2
code (installed from PyPI): each test shows the defect and that our own thin layer
(agi_scripts.protocol, AgiSession, the process AGI) does not have it. Why none of pyst2
runs in a call: the docstring of agi_scripts/process.py.

pyst2's AGI is driven here the way Asterisk drives a process AGI: a header and answers
on its stdin, commands read from its stdout (StringIO, or a real socket pair).
"""

from __future__ import annotations

import asyncio
import importlib
import io
import signal
import socket
import socketserver
import sys
import threading
from collections.abc import Iterator

import pytest
from asterisk import agi as pyst2_agi

from agi_scripts.process import ProcessAgi
from agi_scripts.protocol import AgiHangup, UnsafeValue, format_command
from agi_scripts.server import AgiSession
from tests.unit.test_agi_protocol import res_agi_split

HEADER = "agi_request: /usr/local/bin/outbound-agi\nagi_channel: Local/100@t-01;1\n\n"
# A value that ends pyst2's quoted argument and runs a command of its own.
INJECTION = 'x"\nEXEC "Hangup'


@pytest.fixture(autouse=True)
def keep_sighup() -> Iterator[None]:
    """pyst2's AGI installs a SIGHUP handler in the test process: put the old one back."""
    old = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, old)


def pyst2(answers: str = "") -> pyst2_agi.AGI:
    """pyst2's AGI on a header and canned Asterisk answers; stdout collects commands."""
    return pyst2_agi.AGI(
        stdin=io.StringIO(HEADER + answers), stdout=io.StringIO(), stderr=io.StringIO()
    )


def sent(agi: pyst2_agi.AGI) -> list[str]:
    return str(agi.stdout.getvalue()).splitlines()


async def session_pair() -> tuple[AgiSession, asyncio.StreamReader, asyncio.StreamWriter]:
    """An AgiSession on one end of a socket pair; the other end plays Asterisk."""
    ours, theirs = socket.socketpair()
    r, w = await asyncio.open_connection(sock=ours)
    ar, aw = await asyncio.open_connection(sock=theirs)
    return AgiSession({"agi_channel": "Local/100@t-01;1"}, r, w, 2.0), ar, aw


# ------------------------------------------------------------- (a) arguments unescaped


async def test_given_a_line_break_when_pyst2_sets_it_then_two_commands_ours_refuses() -> None:
    agi = pyst2("200 result=1\n")
    agi.set_variable("OUTBOUND_NOTE", INJECTION)
    # One call of pyst2 put two AGI commands on the wire; Asterisk runs both.
    assert sent(agi) == ['SET VARIABLE "OUTBOUND_NOTE" "x"', 'EXEC "Hangup"']

    with pytest.raises(UnsafeValue, match="LF"):
        format_command("SET VARIABLE", "OUTBOUND_NOTE", INJECTION)
    session, asterisk_r, asterisk_w = await session_pair()
    with pytest.raises(UnsafeValue):
        await session.set_variable("OUTBOUND_NOTE", INJECTION)
    session._writer.close()
    assert await asyncio.wait_for(asterisk_r.read(), 2) == b""  # nothing at all was sent
    asterisk_w.close()


def test_given_quotes_and_backslashes_when_pyst2_sets_them_then_value_changes() -> None:
    value = 'say "hi" C:\\dir\\'
    agi = pyst2("200 result=1\n")
    agi.set_variable("OUTBOUND_NOTE", value)
    (line,) = sent(agi)
    # res_agi drops the quotes around "hi" and eats the backslashes; the last one
    # escapes pyst2's closing quote, which becomes part of the value.
    assert res_agi_split(line) == ["SET", "VARIABLE", "OUTBOUND_NOTE", 'say hi C:dir"']
    ours = format_command("SET VARIABLE", "OUTBOUND_NOTE", value).decode()
    assert res_agi_split(ours) == ["SET", "VARIABLE", "OUTBOUND_NOTE", value]


# ------------------------------------------------------------- hangup as a crash


async def test_given_the_hangup_line_then_pyst2_crashes_and_ours_raises_agi_hangup() -> None:
    agi = pyst2("HANGUP\n")
    with pytest.raises(ValueError, match="invalid literal for int"):
        agi.get_variable("OUTBOUND_ATTEMPT_ID")
    # The dead-channel answer is "unknown", and a value reading "hangup" is a hangup.
    with pytest.raises(pyst2_agi.AGIUnknownError):
        pyst2("511 Command Not Permitted on a dead channel\n").get_variable("X")
    with pytest.raises(pyst2_agi.AGIResultHangup):
        pyst2("200 result=1 (hangup)\n").database_get("outbound", "next")

    session, asterisk_r, asterisk_w = await session_pair()
    asterisk_w.write(b"HANGUP\n")
    with pytest.raises(AgiHangup):
        await session.get_variable("OUTBOUND_ATTEMPT_ID")
    session2, _, asterisk_w2 = await session_pair()
    asterisk_w2.write(b"200 result=1 (hangup)\n")
    assert await session2.get_variable("OUTBOUND_NEXT") == "hangup"
    for w in (session._writer, session2._writer, asterisk_w, asterisk_w2):
        w.close()


# ------------------------------------------------------------- (b) FastAGI is Python 2 only


def test_given_python3_when_pyst2_fastagi_is_imported_then_it_fails_on_socketserver(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sys.modules.pop("asterisk.fastagi", None)
    with pytest.raises(ModuleNotFoundError) as exc:
        importlib.import_module("asterisk.fastagi")
    assert exc.value.name == "SocketServer"  # Python 3 renamed it socketserver

    # Even with the module renamed back, its handler cannot send one command: it hands
    # pyst2's AGI the binary socket files, and AGI writes str to them.
    monkeypatch.setitem(sys.modules, "SocketServer", socketserver)
    try:
        fastagi = importlib.import_module("asterisk.fastagi")
        asterisk_end, server_end = socket.socketpair()
        asterisk_end.sendall(HEADER.encode())
        fastagi.FastAGI(server_end, ("127.0.0.1", 4573), None)
        asterisk_end.settimeout(1)
        server_end.close()
        assert asterisk_end.recv(100) == b""  # closed without a single AGI command
        assert "Unable to connect to agi://127.0.0.1 a bytes-like object is required" in (
            capsys.readouterr().err
        )
        asterisk_end.close()
    finally:
        sys.modules.pop("asterisk.fastagi", None)


# ------------------------------------------------------------- (c) main thread only


def test_given_a_worker_thread_then_pyst2_agi_fails_on_signal_and_ours_works() -> None:
    errors: list[BaseException] = []
    answers: list[str | None] = []

    def pyst2_in_thread() -> None:
        try:
            pyst2("200 result=1 (v)\n").get_variable("X")
        except BaseException as exc:  # noqa: BLE001 - the very thing under test
            errors.append(exc)

    def ours_in_thread() -> None:
        async def go() -> str | None:
            agi = ProcessAgi(header_timeout=2, answer_timeout=2)
            session, asterisk_r, asterisk_w = await session_pair()
            agi.session = session
            asterisk_w.write(b"200 result=1 (v)\n")
            value = await session.get_variable("X")
            agi.hangup_signalled()  # what the main thread's SIGHUP handler does
            try:
                await session.get_variable("X")
            except AgiHangup:
                pass
            for w in (session._writer, asterisk_w):
                w.close()
            return value

        answers.append(asyncio.run(go()))

    for target in (pyst2_in_thread, ours_in_thread):
        t = threading.Thread(target=target)
        t.start()
        t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    assert "main thread" in str(errors[0])
    assert answers == ["v"]

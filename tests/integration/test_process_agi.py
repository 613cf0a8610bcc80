"""The classic process-AGI mode (`outbound agi <route>`, agi_scripts/process.py).

With the real sandbox Asterisk: Asterisk runs in a chroot and cannot see the host's
Python, so the dialplan's ``AGI(<relay>,classify)`` starts a small bash relay written
into the chroot, which joins its stdin/stdout to a TCP socket; the test accepts that
socket and hands it as stdin and stdout to the real CLI (``outbound agi classify``) in a
subprocess. So the process-AGI handler talks to real Asterisk over a real process-AGI
stream (header ``agi_request: /path``, ``agi_arg_1: classify``), and the test asks
Asterisk (AGIExec*, VarSet, Newexten, Getvar, Hangup) what happened.

Without Asterisk: the same CLI on plain pipes, playing Asterisk's part, for what a
real call cannot show on demand (SIGHUP in the middle of a command, a cut header).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from agi_scripts.process import EXIT_BAD_CALL, EXIT_OK, ProcessAgi
from agi_scripts.protocol import UnsafeValue
from agi_scripts.server import AgiSession
from ami_bridge.connection import AmiConnection
from ami_bridge.originator import Originator
from outbound import names
from outbound.campaigns.amd import decide
from outbound.model import CallAttempt, make_engine, session_factory, upgrade
from outbound.sandbox import Sandbox, SandboxInfo
from tests.helpers.ami import AmiClient
from tests.helpers.db import add_contact

OUTBOUND = str(Path(sys.executable).with_name("outbound"))
CTX = "outbound-test-process-agi"
# Everything res_agi's parser and the dialplan treat specially, but one line.
TRICKY = 'he said "hi" \\o/ C:\\dir\\ ${EVIL} $[1+1] ; , | \\" end\\'
VAR_TRICKY = "OUTBOUND_TEST_TRICKY"

# Joins the process AGI's stdin/stdout to the test's socket. The copy towards Asterisk
# runs in the foreground: when the host side closes, the relay exits, so Asterisk sees
# the script's stdout end (the AGI is over) and goes on in the dialplan.
RELAY = """#!/bin/bash
exec 3<>/dev/tcp/127.0.0.1/{port} || exit 1
exec 4<&0
cat <&4 >&3 &
up=$!
cat <&3
kill $up 2>/dev/null
exit 0
"""

DIALPLAN = """
[{ctx}]
exten => s,1,NoOp(process AGI test, attempt ${{OUTBOUND_ATTEMPT_ID}})
 same => n,AGI({relay},classify)
 same => n,Goto(done,1)
exten => tricky,1,AGI({relay},tricky)
 same => n,Goto(done,1)
exten => done,1,UserEvent(OutboundTestProcessAgi,AgiStatus: ${{AGISTATUS}},Next: ${{OUTBOUND_NEXT}})
 same => n,GotoIf($[${{LEN(${{OUTBOUND_NEXT}})}}]?outbound-after-classify,${{OUTBOUND_NEXT}},1)
 same => n,Hangup(16)
"""


@dataclass
class Relay:
    listener: socket.socket
    script: str  # as Asterisk sees it, inside the chroot

    async def accept(self, timeout: float = 20) -> socket.socket:
        """The relay's connection: Asterisk started the process AGI."""
        self.listener.settimeout(timeout)
        conn, _ = await asyncio.to_thread(self.listener.accept)
        conn.settimeout(None)
        return conn


@pytest.fixture
def relay(sandbox_instance: Sandbox, sandbox: SandboxInfo) -> Iterator[Relay]:
    """A listening socket, the relay script that connects to it (inside the chroot),
    and a dialplan context that runs the relay as a process AGI."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    name = f"lib/agi-relay-{port}.sh"
    host_script = sandbox_instance.instance_dir / name
    host_script.write_text(RELAY.format(port=port))
    host_script.chmod(0o755)
    script = f"{sandbox_instance.inner_dir}/{name}"
    extra = sandbox_instance.etc_dir / "extensions_sandbox_extra.conf"
    before = extra.read_text() if extra.exists() else None
    extra.write_text((before or "") + DIALPLAN.format(ctx=CTX, relay=script))
    sandbox_instance.cli("dialplan reload")
    assert script in sandbox_instance.cli(f"dialplan show {CTX}"), "test context not loaded"
    try:
        yield Relay(listener, script)
    finally:
        listener.close()
        host_script.unlink(missing_ok=True)
        if before is None:
            extra.unlink(missing_ok=True)
        else:
            extra.write_text(before)
        sandbox_instance.cli("dialplan reload")


@pytest.fixture
def pg_factory(pg_url: str) -> tuple[str, sessionmaker[Session]]:
    engine = make_engine(pg_url)
    upgrade(engine)
    return pg_url, session_factory(engine)


async def run_cli(
    conn: socket.socket, db_url: str, err: Path, *args: str
) -> asyncio.subprocess.Process:
    """`outbound agi ...` with the relay's socket as its stdin and stdout."""
    proc = await asyncio.create_subprocess_exec(
        OUTBOUND,
        "--set",
        f"database.url={db_url}",
        "agi",
        *args,
        stdin=conn,
        stdout=conn,
        stderr=err.open("wb"),
    )
    conn.close()  # the child holds it now: its exit is the end of the AGI stream
    return proc


@pytest.mark.asterisk
async def test_given_a_process_agi_call_when_classify_runs_then_asterisk_routes_the_verdict(
    sandbox: SandboxInfo,
    relay: Relay,
    pg_factory: tuple[str, sessionmaker[Session]],
    admin_ami: AmiClient,
    tmp_path: Path,
) -> None:
    db_url, factory = pg_factory
    number = f"+4930{random.randrange(10**6, 10**7)}0"  # last digit 0: a human answers
    cid = add_contact(factory, number)
    ami = AmiConnection(sandbox.ami_host, sandbox.ami_port, sandbox.ami_user, sandbox.ami_secret)
    o = Originator(ami, factory, trunk="Local/${NUMBER}@sim-contacts", answered_context=CTX)
    o.start()
    await ami.start(wait=15)
    err = tmp_path / "agi.err"
    try:
        aid = await o.dial(cid)  # no agent reserved: a human is abandoned
        proc = await run_cli(await relay.accept(), db_url, err)  # route from agi_arg_1
        assert await asyncio.wait_for(proc.wait(), 40) == EXIT_OK, err.read_text()

        done = await admin_ami.wait_event("UserEvent", UserEvent="OutboundTestProcessAgi")
        channel = done["Channel"]
        # What AMD heard, as Asterisk reports it. (Usually HUMAN; on a loaded machine the
        # per-call Python start can let the short "hello" pass before AMD listens: then
        # INITIALSILENCE. Either way the route must follow the policy for that verdict.)
        amd = await admin_ami.wait_event("VarSet", Channel=channel, Variable="AMDSTATUS")
        cause = await admin_ami.wait_event("VarSet", Channel=channel, Variable="AMDCAUSE")
        want = decide(amd["Value"], cause["Value"], {}, agent_reserved=False)
        assert (done["AgiStatus"], done["Next"]) == ("SUCCESS", want.route)
        # Asterisk ran a process AGI (not FastAGI): our relay, with the route argument.
        assert f"Launched AGI Script {relay.script}" in sandbox.full_log_path.read_text()
        assert admin_ami.find_events("AGIExecStart", Channel=channel)
        ends = admin_ami.find_events("AGIExecEnd", Channel=channel)
        cmds = [e["Command"] for e in ends]
        assert all(e["ResultCode"] == "200" for e in ends), ends
        assert cmds[0] == f'GET VARIABLE "{names.VAR_ATTEMPT_ID}"', cmds
        assert any(c.startswith('EXEC "AMD"') for c in cmds), cmds
        assert cmds[-1] == f'SET VARIABLE "{names.VAR_NEXT}" "{want.route}"', cmds
        # The variable was set, and the dialplan followed it to the end of the call.
        await admin_ami.wait_event(
            "VarSet", Channel=channel, Variable=names.VAR_NEXT, Value=want.route
        )
        await admin_ami.wait_event(
            "Newexten", Channel=channel, Context=names.CTX_AFTER_CLASSIFY, Extension=want.route
        )
        await admin_ami.wait_event("Hangup", Channel=channel, timeout=15)
        with factory() as s:
            a = s.get(CallAttempt, aid)
            assert a is not None
            assert (a.amd_status, a.result) == (amd["Value"], want.result)
            assert a.audit["route"] == want.route
        assert "process AGI classify on" in err.read_text()
    finally:
        await o.stop()
        await ami.close()


@pytest.mark.asterisk
async def test_given_process_agi_when_a_tricky_value_is_set_then_it_arrives_exactly(
    relay: Relay, admin_ami: AmiClient
) -> None:
    seen: dict[str, object] = {}
    ready, release = asyncio.Event(), asyncio.Event()

    async def tricky(session: AgiSession) -> None:
        seen["channel"] = session.channel
        seen["request"] = session.variables.get("agi_request")
        await session.set_variable(VAR_TRICKY, TRICKY)
        try:
            await session.set_variable(VAR_TRICKY, "x\nEXEC Hangup")
        except UnsafeValue as exc:
            seen["refused"] = str(exc)
        seen["read_back"] = await session.get_variable(VAR_TRICKY)
        ready.set()
        await asyncio.wait_for(release.wait(), 10)  # the test asks Asterisk meanwhile
        await session.set_variable(names.VAR_NEXT, "hangup")

    agi = ProcessAgi(header_timeout=5, answer_timeout=5)
    agi.route("tricky", tricky)
    agi.route(names.AGI_CLASSIFY, tricky)  # must not be picked: agi_arg_1 says tricky
    uid = str(uuid.uuid4())
    number = f"+4930{random.randrange(10**6, 10**7)}0"
    await admin_ami.send(
        "Originate",
        Channel=f"Local/{number}@{names.CTX_SIM_CONTACTS}",
        Context=CTX,
        Exten="tricky",
        Priority="1",
        Async="true",
        Timeout="15000",
        ChannelId=uid,
    )
    reader, writer = await asyncio.open_connection(sock=await relay.accept())
    served = asyncio.ensure_future(agi.serve(reader, writer))
    try:
        await asyncio.wait_for(ready.wait(), 15)
        channel = str(seen["channel"])
        assert seen["request"] == relay.script  # a process AGI: the script's path
        assert "LF" in str(seen["refused"])
        assert seen["read_back"] == TRICKY
        resp = await admin_ami.send("Getvar", Channel=channel, Variable=VAR_TRICKY)
        assert resp["Value"] == TRICKY  # Asterisk holds exactly what we set
        release.set()
        assert await asyncio.wait_for(served, 10) == EXIT_OK
    finally:
        release.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(served, 5)
    done = await admin_ami.wait_event("UserEvent", UserEvent="OutboundTestProcessAgi")
    assert (done["Channel"], done["AgiStatus"], done["Next"]) == (channel, "SUCCESS", "hangup")
    await admin_ami.wait_event("Hangup", Uniqueid=uid, timeout=10)
    cmds = [e.get("Command", "") for e in admin_ami.find_events("AGIExecEnd", Channel=channel)]
    # The refused value never left: one SET and one GET of the variable, no EXEC at all.
    assert sum(VAR_TRICKY in c for c in cmds) == 2, cmds
    assert not [c for c in cmds if c.upper().startswith("EXEC")], cmds
    assert agi.stats["completed"] == 1 and agi.stats["errors"] == 0


# ------------------------------------------------------------- the CLI on plain pipes


def process_header(route_arg: str, script: str = "/usr/local/bin/outbound-agi") -> bytes:
    lines = {
        "agi_request": script,
        "agi_channel": "Local/100@test-00000001;1",
        "agi_uniqueid": "1700000000.1",
        "agi_arg_1": route_arg,
    }
    return ("".join(f"{k}: {v}\n" for k, v in lines.items()) + "\n").encode()


@pytest.fixture
async def cli_on_pipes(tmp_path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`outbound agi` (no route on the command line) with pipes for stdin and stdout,
    as Asterisk starts a process AGI; the test plays Asterisk."""
    proc = await asyncio.create_subprocess_exec(
        OUTBOUND,
        "--set",
        f"database.url=sqlite:///{tmp_path / 'none.db'}",
        "agi",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    yield proc
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def stderr_until(proc: asyncio.subprocess.Process, text: str, timeout: float) -> str:
    seen = b""
    assert proc.stderr is not None
    async with asyncio.timeout(timeout):
        while text.encode() not in seen:
            line = await proc.stderr.readline()
            assert line, f"stderr ended without {text!r}: {seen.decode()}"
            seen += line
    return seen.decode()


async def test_given_sighup_during_a_command_then_the_process_agi_ends_as_a_hangup_not_killed(
    cli_on_pipes: asyncio.subprocess.Process, tmp_path: Path
) -> None:
    proc = cli_on_pipes
    assert proc.stdin is not None and proc.stdout is not None
    # classify's database: migrated, so the handler reaches its first command.
    upgrade(make_engine(f"sqlite:///{tmp_path / 'none.db'}"))
    proc.stdin.write(process_header(names.AGI_CLASSIFY))
    first = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert first == f'GET VARIABLE "{names.VAR_ATTEMPT_ID}"\n'.encode()
    os.kill(proc.pid, signal.SIGHUP)  # Asterisk: the channel hung up
    await stderr_until(proc, "SIGHUP from Asterisk", 10)
    proc.stdin.write(b"200 result=1 (no-such-attempt)\n")  # the command in flight
    assert await asyncio.wait_for(proc.wait(), 20) == EXIT_OK  # not -SIGHUP: not killed
    # After the hangup nothing more was sent (classify would have set OUTBOUND_NEXT).
    assert await proc.stdout.read() == b""
    assert "hangup (channel already hung up)" in (await proc.stderr.read()).decode()  # type: ignore[union-attr]


async def test_given_an_unknown_route_then_outbound_next_is_hangup_and_exit_2(
    cli_on_pipes: asyncio.subprocess.Process,
) -> None:
    proc = cli_on_pipes
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(process_header("no-such-route", "/usr/local/bin/no-such-route"))
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert line == f'SET VARIABLE "{names.VAR_NEXT}" "hangup"\n'.encode()
    proc.stdin.write(b"200 result=1\n")
    assert await asyncio.wait_for(proc.wait(), 10) == EXIT_BAD_CALL


async def test_given_half_a_header_then_eof_then_the_process_agi_exits_at_once_sending_nothing(
    cli_on_pipes: asyncio.subprocess.Process,
) -> None:
    proc = cli_on_pipes
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"agi_request: /usr/local/bin/outbound-agi\nagi_chan")
    proc.stdin.close()
    assert await asyncio.wait_for(proc.wait(), 20) == EXIT_BAD_CALL
    assert await proc.stdout.read() == b""


def test_given_a_route_on_the_command_line_or_agi_arg_1_or_script_name_then_that_route() -> None:
    from agi_scripts.process import select_route

    known = {"classify", "login"}
    assert select_route({"agi_arg_1": "login"}, "classify", known) == "classify"
    assert select_route({"agi_arg_1": "login", "agi_request": "/x/classify"}, None, known) == (
        "login"
    )
    # agi_arg_1 that names no route is a handler argument: the script's name decides.
    assert select_route({"agi_arg_1": "42", "agi_request": "/x/login.sh"}, None, known) == "login"


STRAY_PRINT = """
import sys
from agi_scripts.process import run

async def noisy(session):
    print("stray output from some library")
    await session.set_variable("OUTBOUND_NEXT", "hangup")

sys.exit(run(lambda s: s.route("noisy", noisy), None, header_timeout=5, answer_timeout=5))
"""


async def test_given_a_handler_that_prints_then_only_agi_commands_reach_asterisk() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        STRAY_PRINT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(process_header("noisy") + b"200 result=1\n")
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == EXIT_OK, err
    assert out == b'SET VARIABLE "OUTBOUND_NEXT" "hangup"\n'  # the print went to stderr
    assert b"stray output from some library" in err


async def test_given_asterisk_passes_the_agi_arguments_on_the_command_line_then_they_are_accepted(
    tmp_path: Path,
) -> None:
    """AGI(outbound-agi,features,login) runs `outbound-agi features login`: the extra
    argument must not be a usage error; the handler gets it from the header."""
    header = (
        b"agi_request: /usr/local/bin/outbound-agi\nagi_channel: Local/x-1;2\n"
        b"agi_arg_1: features\nagi_arg_2: login\n\n"
    )
    proc = await asyncio.create_subprocess_exec(
        OUTBOUND,
        "--set",
        f"database.url=sqlite:///{tmp_path / 'none.db'}",
        "agi",
        "features",
        "login",
        "--odd-looking-arg",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(header), 30)
    assert b"Usage:" not in err, err.decode()
    # The features handler ran (and refused a login from a channel that is no phone).
    assert out.startswith(b'SET VARIABLE "OUTBOUND_CODE_RESULT"'), (out, err)

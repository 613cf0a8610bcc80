"""A handler's arguments are the ones after the route's name, in FastAGI and in process-AGI
mode alike (`AgiSession.args`, `agi_scripts.process.route_and_args`): the features route
gets its code as args[0] whether the dialplan says AGI(agi://host/features,ready) or
AGI(outbound-agi,features,ready). The handler test runs the real `Features` handler over a
socket pair (Asterisk's side played by the test) against the real local Redis, with a
command consumer standing in for the bridge."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis

from agi_scripts.features import Features
from agi_scripts.process import ProcessAgi, route_and_args
from agi_scripts.server import AgiSession, call_args
from ami_bridge.commands import CommandConsumer
from outbound import names
from tests.helpers.redis_url import redis_url

REDIS_URL = redis_url(14)
KNOWN = {"classify", "features", "fax", "optout"}


def _vars(request: str, *args: str) -> dict[str, str]:
    return {"agi_request": request} | {f"agi_arg_{i}": a for i, a in enumerate(args, 1)}


@pytest.mark.parametrize(
    ("variables", "pinned", "expected"),
    [
        # AGI(/usr/local/bin/outbound-agi,features,login,agent-user): Asterisk passes the
        # arguments on the command line too, so the CLI "route" is agi_arg_1 itself.
        (
            _vars("/usr/local/bin/outbound-agi", "features", "login", "agent-user"),
            "features",
            ("features", ["login", "agent-user"]),
        ),
        (
            _vars("/usr/local/bin/outbound-agi", "features", "login"),
            None,
            ("features", ["login"]),
        ),
        # A link agi-bin/outbound/features -> outbound-agi: AGI(.../features,login).
        (
            _vars("/var/lib/asterisk/agi-bin/outbound/features", "login", "agent-user"),
            "login",
            ("features", ["login", "agent-user"]),
        ),
        # A wrapper script running `outbound agi features`: every argument is the handler's.
        (_vars("/usr/local/bin/features-wrapper", "ready"), "features", ("features", ["ready"])),
        (_vars("/usr/local/bin/outbound-agi", "classify"), "classify", ("classify", [])),
    ],
)
def test_given_a_process_agi_call_then_the_args_follow_the_route_name(
    variables: dict[str, str], pinned: str | None, expected: tuple[str, list[str]]
) -> None:
    assert route_and_args(variables, pinned, KNOWN) == expected


def test_given_a_fastagi_header_then_the_args_are_all_agi_args_in_order() -> None:
    v = _vars("agi://127.0.0.1:4573/features", "login", "agent-incorrect")
    v["agi_arg_4"] = "after a gap: not an argument"
    assert call_args(v) == ["login", "agent-incorrect"]
    assert call_args({"agi_request": "agi://127.0.0.1/classify"}) == []


@pytest.fixture
async def bridge() -> AsyncIterator[tuple[aredis.Redis, str, list[dict[str, Any]]]]:
    """The real local Redis and a command consumer that records `ready` commands."""
    r = aredis.Redis.from_url(REDIS_URL)
    server = f"args-{uuid.uuid4().hex[:8]}"
    seen: list[dict[str, Any]] = []
    consumer = CommandConsumer(r, server)

    async def ready(args: dict[str, Any]) -> dict[str, Any]:
        seen.append(args)
        return {}

    consumer.register("ready", ready)
    task = asyncio.ensure_future(consumer.run())
    yield r, server, seen
    consumer.stop()
    await asyncio.wait_for(task, 5)
    await r.delete(names.key_commands(server))
    await r.aclose()


async def _asterisk(sock: socket.socket, variables: dict[str, str]) -> str:
    """Asterisk's side: send the header, answer the one command, return it."""
    reader, writer = await asyncio.open_connection(sock=sock)
    header = "".join(f"{k}: {v}\n" for k, v in variables.items())
    writer.write(f"{header}agi_channel: PJSIP/1001-0000002a\n\n".encode())
    line = (await asyncio.wait_for(reader.readline(), 10)).decode()
    writer.write(b"200 result=1\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    return line


async def test_given_process_mode_when_dialling_52_then_the_features_handler_reads_its_code(
    bridge: tuple[aredis.Redis, str, list[dict[str, Any]]],
) -> None:
    r, server, seen = bridge
    features = Features(None, r, server=server, command_timeout=5)  # type: ignore[arg-type]
    agi = ProcessAgi(header_timeout=5, answer_timeout=5)
    agi.route(names.AGI_FEATURES, features)
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    # AGI(/usr/local/bin/outbound-agi,features,ready): argv and agi_arg_1 are "features".
    variables = _vars("/usr/local/bin/outbound-agi", "features", "ready")
    status, line = await asyncio.gather(
        agi.serve(reader, writer, "features"), _asterisk(theirs, variables)
    )
    assert status == 0
    assert line == f'SET VARIABLE "{names.VAR_CODE_RESULT}" "ok"\n'
    assert seen == [{"phone": "PJSIP/1001"}]


async def test_given_fastagi_mode_when_dialling_52_then_the_same_handler_reads_its_code(
    bridge: tuple[aredis.Redis, str, list[dict[str, Any]]],
) -> None:
    r, server, seen = bridge
    features = Features(None, r, server=server, command_timeout=5)  # type: ignore[arg-type]
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    variables = _vars("agi://127.0.0.1:4573/features", "ready")

    async def serve() -> None:
        header = await asyncio.wait_for(_read_header(reader), 5)
        await features(AgiSession(header, reader, writer, 5))
        writer.close()

    _, line = await asyncio.gather(serve(), _asterisk(theirs, variables))
    assert line == f'SET VARIABLE "{names.VAR_CODE_RESULT}" "ok"\n'
    assert seen == [{"phone": "PJSIP/1001"}]


async def _read_header(reader: asyncio.StreamReader) -> dict[str, str]:
    out: dict[str, str] = {}
    while (line := (await reader.readline()).decode().rstrip("\n")) != "":
        key, _, value = line.partition(": ")
        out[key] = value
    return out


def test_given_a_phone_code_then_the_phone_waits_longer_than_the_bridge_may_take() -> None:
    import inspect

    from agi_scripts import features
    from ami_bridge.sessions import AgentSessions
    from outbound.commands import PHONE_CODE_BRIDGE_S, PHONE_CODE_WAIT_S

    bridge_wait = inspect.signature(AgentSessions.wait_ended).parameters["timeout"].default
    assert bridge_wait == PHONE_CODE_BRIDGE_S  # what the bridge's *54 (logout) waits
    assert features.COMMAND_TIMEOUT_S == PHONE_CODE_WAIT_S > bridge_wait + 1

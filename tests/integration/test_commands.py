"""Commands in, results out, over the real local Redis: delivery across a bridge restart,
at-most-once execution, clear errors for calls that do not exist."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from ami_bridge.commands import CommandConsumer, NoSuchCall
from outbound import names
from outbound.commands import (
    DEADLINE_ARG,
    GROUP,
    Command,
    CommandFailed,
    CommandTimeout,
    reply_key,
    send_command,
    send_command_async,
)
from tests.helpers.redis_url import redis_url
from tests.helpers.until import async_until

REDIS_URL = redis_url(13)


@pytest.fixture
async def server() -> AsyncIterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    yield name
    r = redis.Redis.from_url(REDIS_URL)
    r.delete(names.key_commands(name))
    r.close()


def _sync() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


async def _start(server: str, calls: list[Any]) -> tuple[CommandConsumer, asyncio.Task[None]]:
    c = CommandConsumer(aredis.Redis.from_url(REDIS_URL), server)

    async def hold(args: dict[str, Any]) -> dict[str, Any]:
        calls.append(args)
        if args.get("call") != "live-1":
            raise NoSuchCall(f"no call {args.get('call')!r} on this bridge")
        return {"held": args["call"]}

    c.register("hold", hold)
    return c, asyncio.ensure_future(c.run())


async def test_given_running_bridge_when_command_sent_then_result_comes_back(server: str) -> None:
    calls: list[Any] = []
    c, task = await _start(server, calls)
    try:
        out = await asyncio.to_thread(send_command, _sync(), server, "hold", {"call": "live-1"}, 5)
        assert out == {"held": "live-1"}
        with pytest.raises(CommandFailed, match="no call 'gone-7' on this bridge"):
            await asyncio.to_thread(send_command, _sync(), server, "hold", {"call": "gone-7"}, 5)
        with pytest.raises(CommandFailed, match="unknown command 'fly'"):
            await asyncio.to_thread(send_command, _sync(), server, "fly", {}, 5)
    finally:
        c.stop()
        await asyncio.wait_for(task, 3)


async def test_given_bridge_down_when_command_sent_then_it_runs_once_the_bridge_is_back(
    server: str,
) -> None:
    calls: list[Any] = []
    pending = asyncio.ensure_future(
        asyncio.to_thread(send_command, _sync(), server, "hold", {"call": "live-1"}, 8)
    )
    await asyncio.sleep(0.5)  # the bridge is "restarting": nobody reads the stream yet
    assert calls == []
    c, task = await _start(server, calls)
    try:
        assert await pending == {"held": "live-1"}
        assert calls == [{"call": "live-1"}]
    finally:
        c.stop()
        await asyncio.wait_for(task, 3)


async def test_given_crash_after_delivery_when_redelivered_then_not_run_twice(server: str) -> None:
    calls: list[Any] = []
    r = _sync()
    stream = names.key_commands(server)
    r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    # A bridge read the command and died before acknowledging it...
    sender = asyncio.ensure_future(
        asyncio.to_thread(send_command, _sync(), server, "hold", {"call": "live-1"}, 2)
    )
    await asyncio.sleep(0.3)
    entries = r.xreadgroup(GROUP, "bridge-1", {stream: ">"}, count=10)
    entry_id, fields = entries[0][1][0]
    c = CommandConsumer(aredis.Redis.from_url(REDIS_URL), server)

    async def hold(a: dict[str, Any]) -> dict[str, Any]:
        calls.append(a)
        return {"held": a["call"]}

    c.register("hold", hold)
    await c._one(entry_id, fields)  # ...after having run it (marked done)
    assert (await sender) == {"held": "live-1"}
    # The restarted bridge reads its unacknowledged backlog again: simulate the redelivery.
    await c._one(entry_id, fields)
    assert r.xpending(stream, GROUP)["pending"] == 0
    assert calls == [{"call": "live-1"}]  # ran exactly once


async def test_given_no_bridge_then_sender_times_out_clearly(server: str) -> None:
    with pytest.raises(CommandTimeout, match="no answer from the bridge"):
        await asyncio.to_thread(send_command, _sync(), server, "hold", {"call": "x"}, 1)


async def test_given_a_command_whose_sender_gave_up_when_the_bridge_comes_back_then_not_run(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[Any] = []
    # Nobody reads the stream: the sender gives up after its timeout (its deadline).
    with pytest.raises(CommandTimeout):
        await asyncio.to_thread(send_command, _sync(), server, "hold", {"call": "live-1"}, 1)
    entries: Any = _sync().xrange(names.key_commands(server))
    ((_, fields),) = entries
    cmd = Command.decode(fields)
    assert cmd.args[DEADLINE_ARG] < time.time()
    # The bridge starts after the deadline: the command is refused, logged, acknowledged.
    c, task = await _start(server, calls)
    try:
        reply = await asyncio.to_thread(_sync().blpop, [reply_key(cmd.id)], 5)
        assert reply is not None and json.loads(reply[1])["error"].startswith("expired")
        assert calls == []
        await async_until(
            lambda: _sync().xpending(names.key_commands(server), GROUP)["pending"] == 0, 5
        )
        assert "hold" in caplog.text and "expired, not run" in caplog.text
        # A command in time still runs, without the deadline among its args.
        out = await asyncio.to_thread(send_command, _sync(), server, "hold", {"call": "live-1"}, 5)
        assert out == {"held": "live-1"} and calls == [{"call": "live-1"}]
    finally:
        c.stop()
        await asyncio.wait_for(task, 3)


async def test_given_the_async_sender_then_same_stream_deadline_and_errors(server: str) -> None:
    r = aredis.Redis.from_url(REDIS_URL)
    try:
        with pytest.raises(CommandTimeout, match="no answer from the bridge"):
            await send_command_async(r, server, "hold", {"call": "x"}, 1)
        calls: list[Any] = []
        c, task = await _start(server, calls)
        try:
            assert await send_command_async(r, server, "hold", {"call": "live-1"}, 5) == {
                "held": "live-1"
            }
            with pytest.raises(CommandFailed, match="no call 'gone-7'"):
                await send_command_async(r, server, "hold", {"call": "gone-7"}, 5)
        finally:
            c.stop()
            await asyncio.wait_for(task, 3)
        assert calls == [{"call": "live-1"}, {"call": "gone-7"}]  # the expired one did not run
    finally:
        await r.aclose()


async def test_given_a_timeout_above_the_redis_socket_timeout_then_still_a_command_timeout(
    server: str,
) -> None:
    # redis-py's default socket timeout is 5 s: one BLPOP of 6 s would end in its own
    # TimeoutError, not in ours.
    r = aredis.Redis.from_url(REDIS_URL, socket_timeout=2)
    started = time.monotonic()
    try:
        with pytest.raises(CommandTimeout):
            await send_command_async(r, server, "hold", {"call": "x"}, 3)
        with pytest.raises(CommandTimeout):
            await asyncio.to_thread(
                send_command,
                redis.Redis.from_url(REDIS_URL, socket_timeout=2),
                server,
                "hold",
                {},
                3,
            )
    finally:
        await r.aclose()
    assert 6 <= time.monotonic() - started < 9

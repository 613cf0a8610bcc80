"""Fixtures for the fault tests.

The session's sandbox fixtures are defined in tests/integration/conftest.py; importing them
here makes them fixtures of this folder too (same functions, same session instance name,
so a run of both folders still shares one sandbox Asterisk). Tests that restart or freeze
Asterisk get a sandbox of their own (`own_sandbox`), so the shared one is never disturbed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from ami_bridge.connection import AmiConnection
from outbound.sandbox import Sandbox, SandboxError, SandboxInfo
from tests.faults.proxy import FaultProxy
from tests.integration.conftest import (  # noqa: F401 - fixtures, by name
    admin_ami,
    cdr_rows,
    sandbox,
    sandbox_instance,
)

# Fast enough for tests, slow enough for a loaded CI machine.
AMI_TIMINGS: dict[str, Any] = {
    "ping_interval": 0.5,
    "action_timeout": 3.0,
    "connect_timeout": 1.0,
    "backoff": (0.1, 1.0),
}


@pytest.fixture(scope="module")
def own_sandbox() -> Iterator[Sandbox]:
    """A sandbox Asterisk for this module alone (restarted, frozen): stopped afterwards,
    and at interpreter exit should the session die half-way."""
    sb = Sandbox(name=f"test-{os.getpid()}-faults", log=lambda _msg: None)
    atexit.register(Sandbox(name=sb.name, log=lambda _msg: None).down)
    try:
        info = sb.up(timeout=60)
    except SandboxError as exc:
        pytest.fail(f"the faults sandbox Asterisk could not be started: {exc}", pytrace=False)
    try:
        yield sb
    finally:
        # A test that failed between SIGSTOP and SIGCONT must not leave it frozen.
        with contextlib.suppress(OSError):
            os.kill(info.pid, signal.SIGCONT)
        sb.down()


@pytest.fixture
async def make_proxy() -> AsyncIterator[Callable[[int], Awaitable[FaultProxy]]]:
    """`await make_proxy(ami_port)`: a started FaultProxy, stopped after the test."""
    made: list[FaultProxy] = []

    async def make(port: int) -> FaultProxy:
        proxy = FaultProxy(port)
        await proxy.start()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.stop()


@pytest.fixture
async def make_ami() -> AsyncIterator[Callable[..., AmiConnection]]:
    """`make_ami(info, port=None, **timings)`: the dialer's AmiConnection (least-privilege
    account) to `port` (a proxy) or straight to the sandbox; closed after the test."""
    made: list[AmiConnection] = []

    def make(info: SandboxInfo, port: int | None = None, **kw: Any) -> AmiConnection:
        conn = AmiConnection(
            info.ami_host,
            port or info.ami_port,
            info.ami_user,
            info.ami_secret,
            **(AMI_TIMINGS | kw),
        )
        made.append(conn)
        return conn

    yield make
    for conn in made:
        await conn.close()

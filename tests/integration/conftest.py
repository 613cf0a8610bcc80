"""The sandbox Asterisk for integration tests: one real Asterisk per test session.

Built from Debian unstable into a cached chroot on first use (see outbound/sandbox.py);
a session gets its own named instance with its own loopback ports, so parallel runs do
not collide. It is never skipped: if it cannot be built or started, the tests error.
"""

from __future__ import annotations

import atexit
import csv
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from outbound.sandbox import Sandbox, SandboxError, SandboxInfo, list_instances
from tests.helpers.ami import AmiClient

# Columns of cdr_csv's Master.csv with loguniqueid and loguserfield (cdr.conf [csv]).
CDR_COLUMNS = (
    "accountcode src dst dcontext clid channel dstchannel lastapp lastdata start answer "
    "end duration billsec disposition amaflags uniqueid userfield"
).split()


def _prune_dead_sessions() -> None:
    """Stop and delete the instances of test sessions whose process is gone (killed
    runs leave an Asterisk behind; finished runs leave their logs for a look)."""
    for name in list_instances():
        m = re.fullmatch(r"test-(\d+)(-.*)?", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            Sandbox(name=name, log=lambda _msg: None).remove()


@pytest.fixture(scope="session")
def sandbox_instance() -> Iterator[Sandbox]:
    """The session's running Sandbox (for ``cli()``); stopped at the end of the
    session, and at interpreter exit should the session die half-way."""
    _prune_dead_sessions()
    sb = Sandbox(name=f"test-{os.getpid()}")
    # Should the session die half-way, do not leave an Asterisk behind.
    atexit.register(Sandbox(name=sb.name, log=lambda _msg: None).down)
    try:
        sb.up(timeout=60)
    except SandboxError as exc:
        pytest.fail(f"the sandbox Asterisk could not be started: {exc}", pytrace=False)
    try:
        yield sb
    finally:
        sb.down()


@pytest.fixture(scope="session")
def sandbox(sandbox_instance: Sandbox) -> SandboxInfo:
    """How to reach the session's sandbox Asterisk (ports, AMI accounts, log paths)."""
    info = sandbox_instance.info()
    assert info is not None, "sandbox state file missing right after up()"
    return info


@pytest.fixture
async def admin_ami(sandbox: SandboxInfo) -> AsyncIterator[AmiClient]:
    """An AMI session with the sandbox-only full-rights account."""
    client = await AmiClient.connect(
        sandbox.ami_host, sandbox.ami_port, sandbox.admin_ami_user, sandbox.admin_ami_secret
    )
    yield client
    await client.close()


@pytest.fixture
async def dialer_ami(sandbox: SandboxInfo) -> AsyncIterator[AmiClient]:
    """An AMI session with the dialer's least-privilege account."""
    client = await AmiClient.connect(
        sandbox.ami_host, sandbox.ami_port, sandbox.ami_user, sandbox.ami_secret
    )
    yield client
    await client.close()


def read_cdr_rows(path: Path) -> list[dict[str, str]]:
    """Rows of cdr_csv's Master.csv as dicts (empty if the file is not there yet)."""
    try:
        with open(path, newline="") as fh:
            return [dict(zip(CDR_COLUMNS, row, strict=False)) for row in csv.reader(fh)]
    except FileNotFoundError:
        return []


@pytest.fixture
def cdr_rows(sandbox: SandboxInfo) -> Callable[[], list[dict[str, str]]]:
    """A function returning the CDR rows Asterisk has written so far."""
    return lambda: read_cdr_rows(sandbox.cdr_csv_path)

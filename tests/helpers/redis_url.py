"""Redis URLs for tests that keep their data in a numbered DB of a real Redis.

Test modules pick DB numbers by hand and some FLUSHDB theirs. Run without xdist they
share the machine's Redis (127.0.0.1:6379). Under pytest-xdist every worker gets a
private redis-server of its own,
started once per worker process by tests/conftest.py before collection, so two workers
can never meet in the same DB whatever numbers their modules picked. The port is in the
environment (PORT_ENV), so subprocesses the tests spawn build the same URLs.
"""

from __future__ import annotations

import atexit
import os
from contextlib import ExitStack

from tests.helpers.callbacks import private_redis

PORT_ENV = "OB_TEST_REDIS_PORT"
SHARED_PORT = 6379

_private = ExitStack()


def redis_url(db: int) -> str:
    """URL of DB ``db`` on this process's test Redis (the worker's own, or the shared)."""
    port = os.environ.get(PORT_ENV) or str(SHARED_PORT)
    return f"redis://127.0.0.1:{port}/{db}"


def needs_private_redis(worker: str | None) -> bool:
    """Every xdist worker, gw0 included: then nothing else on this machine (another
    pytest session, a demo) can flush a worker's DB under it."""
    return worker is not None


def start_private_redis() -> None:
    """Start this worker's redis-server and point redis_url() (and children) at it."""
    url = _private.enter_context(private_redis())
    atexit.register(stop_private_redis)  # also when the worker dies before unconfigure
    os.environ[PORT_ENV] = url.split(":")[2].split("/")[0]


def stop_private_redis() -> None:
    """Stop the worker's redis-server (idempotent)."""
    _private.close()
    os.environ.pop(PORT_ENV, None)

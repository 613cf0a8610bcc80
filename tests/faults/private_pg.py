"""A PostgreSQL server of the test's own (initdb + pg_ctl in a temporary folder, a free
loopback port), for the fault that stops the server: the machine's shared server must
never be stopped, other tests use it. PostgreSQL refuses to run as root, so the server
runs as the `postgres` system user (runuser)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

from tests.helpers.callbacks import free_port
from tests.helpers.until import until

USER = "postgres"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    assert found, f"no PostgreSQL {name} under /usr/lib/postgresql/*/bin"
    return found[-1]


class PrivatePg:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="faults-pg-")
        shutil.chown(self.dir, USER)
        os.chmod(self.dir, 0o700)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.url = f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/faults"

    def _run(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", USER, "--", *args], check=True, capture_output=True)

    def init(self) -> None:
        self._run(_bin("initdb"), "-D", self.data, "-U", USER, "--auth=trust", "-E", "UTF8")
        self.start()
        admin = create_engine(
            self.url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as c:
            c.execute(text("CREATE DATABASE faults"))
        admin.dispose()

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        log = os.path.join(self.dir, "pg.log")
        self._run(_bin("pg_ctl"), "-D", self.data, "-o", opts, "-l", log, "-w", "start")

        def up() -> bool:
            e = create_engine(self.url.rsplit("/", 1)[0] + "/postgres")
            try:
                with e.connect() as c:
                    return c.execute(text("SELECT 1")).scalar() == 1
            finally:
                e.dispose()

        until(up, 30, 0.2, ignore=(Exception,))

    def stop(self) -> None:
        self._run(_bin("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            [
                "runuser",
                "-u",
                USER,
                "--",
                _bin("pg_ctl"),
                "-D",
                self.data,
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def private_pg() -> Iterator[PrivatePg]:
    pg = PrivatePg()
    try:
        pg.init()
        yield pg
    finally:
        pg.remove()

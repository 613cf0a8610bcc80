"""Fixtures of the browser tests: the status page served over real HTTP by `outbound run
web` (a subprocess on a free loopback port), a private redis-server, headless Chromium
driven by Playwright, and a screenshot folder.

The sandbox fixtures are the integration tests' (imported by name, as tests/faults does:
same functions, same session instance). Chromium is the system's (/usr/bin/chromium);
`playwright install` is never run. Screenshots go to $OUTBOUND_SCREENSHOTS when set,
else to the test's tmp_path; the folder is printed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.helpers.callbacks import free_port, private_redis
from tests.helpers.until import until
from tests.integration.conftest import (  # noqa: F401 - fixtures, by name
    admin_ami,
    sandbox,
    sandbox_instance,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
SMALL_SCREEN = {"width": 360, "height": 740}


@dataclass
class Web:
    """A running `outbound run web`."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def start_web(tmp_path: Path, db_url: str, redis_url: str, **settings: str) -> Web:
    """`outbound run web` on a free loopback port with these settings (`--set`); returns
    once /healthz answers 200."""
    port = free_port()
    sets = {
        "database.url": db_url,
        "redis.url": redis_url,
        "web.host": "127.0.0.1",
        "web.port": str(port),
        "web.sse_max": "30",
        "web.sse_heartbeat": "5",
        "log.level": "WARNING",
        **settings,
    }
    args = [sys.executable, "-c", "from outbound.cli import main; main()"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    args += ["run", "web"]
    env = {k: v for k, v in os.environ.items() if k != "OUTBOUND_CONFIG"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # this checkout's code
    log = tmp_path / f"web-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=out, stderr=out)
    web = Web(f"http://127.0.0.1:{port}", proc, log)

    def healthy() -> bool:
        assert proc.poll() is None, f"outbound run web exited: {web.output()}"
        return httpx.get(f"{web.url}/healthz", timeout=2).status_code == 200

    try:
        until(healthy, timeout=30, interval=0.2, ignore=(httpx.HTTPError,), message="web up")
    except BaseException:
        stop_web(web)
        raise
    return web


def stop_web(web: Web) -> None:
    if web.proc.poll() is None:
        web.proc.terminate()
        try:
            web.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            web.proc.kill()
            web.proc.wait(timeout=10)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A redis-server of this test's own: nothing it writes can meet another suite."""
    with private_redis() as url:
        yield url


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@dataclass
class Shots:
    """Numbered screenshots of one test in one folder."""

    folder: Path
    taken: list[Path] = field(default_factory=list)

    async def __call__(self, page: Page, name: str) -> Path:
        path = self.folder / f"{len(self.taken) + 1:02d}-{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


@pytest.fixture
def shots(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shots]:
    root = os.environ.get("OUTBOUND_SCREENSHOTS")
    folder = Path(root) / request.node.name if root else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    s = Shots(folder)
    yield s
    print(f"\n{len(s.taken)} screenshots of {request.node.name} in {folder}")


def record_console(page: Page) -> list[str]:
    """The page's console errors and uncaught exceptions (a CSP violation shows here)."""
    seen: list[str] = []

    def console(msg: Any) -> None:
        if msg.type == "error":
            seen.append(msg.text)

    page.on("console", console)
    page.on("pageerror", lambda exc: seen.append(f"pageerror: {exc}"))
    return seen

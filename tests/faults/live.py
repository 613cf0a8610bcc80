"""A live campaign for the fault tests: every process of the dialer as a real, separate
process (bridge, FastAGI server, Celery worker and beat: each can be `kill -9`'d and
started again), on a sandbox Asterisk, a private redis-server and a database of the
test's own; 54 contacts whose numbers play fast sandbox scenarios (persons, busy,
congestion, answer-and-hang-up), ten agents on simulated desk phones driven by a small
loop (end the call after 1-3 s, mark it done, accept callback offers), and a few
callbacks that come due while the campaign runs.

The fault goes in between `start()` and `settle()`; `invariants()` (tests/faults/
invariants.py) then asks the database and Asterisk whether anything was lost or doubled.
The processes are separate so that a fault hits them as it would in production: a killed
bridge loses its memory, not the test's."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis as redis_lib
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ami_bridge.service import health_key
from outbound import live as live_state
from outbound import names
from outbound.campaigns import preview, push
from outbound.campaigns.attempts import settle
from outbound.campaigns.interaction import mark_done
from outbound.commands import CommandFailed, CommandTimeout, send_command
from outbound.dial_queue import DialQueue
from outbound.model import (
    AttemptState,
    CallAttempt,
    Callback,
    CallbackState,
    CallResult,
    Campaign,
    CampaignState,
    Contact,
    ContactList,
    ContactState,
    DialMode,
    PhoneNumber,
    make_engine,
    session_factory,
    transaction,
    upgrade,
    utcnow,
)
from outbound.model.tables import Offer, OfferState
from outbound.sandbox import SandboxInfo, daytime_zone
from tests.helpers import hive
from tests.helpers.callbacks import free_port
from tests.helpers.celery_procs import Proc, Scheduler
from tests.helpers.stack import TRUNK
from tests.helpers.until import until

log = logging.getLogger("tests.faults.live")

# Last digits (the sandbox's scenario by digit): 0-3 person, 5 busy, 7 congestion,
# 9 answers and hangs up at once. 50 contacts of the campaign, plus the callbacks'.
DIGITS = [0, 1, 2, 3] * 2 + [5] * 8 + [7] * 26 + [9] * 8
CALLBACKS = 4  # contacts waiting for a callback, due during the run
AGENTS = 10
RETRY_S = 3  # busy, failed, cancelled: back after 3 s
MAX_ATTEMPTS = 3
TREATMENTS: dict[str, dict[str, Any]] = {
    "busy": {"action": "retry", "delay_min": RETRY_S / 60, "max_attempts": 2},
    "failed": {"action": "retry", "delay_min": RETRY_S / 60},
    "cancelled": {"action": "retry", "delay_min": RETRY_S / 60},
    "no_answer": {"action": "retry", "delay_min": RETRY_S / 60},
    "congestion": {"action": "final"},
    "hangup": {"action": "final"},
    "silence": {"action": "final"},
    "answering_machine": {"action": "final"},
    "abandoned": {"action": "retry", "delay_min": RETRY_S / 60},
}


class Processes(Scheduler):
    """celery_procs.Scheduler (worker, beat) plus the bridge and the FastAGI server, all
    with one environment: the sandbox's ports and the dialer's AMI account."""

    def __init__(self, workdir: Path, database_url: str, redis_url: str, sb: SandboxInfo):
        super().__init__(workdir, database_url, redis_url)
        self.sb = sb
        self.server = f"live-{uuid.uuid4().hex[:6]}"
        self.ami_port: int | None = None  # the bridge's AMI port if not Asterisk's (a proxy)

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            OUTBOUND_AMI_HOST=self.sb.ami_host,
            OUTBOUND_AMI_PORT=str(self.ami_port or self.sb.ami_port),
            OUTBOUND_AMI_USERNAME=self.sb.ami_user,
            OUTBOUND_AMI_SECRET=self.sb.ami_secret,
            OUTBOUND_AMI_PING_INTERVAL="1",
            OUTBOUND_AMI_ACTION_TIMEOUT="5",
            OUTBOUND_AGI_PORT=str(self.sb.agi_port),
            OUTBOUND_DIALER_SERVER=self.server,
            OUTBOUND_DIALER_TRUNK=TRUNK,
            OUTBOUND_DIALER_RING_TIMEOUT="15",
        )
        return env

    def bridge(self, name: str = "bridge") -> Proc:
        return self._start(name, ["bridge"])

    def agi(self, name: str = "agi") -> Proc:
        return self._start(name, ["agi"])

    def restart(self, proc: Proc) -> Proc:
        """The same process started again (a supervisor's restart), under a new log."""
        kind = proc.popen.args[4] if isinstance(proc.popen.args, list) else ""
        name = f"{proc.name.split('.')[0]}.{len(self.procs)}"
        if kind == "worker":
            return self._start(name, ["worker", "--hostname", f"{name}@%h"])
        if kind == "beat":
            return self._start(name, ["beat", "--schedule", str(self.workdir / f"{name}.db")])
        return self._start(name, [str(kind)])


@dataclass
class LiveCampaign:
    """One test's campaign and its processes. `start()`, the fault, `settle()`, then
    `stop()` (also after a failure: the fixture does it)."""

    sb: SandboxInfo
    factory: sessionmaker[Session]
    database_url: str
    redis_url: str
    workdir: Path
    mode: DialMode = DialMode.PROGRESSIVE
    campaign_id: int = 0
    numbers: dict[int, str] = field(default_factory=dict)  # contact id -> number
    agents: list[str] = field(default_factory=list)
    callbacks: list[int] = field(default_factory=list)
    procs: Processes = field(init=False)
    r: redis_lib.Redis = field(init=False)
    sim: SimAgents | None = None
    redis_server: RedisServer | None = None

    def __post_init__(self) -> None:
        self.procs = Processes(self.workdir, self.database_url, self.redis_url, self.sb)
        self.r = redis_lib.Redis.from_url(self.redis_url)

    @property
    def server(self) -> str:
        return self.procs.server

    # ------------------------------------------------------------ the data
    def populate(self, callbacks_due_s: tuple[float, ...] = (6, 10, 14, 18)) -> None:
        """The campaign, its contacts (shuffled scenarios), agents and callbacks due
        `callbacks_due_s` seconds from now."""
        f = self.factory
        cid = random.randrange(10**6, 10**9)
        with transaction(f) as s:
            s.add(
                Campaign(
                    id=cid,
                    name=f"conc-{cid}",  # the name hive.contacts adds to
                    mode=self.mode,
                    state=CampaignState.RUNNING,
                    max_attempts=MAX_ATTEMPTS,
                    treatments=TREATMENTS,
                    callback_fallback="pool",
                )
            )
            s.flush()
            s.add(ContactList(campaign_id=cid, name="l"))
        self.campaign_id = cid
        self.numbers = hive.contacts(f, cid, random.sample(DIGITS, len(DIGITS)))
        self.agents = hive.agents(f, cid, AGENTS)
        now = utcnow()
        for due in callbacks_due_s[:CALLBACKS]:
            number = f"+4930{random.randrange(10**7, 10**8)}0"  # a person answers
            contact = _callback_contact(f, cid, number)
            self.numbers[contact] = number
            with transaction(f) as s:
                cb = Callback(
                    campaign_id=cid, contact_id=contact, due_at=now + timedelta(seconds=due)
                )
                s.add(cb)
                s.flush()
                self.callbacks.append(cb.id)

    # ------------------------------------------------------------ the processes
    def start(self) -> None:
        """Every process up, the agents logged in and Ready, the simulated agents on."""
        self.procs.agi()
        self.procs.worker()
        self.procs.beat()
        self.procs.bridge()
        self.wait_bridge_healthy()
        for a in self.agents:
            self.command("login", agent_id=a)
            self.command("ready", agent_id=a)
        self.sim = SimAgents(self)
        self.sim.start()

    def command(self, kind: str, timeout: float = 15, **args: object) -> dict[str, Any]:
        return send_command(self.r, self.server, kind, dict(args), timeout)

    def bridge_healthy(self) -> bool:
        raw = self.r.get(health_key(self.server))
        return raw is not None and b'"healthy": true' in raw

    def bridge_connects(self) -> int:
        """How many times the (current) bridge process connected to AMI (0: no record)."""
        raw = self.r.get(health_key(self.server))
        return int(json.loads(raw)["connects"]) if raw else 0

    def wait_bridge_healthy(self, timeout: float = 90) -> None:
        until(self.bridge_healthy, timeout, 0.2, message="the bridge reports healthy")

    def proc(self, name: str) -> Proc:
        """The newest running process whose name starts with `name`."""
        return next(p for p in reversed(self.procs.procs) if p.name.split(".")[0] == name)

    def kill9_and_restart(self, name: str, down_s: float = 0.0) -> Proc:
        """`kill -9` the process, leave it dead `down_s` seconds (a supervisor's restart
        delay), start it again."""
        p = self.proc(name)
        Scheduler.kill9(p)
        if down_s:
            time.sleep(down_s)
        return self.procs.restart(p)

    def dialer_holds(self) -> set[tuple[str, str]]:
        """What the bridge's dialer holds in Redis now: (reservation key, token) of its
        reserved agents and (lease key + contact, owner) of its leased records."""
        prefix = names.key_agent_reservation("")
        held: set[tuple[str, str]] = set()
        for key in self.r.scan_iter(match=prefix + "*"):
            token = self.r.get(key)
            if token is not None:
                held.add((_text(key), _text(token)))
        leases = names.key_leases(self.campaign_id)
        for contact, owner in self.r.hgetall(leases).items():
            held.add((f"{leases}/{_text(contact)}", _text(owner)))
        return held

    # ------------------------------------------------------------ the end
    def attempts(self) -> list[CallAttempt]:
        return hive.attempts(self.factory, self.campaign_id)

    def wait_attempts(self, n: int, timeout: float = 90) -> None:
        """Mid-campaign: at least `n` attempts written."""
        until(lambda: len(self.attempts()) >= n, timeout, 0.2, message=f"{n} attempts")

    def settled(self) -> bool:
        """Nothing more will be dialed: every attempt ended, every callback done, every
        contact final (or rescheduled far ahead, as hive.settled says)."""
        with self.factory() as s:
            open_cbs = s.scalar(
                select(Callback.id)
                .where(Callback.campaign_id == self.campaign_id)
                .where(Callback.state != CallbackState.DONE)
                .limit(1)
            )
        return open_cbs is None and hive.settled(self.factory, self.campaign_id)

    def settle(self, timeout: float = 150) -> None:
        try:
            until(self.settled, timeout, 0.5)
        except AssertionError:
            raise AssertionError(f"not settled within {timeout:g}s: {self.progress()}") from None
        assert self.sim is not None
        self.sim.stop()

    def progress(self) -> str:
        """Where the campaign stands, for a failure message."""
        now = utcnow()
        rows = self.attempts()
        live_rows = Counter(a.state.value for a in rows if a.state is not AttemptState.ENDED)
        contacts = Counter(
            f"{c.state.value}{'+soon' if c.next_at and c.next_at - now < hive.RESCHEDULED_AFTER else ''}"
            for c in hive.contact_rows(self.factory, self.campaign_id).values()
        )
        with self.factory() as s:
            cbs = Counter(
                cb.value
                for cb in s.scalars(select(Callback.state).where(Callback.id.in_(self.callbacks)))
            )
        errors = self.sim.errors[-5:] if self.sim else []
        return (
            f"{len(rows)} attempts, live {dict(live_rows)}; contacts {dict(contacts)}; "
            f"callbacks {dict(cbs)}; agent errors {errors}"
        )

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.stop()
        for a in self.agents:  # hang up the desk phones (the conference's channels)
            with contextlib.suppress(Exception):
                if self.proc("bridge").popen.poll() is None:
                    self.command("logout", timeout=5, agent_id=a)
        self.procs.stop()
        self.r.close()


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _callback_contact(f: sessionmaker[Session], cid: int, number: str) -> int:
    """A contact waiting for its callback (state `callback`, never in the dial queue)."""
    with transaction(f) as s:
        lst = s.scalar(select(ContactList.id).where(ContactList.campaign_id == cid))
        ct = Contact(
            campaign_id=cid,
            list_id=lst,
            external_key=uuid.uuid4().hex,
            name="X",
            timezone=daytime_zone(),
            state=ContactState.CALLBACK,
        )
        s.add(ct)
        s.flush()
        s.add(PhoneNumber(contact_id=ct.id, e164=number))
        return ct.id


# ------------------------------------------------------------ the simulated agents


class SimAgents:
    """What the agents' pages would do, in a thread: a connected call is ended after 1-3 s
    (the bridge's `end` command), an ended one marked done, a callback offered to an agent
    accepted and dialed (as status_page/calls.py does: core, then the bridge's `dial`).
    Failures are kept (`errors`), never raised: a fault makes some of them fail."""

    def __init__(self, live: LiveCampaign) -> None:
        self.live = live
        self.errors: list[str] = []
        self.ended: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-agents", daemon=True)
        self._hold: dict[str, float] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        rounds = 0
        while not self._stop.is_set():
            try:
                self._once()
                if rounds % 10 == 0:
                    self._back_in()
            except Exception as exc:  # the database or Redis is down: try again
                self.errors.append(repr(exc))
            rounds += 1
            self._stop.wait(0.3)

    def _back_in(self) -> None:
        """An agent whose session ended (Asterisk restarted: the desk phone's call is
        gone) or whose live state is gone (Redis flushed) logs in again and is Ready, as
        a person at the desk would."""
        for a in self.live.agents:
            state = live_state.decode(self.live.r.hgetall(live_state.agent_key(a)))
            if state.get("session") == "up" and state.get("ready_voice") == "1":
                continue
            if state.get("session") != "up":
                self._try(f"login {a}", lambda a=a: self.live.command("login", 10, agent_id=a))
            self._try(f"ready {a}", lambda a=a: self.live.command("ready", 10, agent_id=a))

    def _once(self) -> None:
        lv, f = self.live, self.live.factory
        with f() as s:
            rows = s.execute(
                select(
                    CallAttempt.id,
                    CallAttempt.agent_id,
                    CallAttempt.state,
                    CallAttempt.connected_at,
                    CallAttempt.disposition,
                ).where(
                    CallAttempt.campaign_id == lv.campaign_id,
                    CallAttempt.connected_at.is_not(None),
                )
            ).all()
            offers = s.execute(
                select(Offer.id, Offer.agent_id).where(
                    Offer.campaign_id == lv.campaign_id,
                    Offer.state == OfferState.OPEN,
                    Offer.callback_id.is_not(None),
                )
            ).all()
        now = utcnow()
        for aid, agent, state, connected_at, disposition in rows:
            if state is AttemptState.CONNECTED and aid not in self.ended:
                hold = self._hold.setdefault(aid, random.uniform(1, 3))
                if connected_at is not None and now - connected_at >= timedelta(seconds=hold):
                    self._try(f"end {aid}", lambda a=aid, g=agent: self._end(a, g))
            elif state is AttemptState.ENDED and disposition is None:
                self._try(f"done {aid}", lambda a=aid, g=agent: mark_done(f, a, str(g), ""))
        for oid, agent in offers:
            self._try(f"accept {oid}", lambda o=oid, g=agent: self._accept(o, str(g)))

    def _try(self, what: str, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:
            self.errors.append(f"{what}: {exc!r}")

    def _end(self, aid: str, agent: str) -> None:
        self.live.command("end", timeout=5, attempt_id=aid, agent_id=agent)
        self.ended.add(aid)

    def _accept(self, offer_id: int, agent: str) -> None:
        lv = self.live
        q = DialQueue(lv.r, lv.campaign_id)
        push.accept(lv.factory, offer_id, agent, queue=q)
        out = preview.dial(lv.factory, q, offer_id, agent)
        args = {
            "contact_id": out["contact_id"],
            "agent_id": agent,
            "attempt_id": out["attempt_id"],
            "connect": True,
        }
        try:
            lv.command("dial", timeout=10, **args)
        except (CommandFailed, CommandTimeout) as exc:  # as status_page/calls.py does
            with transaction(lv.factory) as s:
                a = s.get(CallAttempt, out["attempt_id"], with_for_update=True)
                if a is not None and a.state is AttemptState.CREATED:
                    settle(s, a.id, CallResult.CANCELLED, note=f"not dialed: {exc}"[:200])
            raise


@contextlib.contextmanager
def live_campaign(
    sb: SandboxInfo, database_url: str, workdir: Path, mode: DialMode = DialMode.PROGRESSIVE
) -> Iterator[LiveCampaign]:
    """A populated LiveCampaign on a migrated database and a private redis-server, not
    started yet; every process stopped afterwards."""
    engine = make_engine(database_url, pool_size=10)
    upgrade(engine)
    rs = RedisServer(workdir)
    rs.start()
    lv = LiveCampaign(sb, session_factory(engine), database_url, rs.url, workdir, mode)
    lv.redis_server = rs
    lv.populate()
    try:
        yield lv
    finally:
        lv.stop()
        rs.stop()
        engine.dispose()


class RedisServer:
    """A redis-server of the test's own (as tests/helpers/callbacks.py private_redis),
    which can be stopped and started again on the same port: a Redis restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir(exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.popen = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis_lib.Redis.from_url(self.url)
        try:
            until(client.ping, timeout=20, ignore=(redis_lib.ConnectionError,))
        finally:
            client.close()

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(timeout=10)

"""B4, the control plane on the sandbox: origination rate, AMI event throughput, CPU per
call (ours next to Asterisk's, same run), the bridge's memory at 400 concurrent calls.

Starts its own sandbox Asterisk and a scratch PostgreSQL database; in this process runs
what the AMI bridge runs for calls (the dialer's AMI connection with its least-privilege
account, the Originator, agent sessions). Three parts, run in the order (c), (a), (b):

(a) Sustained originations: at each target rate (default 25, 50, 100 per second, 20 s
    each) the bench calls `Originator.dial` on time, as the dialer does: the attempt row
    is committed, then the Originate fired without waiting. The contacts are the sandbox's
    `hangup` scenario (Local/<number>@sim-contacts: rings 1 s, answers, hangs up; no
    audio) and the answered leg goes to outbound-after-classify,hangup (no AGI). A call
    counts as placed when Asterisk saw it arrive (DB(simcount/<number>) = 1) and its
    attempt ended answered; anything else is a failure. CPU per call: this process
    (getrusage: the bridge code, SQLAlchemy, its threads) and, shown apart, the PostgreSQL
    backends serving it; Asterisk's from /proc/<pid>/stat over the same window.
(b) AMI events handled per second: Asterisk emits a storm of UserEvents (a dialplan loop
    in this sandbox's extensions_sandbox_extra.conf, several channels at once) which the
    bridge's AMI connection parses and dispatches to its handlers (Originator, sessions,
    and a counter). Rate from first to last event handled; CPU of both over that window.
(c) Memory: 400 calls live at once (`noanswer` contacts: ringing, no audio; hold() says
    why not answered ones), resident memory (VmRSS) of this process.

    python bench/control_plane.py                 # 3-4 minutes
    python bench/control_plane.py --rates 50 --seconds 10
    python bench/control_plane.py --quick         # smoke: tiny figures, no docs

Writes the `## B4 control plane` section of docs/benchmarks.md ($OUTBOUND_BENCH_DOCS or
--docs to write elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import resource
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _common import markdown_table, print_table, write_section  # noqa: E402
from panoramisk.message import Message  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from ami_bridge.connection import AmiConnection  # noqa: E402
from ami_bridge.originator import Originator  # noqa: E402
from ami_bridge.sessions import AgentSessions  # noqa: E402
from outbound import model as om  # noqa: E402
from outbound.sandbox import Sandbox, SandboxInfo, daytime_zone  # noqa: E402
from tests.conftest import scratch_pg_database  # noqa: E402
from tests.helpers.ami import AmiClient  # noqa: E402

SECTION = "B4 control plane"
TRUNK = "Local/${NUMBER}@sim-contacts"
GOAL_RATE = 50.0
GOAL_EVENTS = 10_000.0
GOAL_CORE = 0.60
GOAL_RATIO = 0.25
GOAL_RSS_MB = 150.0
STORM = "BenchStorm"
# Dialplan of this bench's own sandbox instance only (the #tryinclude of the sandbox's
# extensions.conf): Local/<n>@bench-storm emits <n> UserEvents as fast as it can.
STORM_DIALPLAN = f"""
[bench-storm]
exten => _X.,1,Set(N=0)
 same => n(loop),UserEvent({STORM},Seq: ${{N}})
 same => n,Set(N=$[${{N}} + 1])
 same => n,GotoIf($[${{N}} < ${{EXTEN}}]?loop)
 same => n,Hangup(16)
"""
TICK = os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process (all its threads), user + system."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu(pid: int) -> float:
    """CPU seconds of another process from /proc/<pid>/stat (0 when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Window:
    """CPU of us, our PostgreSQL backends and Asterisk between start() and stop()."""

    asterisk_pid: int
    backends: list[int] = field(default_factory=list)
    t: float = 0.0
    ours: float = 0.0
    pg: dict[int, float] = field(default_factory=dict)
    ast: float = 0.0

    def start(self) -> None:
        self.t, self.ours, self.ast = time.monotonic(), own_cpu(), proc_cpu(self.asterisk_pid)
        self.pg = {p: proc_cpu(p) for p in self.backends}

    def stop(self) -> dict[str, float]:
        pg = sum(max(0.0, proc_cpu(p) - c) for p, c in self.pg.items())
        return {
            "s": time.monotonic() - self.t,
            "ours": own_cpu() - self.ours,
            "pg": pg,
            "ast": proc_cpu(self.asterisk_pid) - self.ast,
        }


def backend_pids(factory: sessionmaker[Session]) -> list[int]:
    with factory() as s:
        q = text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return [int(p) for p in s.scalars(q)]


def add_contacts(factory: sessionmaker[Session], numbers: Iterable[str]) -> list[int]:
    """One contact per number in the running campaign `bench` (made on first use), where
    it is daytime, in one transaction."""
    with om.transaction(factory) as s:
        c = s.scalar(select(om.Campaign).where(om.Campaign.name == "bench"))
        if c is None:
            c = om.Campaign(
                name="bench", mode=om.DialMode.PROGRESSIVE, state=om.CampaignState.RUNNING
            )
            s.add(c)
            s.flush()
            s.add(om.ContactList(campaign_id=c.id, name="l"))
            s.flush()
        lst = s.scalar(select(om.ContactList.id).where(om.ContactList.campaign_id == c.id))
        zone = daytime_zone()
        contacts = []
        for n in numbers:
            ct = om.Contact(
                campaign_id=c.id,
                list_id=lst,
                external_key=uuid.uuid4().hex,
                name="X",
                timezone=zone,
            )
            ct.numbers.append(om.PhoneNumber(e164=n))
            contacts.append(ct)
        s.add_all(contacts)
        s.flush()
        return [ct.id for ct in contacts]


def ended(factory: sessionmaker[Session], ids: list[str]) -> dict[str, om.CallResult | None]:
    """Result of every ended attempt among `ids`."""
    out: dict[str, om.CallResult | None] = {}
    with factory() as s:
        for i in range(0, len(ids), 500):
            q = select(om.CallAttempt.id, om.CallAttempt.result).where(
                om.CallAttempt.id.in_(ids[i : i + 500]),
                om.CallAttempt.state == om.AttemptState.ENDED,
            )
            out.update({aid: r for aid, r in s.execute(q)})
    return out


async def wait_for(check: Any, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return True
        await asyncio.sleep(interval)
    return bool(await asyncio.to_thread(check))


@dataclass
class Plane:
    info: SandboxInfo
    factory: sessionmaker[Session]
    ami: AmiConnection
    originator: Originator
    admin: AmiClient
    window: Window
    events: dict[str, int] = field(default_factory=lambda: {"n": 0})

    def count_events(self, _msg: Message) -> None:
        """Every event the dialer's account receives (what the bridge parses per call)."""
        self.events["n"] += 1


async def paced(
    p: Plane, contacts: list[int], rate: float, **dial: Any
) -> tuple[list[str | None], float]:
    """Dial every contact on the schedule `rate` per second, each dial a task of its own
    (the attempt committed, the Originate fired, nothing awaited for the call). Returns
    the attempt ids (None: the dial raised) and the rate achieved between the first
    and the last dial's return."""
    t0 = time.monotonic()
    returned: list[float] = []

    async def one(cid: int) -> str:
        aid = await p.originator.dial(cid, **dial)
        returned.append(time.monotonic())
        return aid

    tasks = []
    for i, cid in enumerate(contacts):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(cid)))
    done = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [d for d in done if isinstance(d, BaseException)]
    for e in errors[:3]:
        print(f"dial failed: {e!r}")
    span = max(returned) - min(returned) if len(returned) > 1 else 0.0
    achieved = (len(returned) - 1) / span if span > 0 else 0.0
    return [d if isinstance(d, str) else None for d in done], achieved


async def originations(p: Plane, rate: float, seconds: float) -> dict[str, Any]:
    n = max(1, int(rate * seconds))
    prefix = random.randrange(10**5, 10**6)
    numbers = [f"+4931{prefix}{i:05d}9" for i in range(n)]  # last digit 9: `hangup`
    contacts = await asyncio.to_thread(add_contacts, p.factory, numbers)
    p.window.backends = await asyncio.to_thread(backend_pids, p.factory)
    events_before = p.events["n"]
    p.window.start()
    placed, achieved = await paced(
        p, contacts, rate, context="outbound-after-classify", exten="hangup"
    )
    ids = [a for a in placed if a]
    await wait_for(lambda: len(ended(p.factory, ids)) == len(ids), 40)
    cpu = p.window.stop()
    events = p.events["n"] - events_before
    results = ended(p.factory, ids)
    out = await p.admin.command("database show simcount")
    # "/simcount/<number>   : <count>": each number arrived exactly once
    counts = {
        k.strip().rsplit("/", 1)[-1]: v.strip()
        for k, _, v in (line.partition(":") for line in out.splitlines())
    }
    answered = (om.CallResult.HANGUP, om.CallResult.ANSWERED)
    why: Counter[str] = Counter()
    for aid, num in zip(placed, numbers, strict=True):
        if aid is None:
            why["dial raised"] += 1
        elif aid not in results:
            why["attempt not ended within 40 s"] += 1
        elif results[aid] not in answered:
            why[f"attempt ended {results[aid]}"] += 1
        elif counts.get(num) != "1":
            why[f"Asterisk saw it arrive {counts.get(num, '0')} times"] += 1
    return {
        "rate": rate,
        "calls": n,
        "rss": rss_mb(),
        "events": events / n,
        "achieved": achieved,
        "failures": sum(why.values()),
        "why": "; ".join(f"{k}: {v}" for k, v in why.most_common()),
        **cpu,
    }


async def storm(p: Plane, channels: int, per_channel: int) -> dict[str, Any]:
    total = channels * per_channel
    seen = {"n": 0, "first": 0.0, "last": 0.0}

    def count(msg: Message) -> None:
        if msg.get("UserEvent") == STORM:
            now = time.monotonic()
            seen["first"] = seen["first"] or now
            seen["last"] = now
            seen["n"] += 1

    p.ami.on_event("UserEvent", count)
    p.window.backends = []
    p.window.start()
    storm_call = f"Local/{per_channel}@bench-storm"
    for _ in range(channels):
        await p.admin.send(
            "Originate", Channel=storm_call, Application="Wait", Data="1", Async="true"
        )
    last, still, deadline = -1.0, time.monotonic(), time.monotonic() + 120
    while seen["n"] < total and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if seen["n"] != last:
            last, still = seen["n"], time.monotonic()
        elif time.monotonic() - still > 2.0:  # nothing for 2 s: the storm is over
            break
    cpu = p.window.stop()
    span = max(1e-6, seen["last"] - seen["first"])
    return {"events": seen["n"], "expected": total, "span": span, "rate": seen["n"] / span, **cpu}


async def hold(p: Plane, calls: int, rate: float, idle_s: float) -> dict[str, Any]:
    """`calls` calls ringing at once at the sandbox's `noanswer` contacts (ringing, never
    answered; the ring timeout raised so that none ends on its own meanwhile). Answered
    Local-channel calls would do for the bridge as well, but 400 of them keep this
    sandbox's Asterisk busy on two cores even while nothing happens (about 0.7% of a
    core per call, measured; ringing ones about 0.3%), which would only measure that."""
    numbers = [f"+4932{random.randrange(10**8, 10**9)}6" for _ in range(calls)]
    contacts = await asyncio.to_thread(add_contacts, p.factory, numbers)
    before = rss_mb()
    saved, p.originator.ring_timeout = p.originator.ring_timeout, 120
    try:
        placed, _ = await paced(p, contacts, rate, context="sim-hold", exten="s")
    finally:
        p.originator.ring_timeout = saved
    ids = [a for a in placed if a]

    def ringing() -> int:
        with p.factory() as s:
            q = select(func.count()).where(
                om.CallAttempt.id.in_(ids), om.CallAttempt.state == om.AttemptState.RINGING
            )
            return int(s.scalar(q) or 0)

    await wait_for(lambda: ringing() == len(ids), 60)
    live = await asyncio.to_thread(ringing)
    channels = (await p.admin.command("core show channels count", timeout=30)).splitlines()
    at = {
        "rss_before": before,
        "rss": rss_mb(),
        "ast_rss": rss_mb(p.info.pid),
        "ast_threads": len(os.listdir(f"/proc/{p.info.pid}/task")),
    }
    p.window.backends = []
    p.window.start()
    await asyncio.sleep(idle_s)  # the bridge's cost of calls that merely wait
    idle = p.window.stop()
    # One call at a time, as a ring timeout would end them: all 4 x 400 channels at once
    # keep a 2-core Asterisk busy for many seconds.
    for n in numbers:
        await p.admin.send(
            "Hangup", timeout=30, check=False, Channel=f"/^Local/{re.escape(n)}@outbound-dial-/"
        )
    await wait_for(lambda: len(ended(p.factory, ids)) == len(ids), 60)
    return {
        "calls": calls,
        "live": live,
        "channels": next((c for c in channels if "active channel" in c), "?"),
        "idle_ours": idle["ours"] / idle["s"],
        "idle_ast": idle["ast"] / idle["s"],
        **at,
    }


async def run(info: SandboxInfo, url: str, args: argparse.Namespace) -> dict[str, Any]:
    engine = om.make_engine(url)
    om.upgrade(engine)
    factory = om.session_factory(engine)
    admin = await AmiClient.connect(
        info.ami_host, info.ami_port, info.admin_ami_user, info.admin_ami_secret, events=False
    )
    await admin.command("dialplan reload")  # the storm's extensions_sandbox_extra.conf
    ami = AmiConnection(info.ami_host, info.ami_port, info.ami_user, info.ami_secret)
    o = Originator(ami, factory, trunk=TRUNK, ring_timeout=15)
    AgentSessions(ami).attach()
    o.start()
    await ami.start(wait=15)
    p = Plane(info, factory, ami, o, admin, Window(info.pid))
    ami.on_event("*", p.count_events)
    try:
        out: dict[str, Any] = {"rates": []}
        # (c) first: the memory of N live calls, not of the thousands placed before.
        out["hold"] = await hold(p, args.hold, args.hold_rate, args.idle)
        _progress("(c) hold", out["hold"])
        for r in args.rates:
            out["rates"].append(await originations(p, r, args.seconds))
            _progress(f"(a) {r:g}/s", out["rates"][-1])
        out["storm"] = await storm(p, args.storm_channels, args.storm_events)
        _progress("(b) storm", out["storm"])
        out["reconnects"] = ami.connects - 1
        return out
    finally:
        await o.stop()
        await ami.close()
        await admin.close()
        engine.dispose()


def _progress(what: str, figures: dict[str, Any]) -> None:
    shown = ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()
    )
    print(f"{time.strftime('%H:%M:%S')} {what}: {shown}", flush=True)


def _ms(cpu_s: float, calls: int) -> str:
    return f"{cpu_s / max(1, calls) * 1000:.2f}"


def tables(m: dict[str, Any]) -> tuple[list[tuple[str, list[str], list[list[object]]]], list[str]]:
    """The three tables and the goal lines (met / NOT met, with what limits it)."""
    a_cols = (
        "target (/s)|calls|achieved (/s)|failures|ours CPU/call (ms)|"
        "PostgreSQL CPU/call (ms)|Asterisk CPU/call (ms)|ours / Asterisk|"
        "ours+PG / Asterisk|our RSS after (MB)|AMI events per call"
    ).split("|")
    a_rows: list[list[object]] = []
    for r in m["rates"]:
        ast = max(r["ast"], 1e-9)
        a_rows.append(
            [
                f"{r['rate']:g}",
                r["calls"],
                f"{r['achieved']:.1f}",
                f"{r['failures']} ({r['why']})" if r["failures"] else 0,
                _ms(r["ours"], r["calls"]),
                _ms(r["pg"], r["calls"]),
                _ms(r["ast"], r["calls"]),
                f"{r['ours'] / ast:.2f}",
                f"{(r['ours'] + r['pg']) / ast:.2f}",
                f"{r['rss']:.0f}",
                f"{r['events']:.0f}",
            ]
        )
    s = m["storm"]
    b_cols = (
        "UserEvents sent|handled|span (s)|handled/s|ours (% of a core)|"
        "Asterisk (% of a core)|ours CPU per 1,000 events (ms)|"
        "handled/s at 60% of a core (extrapolated)"
    ).split("|")
    ours_core = s["ours"] / max(s["s"], 1e-9)
    per_event = s["ours"] / max(1, s["events"])
    b_row: list[object] = [f"{s['expected']:,}", f"{s['events']:,}", f"{s['span']:.2f}"]
    b_row += [f"{s['rate']:,.0f}", f"{ours_core:.0%}", f"{s['ast'] / max(s['s'], 1e-9):.0%}"]
    b_row += [f"{per_event * 1e6:.1f}", f"{GOAL_CORE / per_event:,.0f}" if per_event else "-"]
    h = m["hold"]
    c_cols = (
        "calls placed|ringing at once|Asterisk|Asterisk threads|"
        "our RSS before / with the calls (MB)|Asterisk RSS (MB)|"
        "CPU while they wait: ours / Asterisk (% of a core)"
    ).split("|")
    c_row: list[object] = [h["calls"], h["live"], h["channels"], h["ast_threads"]]
    c_row += [f"{h['rss_before']:.0f} / {h['rss']:.0f}", f"{h['ast_rss']:.0f}"]
    c_row.append(f"{h['idle_ours']:.1%} / {h['idle_ast']:.1%}")
    goals = []
    fast = [r for r in m["rates"] if r["rate"] >= GOAL_RATE]
    good = [r for r in fast if r["failures"] == 0 and r["achieved"] >= 0.98 * r["rate"]]
    goals.append(
        _goal(
            f">= {GOAL_RATE:g} originations/s with no failure",
            bool(good),
            "; ".join(
                f"{r['rate']:g}/s: {r['achieved']:.1f}/s achieved, {r['failures']} failures"
                for r in fast
            )
            or "no step at that rate",
        )
    )
    ev_ok = s["rate"] >= GOAL_EVENTS and ours_core <= GOAL_CORE and s["events"] == s["expected"]
    why = f"{s['rate']:,.0f} events/s handled on {ours_core:.0%} of a core"
    if s["rate"] < GOAL_EVENTS and ours_core < GOAL_CORE:
        why += " (Asterisk produced no faster; at our measured cost 60% of a core would "
        why += f"handle {GOAL_CORE / per_event:,.0f}/s)" if per_event else ")"
    if s["events"] != s["expected"]:
        why += f"; {s['expected'] - s['events']:,} events never arrived"
    goals.append(_goal(f">= {GOAL_EVENTS:,.0f} events/s on <= 60% of one core", ev_ok, why))
    ratios = [(r["rate"], r["ours"] / max(r["ast"], 1e-9)) for r in m["rates"]]
    goals.append(
        _goal(
            f"our CPU per call <= {GOAL_RATIO:g} x Asterisk's",
            all(x <= GOAL_RATIO for _, x in ratios),
            ", ".join(f"{x:.2f} at {rate:g}/s" for rate, x in ratios)
            + " (this process; the PostgreSQL backends are shown apart)",
        )
    )
    held = h["live"] == h["calls"]
    goals.append(
        _goal(
            f"bridge resident memory <= {GOAL_RSS_MB:g} MB at {h['calls']} concurrent calls",
            held and h["rss"] <= GOAL_RSS_MB,
            f"{h['rss']:.0f} MB with {h['live']} calls up"
            + ("" if held else f" (only {h['live']} of {h['calls']} were up)")
            + (
                f"; the process had placed no call before. After (a)'s "
                f"{sum(r['calls'] for r in m['rates']):,} calls it held "
                f"{m['rates'][-1]['rss']:.0f} MB"
                if m["rates"]
                else ""
            ),
        )
    )
    return [
        ("(a) sustained originations", a_cols, a_rows),
        ("(b) AMI events handled by the bridge's connection", b_cols, [b_row]),
        ("(c) concurrent calls (ringing)", c_cols, [c_row]),
    ], goals


def _goal(what: str, met: bool, detail: str) -> str:
    return f"- Goal {what}: **{'met' if met else 'NOT met'}** ({detail})."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", help="comma list of target originations/s (25,50,100)")
    parser.add_argument("--seconds", type=float, default=None, help="per rate (default 20)")
    parser.add_argument("--storm-channels", type=int, default=None, help="default 4")
    parser.add_argument("--storm-events", type=int, default=None, help="per channel, 10000")
    parser.add_argument("--hold", type=int, default=None, help="calls held at once (400)")
    parser.add_argument("--hold-rate", type=float, default=25.0, help="(c) calls/s (25)")
    parser.add_argument("--idle", type=float, default=None, help="(c) seconds held (5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny figures")
    parser.add_argument("--docs", help="write the section to this file")
    parser.add_argument("--no-docs", action="store_true", help="print only")
    args = parser.parse_args(argv)
    q = args.quick
    try:
        args.rates = [float(x) for x in (args.rates or ("10" if q else "25,50,100")).split(",")]
    except ValueError:
        parser.error("--rates: comma list of numbers")
    args.seconds = args.seconds or (1.0 if q else 20.0)
    args.storm_channels = args.storm_channels or (2 if q else 4)
    args.storm_events = args.storm_events or (500 if q else 10_000)
    args.hold = args.hold or (10 if q else 400)
    args.idle = args.idle or (1.0 if q else 5.0)
    if not all(0 < r <= 500 for r in args.rates) or not 1 <= args.hold <= 2000:
        parser.error("--rates must be 0-500 per second and --hold 1-2000")

    sandbox = Sandbox(name=f"bench-cp-{os.getpid()}", log=lambda m: print(m, flush=True))
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    try:
        info = sandbox.up(timeout=90)
        (sandbox.etc_dir / "extensions_sandbox_extra.conf").write_text(STORM_DIALPLAN)
        with scratch_pg_database() as url:
            m = asyncio.run(run(info, url, args))
        version = info.version
    finally:
        sandbox.remove()
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()[0]

    parts, goals = tables(m)
    for title, cols, rows in parts:
        print_table(f"B4 {title}", cols, rows)
    print("\n".join(goals))
    body = (
        f"Asterisk {version} sandbox, scratch PostgreSQL; the bridge's call code in the "
        f"bench's process (the dialer's AMI account, Originator, agent sessions). CPU is "
        f"measured over each part's window: this process by getrusage, its PostgreSQL "
        f"backends and Asterisk by /proc/<pid>/stat. (a) {args.seconds:g} s per target "
        f"rate, contacts Local/<number>@sim-contacts scenario `hangup` (rings 1 s, answers, "
        f"hangs up), the answered leg to outbound-after-classify,hangup (no AGI); a call "
        f"counts when Asterisk saw it arrive (DB(simcount)) and its attempt ended answered. "
        f"Achieved = dials per second between the first and the last dial's return "
        f'(attempt committed, Originate fired); a failure "not ended within 40 s" is a '
        f"call the bridge had not yet tracked to its end (its event handling behind). "
        f"AMI events per call: all events the dialer's account received (4 Local "
        f"channels per call), each parsed and dispatched by the bridge. (b) {args.storm_channels} channels each running a dialplan loop "
        f"of {args.storm_events:,} UserEvents (extensions_sandbox_extra.conf of this bench's "
        f"instance), received on the dialer's AMI account and dispatched to the bridge's "
        f"handlers. (c) {args.hold} calls to the sandbox's `noanswer` contacts (ringing, no audio), "
        f"placed at {args.hold_rate:g}/s, all ringing at once, then hung up one by one. {elapsed:.0f} s in all; "
        f"load average (1 min) {load_before:.2f} at the start, {load_after:.2f} at the end "
        f"(2 cores; other test runs shared the machine, so the CPU figures of Asterisk and "
        f"ours include time slices lost to them only as wall time, not as CPU).\n\n"
    )
    for title, cols, rows in parts:
        body += f"{title}:\n\n{markdown_table(cols, rows)}\n"
    if m["reconnects"]:
        body += (
            f"The bridge's AMI connection was lost and re-established {m['reconnects']} "
            f"time(s) during the run (a late ping answer from a busy Asterisk); calls in "
            f"flight then are settled by the reconciler and may count as failures.\n\n"
        )
    body += "\n".join(goals) + "\n"
    if not args.no_docs and (args.docs or not args.quick):
        target = write_section(SECTION, body, args.docs)
        print(f"wrote the `{SECTION}` section of {target}")
    failures = sum(r["failures"] for r in m["rates"]) + (m["hold"]["calls"] - m["hold"]["live"])
    return 1 if failures or m["storm"]["events"] != m["storm"]["expected"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""B2, time to agent: how soon a person AMD heard is in the agent's conference.

Starts its own sandbox Asterisk and, in this process, the product's call path as the
integration tests run it (tests/helpers/stack.py: the FastAGI server with every route,
the dialer's AMI connection, the Originator, agent sessions; SQLite). N agents log in on
simulated phones (Local/<ext>@sim-phones) and wait in their conferences. A progressive
run follows: each agent gets one call at a time, to a simulated person (`human`: rings
1-2 s, answers, says "hello", then listens), reserved for that agent as the progressive
dialer does; once the person is in the conference the bench hangs up and the agent gets
the next call. So at most N calls are live at once.

Every time comes from the Timestamp of Asterisk's own AMI events on one clock:

- AMD's decision: VarSet AMDSTATUS on the contact's channel (app_amd sets it the moment
  it decides; the classify AGI then reads it, checks the agent, routes the call);
- in the agent's bridge: ConfbridgeJoin of the contact's channel (Uniqueid = attempt id)
  into outbound-agent-<agent>;
- end of the greeting: UserEvent SimGreetingEnd, emitted by the contact after "hello".

Goals (issue 10, B2): p99 decision -> bridge <= 250 ms; 100% within 2 s of the end of the
greeting. The attempt's own audit (`connect_ms`, classify's clock vs the bridge's) is
shown next to Asterisk's figure as a cross-check.

    python bench/time_to_agent.py                  # 10 agents, 150 calls, about 2 min
    python bench/time_to_agent.py --agents 5 --calls 60
    python bench/time_to_agent.py --quick          # smoke: 2 agents, 4 calls, no docs

Writes the `## B2 time to agent` section of docs/benchmarks.md ($OUTBOUND_BENCH_DOCS or
--docs to write elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _common import markdown_table, print_table, write_section  # noqa: E402

from outbound import names  # noqa: E402
from outbound.model import AttemptState  # noqa: E402
from outbound.sandbox import Sandbox, SandboxInfo  # noqa: E402
from tests.helpers.ami import AmiClient  # noqa: E402
from tests.helpers.db import add_agent, add_contact  # noqa: E402
from tests.helpers.stack import attempt_row, call_stack  # noqa: E402
from tests.helpers.until import async_until  # noqa: E402

SECTION = "B2 time to agent"
GOAL_P99_MS = 250.0
GOAL_FROM_END_S = 2.0
# What the measuring AMI session needs; Asterisk drops every other event before it is
# sent (AMI Filter), so the measurement itself adds little to the machine's load.
FILTERS = [
    "Event: ConfbridgeJoin",
    "Event: ConfbridgeLeave",
    "Event: Hangup",
    "UserEvent: SimGreetingEnd",
    "Variable: AMDSTATUS",
    "Event: AGIExecEnd",
]


@dataclass
class Call:
    agent: str
    number: str
    contact: int = 0
    attempt: str = ""
    amd: str = ""
    decision_to_bridge: float | None = None  # seconds
    end_to_bridge: float | None = None
    end_to_decision: float | None = None
    decision_to_agi_done: float | None = None  # our classify route's part
    agi_done_to_bridge: float | None = None  # Asterisk's part: dialplan, ConfBridge()
    audit_connect_ms: int | None = None
    error: str = ""


def _ts(msg: dict[str, str]) -> float:
    return float(msg["Timestamp"])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100): an observed value, never an interpolation."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def _one(st: dict[str, Any], admin: AmiClient, call: Call, timeout: float) -> None:
    """Place one call for the agent, measure it, hang it up once it is in the bridge."""
    call.attempt = aid = await st["originator"].dial(call.contact, agent_id=call.agent)
    conf = names.agent_bridge(call.agent)
    try:
        join = await admin.wait_event(
            "ConfbridgeJoin", timeout=timeout, Uniqueid=aid, Conference=conf
        )
    except AssertionError:
        a = attempt_row(st["factory"], aid)
        call.amd = a.amd_status or ""
        call.error = f"not connected: {a.state} AMD {a.amd_status} {a.audit.get('route', '')}"
        await _end(admin, call, None, timeout)
        await _settled(st, aid, timeout)
        return
    await _end(admin, call, join["Channel"], timeout)
    await _settled(st, aid, timeout)
    # Asterisk's AMI stream is not ordered across its sources (channel, ConfBridge and
    # user events travel on different topics): a busy Asterisk may send the join first.
    try:
        decision = await admin.wait_event("VarSet", timeout=5, Uniqueid=aid, Variable="AMDSTATUS")
        end = await admin.wait_event(
            "UserEvent", timeout=5, UserEvent="SimGreetingEnd", Number=call.number
        )
    except AssertionError as exc:
        call.error = f"events missing: {str(exc).splitlines()[0][:120]}"
        return
    call.amd = decision.get("Value", "")
    call.decision_to_bridge = _ts(join) - _ts(decision)
    call.end_to_bridge = _ts(join) - _ts(end)
    call.end_to_decision = _ts(decision) - _ts(end)
    # The channel's events (VarSet, AGIExecEnd, Hangup) keep their order, and its Hangup
    # came already: every AGI command it ran is known now.
    agi = [_ts(e) for e in admin.find_events("AGIExecEnd", Uniqueid=aid)]
    done = max((t for t in agi if t <= _ts(join)), default=None)
    if done is not None:
        call.decision_to_agi_done = done - _ts(decision)
        call.agi_done_to_bridge = _ts(join) - done


async def _end(admin: AmiClient, call: Call, channel: str | None, timeout: float) -> None:
    """Hang the contact up (the agent stays in the conference) and wait until it is gone,
    so the agent's next call finds the conference as the classify route expects."""
    if channel:
        await admin.send("Hangup", check=False, Channel=channel)
    try:
        await admin.wait_event("Hangup", timeout=timeout, Uniqueid=call.attempt)
    except AssertionError:  # still up somehow: end it the hard way, and go on
        pattern = f"/^Local/{re.escape(call.number)}@{names.CTX_DIAL}-/"
        await admin.send("Hangup", check=False, Channel=pattern)
        print(f"attempt {call.attempt}: no Hangup within {timeout:g} s", flush=True)


async def _settled(st: dict[str, Any], aid: str, timeout: float) -> None:
    """Wait until the bridge has ended the attempt: an agent with a live attempt is never
    given another call (create_attempt refuses it)."""
    await async_until(
        lambda: attempt_row(st["factory"], aid).state is AttemptState.ENDED,
        timeout,
        message=f"attempt {aid} not ended",
    )


async def _agent_loop(
    st: dict[str, Any], admin: AmiClient, agent: str, todo: list[Call], timeout: float
) -> None:
    while todo:
        call = todo.pop()
        call.agent = agent
        await _one(st, admin, call, timeout)


async def run_calls(info: SandboxInfo, agents: int, calls: int, db: Path) -> list[Call]:
    admin = await AmiClient.connect(
        info.ami_host, info.ami_port, info.admin_ami_user, info.admin_ami_secret
    )
    try:
        for f in FILTERS:
            await admin.send("Filter", Operation="Add", Filter=f)
        async with call_stack(info, db) as st:
            base = random.randrange(10000, 60000)
            ids = [add_agent(st["factory"], str(base + i)) for i in range(agents)]
            for i, a in enumerate(ids):
                await st["sessions"].login(a, f"Local/{base + i}@sim-phones")
            for a in ids:
                await st["sessions"].wait_up(a, timeout=15)
            prefix = random.randrange(10**5, 10**6)
            results = [Call("", f"+4930{prefix}{i:04d}{i % 4}") for i in range(calls)]
            for c in results:  # last digit 0-3: the sandbox's `human` scenario
                c.contact = add_contact(st["factory"], c.number)
            todo = list(reversed(results))  # popped in order
            await asyncio.gather(*(_agent_loop(st, admin, a, todo, 20.0) for a in ids))
            for c in results:  # classify's and the bridge's own figure, for comparison
                if c.attempt:
                    audit = attempt_row(st["factory"], c.attempt).audit
                    c.audit_connect_ms = audit.get("connect_ms")
            for a in ids:
                await st["sessions"].logout(a)
        return results
    finally:
        await admin.close()


def _row(name: str, values: list[float], goal: str) -> list[object]:
    if not values:
        return [name, 0, "-", "-", "-", "-", goal]
    ms = [v * 1000 for v in values]
    return [
        name,
        len(ms),
        f"{percentile(ms, 50):.0f}",
        f"{percentile(ms, 95):.0f}",
        f"{percentile(ms, 99):.0f}",
        f"{max(ms):.0f}",
        goal,
    ]


def report(results: list[Call]) -> tuple[list[str], list[list[object]], dict[str, Any]]:
    ok = [c for c in results if c.decision_to_bridge is not None]
    d2b = [c.decision_to_bridge for c in ok if c.decision_to_bridge is not None]
    e2b = [c.end_to_bridge for c in ok if c.end_to_bridge is not None]
    e2d = [c.end_to_decision for c in ok if c.end_to_decision is not None]
    audit = [c.audit_connect_ms / 1000 for c in ok if c.audit_connect_ms is not None]
    ours = [c.decision_to_agi_done for c in ok if c.decision_to_agi_done is not None]
    theirs = [c.agi_done_to_bridge for c in ok if c.agi_done_to_bridge is not None]
    within = sum(1 for v in e2b if v <= GOAL_FROM_END_S)
    # A person app_amd took for a machine never waits for an agent: no time to agent
    # (AMD's accuracy is bench/amd.py's subject); they are counted apart.
    misheard = [c for c in results if c.amd and c.amd != "HUMAN"]
    total = len(results) - len(misheard)
    failed = total - len(ok)
    p99 = percentile(d2b, 99) * 1000 if d2b else math.inf
    facts = {
        "p99_ms": p99,
        "within": within,
        "total": total,
        "failed": failed,
        "misheard": len(misheard),
        "p99_met": p99 <= GOAL_P99_MS and failed == 0,
        "end_met": total > 0 and within == total,
        "share": within / total if total else 0.0,
        "p99_ours_ms": percentile(ours, 99) * 1000 if ours else math.nan,
        "p99_asterisk_ms": percentile(theirs, 99) * 1000 if theirs else math.nan,
    }
    columns = ["interval", "calls", "p50 (ms)", "p95 (ms)", "p99 (ms)", "max (ms)", "goal"]
    rows = [
        _row("AMD decision -> agent's bridge", d2b, f"p99 <= {GOAL_P99_MS:.0f} ms"),
        _row("  of which: decision -> classify's last AGI command", ours, "-"),
        _row("  of which: last AGI command -> bridge (Asterisk)", theirs, "-"),
        _row("end of greeting -> agent's bridge", e2b, f"100% <= {GOAL_FROM_END_S:.0f} s"),
        _row("end of greeting -> AMD decision (app_amd)", e2d, "-"),
        _row("attempt audit connect_ms (our clocks)", audit, "-"),
    ]
    return columns, rows, facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=None, help="agents (default 10)")
    parser.add_argument("--calls", type=int, default=None, help="persons called (default 150)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 agents, 4 calls")
    parser.add_argument("--docs", help="write the section to this file")
    parser.add_argument("--no-docs", action="store_true", help="print only")
    args = parser.parse_args(argv)
    agents = args.agents or (2 if args.quick else 10)
    calls = args.calls or (4 if args.quick else 150)
    if not 1 <= agents <= 50 or not 1 <= calls <= 2000:
        parser.error("--agents must be 1-50 and --calls 1-2000")

    sandbox = Sandbox(name=f"bench-tta-{os.getpid()}", log=lambda m: print(m, flush=True))
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    try:
        info = sandbox.up(timeout=90)
        with tempfile.TemporaryDirectory() as d:
            results = asyncio.run(run_calls(info, agents, calls, Path(d) / "tta.db"))
        version = info.version
    finally:
        sandbox.remove()
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()[0]

    for c in results:
        if c.error:
            print(f"call {c.number} (agent {c.agent}, attempt {c.attempt}): {c.error}")
    columns, rows, facts = report(results)
    print_table(f"B2 time to agent ({calls} calls, {agents} agents)", columns, rows)
    p99_goal = "met" if facts["p99_met"] else "NOT met"
    end_goal = "met" if facts["end_met"] else "NOT met"
    summary = (
        f"- Goal p99 AMD decision -> bridge <= {GOAL_P99_MS:.0f} ms: **{p99_goal}** "
        f"(p99 {facts['p99_ms']:.0f} ms; p99 of the parts: classify's FastAGI route "
        f"{facts['p99_ours_ms']:.0f} ms, Asterisk from its last AGI command to the join "
        f"{facts['p99_asterisk_ms']:.0f} ms"
        + (f"; {facts['failed']} call(s) never reached the bridge" if facts["failed"] else "")
        + ").\n"
        f"- Goal 100% in the bridge within {GOAL_FROM_END_S:.0f} s of the end of the "
        f"greeting: **{end_goal}** ({facts['within']}/{facts['total']}, "
        f"{facts['share']:.1%}).\n"
    )
    print(summary)
    body = (
        f"Asterisk {version} sandbox; the product's call path in one process (FastAGI "
        f"classify route, the dialer's AMI connection, Originator, agent sessions; SQLite). "
        f"{agents} agents logged in on simulated phones, a progressive run of {calls} calls "
        f'to simulated persons (ring 1-2 s, "hello" 0.8 s, then silence; app_amd with '
        f"amd.conf defaults, after_greeting_silence 800 ms), one call per agent at a time, "
        f"hung up by the bench once the person is in the conference. Times are the "
        f"Timestamp of Asterisk's AMI events: decision = VarSet AMDSTATUS of the contact's "
        f"channel, bridge = ConfbridgeJoin into the agent's conference, end of greeting = "
        f"UserEvent SimGreetingEnd; decision -> bridge is split at the AGIExecEnd of the "
        f"last AGI command classify ran (our FastAGI route's part, then Asterisk's). "
        f'The row "attempt audit" is the product\'s own figure '
        f"(classify's clock at the decision vs the AMI bridge's at the join). "
        f"{elapsed:.0f} s in all; load average (1 min) {load_before:.2f} at the start, "
        f"{load_after:.2f} at the end (2 cores; other test runs shared the machine, and the "
        f"bench, the FastAGI server and the AMI bridge share one Python process, so a "
        f"busy machine delays the AGI's round trips first).\n\n"
        f"{markdown_table(columns, rows)}\n{summary}"
    )
    if facts["failed"]:
        body += f"\n{facts['failed']} call(s) did not reach the agent (see the script's output).\n"
    if facts["misheard"]:
        body += (
            f"\n{facts['misheard']} person(s) were not heard as HUMAN by app_amd (not in the "
            f"figures above: nobody connects them; see the AMD benchmark).\n"
        )
    if not args.no_docs and (args.docs or not args.quick):
        target = write_section(SECTION, body, args.docs)
        print(f"wrote the `{SECTION}` section of {target}")
    return 1 if facts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

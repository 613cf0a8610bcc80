"""B5: FastAGI sessions per second and set-up latency, against the same route as a process AGI.

The handler is the real `classify` route (agi_scripts.classify), everything but AMD's own
listening: the clients play Asterisk, so EXEC AMD returns at once with a verdict, and the
route does the rest of its work for real: reads the attempt and its campaign from the
database, asks the PBX (here: the client) whether the reserved agent waits in their
conference, sets the dialplan variables, releases the channel and writes the verdict in
a transaction. Half the calls are people (connected to their reserved agent), half
machines (recorded, then hung up); one attempt row per session, in a migrated SQLite file.

- FastAGI: `outbound run agi` in its own process (as in production), `--clients`
  concurrent clients (4, then 20) in this process, each connecting, sending an AGI header
  (agi_request agi://127.0.0.1:PORT/classify), answering every command with
  ``200 result=...`` until the server closes the connection;
- process AGI: `python -m outbound.cli agi classify` spawned per session (as Asterisk's
  AGI() does), the same header on its stdin and the same answers, `--proc-clients` at once.

Set-up latency = from connect (FastAGI) or spawn (process AGI) to the first command
received; session = to the end of the stream. Sessions/s = sessions / wall time.

    python bench/fastagi.py                  # 2,000 FastAGI sessions at 4 and at 20 at
                                             # once, 40 process AGIs, 4 at once
    python bench/fastagi.py --quick          # smoke: 40 and 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _common import ROOT, markdown_table, print_table, write_section  # noqa: E402

from outbound import names  # noqa: E402
from outbound.model import AttemptState, CallAttempt, Contact, DialMode, transaction  # noqa: E402
from tests.helpers.db import add_agent, add_contact, migrated_factory  # noqa: E402

Result = tuple[float, float, str]  # set-up s, session s, OUTBOUND_NEXT
SessionFn = Callable[[int, str, str], Awaitable[Result]]
Row = dict[str, Any]
SECTION = "B5 FastAGI"
ROUTE = "classify"
AGENT = "11"
GOAL_RATE, GOAL_P99_MS, GOAL_RATIO = 100.0, 10.0, 10.0
LIMIT_P99 = (
    "; limited by queueing: a new session's header and first command wait in the "
    "server's one event loop behind the other sessions' work (their database reads and "
    "writes run in threads that share the GIL), so the tail grows with the sessions at "
    "once, and behind the other processes on the 2 cores (load average below)"
)
COLUMNS = [
    "mode",
    "sessions",
    "at once",
    "sessions/s",
    "set-up p50 / p90 / p99 / max (ms)",
    "session p50 / p99 (ms)",
    "routes (connect / hangup / other)",
]


def make_attempts(db: Path, n: int) -> list[tuple[str, str]]:
    """`n` answered attempts of a progressive campaign, one contact each, agent 11
    reserved; returns (attempt id, AMDSTATUS the fake PBX reports), people and machines
    alternating."""
    factory = migrated_factory(db)
    add_agent(factory, AGENT)
    first = add_contact(factory, "+4930100000", campaign="bench", mode=DialMode.PROGRESSIVE)
    with transaction(factory) as s:
        base = s.get(Contact, first)
        assert base is not None
        contacts = [
            Contact(campaign_id=base.campaign_id, list_id=base.list_id, external_key=f"b{i}")
            for i in range(n)
        ]
        s.add_all(contacts)
        s.flush()
        rows = [
            CallAttempt(
                campaign_id=base.campaign_id,
                contact_id=c.id,
                attempt_no=1,
                e164=f"+49301{i:06d}",
                trunk="sim",
                agent_id=AGENT,
                state=AttemptState.ANSWERED,
            )
            for i, c in enumerate(contacts)
        ]
        s.add_all(rows)
        s.flush()
        return [(a.id, "HUMAN" if i % 2 == 0 else "MACHINE") for i, a in enumerate(rows)]


def header(request: str, n: int) -> bytes:
    """The agi_* lines Asterisk 22 sends; the attempt id travels as a channel variable."""
    lines = {
        "agi_network": "yes",
        "agi_network_script": ROUTE,
        "agi_request": request,
        "agi_channel": f"PJSIP/sim-{n:08x}",
        "agi_language": "en",
        "agi_type": "PJSIP",
        "agi_uniqueid": f"1700000000.{n}",
        "agi_version": "22.0.0",
        "agi_callerid": "+4930123456",
        "agi_calleridname": "bench",
        "agi_context": "outbound-classify",
        "agi_extension": "s",
        "agi_priority": "1",
        "agi_enhanced": "0.0",
        "agi_accountcode": "",
        "agi_threadid": str(140000000000 + n),
        "agi_arg_1": ROUTE,
    }
    return "".join(f"{k}: {v}\n" for k, v in lines.items()).encode() + b"\n"


def answer(line: str, variables: dict[str, str]) -> bytes:
    """What Asterisk would answer, for the commands classify sends."""
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    cmd = " ".join(words[:3]).upper()
    if cmd.startswith("GET FULL VARIABLE"):
        expr = words[3] if len(words) > 3 else ""
        full = "0" if "IFMODULE" in expr else "1"  # no res_fax; the agent alone, marked
        return f"200 result=1 ({full})\n".encode()
    if cmd.startswith("GET VARIABLE"):
        value = variables.get(words[2] if len(words) > 2 else "")
        return f"200 result=1 ({value})\n".encode() if value else b"200 result=0\n"
    return b"200 result=0\n" if cmd.startswith("EXEC") else b"200 result=1\n"


async def converse(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    variables: dict[str, str],
    started: float,
) -> Result:
    """Answer commands until the peer closes; (set-up s, session s, OUTBOUND_NEXT)."""
    first = 0.0
    route = "?"
    while line := (await reader.readline()).decode().strip():
        if not first:
            first = time.perf_counter() - started
        if line.startswith("SET VARIABLE") and names.VAR_NEXT in line:
            route = shlex.split(line)[3]
        writer.write(answer(line, variables))
        try:
            await writer.drain()
        except ConnectionError:
            break
    return first, time.perf_counter() - started, route


def variables_for(attempt: str, status: str) -> dict[str, str]:
    cause = "HUMAN-300-500" if status == "HUMAN" else "LONGGREETING-1600-1500"
    return {names.VAR_ATTEMPT_ID: attempt, "AMDSTATUS": status, "AMDCAUSE": cause}


async def fastagi_session(port: int, n: int, attempt: str, status: str) -> Result:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(header(f"agi://127.0.0.1:{port}/{ROUTE}", n))
        return await converse(reader, writer, variables_for(attempt, status), started)
    finally:
        writer.close()


async def process_session(env: dict[str, str], n: int, attempt: str, status: str) -> Result:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outbound.cli", "agi", ROUTE,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, env=env, cwd=str(ROOT),
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(header("/usr/local/bin/outbound-agi", n))
    out = await converse(proc.stdout, proc.stdin, variables_for(attempt, status), started)
    proc.stdin.close()
    await proc.wait()
    return out[0], time.perf_counter() - started, out[2]


async def drive(
    jobs: Sequence[tuple[str, str]], at_once: int, session: SessionFn
) -> tuple[list[Result], float]:
    """Run `session(n, attempt, status)` for every job, `at_once` at a time."""
    queue = list(enumerate(jobs))
    results: list[Result] = []

    async def worker() -> None:
        while queue:
            n, (attempt, status) = queue.pop(0)
            results.append(await session(n, attempt, status))

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(at_once))), 600)
    return results, time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_server(env: dict[str, str]) -> asyncio.subprocess.Process:
    """`outbound run agi` in its own process; returns once it listens."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outbound.cli", "run", "agi",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env,
        cwd=str(ROOT),
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if b"listening" not in line:
        proc.kill()
        raise RuntimeError(f"the FastAGI server did not start: {line!r}")
    return proc


def ms(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return 1000.0 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(mode: str, results: Sequence[tuple[float, float, str]], at_once: int, wall: float) -> Row:
    setup = [r[0] for r in results]
    total = [r[1] for r in results]
    routes = [r[2] for r in results]
    return {
        "mode": mode,
        "n": len(results),
        "at_once": at_once,
        "rate": len(results) / wall,
        "p50": ms(setup, 0.5),
        "p90": ms(setup, 0.9),
        "p99": ms(setup, 0.99),
        "max": 1000.0 * max(setup),
        "s50": 1000.0 * statistics.median(total),
        "s99": ms(total, 0.99),
        "routes": (routes.count("connect"), routes.count("hangup"),
                   len(routes) - routes.count("connect") - routes.count("hangup")),
    }  # fmt: skip


def cells(r: Row) -> list[object]:
    return [
        r["mode"],
        f"{r['n']:,}",
        r["at_once"],
        f"{r['rate']:,.1f}",
        f"{r['p50']:.1f} / {r['p90']:.1f} / {r['p99']:.1f} / {r['max']:.1f}",
        f"{r['s50']:.1f} / {r['s99']:.1f}",
        " / ".join(str(x) for x in r["routes"]),
    ]


async def bench(args: argparse.Namespace, db: Path) -> tuple[list[Row], Row]:
    levels = [int(c) for c in str(args.clients).split(",")]
    jobs = make_attempts(db, args.sessions * len(levels) + args.proc_sessions)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OUTBOUND_DATABASE_URL": f"sqlite:///{db}",
        "OUTBOUND_AGI_HOST": "127.0.0.1",
        "OUTBOUND_AGI_PORT": str(port),
        "OUTBOUND_LOG_LEVEL": "WARNING",
    }
    fast_rows = []
    server = await start_server(env)
    try:
        for i, at_once in enumerate(levels):
            fast, wall = await drive(
                jobs[i * args.sessions : (i + 1) * args.sessions],
                at_once,
                lambda n, a, s: fastagi_session(port, n, a, s),
            )
            fast_rows.append(row("FastAGI (`outbound run agi`)", fast, at_once, wall))
    finally:
        server.terminate()
        await server.wait()
    proc, wall = await drive(
        jobs[len(levels) * args.sessions :],
        args.proc_clients,
        lambda n, a, s: process_session(env, n, a, s),
    )
    return fast_rows, row("process AGI (`python -m outbound.cli agi classify`)", proc,
                          args.proc_clients, wall)  # fmt: skip


def goals(fast_rows: Sequence[Row], proc: Row) -> list[str]:
    """Each goal at each concurrency: the set-up latency grows with the sessions at once
    (one event loop and the GIL shared with the handlers' database threads)."""
    out = []
    for fast in fast_rows:
        ratio = fast["rate"] / proc["rate"]
        at = f"{fast['at_once']} at once"
        out += [
            f"{at}, ≥ {GOAL_RATE:g} sessions/s: "
            + verdict(fast["rate"] >= GOAL_RATE, f"{fast['rate']:,.1f}/s"),
            f"{at}, p99 set-up ≤ {GOAL_P99_MS:g} ms: "
            + verdict(fast["p99"] <= GOAL_P99_MS, f"{fast['p99']:.1f} ms")
            + ("" if fast["p99"] <= GOAL_P99_MS else LIMIT_P99),
            f"{at}, ≥ {GOAL_RATIO:g}× the process AGI: "
            + verdict(ratio >= GOAL_RATIO, f"{ratio:,.1f}× sessions/s; set-up p50 "
                      f"{proc['p50'] / max(fast['p50'], 1e-9):,.0f}× shorter"),
        ]  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=2000, help="FastAGI sessions per level")
    ap.add_argument("--clients", default="4,20", help="FastAGI clients at once (comma list)")
    ap.add_argument("--proc-sessions", type=int, default=40, help="process AGI sessions")
    ap.add_argument("--proc-clients", type=int, default=4, help="process AGIs at once")
    ap.add_argument("--quick", action="store_true", help="smoke: 40 and 1 sessions")
    ap.add_argument("--docs", help="write the section to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.sessions, args.clients, args.proc_sessions, args.proc_clients = 40, "4", 1, 1
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-fastagi-") as tmp:
        fast_rows, proc = asyncio.run(bench(args, Path(tmp) / "bench.db"))
    load1 = os.getloadavg()[0]
    rows = [*(cells(f) for f in fast_rows), cells(proc)]
    print_table(SECTION, COLUMNS, rows)
    met = goals(fast_rows, proc)
    for line in met:
        print("-", line.replace("**", ""))
    body = (
        "Handler: the real `classify` route minus AMD's listening (the client, playing "
        "Asterisk, answers EXEC AMD at once: HUMAN for half the calls, which are checked "
        "against the reserved agent's conference and connected; MACHINE for the other "
        "half, recorded then hung up); one attempt row per session in a migrated SQLite "
        "file, the verdict written in a transaction. Server: `outbound run agi` in its own "
        "process, log level WARNING; clients: asyncio in the bench process on the same "
        "machine. Set-up = connect (FastAGI) or spawn (process AGI) to the first command "
        "received; session = to the end of the AGI stream (process AGI: to the process' "
        "exit).\n\n"
        + markdown_table(COLUMNS, rows)
        + f"\nLoad average (1 min) {load0:.2f} at the start, {load1:.2f} at the end (other "
        "work on the machine lengthens every figure).\n\nGoals:\n\n"
        + "".join(f"- {line}\n" for line in met)
    )
    if args.docs or not args.quick or os.environ.get("OUTBOUND_BENCH_DOCS"):
        print("written:", write_section(SECTION, body, args.docs))
    return 0


def verdict(ok: bool, detail: str) -> str:
    return f"{'**met**' if ok else '**NOT met**'} ({detail})"


if __name__ == "__main__":
    raise SystemExit(main())

"""AMD on the greeting corpus: confusion matrix and decision times, from Asterisk's events.

Starts its own sandbox Asterisk instance (the corpus of outbound/sandbox/corpus.py is
installed into it at `up`), and for every corpus file places N calls to a simulated
contact that answers after 1 s and plays the file (`greet_<file>` in the sandbox's
[sim-scenario]). The calling side runs Asterisk's AMD() on what it hears ([sim-amd-hold]),
with amd.conf's defaults or the parameters of `--policy`, and reports UserEvent SimAmd.
Everything measured comes from Asterisk's own AMI events and their Timestamp headers:

- answer: Newstate Up of the calling channel (AMD starts listening then);
- verdict: UserEvent SimAmd (AMDSTATUS, AMDCAUSE);
- end of greeting: UserEvent SimGreetingEnd, emitted by the contact right after its file
  (the calling side stays up long enough for the file to play to its end).

Decision time "from end of greeting" is negative when AMD decided while the greeting was
still playing (the normal case for a long machine greeting).

    python bench/amd.py                      # 3 calls per file, about a minute
    python bench/amd.py --calls 10
    python bench/amd.py --policy '{"greeting": 1200, "after_greeting_silence": 600}'
    python bench/amd.py --quick              # smoke: 1 call of two files, no docs unless --docs

Writes the `## AMD on the greeting corpus` section of docs/benchmarks.md
($OUTBOUND_BENCH_DOCS or --docs to write elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _common import markdown_table, print_table, write_section  # noqa: E402

from outbound.campaigns.amd import AMD_PARAMS, DEFAULT_POLICY, amd_args  # noqa: E402
from outbound.errors import Invalid  # noqa: E402
from outbound.sandbox import CorpusFile, Sandbox, SandboxInfo, load_manifest  # noqa: E402
from tests.helpers.ami import AmiClient, Message  # noqa: E402

SECTION = "AMD on the greeting corpus"
STATUSES = ["HUMAN", "MACHINE", "NOTSURE", "HANGUP"]
TRUTHS = ["human", "machine", "silence", "noise"]
QUICK_FILES = ["hello_m3", "silence"]
ARGS_KEY = "bench"  # DB(simamdargs/bench) holds the --policy's AMD() arguments


@dataclass
class Call:
    file: CorpusFile
    number: str
    uid: str
    status: str = ""
    cause: str = ""
    from_answer: float | None = None  # seconds, answer -> verdict
    from_end: float | None = None  # seconds, end of greeting -> verdict
    played: str = ""  # DB(simplayed/<number>): <file>:<PLAYBACKSTATUS>
    error: str = ""


def _ts(msg: Message) -> float:
    return float(msg["Timestamp"])


def parse_policy(text: str | None) -> tuple[dict[str, Any], list[str] | None]:
    """The --policy JSON and AMD()'s arguments from it (None: amd.conf's defaults).
    Raises Invalid for JSON that is not an object or names an unknown parameter."""
    if not text:
        return {}, None
    try:
        policy = json.loads(text)
    except ValueError as exc:
        raise Invalid(f"--policy is not valid JSON: {exc}") from exc
    if not isinstance(policy, dict):
        raise Invalid("--policy must be a JSON object of AMD parameters")
    known = {name for name, _ in AMD_PARAMS} | set(DEFAULT_POLICY)
    unknown = sorted(set(policy) - known)
    if unknown:
        raise Invalid(f"--policy: unknown parameters {unknown}; known: {sorted(known)}")
    return policy, amd_args(policy)


async def _one(
    ami: AmiClient, call: Call, hold: int, args_key: str, timeout: float, sem: asyncio.Semaphore
) -> None:
    async with sem:
        await ami.command(f"database put simscenario {call.number} {call.file.scenario}")
        variables = {"SIMHOLD": str(hold)}
        if args_key:
            variables["SIMAMDKEY"] = args_key
        await ami.send(
            "Originate",
            Channel=f"Local/{call.number}@sim-contacts",
            Context="sim-amd-hold",
            Exten="s",
            Priority="1",
            ChannelId=call.uid,
            Async="true",
            Timeout="20000",
            variables=variables,
        )
        try:
            up = await ami.wait_event(
                "Newstate", Uniqueid=call.uid, ChannelStateDesc="Up", timeout=timeout
            )
            verdict = await ami.wait_event(
                "UserEvent", UserEvent="SimAmd", Uniqueid=call.uid, timeout=timeout
            )
            end = await ami.wait_event(
                "UserEvent", UserEvent="SimGreetingEnd", Number=call.number, timeout=timeout
            )
            # The calling side waits SIMHOLD at most; end it now that both are known.
            await ami.send("Hangup", check=False, Channel=up["Channel"])
            await ami.wait_event("Hangup", Uniqueid=call.uid, timeout=timeout)
        except AssertionError as exc:
            call.error = str(exc).splitlines()[0][:200]
            return
        call.status = verdict.get("Status", "")
        call.cause = verdict.get("Cause", "")
        call.from_answer = _ts(verdict) - _ts(up)
        call.from_end = _ts(verdict) - _ts(end)
        call.played = await ami.db_get("simplayed", call.number) or ""


async def run_calls(
    info: SandboxInfo,
    files: list[CorpusFile],
    calls: int,
    amd: list[str] | None,
    parallel: int,
) -> list[Call]:
    """Place `calls` calls per corpus file (at most `parallel` at once) and measure."""
    ami = await AmiClient.connect(
        info.ami_host, info.ami_port, info.admin_ami_user, info.admin_ami_secret
    )
    try:
        key = ""
        if amd is not None:
            key = ARGS_KEY
            await ami.command(f'database put simamdargs {key} "{",".join(amd)}"')
        sem = asyncio.Semaphore(parallel)
        todo: list[tuple[Call, int]] = []
        base = random.randrange(10**6, 9 * 10**6)
        for i in range(calls):
            for j, f in enumerate(files):
                number = f"+4990{base}{i:02d}{j:02d}"
                hold = math.ceil(f.duration_s) + 10
                todo.append((Call(f, number, str(uuid.uuid4())), hold))
        order = list(todo)
        random.shuffle(order)  # no file always first (or last) in a busy moment
        await asyncio.gather(*(_one(ami, c, hold, key, hold + 20.0, sem) for c, hold in order))
        return [c for c, _ in todo]  # reported in corpus order
    finally:
        await ami.close()


def _fmt(values: list[float]) -> tuple[str, str]:
    if not values:
        return "-", "-"
    return f"{statistics.median(values):.2f}", f"{max(values):.2f}"


def confusion(calls: list[Call]) -> tuple[list[str], list[list[object]]]:
    counts = Counter((c.file.truth, c.status or "no verdict") for c in calls)
    cols = STATUSES + (["no verdict"] if any(not c.status for c in calls) else [])
    rows: list[list[object]] = []
    for truth in [t for t in TRUTHS if any(c.file.truth == t for c in calls)]:
        rows.append([truth, *(counts[(truth, s)] or "·" for s in cols)])
    return ["truth \\ AMDSTATUS", *cols], rows


def by_kind(calls: list[Call]) -> tuple[list[str], list[list[object]]]:
    columns = [
        "kind",
        "truth",
        "calls",
        "AMDSTATUS",
        "from answer median / max (s)",
        "from end of greeting median / max (s)",
    ]
    rows: list[list[object]] = []
    for kind in dict.fromkeys(c.file.kind for c in calls):
        mine = [c for c in calls if c.file.kind == kind]
        ok = [c for c in mine if c.status]
        statuses = Counter(c.status or "no verdict" for c in mine)
        a = _fmt([c.from_answer for c in ok if c.from_answer is not None])
        e = _fmt([c.from_end for c in ok if c.from_end is not None])
        rows.append(
            [
                kind,
                mine[0].file.truth,
                len(mine),
                ", ".join(f"{s} {n}" for s, n in statuses.most_common()),
                f"{a[0]} / {a[1]}",
                f"{e[0]} / {e[1]}",
            ]
        )
    return columns, rows


def by_file(calls: list[Call]) -> tuple[list[str], list[list[object]]]:
    columns = [
        "file",
        "greeting (s)",
        "speech (s)",
        "AMDSTATUS / AMDCAUSE",
        "from answer (s)",
        "from end (s)",
        "played",
    ]
    rows: list[list[object]] = []
    for name in dict.fromkeys(c.file.name for c in calls):
        mine = [c for c in calls if c.file.name == name]
        f = mine[0].file
        causes = Counter(f"{c.status}/{c.cause}" if c.status else "no verdict" for c in mine)
        played = sum(1 for c in mine if c.played == f"{name}:SUCCESS")
        rows.append(
            [
                name,
                f"{f.duration_s:.2f}",
                f"{f.speech_s:.2f}",
                "; ".join(f"{k} ×{n}" for k, n in causes.most_common()),
                " ".join(f"{c.from_answer:.2f}" for c in mine if c.from_answer is not None),
                " ".join(f"{c.from_end:+.2f}" for c in mine if c.from_end is not None),
                f"{played}/{len(mine)}",
            ]
        )
    return columns, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=None, help="calls per file (default 3)")
    parser.add_argument("--policy", help="JSON object of AMD parameters (outbound AMD_PARAMS)")
    parser.add_argument("--parallel", type=int, default=10, help="calls at once (default 10)")
    parser.add_argument("--only", help="comma list of corpus file names")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 call of 2 files")
    parser.add_argument("--docs", help="write the section to this file")
    parser.add_argument("--no-docs", action="store_true", help="print only")
    args = parser.parse_args(argv)
    try:
        policy, amd = parse_policy(args.policy)
    except Invalid as exc:
        parser.error(str(exc))
    calls = args.calls if args.calls is not None else (1 if args.quick else 3)
    if not 1 <= calls <= 100 or not 1 <= args.parallel <= 50:
        parser.error("--calls must be 1-100 and --parallel 1-50")
    only = args.only.split(",") if args.only else (QUICK_FILES if args.quick else None)

    sandbox = Sandbox(name=f"bench-amd-{os.getpid()}", log=lambda m: print(m, flush=True))
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    try:
        info = sandbox.up(timeout=90)
        files = load_manifest(sandbox.corpus_dir)
        if only:
            unknown = sorted(set(only) - {f.name for f in files})
            if unknown:
                parser.error(f"--only: no such corpus files {unknown}")
            files = [f for f in files if f.name in only]
        results = asyncio.run(run_calls(info, files, calls, amd, args.parallel))
        version = info.version
    finally:
        sandbox.remove()
    elapsed = time.monotonic() - started

    failed = [c for c in results if c.error or c.played != f"{c.file.name}:SUCCESS"]
    for c in failed:
        print(f"call to {c.file.name} ({c.number}): {c.error or 'played ' + repr(c.played)}")
    m_cols, m_rows = confusion(results)
    k_cols, k_rows = by_kind(results)
    f_cols, f_rows = by_file(results)
    print_table("AMD confusion matrix (truth x AMDSTATUS)", m_cols, m_rows)
    print_table("AMD decision time per kind", k_cols, k_rows)
    print_table("AMD per corpus file", f_cols, f_rows)

    params = ", ".join(f"{name}={policy.get(name, default)}" for name, default in AMD_PARAMS)
    body = (
        f"Asterisk {version} sandbox, app_amd with "
        f"{'the --policy parameters' if amd else 'amd.conf defaults'} ({params}). "
        f"{calls} call(s) per corpus file ({len(files)} files: espeak-ng + sox, 8 kHz, see "
        f"outbound/sandbox/corpus.py), at most {args.parallel} at once; contacts answer "
        f"after 1 s of ringing, and their Playback starts about 0.5 s after Answer() (Asterisk "
        f"waits that long for media), so every time from answer includes it. Times come from the Timestamp of Asterisk's AMI events: answer = "
        f"Newstate Up of the calling channel, verdict = UserEvent SimAmd, end of greeting = "
        f"UserEvent SimGreetingEnd right after the file (negative: AMD decided while the "
        f"greeting was still playing). {elapsed:.0f} s in all; load average (1 min) "
        f"{load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end.\n\n"
        f"Confusion matrix (rows: truth; columns: AMDSTATUS):\n\n"
        f"{markdown_table(m_cols, m_rows)}\n"
        f"Decision time per kind:\n\n{markdown_table(k_cols, k_rows)}\n"
        f"Per file (every call's AMDSTATUS/AMDCAUSE and times; played: Playback reported "
        f"SUCCESS in DB(simplayed)):\n\n{markdown_table(f_cols, f_rows)}"
    )
    missed = Counter(
        f"{c.file.name} ({c.file.truth}) -> {c.status}"
        for c in results
        if (c.file.truth, c.status) in (("human", "MACHINE"), ("machine", "HUMAN"))
    )
    if missed:
        listed = "; ".join(f"{k} ×{n}" for k, n in missed.items())
        body += f"\nMisclassified (a person taken for a machine or the reverse): {listed}.\n"
    if failed:
        body += f"\n{len(failed)} call(s) did not complete (see the script's output).\n"
    if not args.no_docs and (args.docs or not args.quick):
        target = write_section(SECTION, body, args.docs)
        print(f"wrote the `{SECTION}` section of {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

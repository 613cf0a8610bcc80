"""B1: predictive pacing against three baselines on the discrete-event simulator.

Four strategies run side by side on the same campaigns (same seeds, same call mix) in
outbound.pacing_sim, each 30 days of 8-hour shifts at 5, 20 and 50 agents:

- predictive: ours (outbound.pacing.calls_to_place, default tuning, 3% target);
- progressive: one call per free agent (the same pacer in progressive mode);
- fixed 2:1: two lines per agent waiting, minus the calls already ringing or waiting
  (VICIdial's "auto dial level" 2.0, held constant);
- adaptive: a baseline written here in the style VICIdial documents (ADAPT_HARD_LIMIT):
  every 15 s, dial level <- dial level x (1 + (agents waiting - calls waiting) / agents),
  averaged over those 15 s, clamped to [1, 3] (VICIdial's default adaptive maximum level
  is 3.0); while the drop rate (the worse of today's and the 30 days') is at or above 3%,
  the level is held at 1. Calls to place = round(level x agents waiting) - calls ringing
  or waiting. It is a baseline, not shipped code.

Idle time is the agents' logged-in time spent neither talking nor in wrap-up (waiting for
a call), per agent-hour; its physical limit is 0. Abandonment: a person who answers and
is not connected within 2 s. "Worst window" is the worst 30-day window as the dialer
sees it (every prefix of the run, since there is no earlier history).

    python bench/pacing.py                 # 30 days x 8 h, 5/20/50 agents, 2 processes
    python bench/pacing.py --quick         # smoke: 1 day x 0.25 h, no plot
    python bench/pacing.py --days 5 --agents 20

Writes the `## B1 predictive pacing` section of docs/benchmarks.md ($OUTBOUND_BENCH_DOCS
or --docs to write elsewhere) and docs/bench-pacing.png (when matplotlib is installed and
the run is not --quick).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _common import ROOT, markdown_table, print_table, write_section  # noqa: E402

from outbound.pacing import (  # noqa: E402
    PROGRESSIVE,
    Limits,
    PacingState,
    calls_to_place,
)
from outbound.pacing_sim import Lognormal, Pacer, Report, Scenario, Uniform, simulate  # noqa: E402

SECTION = "B1 predictive pacing"
PLOT = ROOT / "docs" / "bench-pacing.png"
TARGET = 0.03
STRATEGIES = ("predictive", "progressive", "fixed 2:1", "adaptive")
IDLE_GOAL = {20: 3.0, 50: 2.0}  # min per agent-hour
LIMITS = """
What limits the goals not met (measured separately, 4-day runs of this call mix):

- Idle time: our pacer holds abandonment near 1.6-1.8% (it aims at safety 0.6 × 3% per
  call and shrinks its aim once the day's or the 30 days' rate passes half the target).
  Raising `Tuning.safety` from 0.6 to 0.8 and 1.0 moved talk by at most +1.3% at 20
  agents and +0.2% at 50, left idle at 8.2-8.4 and 4.7-4.8 min per agent-hour and
  raised abandonment to 1.8-2.0%: the idle left does not come from the safety factor
  (rather from the uncertainty of when calls end and which dials a person answers), so
  the pacer was not retuned.
- Against the adaptive baseline "at equal or lower abandonment": it dials only for
  agents already waiting (level × agents waiting), so at 50 agents it never nears its
  3% limit (≈ 0.01% abandoned) and at 20 abandons less than ours; any dialing ahead
  for agents about to be free costs some abandonment, so this condition cannot hold
  against it while we win talk time.
"""
# The call mix: 28% live, 15% machines (hung up by AMD), 7% busy, 50% ring out at 30 s.
MIX = Scenario(
    live_rate=0.28,
    machine_rate=0.15,
    busy_rate=0.07,
    ring_live=Lognormal(11.0, 6.0),
    ring_machine=Lognormal(12.0, 6.0),
    busy_s=Uniform(1.0, 4.0),
    no_answer_s=30.0,
    talk=Lognormal(90.0, 90.0),  # long right tail: the median is about 64 s
    wrap=Lognormal(12.0, 8.0),
    hours_per_day=8.0,
    days=30,
    tick_s=1.0,
    target=TARGET,
    limits=Limits(max_lines=1000, max_dial_ratio=4.0),
)


def fixed_ratio(state: PacingState) -> int:
    """VICIdial's fixed dial level 2.0: two lines per agent waiting."""
    return max(0, 2 * state.ready - len(state.ringing) - state.waiting)


class Adaptive:
    """The VICIdial-style adaptive baseline (see the module docstring)."""

    def __init__(self, agents: int, tick_s: float, *, period_s: float = 15.0) -> None:
        self.agents, self.every = agents, max(1, round(period_s / tick_s))
        self.level, self.max_level, self.limit = 1.0, 3.0, TARGET
        self.ticks, self.sum_ready, self.sum_waiting = 0, 0, 0

    def __call__(self, state: PacingState) -> int:
        self.ticks += 1
        self.sum_ready += state.ready
        self.sum_waiting += state.waiting
        if self.ticks % self.every == 0:
            gap = (self.sum_ready - self.sum_waiting) / self.every / self.agents
            self.level = min(self.max_level, max(1.0, self.level * (1.0 + gap)))
            self.sum_ready = self.sum_waiting = 0
        b = state.budget
        if max(b.rate_today, b.rate_30d) >= self.limit:
            self.level = 1.0  # the hard limit
        return max(0, round(self.level * state.ready) - len(state.ringing) - state.waiting)


@dataclass(frozen=True)
class Job:
    strategy: str
    agents: int
    days: int
    hours: float
    tick_s: float
    seed: int


def run(job: Job) -> dict[str, Any]:
    """One strategy on one campaign; plain numbers back (sent between processes)."""
    sc = replace(
        MIX,
        agents=job.agents,
        days=job.days,
        hours_per_day=job.hours,
        tick_s=job.tick_s,
        seed=job.seed,
    )
    pacer: Pacer = calls_to_place
    if job.strategy == "progressive":
        sc = replace(sc, mode=PROGRESSIVE)
    elif job.strategy == "fixed 2:1":
        pacer = fixed_ratio
    elif job.strategy == "adaptive":
        pacer = Adaptive(job.agents, job.tick_s)
    started = time.process_time()
    report = simulate(sc, pacer)
    return summarise(job, report, time.process_time() - started)


def summarise(job: Job, report: Report, cpu_s: float) -> dict[str, Any]:
    t = report.total
    agent_h = t.agents * t.hours
    answered = abandoned = 0
    worst_window = 0.0
    for d in report.days:
        answered += d.live_answers
        abandoned += d.abandons
        worst_window = max(worst_window, abandoned / answered if answered else 0.0)
    return {
        "strategy": job.strategy,
        "agents": job.agents,
        "talk": t.talk_s / 60.0 / agent_h,
        "idle": t.idle_s / 60.0 / agent_h,
        "wrap": t.wrap_s / 60.0 / agent_h,
        "calls": t.calls_per_agent_hour,
        "dials": t.dials,
        "abandon": t.abandon_rate,
        "worst_day": report.worst_day_abandon_rate,
        "worst_window": worst_window,
        "daily_abandon": [d.abandon_rate for d in report.days],
        "daily_talk": [d.talk_s / 60.0 / (d.agents * d.hours) for d in report.days],
        "cpu_s": cpu_s,
    }


def run_all(jobs: Sequence[Job], processes: int) -> list[dict[str, Any]]:
    """The biggest jobs first, so that two processes finish close together."""
    order = sorted(jobs, key=lambda j: (j.strategy != "predictive", -j.agents))
    if processes <= 1:
        return [run(j) for j in order]
    with get_context("fork").Pool(processes) as pool:
        return list(pool.imap_unordered(run, order))


def pct(x: float) -> str:
    return f"{x:.2%}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "–"


COLUMNS = [
    "agents",
    "strategy",
    "talk (min/agent-h)",
    "idle (min/agent-h)",
    "wrap-up (min/agent-h)",
    "calls/agent-h",
    "abandon (whole run)",
    "worst window",
    "worst day",
    "talk vs progressive",
    "talk vs adaptive",
]


def table_rows(results: Sequence[dict[str, Any]]) -> list[list[object]]:
    by = {(r["agents"], r["strategy"]): r for r in results}
    rows: list[list[object]] = []
    for agents in sorted({r["agents"] for r in results}):
        prog, adapt = by[(agents, "progressive")], by[(agents, "adaptive")]
        for name in STRATEGIES:
            r = by[(agents, name)]
            rows.append(
                [
                    agents,
                    name,
                    f"{r['talk']:.1f}",
                    f"{r['idle']:.2f}",
                    f"{r['wrap']:.1f}",
                    f"{r['calls']:.1f}",
                    pct(r["abandon"]),
                    pct(r["worst_window"]),
                    pct(r["worst_day"]),
                    ratio(r["talk"], prog["talk"]),
                    ratio(r["talk"], adapt["talk"]),
                ]
            )
    return rows


def verdict(ok: bool, detail: str) -> str:
    return f"{'**met**' if ok else '**NOT met**'} ({detail})"


def goals(results: Sequence[dict[str, Any]]) -> list[str]:
    """Each goal of issue 10 for our pacer, met or not, with the figures behind it."""
    by = {(r["agents"], r["strategy"]): r for r in results}
    out: list[str] = []
    for agents in sorted({r["agents"] for r in results}):
        ours, prog, adapt = (by[(agents, s)] for s in ("predictive", "progressive", "adaptive"))
        worst = max(ours["worst_window"], ours["worst_day"])
        safe = worst <= TARGET
        out.append(
            f"{agents} agents, abandonment ≤ 3% in every 30-day window and every day: "
            + verdict(
                safe,
                f"worst window {pct(ours['worst_window'])}, worst day {pct(ours['worst_day'])}",
            )  # fmt: skip
        )
        if agents in IDLE_GOAL:
            goal = IDLE_GOAL[agents]
            out.append(
                f"{agents} agents, idle ≤ {goal:g} min per agent-hour: "
                + verdict(ours["idle"] <= goal, f"{ours['idle']:.2f} min")
            )
        vs_prog = ours["talk"] / prog["talk"]
        if agents >= 20:
            out.append(
                f"{agents} agents, ≥ 25% more talk than progressive within 3%: "
                + verdict(vs_prog >= 1.25 and safe, f"{vs_prog:.2f}×")
            )
            vs_ad = ours["talk"] / adapt["talk"]
            lower = ours["abandon"] <= adapt["abandon"] and ours["worst_day"] <= max(
                adapt["worst_day"], TARGET
            )
            out.append(
                f"{agents} agents, ≥ 10% more talk than adaptive at equal or lower abandonment: "
                + verdict(
                    vs_ad >= 1.10 and lower and safe,
                    f"{vs_ad:.2f}×; abandonment {pct(ours['abandon'])} vs "
                    f"{pct(adapt['abandon'])}, worst day {pct(ours['worst_day'])} vs "
                    f"{pct(adapt['worst_day'])}",
                )
            )
        else:
            out.append(
                f"{agents} agents, more talk than progressive with ≤ 3% abandonment: "
                + verdict(vs_prog > 1.0 and safe, f"{vs_prog:.2f}×")
            )
    return out


def plot(results: Sequence[dict[str, Any]], path: Path) -> bool:
    """Daily abandonment and talk per strategy and size; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = sorted({r["agents"] for r in results})
    fig, axes = plt.subplots(2, len(sizes), figsize=(5 * len(sizes), 7), squeeze=False)
    for col, agents in enumerate(sizes):
        top, bottom = axes[0][col], axes[1][col]
        for r in (r for name in STRATEGIES for r in results
                  if r["agents"] == agents and r["strategy"] == name):  # fmt: skip
            days = range(1, len(r["daily_abandon"]) + 1)
            top.plot(days, [100 * x for x in r["daily_abandon"]], label=r["strategy"])
            bottom.plot(days, r["daily_talk"], label=r["strategy"])
        top.axhline(100 * TARGET, color="red", linestyle="--", linewidth=1, label="3% limit")
        top.set_title(f"{agents} agents: abandonment per day (%)")
        bottom.set_title(f"{agents} agents: talk per agent-hour (min)")
        bottom.set_xlabel("day")
        top.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", default="5,20,50", help="comma list of campaign sizes")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--hours", type=float, default=8.0, help="shift length")
    ap.add_argument("--tick", type=float, default=1.0, help="pacer decision interval (s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke: 1 day x 0.25 h, no plot")
    ap.add_argument("--docs", help="write the section to this file")
    args = ap.parse_args(argv)
    days, hours = (1, 0.25) if args.quick else (args.days, args.hours)
    sizes = [int(a) for a in args.agents.split(",")]
    jobs = [
        Job(name, agents, days, hours, args.tick, args.seed * 1000 + agents)
        for agents in sizes
        for name in STRATEGIES
    ]
    load0 = os.getloadavg()[0]
    started = time.monotonic()
    results = run_all(jobs, args.processes)
    wall = time.monotonic() - started
    load1 = os.getloadavg()[0]
    title = f"{SECTION}: {days} day(s) × {hours:g} h, tick {args.tick:g} s"
    rows = table_rows(results)
    print_table(title, COLUMNS, rows)
    met = goals(results)
    for line in met:
        print("-", line.replace("**", ""))
    cpu = sum(r["cpu_s"] for r in results)
    print(f"{wall:.0f} s wall, {cpu:.0f} s CPU in {args.processes} process(es)")
    plotted = not args.quick and plot(results, PLOT)
    body = (
        f"Simulated with outbound.pacing_sim, {days} day(s) × {hours:g} h per size, seeds "
        f"{args.seed * 1000}+agents (the same for every strategy), pacer asked every "
        f"{args.tick:g} s (the dialer ticks every 0.5 s; 1 s halves the run time). Call mix "
        "per dial: 28% live, 15% machine (ring 12±6 s, then hung up by AMD), 7% busy "
        "(1-4 s), 50% no answer (30 s timeout); live ring 11±6 s; talk lognormal mean 90 s "
        "sd 90 s (median ≈ 64 s, long tail); wrap-up lognormal 12±8 s; 2 s connect window; "
        "estimates learned online from cold start. Strategies: see the docstring of "
        "bench/pacing.py (adaptive = VICIdial-style baseline implemented in the bench: "
        "15 s period, level × (1 + (agents waiting − calls waiting) / agents), 1-3, hard "
        "limit 3%). Per agent-hour of logged-in time: talk, idle (waiting for a call; "
        "wrap-up excluded; the physical limit is 0) and wrap-up. Ratios: talk over the "
        "same size's progressive / adaptive run.\n\n"
        + markdown_table(COLUMNS, rows)
        + f"\n{wall:.0f} s wall, {cpu:.0f} s CPU in {args.processes} process(es); load "
        f"average (1 min) {load0:.2f} at the start, {load1:.2f} at the end.\n\n"
        + ("![B1 daily abandonment and talk](bench-pacing.png)\n\n" if plotted else "")
        + "Goals (our predictive pacer):\n\n"
        + "".join(f"- {line}\n" for line in met)
        + (LIMITS if any("NOT met" in line for line in met) else "")
    )
    if args.docs or not args.quick or os.environ.get("OUTBOUND_BENCH_DOCS"):
        print("written:", write_section(SECTION, body, args.docs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A deterministic discrete-event simulator of a dialing campaign, driven by any pacer.

Why: the pacing maths (outbound.pacing) only earns trust against calls it did not
assume. The simulator draws contacts from their own laws (answer, machine, busy and
no-answer outcomes; ring, talk and wrap-up times), applies the 2-second rule (a person who
answers and is not connected to an agent within the connect window is abandoned) and asks
the pacer every `tick_s` simulated seconds how many calls to place, feeding it the same
estimates and abandon budget the dialer would (Estimators, AbandonLedger), learned online.

It is seeded and single-threaded, so a scenario gives the same report every time; events
sit in a heapq ordered by (time, sequence), so the cost is O(events log events).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

from .errors import Invalid
from .pacing import (
    DEFAULT_TARGET,
    PREDICTIVE,
    AbandonLedger,
    Budget,
    Estimates,
    Estimators,
    Limits,
    PacingState,
    Priors,
    Tuning,
    calls_to_place,
)

Pacer = Callable[[PacingState], int]
FIRST_DAY = date(2024, 1, 1)


# ------------------------------------------------------------------------ distributions
@dataclass(frozen=True)
class Fixed:
    value: float

    def sample(self, rng: random.Random) -> float:
        return self.value


@dataclass(frozen=True)
class Uniform:
    lo: float
    hi: float

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.lo, self.hi)


@dataclass(frozen=True)
class Lognormal:
    mean: float
    sd: float

    def sample(self, rng: random.Random) -> float:
        s2 = math.log1p((self.sd / self.mean) ** 2)
        return rng.lognormvariate(math.log(self.mean) - s2 / 2.0, math.sqrt(s2))


Dist = Fixed | Uniform | Lognormal


@dataclass(frozen=True)
class Scenario:
    """A campaign to simulate. Rates are per dial; the rest of the dials ring out (no
    answer after `no_answer_s`). Times in seconds."""

    agents: int = 10
    live_rate: float = 0.30  # a person answers
    machine_rate: float = 0.15  # a machine answers (hung up by AMD, no agent needed)
    busy_rate: float = 0.10
    ring_live: Dist = Uniform(4.0, 20.0)
    ring_machine: Dist = Uniform(4.0, 20.0)
    busy_s: Dist = Uniform(1.0, 3.0)
    no_answer_s: float = 25.0
    talk: Dist = Uniform(60.0, 180.0)
    wrap: Dist = Uniform(5.0, 20.0)
    hours_per_day: float = 2.0
    days: int = 1
    tick_s: float = 0.5
    connect_window_s: float = 2.0
    target: float = DEFAULT_TARGET
    mode: str = PREDICTIVE
    limits: Limits = field(default_factory=Limits)
    tuning: Tuning = field(default_factory=Tuning)
    priors: Priors = field(default_factory=Priors)
    seed: int = 1

    def __post_init__(self) -> None:
        if self.agents < 1 or self.days < 1:
            raise Invalid("a scenario needs at least one agent and one day")
        rates = (self.live_rate, self.machine_rate, self.busy_rate)
        if min(rates) < 0.0 or sum(rates) > 1.0:
            raise Invalid("outcome rates must be >= 0 and add up to at most 1")
        if self.tick_s <= 0.0 or self.hours_per_day <= 0.0 or self.connect_window_s < 0.0:
            raise Invalid("tick and day length must be positive, the connect window >= 0")


@dataclass
class DayReport:
    """What one simulated day produced."""

    agents: int
    hours: float
    dials: int = 0
    live_answers: int = 0  # connected + abandoned
    abandons: int = 0
    connected: int = 0
    talk_s: float = 0.0  # within the day
    wrap_s: float = 0.0  # wrap-up, within the day
    wait_s: float = 0.0  # agents Ready before a connection, within the day
    waits: int = 0  # connections that ended such a wait within the day

    @property
    def abandon_rate(self) -> float:
        return self.abandons / self.live_answers if self.live_answers else 0.0

    @property
    def logged_s(self) -> float:
        return self.agents * self.hours * 3600.0

    @property
    def idle_s(self) -> float:
        """Agent time neither in a call nor in wrap-up (waiting for a call), within the
        day: what a pacer can still win; its physical limit is 0."""
        return max(0.0, self.logged_s - self.talk_s - self.wrap_s)

    @property
    def utilisation(self) -> float:
        """Talk time over logged-in time."""
        return self.talk_s / self.logged_s

    @property
    def avg_wait_s(self) -> float:
        """Average time an agent waited Ready between calls."""
        return self.wait_s / self.waits if self.waits else 0.0

    @property
    def calls_per_agent_hour(self) -> float:
        return self.connected / (self.agents * self.hours)


@dataclass
class Report:
    """Per simulated day, and over the whole run."""

    days: list[DayReport]

    @property
    def total(self) -> DayReport:
        first = self.days[0]
        out = DayReport(agents=first.agents, hours=first.hours * len(self.days))
        for d in self.days:
            out.dials += d.dials
            out.live_answers += d.live_answers
            out.abandons += d.abandons
            out.connected += d.connected
            out.talk_s += d.talk_s
            out.wrap_s += d.wrap_s
            out.wait_s += d.wait_s
            out.waits += d.waits
        return out

    @property
    def worst_day_abandon_rate(self) -> float:
        return max(d.abandon_rate for d in self.days)

    def summary(self) -> str:
        t = self.total
        return (
            f"dials={t.dials} live={t.live_answers} abandons={t.abandons} "
            f"rate={t.abandon_rate:.2%} worst_day={self.worst_day_abandon_rate:.2%} "
            f"util={t.utilisation:.1%} wait={t.avg_wait_s:.1f}s "
            f"calls/agent-h={t.calls_per_agent_hour:.1f}"
        )


# ------------------------------------------------------------------------ the engine
_TICK, _RING_END, _ABANDON, _TALK_END, _WRAP_END = range(5)
_LIVE, _MACHINE, _BUSY, _NO_ANSWER = range(4)


class _Day:
    """One simulated day: agents log in Ready at 0, dialing stops at the day's end and
    the calls in flight are played out (talk and waits are counted within the day)."""

    def __init__(
        self,
        sc: Scenario,
        rng: random.Random,
        pacer: Pacer,
        est: Estimators,
        ledger: AbandonLedger,
        day: date,
    ) -> None:
        self.sc, self.rng, self.pacer, self.est, self.ledger, self.day = (
            sc,
            rng,
            pacer,
            est,
            ledger,
            day,
        )
        self.end = sc.hours_per_day * 3600.0
        self.report = DayReport(agents=sc.agents, hours=sc.hours_per_day)
        self.heap: list[tuple[float, int, int, int, float]] = []
        self.seq = 0
        self.ready: deque[tuple[int, float]] = deque((a, 0.0) for a in range(sc.agents))
        self.talking: dict[int, float] = {}  # agent -> talk start
        self.wrapping: dict[int, float] = {}  # agent -> wrap-up start
        self.ringing: dict[int, float] = {}  # call -> dial time
        self.waiting: dict[int, float] = {}  # answered call -> answer time
        self._est: Estimates | None = None
        self._budget: Budget | None = None

    def push(self, t: float, kind: int, ident: int = 0, value: float = 0.0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, ident, value))

    # -- the pacer's view
    def state(self, t: float) -> PacingState:
        if self._est is None:
            self._est = self.est.snapshot()
        if self._budget is None:
            self._budget = self.ledger.budget(self.day)
        return PacingState(
            ready=len(self.ready),
            in_call=[t - s for s in self.talking.values()],
            wrap_up=[t - s for s in self.wrapping.values()],
            ringing=[t - s for s in self.ringing.values()],
            waiting=len(self.waiting),
            estimates=self._est,
            budget=self._budget,
            limits=self.sc.limits,
            mode=self.sc.mode,
            tuning=self.sc.tuning,
        )

    def dial(self, t: float) -> None:
        sc, u = self.sc, self.rng.random()
        if u < sc.live_rate:
            outcome, after = _LIVE, min(sc.ring_live.sample(self.rng), sc.no_answer_s)
        elif u < sc.live_rate + sc.machine_rate:
            outcome, after = _MACHINE, min(sc.ring_machine.sample(self.rng), sc.no_answer_s)
        elif u < sc.live_rate + sc.machine_rate + sc.busy_rate:
            outcome, after = _BUSY, sc.busy_s.sample(self.rng)
        else:
            outcome, after = _NO_ANSWER, sc.no_answer_s
        self.seq += 1
        call = self.seq
        self.ringing[call] = t
        self.report.dials += 1
        self.push(t + after, _RING_END, call, float(outcome))

    # -- agents
    def connect(self, t: float) -> None:
        agent, since = self.ready.popleft()
        if t <= self.end:
            self.report.wait_s += t - since
            self.report.waits += 1
        self.report.connected += 1
        self._budget = None
        self.ledger.record(self.day, answered=1)
        self.talking[agent] = t
        self.push(t + self.sc.talk.sample(self.rng), _TALK_END, agent)

    def talk_end(self, t: float, agent: int) -> None:
        start = self.talking.pop(agent)
        self.report.talk_s += max(0.0, min(t, self.end) - start)
        self.est.talk_ended(t - start)
        self._est = None
        self.wrapping[agent] = t
        self.push(t + self.sc.wrap.sample(self.rng), _WRAP_END, agent)

    def wrap_end(self, t: float, agent: int) -> None:
        start = self.wrapping.pop(agent)
        self.report.wrap_s += max(0.0, min(t, self.end) - start)
        self.est.wrap_ended(t - start)
        self._est = None
        self.ready.append((agent, t))
        if self.waiting:
            del self.waiting[next(iter(self.waiting))]  # the longest-waiting contact
            self.connect(t)

    # -- calls
    def ring_end(self, t: float, call: int, outcome: int) -> None:
        dialed = self.ringing.pop(call)
        live = outcome == _LIVE
        self.est.dial_ended(live, t - dialed if live else None)
        self._est = None
        if not live:
            return
        self.report.live_answers += 1
        if self.ready:
            self.connect(t)
        elif self.sc.connect_window_s > 0.0:
            self.waiting[call] = t
            self.push(t + self.sc.connect_window_s, _ABANDON, call)
        else:
            self.abandon(call)

    def abandon(self, call: int) -> None:
        self.waiting.pop(call, None)
        self.report.abandons += 1
        self.ledger.record(self.day, answered=1, abandoned=1)
        self._budget = None

    def tick(self, t: float) -> None:
        n = self.pacer(self.state(t))
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise Invalid(f"a pacer must return a whole number >= 0, not {n!r}")
        n = min(n, max(0, self.sc.limits.max_lines - len(self.ringing)))  # trunk lines
        for _ in range(n):
            self.dial(t)
        nxt = t + self.sc.tick_s
        if nxt < self.end:
            self.push(nxt, _TICK)

    def run(self) -> DayReport:
        self.push(0.0, _TICK)
        heap = self.heap
        while heap:
            t, _, kind, ident, value = heapq.heappop(heap)
            if kind == _TICK:
                self.tick(t)
            elif kind == _RING_END:
                self.ring_end(t, ident, int(value))
            elif kind == _ABANDON:
                if ident in self.waiting:
                    self.abandon(ident)
            elif kind == _TALK_END:
                self.talk_end(t, ident)
            else:
                self.wrap_end(t, ident)
        return self.report


def simulate(
    scenario: Scenario, pacer: Pacer = calls_to_place, *, ledger: AbandonLedger | None = None
) -> Report:
    """Run `scenario.days` days with `pacer` deciding at every tick. The estimators and
    the abandon ledger carry over from day to day, as in a running campaign; pass a
    `ledger` to start from history (its target is used)."""
    rng = random.Random(scenario.seed)
    est = Estimators(scenario.priors)
    ledger = ledger or AbandonLedger(scenario.target)
    days = []
    for i in range(scenario.days):
        day = FIRST_DAY + timedelta(days=i)
        ledger.prune(day)
        days.append(_Day(scenario, rng, pacer, est, ledger, day).run())
    return Report(days)

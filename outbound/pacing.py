"""Pacing: how many calls to place now (pure: no I/O, no clock reads).

The originator builds a `PacingState` snapshot (agents, calls in flight, estimates, the
abandon budget, limits) and asks `calls_to_place(state)`; `plan(state)` returns the same
number with the figures behind it, for the audit line and "why is it not dialing?".
Estimates come from `Estimators`, fed with events as calls end; the budget from an
`AbandonLedger`, fed with live answers and abandons per day. Everything time-like is passed
in (elapsed seconds, the day), so the simulator (outbound.pacing_sim) and the tests drive
it exactly as the dialer does.

Progressive (the degenerate case)
---------------------------------
One call per Ready agent not already claimed by a ringing call or by an answered contact
waiting for one: n = max(0, R - c - w) with R agents Ready, c calls ringing and w contacts
waiting. Each answer consumes one Ready agent and one ringing call, so R - c - w never goes
negative through answers and an answer always finds a free agent: never an abandon. Predictive falls back to exactly this at cold start and when the budget
is (nearly) spent, and never dials fewer calls than it.

Predictive: the model
---------------------
An answered contact needs an agent within the connect window g (2 s) of its answer. A new
call a person answers does so after r, the expected ring time to a live answer; a call
already ringing for e seconds after E[R - e | R > e] more. The answers compete for agents
around the time they come, so the horizon is their weighted mean plus the window:
    h = g + (sum_j q_j E[R - e_j | R > e_j] + p r) / (Q + sum_j q_j + p)
(weights: the chance each answers, defined below; waiting contacts count with 0 s). A
single horizon for all is the model's main simplification; simulated, it keeps the
realised abandon rate close to the aim.

Agents free by then:        F = R + sum_i Bernoulli(f_i)
  R    agents Ready now (certainly free);
  f_i  an agent in a call for a seconds: P(S <= a + h | S > a), S = talk + wrap-up;
       an agent in wrap-up for w seconds: P(W <= w + h | W > w).
  Durations follow a lognormal law with the estimated mean and standard deviation (a
  positive, right-skewed law that fits call durations and needs only erf).

Live answers competing for them:  A_n = Q + sum_j Bernoulli(q_j) + sum_{k<n} Bernoulli(p)
  Q    answered contacts already waiting for an agent (certain);
  q_j  a call ringing for e seconds: P(live | not answered yet)
       = p (1 - G(e)) / (p (1 - G(e)) + 1 - p), G the lognormal law of the ring time to a
       live answer (every other outcome is taken as still ringing: slightly optimistic in
       the first seconds, when busy signals return, which the safety factor covers);
  p    the live answer rate of a new call (live answers / dials).

With D_n = A_n - F, one more call whose contact answers adds one abandon exactly when
D_n >= 0, so its expected abandons are p * P(D_n >= 0), and the calls outstanding expect
E[max(0, D_n)] abandons. D_n is a sum of independent Bernoulli variables: we use the normal
law of the same mean mu and variance s^2, continuity-corrected,
    P(D >= 0) ~ Phi((mu + 1/2) / s),   E[max(0, D)] ~ s phi(mu / s) + mu Phi(mu / s),
which costs O(agents + calls) per decision instead of a convolution, and adding a call
just adds p to mu and p(1 - p) to s^2.

Decision: place call n + 1 while
  (1) P(D_n >= 0) <= aim: the chance that its answer finds no agent is within the aim;
  (2) E[max(0, D_{n+1})] <= remaining: the outstanding calls do not expect more abandons
      than the budget still allows (whole abandons, today and over 30 days);
then take at least the progressive count and clip to the limits (lines, dial ratio).
aim = safety * target * min(1, 2 (1 - r / target)), r the worse of today's and the 30-day
abandon rates: full aim while the rate is under half the target, shrinking to nothing as
it reaches the target, a feedback that corrects what the model gets wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from .errors import Invalid

PROGRESSIVE = "progressive"
PREDICTIVE = "predictive"
MODES = (PROGRESSIVE, PREDICTIVE)
DEFAULT_TARGET = 0.03
WINDOW_DAYS = 30
_EPS = 1e-9


def _number(name: str, value: float, *, minimum: float = 0.0) -> float:
    """Refuse NaN, infinities and values below `minimum` with a clear error."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"{name} must be a number, not {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise Invalid(f"{name} must be a finite number >= {minimum}, not {value!r}")
    return float(value)


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid(f"{name} must be a whole number >= 0, not {value!r}")
    return value


# ------------------------------------------------------------------------ estimators
class Ewma:
    """Exponentially weighted mean and standard deviation of observations.

    A prior worth `prior_weight` observations made before the first gives a usable value
    at cold start and fades like any old observation. An observation `half_life` observations old weighs
    half a new one, so the estimate follows a campaign whose list or time of day changes.
    """

    def __init__(
        self,
        prior_mean: float,
        prior_sd: float,
        *,
        prior_weight: float = 5.0,
        half_life: float = 200.0,
    ) -> None:
        self.prior_mean = _number("prior mean", prior_mean)
        self.prior_sd = _number("prior sd", prior_sd)
        self.prior_weight = _number("prior weight", prior_weight)
        self._decay = 0.5 ** (1.0 / _number("half life", half_life, minimum=1.0))
        self._k = self.prior_weight  # the prior, as observations made before the first
        self._n = 0  # observations, not decayed
        self._w = 0.0  # decayed count of observations
        self._s1 = 0.0  # decayed sum of x
        self._s2 = 0.0  # decayed sum of x^2

    def add(self, x: float) -> None:
        x = _number("observation", x)
        self._k *= self._decay
        self._n += 1
        self._w = self._w * self._decay + 1.0
        self._s1 = self._s1 * self._decay + x
        self._s2 = self._s2 * self._decay + x * x

    @property
    def count(self) -> int:
        """Observations made so far."""
        return self._n

    @property
    def mean(self) -> float:
        k = self._k
        return (self._s1 + k * self.prior_mean) / (self._w + k) if self._w + k else 0.0

    @property
    def sd(self) -> float:
        k = self._k
        if not self._w + k:
            return 0.0
        m2 = (self._s2 + k * (self.prior_mean**2 + self.prior_sd**2)) / (self._w + k)
        return math.sqrt(max(0.0, m2 - self.mean**2))


@dataclass(frozen=True)
class Priors:
    """What a campaign is assumed to look like before it has history (seconds, rates)."""

    answer_rate: float = 0.25
    ring_s: tuple[float, float] = (12.0, 6.0)  # mean, sd of ring time to a live answer
    talk_s: tuple[float, float] = (120.0, 60.0)
    wrap_s: tuple[float, float] = (15.0, 10.0)


@dataclass(frozen=True)
class Estimates:
    """A snapshot of the live estimates, as the pacer consumes them."""

    answer_rate: float  # live answers / dials
    ring_mean: float  # ring time until a live answer
    ring_sd: float
    talk_mean: float
    talk_sd: float
    wrap_mean: float
    wrap_sd: float
    warm: bool = True  # enough history to dial ahead; False: progressive


class Estimators:
    """Live estimates fed with events as calls end (all durations in seconds).

    `min_dials` dial outcomes and `min_calls` finished talks and wrap-ups are needed before
    the estimates count as warm; until then the pacer dials progressively.
    """

    def __init__(
        self,
        priors: Priors | None = None,
        *,
        half_life: float = 200.0,
        min_dials: int = 50,
        min_calls: int = 10,
    ) -> None:
        p = priors or Priors()
        if not 0.0 <= p.answer_rate <= 1.0:
            raise Invalid(f"prior answer rate must be within 0-1, not {p.answer_rate!r}")
        self.answer = Ewma(p.answer_rate, 0.0, prior_weight=20.0, half_life=half_life * 4)
        self.ring = Ewma(*p.ring_s, half_life=half_life)
        self.talk = Ewma(*p.talk_s, half_life=half_life)
        self.wrap = Ewma(*p.wrap_s, half_life=half_life)
        self.min_dials = _count("min dials", min_dials)
        self.min_calls = _count("min calls", min_calls)

    def dial_ended(self, live: bool, ring_s: float | None = None) -> None:
        """A dial's outcome is known: a person answered (`live`, after `ring_s`), or not
        (busy, no answer, machine, failure...): one more dial in the answer rate."""
        self.answer.add(1.0 if live else 0.0)
        if live and ring_s is not None:
            self.ring.add(ring_s)

    def talk_ended(self, seconds: float) -> None:
        self.talk.add(seconds)

    def wrap_ended(self, seconds: float) -> None:
        self.wrap.add(seconds)

    def snapshot(self) -> Estimates:
        warm = (
            self.answer.count >= self.min_dials
            and min(self.talk.count, self.wrap.count) >= self.min_calls
        )
        return Estimates(
            answer_rate=min(1.0, max(0.0, self.answer.mean)),
            ring_mean=self.ring.mean,
            ring_sd=self.ring.sd,
            talk_mean=self.talk.mean,
            talk_sd=self.talk.sd,
            wrap_mean=self.wrap.mean,
            wrap_sd=self.wrap.sd,
            warm=warm,
        )


# ------------------------------------------------------------------------ the budget
@dataclass(frozen=True)
class Budget:
    """Abandons against live answers, over the rolling 30 days and today. An abandon is
    also a live answer (answered live, not connected within 2 s)."""

    target: float = DEFAULT_TARGET
    answered_30d: int = 0
    abandoned_30d: int = 0
    answered_today: int = 0
    abandoned_today: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= _number("abandon target", self.target) < 1.0:
            raise Invalid(f"abandon target must be within 0-1, not {self.target!r}")
        for name in ("answered_30d", "abandoned_30d", "answered_today", "abandoned_today"):
            _count(name.replace("_", " "), getattr(self, name))
        if self.abandoned_today > self.answered_today or self.abandoned_30d > self.answered_30d:
            raise Invalid("abandons are live answers: there cannot be more abandons than answers")
        if self.answered_today > self.answered_30d or self.abandoned_today > self.abandoned_30d:
            raise Invalid("today's counts are part of the 30 days: they cannot exceed them")

    @staticmethod
    def _rate(abandoned: int, answered: int) -> float:
        return abandoned / answered if answered else 0.0

    @property
    def rate_today(self) -> float:
        return self._rate(self.abandoned_today, self.answered_today)

    @property
    def rate_30d(self) -> float:
        return self._rate(self.abandoned_30d, self.answered_30d)

    def allowed(self) -> int:
        """How many more abandons, right now, keep both windows at or under the target.
        Each abandon is a live answer too: k more keep a window within the target while
        abandoned + k <= target * (answered + k), so k = floor((target * answered -
        abandoned) / (1 - target)); the smaller of the two windows, never below 0. Today
        starts at 0: a day's first abandons are earned by its live answers."""
        t = self.target

        def room(answered: int, abandoned: int) -> int:
            return math.floor((t * answered - abandoned) / (1.0 - t) + _EPS)

        return max(
            0,
            min(
                room(self.answered_today, self.abandoned_today),
                room(self.answered_30d, self.abandoned_30d),
            ),
        )

    @property
    def within_target(self) -> bool:
        return self.rate_today <= self.target + _EPS and self.rate_30d <= self.target + _EPS


class AbandonLedger:
    """Live answers and abandons per day, summed into a `Budget` for any day. The caller
    says which day it is (the campaign's day; no clock is read here)."""

    def __init__(self, target: float = DEFAULT_TARGET) -> None:
        Budget(target=target)  # validates
        self.target = target
        self._days: dict[date, list[int]] = {}

    def record(self, day: date, *, answered: int = 0, abandoned: int = 0) -> None:
        """Count live answers and abandons (an abandon is counted as a live answer too:
        record(day, answered=1, abandoned=1) for one abandoned call)."""
        _count("answered", answered)
        _count("abandoned", abandoned)
        if abandoned > answered:
            raise Invalid("an abandon is a live answer: record it with answered >= abandoned")
        row = self._days.setdefault(day, [0, 0])
        row[0] += answered
        row[1] += abandoned

    def prune(self, today: date) -> None:
        """Forget days that left the rolling window (keeps the ledger small)."""
        first = today - timedelta(days=WINDOW_DAYS - 1)
        for day in [d for d in self._days if d < first]:
            del self._days[day]

    def budget(self, today: date) -> Budget:
        first = today - timedelta(days=WINDOW_DAYS - 1)
        ans = ab = 0
        for day, (a, b) in self._days.items():
            if first <= day <= today:
                ans += a
                ab += b
        t_ans, t_ab = self._days.get(today, (0, 0))
        return Budget(self.target, ans, ab, t_ans, t_ab)


# ------------------------------------------------------------------------ the decision
@dataclass(frozen=True)
class Limits:
    """Hard limits: lines in use (ringing + new) and lines per logged-in agent."""

    max_lines: int = 100
    max_dial_ratio: float = 4.0

    def __post_init__(self) -> None:
        _count("max lines", self.max_lines)
        if _number("max dial ratio", self.max_dial_ratio) < 1.0:
            raise Invalid(f"max dial ratio must be at least 1, not {self.max_dial_ratio!r}")


@dataclass(frozen=True)
class Tuning:
    """Model knobs: share of the target aimed at, connect window, the smallest budget
    (whole abandons) for dialing ahead."""

    safety: float = 0.6
    connect_window_s: float = 2.0
    min_allowed: int = 1


@dataclass(frozen=True)
class PacingState:
    """Everything the decision depends on, at one instant. Elapsed times in seconds."""

    ready: int  # agents Ready now (including any reserved by a ringing progressive call)
    in_call: Sequence[float] = ()  # per agent in a call: elapsed talk time
    wrap_up: Sequence[float] = ()  # per agent in wrap-up: elapsed wrap-up time
    ringing: Sequence[float] = ()  # per call ringing: elapsed ring time
    waiting: int = 0  # answered contacts waiting for an agent (inside the connect window)
    estimates: Estimates | None = None  # None: cold (progressive)
    budget: Budget = field(default_factory=Budget)
    limits: Limits = field(default_factory=Limits)
    mode: str = PREDICTIVE
    tuning: Tuning = field(default_factory=Tuning)


@dataclass(frozen=True)
class Plan:
    """The decision and the figures behind it (for the audit line and the dashboard)."""

    calls: int
    mode: str  # how it was decided: progressive or predictive
    reason: str
    expected_free: float = 0.0  # agents expected free within ring time + connect window
    expected_answers: float = 0.0  # live answers expected from what is in flight + new calls
    p_no_agent: float = 0.0  # chance one more call would find no agent on answer
    expected_abandons: float = 0.0  # of everything outstanding after dialing


def _phi(z: float) -> float:
    return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def _upper(z: float) -> float:
    """P(Z > z) for a standard normal, accurate in the tail."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def lognormal_survival(x: float, mean: float, sd: float) -> float:
    """P(X > x) for a lognormal law of the given mean and standard deviation (sd 0: a
    fixed duration)."""
    if x <= 0.0:
        return 1.0
    if mean <= 0.0:
        return 0.0
    if sd <= 0.0:
        return 1.0 if x < mean else 0.0
    s2 = math.log1p((sd / mean) ** 2)
    mu = math.log(mean) - s2 / 2.0
    return _upper((math.log(x) - mu) / math.sqrt(s2))


def p_done_within(elapsed: float, horizon: float, mean: float, sd: float) -> float:
    """P(X <= elapsed + horizon | X > elapsed): an activity that has lasted `elapsed`
    seconds ends within the next `horizon` seconds."""
    alive = lognormal_survival(elapsed, mean, sd)
    if alive <= 0.0:
        return 0.0  # beyond the law's support: conservatively, not about to end
    return max(0.0, min(1.0, 1.0 - lognormal_survival(elapsed + horizon, mean, sd) / alive))


def p_live_while_ringing(elapsed: float, est: Estimates) -> float:
    """P(a person answers | the call has rung `elapsed` seconds without an answer)."""
    p = est.answer_rate
    later = p * lognormal_survival(elapsed, est.ring_mean, est.ring_sd)
    denom = later + (1.0 - p)
    return later / denom if denom > 0.0 else 0.0


def remaining_ring(elapsed: float, est: Estimates) -> float:
    """E[R - e | R > e]: how much longer a call that has rung `elapsed` seconds rings
    before a person answers, if one does (R lognormal, partial expectation)."""
    mean, sd = est.ring_mean, est.ring_sd
    if elapsed <= 0.0 or sd <= 0.0 or mean <= 0.0:
        return max(0.0, mean - elapsed)
    s2 = math.log1p((sd / mean) ** 2)
    s, mu = math.sqrt(s2), math.log(mean) - s2 / 2.0
    alive = _upper((math.log(elapsed) - mu) / s)
    if alive <= 0.0:
        return 0.0
    return max(0.0, mean * _upper((math.log(elapsed) - mu - s2) / s) / alive - elapsed)


def _check(state: PacingState) -> None:
    if state.mode not in MODES:
        raise Invalid(f"pacing mode must be one of {', '.join(MODES)}, not {state.mode!r}")
    _count("ready agents", state.ready)
    _count("waiting contacts", state.waiting)
    for name, values in (
        ("talk time", state.in_call),
        ("wrap-up time", state.wrap_up),
        ("ring time", state.ringing),
    ):
        for v in values:
            _number(f"elapsed {name}", v)
    if not 0.0 < _number("safety", state.tuning.safety) <= 1.0:
        raise Invalid(f"safety must be within (0, 1], not {state.tuning.safety!r}")
    _number("connect window", state.tuning.connect_window_s)


def _cap(state: PacingState) -> int:
    """New calls the limits allow on top of the calls ringing."""
    logged_in = state.ready + len(state.in_call) + len(state.wrap_up)
    lines = min(state.limits.max_lines, math.floor(state.limits.max_dial_ratio * logged_in))
    return max(0, lines - len(state.ringing))


def _progressive(state: PacingState, reason: str) -> Plan:
    n = min(max(0, state.ready - len(state.ringing) - state.waiting), _cap(state))
    return Plan(n, PROGRESSIVE, reason)


def _normal(mu: float, var: float) -> tuple[float, float]:
    """(P(D >= 0), E[max(0, D)]) for an integer D approximated by N(mu, var)."""
    if var <= _EPS:
        return (1.0 if mu >= -0.5 else 0.0), max(0.0, mu)
    s = math.sqrt(var)
    p_short = _upper(-(mu + 0.5) / s)
    shortfall = s * _phi(mu / s) + mu * (1.0 - _upper(mu / s))
    return p_short, max(0.0, shortfall)


def plan(state: PacingState) -> Plan:
    """How many calls to place now, and why (see the module docstring for the maths)."""
    _check(state)
    if state.mode == PROGRESSIVE:
        return _progressive(state, "progressive: one call per Ready agent")
    est = state.estimates
    if est is None or not est.warm:
        return _progressive(state, "cold start: too little history, dialing progressively")
    allowed = state.budget.allowed()
    if allowed < state.tuning.min_allowed or not state.budget.within_target:
        return _progressive(state, f"abandon budget spent ({allowed} left): dialing progressively")
    target = state.budget.target
    worst = max(state.budget.rate_today, state.budget.rate_30d)
    aim = state.tuning.safety * target * max(0.0, min(1.0, 2.0 * (1.0 - worst / target)))

    answers = [p_live_while_ringing(e, est) for e in state.ringing]
    p = est.answer_rate
    # The answers compete for agents when they come: weigh the calls in flight by how much
    # longer they should ring, a new call by its whole ring time.
    soon = sum(q * remaining_ring(e, est) for q, e in zip(answers, state.ringing, strict=True))
    weight = state.waiting + sum(answers) + p
    wait = (soon + p * est.ring_mean) / weight if weight > 0.0 else est.ring_mean
    horizon = wait + state.tuning.connect_window_s
    serve_mean = est.talk_mean + est.wrap_mean
    serve_sd = math.hypot(est.talk_sd, est.wrap_sd)
    free = [p_done_within(a, horizon, serve_mean, serve_sd) for a in state.in_call]
    free += [p_done_within(w, horizon, est.wrap_mean, est.wrap_sd) for w in state.wrap_up]
    mu = state.waiting + sum(answers) - state.ready - sum(free)
    var = sum(q * (1.0 - q) for q in answers) + sum(f * (1.0 - f) for f in free)

    cap = _cap(state)
    n = 0
    p_next, shortfall = _normal(mu, var)
    while True:
        if n >= cap:
            reason = "predictive: limited by max lines / dial ratio"
            break
        if p_next > aim:
            reason = f"predictive: one more call would find no agent (p={p_next:.3f} > {aim:.3f})"
            break
        mu2, var2 = mu + p, var + p * (1.0 - p)
        p2, shortfall2 = _normal(mu2, var2)
        if shortfall2 > allowed:
            reason = f"predictive: calls in flight would expect more than {allowed} abandons"
            break
        n, mu, var, p_next, shortfall = n + 1, mu2, var2, p2, shortfall2
    floor_n = min(max(0, state.ready - len(state.ringing) - state.waiting), cap)
    if n < floor_n:
        n, reason = floor_n, "predictive: at least one call per unreserved Ready agent"
    return Plan(
        calls=n,
        mode=PREDICTIVE,
        reason=reason,
        expected_free=state.ready + sum(free),
        expected_answers=state.waiting + sum(answers) + n * p,
        p_no_agent=p_next,
        expected_abandons=shortfall,
    )


def calls_to_place(state: PacingState) -> int:
    """The number of calls to originate now (never negative, within the limits)."""
    return plan(state).calls

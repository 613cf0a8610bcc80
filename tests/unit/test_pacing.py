"""Pacing (pure): estimators, the abandon budget (rolling 30 days and today), and the
decision, including the fallbacks to progressive at cold start and on a spent budget."""

from __future__ import annotations

import math
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbound.errors import Invalid
from outbound.pacing import (
    PREDICTIVE,
    PROGRESSIVE,
    AbandonLedger,
    Budget,
    Estimates,
    Estimators,
    Ewma,
    Limits,
    PacingState,
    Priors,
    calls_to_place,
    lognormal_survival,
    p_done_within,
    p_live_while_ringing,
    plan,
    remaining_ring,
)

WARM = Estimates(
    answer_rate=0.3, ring_mean=12.0, ring_sd=5.0, talk_mean=120.0, talk_sd=35.0,
    wrap_mean=12.0, wrap_sd=4.0,
)  # fmt: skip
HEALTHY = Budget(0.03, answered_30d=5000, abandoned_30d=50, answered_today=400, abandoned_today=4)
SPENT = Budget(0.03, answered_30d=5000, abandoned_30d=50, answered_today=400, abandoned_today=12)
DAY = date(2024, 3, 31)


def busy_floor(**kw: object) -> PacingState:
    """Two agents Ready, eight finishing their wrap-up (about to be free), nothing ringing:
    a state where predictive dials well ahead of progressive."""
    base: dict = dict(ready=2, wrap_up=[11.0] * 8, estimates=WARM, budget=HEALTHY)
    base.update(kw)
    return PacingState(**base)


# ---------------------------------------------------------------- estimators
def test_given_no_observations_when_reading_an_ewma_then_the_prior_is_returned() -> None:
    e = Ewma(120.0, 30.0)
    assert e.count == 0
    assert e.mean == pytest.approx(120.0)
    assert e.sd == pytest.approx(30.0)


def test_given_many_observations_when_reading_then_they_outweigh_the_prior() -> None:
    e = Ewma(120.0, 30.0, prior_weight=5, half_life=100)
    for x in [50.0, 70.0] * 200:
        e.add(x)
    assert e.mean == pytest.approx(60.0, abs=0.5)
    assert e.sd == pytest.approx(10.0, abs=0.5)
    assert e.count == 400


def test_given_a_change_in_the_campaign_when_observing_then_the_ewma_follows_it() -> None:
    e = Ewma(0.3, 0.0, half_life=50)
    for _ in range(500):
        e.add(0.3)
    for _ in range(300):  # the list ran into a worse batch of numbers
        e.add(0.1)
    assert e.mean == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "12"])
def test_given_a_bad_observation_when_adding_then_it_is_refused_and_nothing_changes(
    bad: object,
) -> None:
    e = Ewma(10.0, 1.0)
    with pytest.raises(Invalid):
        e.add(bad)  # type: ignore[arg-type]
    assert e.count == 0 and e.mean == 10.0


def test_given_dial_outcomes_when_estimating_then_answer_rate_is_live_answers_per_dial() -> None:
    est = Estimators(Priors(answer_rate=0.5), half_life=10_000)
    for i in range(1000):
        live = i % 5 == 0  # 20% live answers
        est.dial_ended(live, ring_s=8.0 if live else None)
    snap = est.snapshot()
    assert snap.answer_rate == pytest.approx(0.2, abs=0.01)
    assert snap.ring_mean == pytest.approx(8.0, abs=0.3)  # only live answers count


def test_given_a_cold_campaign_when_estimating_then_not_warm_until_enough_history() -> None:
    est = Estimators(min_dials=50, min_calls=10)
    assert est.snapshot().warm is False
    for _ in range(60):
        est.dial_ended(False)
    assert est.snapshot().warm is False  # dials, but no finished call yet
    for _ in range(10):
        est.talk_ended(90.0)
        est.wrap_ended(10.0)
    assert est.snapshot().warm is True


def test_given_an_impossible_prior_when_building_estimators_then_refused() -> None:
    with pytest.raises(Invalid):
        Estimators(Priors(answer_rate=1.5))


# ---------------------------------------------------------------- the budget
@pytest.mark.parametrize(
    ("budget", "allowed"),
    [
        (Budget(0.03), 0),  # nothing answered yet: no abandon is allowed
        (Budget(0.03, 100, 0, 100, 0), 3),  # 3/103 <= 3%, 4/104 > 3%
        (Budget(0.03, 100, 1, 100, 1), 2),
        (Budget(0.03, 100, 3, 100, 3), 0),  # exactly at the target: no more
        (Budget(0.03, 10_000, 100, 100, 0), 3),  # today limits
        (Budget(0.03, 1000, 30, 500, 0), 0),  # the 30 days limit
        (Budget(0.05, 1000, 10, 200, 2), 8),
    ],
)
def test_given_counts_when_asking_the_budget_then_allowed_abandons_are_exact(
    budget: Budget, allowed: int
) -> None:
    assert budget.allowed() == allowed


@given(
    target=st.sampled_from([0.01, 0.03, 0.05, 0.1]),
    ans30=st.integers(0, 20_000),
    ab30=st.integers(0, 600),
    ans_today=st.integers(0, 2000),
    ab_today=st.integers(0, 60),
)
def test_given_any_counts_when_allowed_abandons_happen_then_both_windows_stay_within_target(
    target: float, ans30: int, ab30: int, ans_today: int, ab_today: int
) -> None:
    ans_today, ab_today = min(ans_today, ans30), min(ab_today, ab30)
    ab30, ab_today = min(ab30, ans30), min(ab_today, ans_today)
    b = Budget(target, ans30, ab30, ans_today, ab_today)
    k = b.allowed()
    assert k >= 0
    if k:  # k more abandons (each a live answer too) keep both windows within the target
        assert ab_today + k <= target * (ans_today + k) + 1e-9
        assert ab30 + k <= target * (ans30 + k) + 1e-9
    if b.within_target:  # and one more would break one of them
        assert (ab_today + k + 1 > target * (ans_today + k + 1) - 1e-9) or (
            ab30 + k + 1 > target * (ans30 + k + 1) - 1e-9
        )


def test_given_a_ledger_when_summing_then_the_window_is_the_last_30_days_and_today() -> None:
    ledger = AbandonLedger(0.03)
    ledger.record(DAY - timedelta(days=30), answered=500, abandoned=100)  # just out
    ledger.record(DAY - timedelta(days=29), answered=300, abandoned=6)  # first day in
    ledger.record(DAY - timedelta(days=1), answered=200, abandoned=2)
    ledger.record(DAY, answered=50)
    ledger.record(DAY, answered=1, abandoned=1)
    ledger.record(DAY + timedelta(days=1), answered=999, abandoned=99)  # future: not counted
    b = ledger.budget(DAY)
    assert (b.answered_30d, b.abandoned_30d) == (551, 9)
    assert (b.answered_today, b.abandoned_today) == (51, 1)
    assert b.rate_today == pytest.approx(1 / 51)
    assert ledger.budget(DAY + timedelta(days=29)).answered_30d == 51 + 999  # DAY is its first


def test_given_old_days_when_pruning_then_only_the_window_is_kept() -> None:
    ledger = AbandonLedger()
    ledger.record(DAY - timedelta(days=40), answered=10, abandoned=10)
    ledger.record(DAY - timedelta(days=3), answered=10)
    ledger.prune(DAY)
    b = ledger.budget(DAY)
    assert (b.answered_30d, b.abandoned_30d) == (10, 0)
    assert ledger.budget(DAY - timedelta(days=40)).answered_30d == 0  # forgotten


@pytest.mark.parametrize(
    "bad",
    [
        dict(answered=1, abandoned=2),  # an abandon is a live answer
        dict(answered=-1),
        dict(answered=1.5),
    ],
)
def test_given_bad_counts_when_recording_then_refused_and_nothing_changes(bad: dict) -> None:
    ledger = AbandonLedger()
    with pytest.raises(Invalid):
        ledger.record(DAY, **bad)
    assert ledger.budget(DAY) == Budget(0.03)


@pytest.mark.parametrize(
    "kw",
    [
        dict(target=1.0),
        dict(target=-0.1),
        dict(target=math.nan),
        dict(answered_30d=10, abandoned_30d=11),
        dict(answered_30d=10, answered_today=11),
        dict(answered_30d=-1),
    ],
)
def test_given_impossible_counts_when_building_a_budget_then_refused(kw: dict) -> None:
    with pytest.raises(Invalid):
        Budget(**kw)


# ---------------------------------------------------------------- probability helpers
def test_given_a_lognormal_when_asking_survival_then_it_falls_from_one_to_zero() -> None:
    xs = [0.0, 30.0, 60.0, 120.0, 240.0, 2000.0]
    s = [lognormal_survival(x, 120.0, 40.0) for x in xs]
    assert s[0] == 1.0 and s == sorted(s, reverse=True) and s[-1] < 1e-6
    assert lognormal_survival(100.0, 120.0, 0.0) == 1.0  # a fixed duration
    assert lognormal_survival(130.0, 120.0, 0.0) == 0.0


def test_given_an_agent_late_in_a_call_when_asked_then_more_likely_to_be_free_soon() -> None:
    early = p_done_within(10.0, 15.0, 130.0, 40.0)
    late = p_done_within(150.0, 15.0, 130.0, 40.0)
    assert 0.0 <= early < late <= 1.0


def test_given_a_call_ringing_longer_when_asked_then_a_person_is_less_likely_to_answer() -> None:
    ps = [p_live_while_ringing(e, WARM) for e in (0.0, 5.0, 12.0, 20.0, 40.0)]
    assert ps[0] == pytest.approx(WARM.answer_rate)
    assert ps == sorted(ps, reverse=True) and ps[-1] < 0.01
    assert remaining_ring(0.0, WARM) == pytest.approx(WARM.ring_mean)
    assert 0.0 < remaining_ring(15.0, WARM) < WARM.ring_mean


# ---------------------------------------------------------------- the decision
def test_given_progressive_mode_when_pacing_then_one_call_per_unreserved_ready_agent() -> None:
    s = busy_floor(mode=PROGRESSIVE, ready=5, ringing=[1.0, 2.0])
    p = plan(s)
    assert (p.calls, p.mode) == (3, PROGRESSIVE)
    assert calls_to_place(busy_floor(mode=PROGRESSIVE, ready=1, ringing=[1.0, 2.0])) == 0


def test_given_agents_about_to_be_free_when_pacing_predictively_then_dials_ahead() -> None:
    p = plan(busy_floor())
    assert p.mode == PREDICTIVE
    assert p.calls > 2  # more than the Ready agents: the wrap-ups are about to end
    assert p.expected_free > 2


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        (dict(estimates=None), "cold start"),
        (dict(estimates=Estimates(**{**WARM.__dict__, "warm": False})), "cold start"),
        (dict(budget=SPENT), "budget spent"),
        (dict(budget=Budget(0.03, 5000, 50, 0, 0)), "budget spent"),  # a day's first calls
        (dict(budget=Budget(0.03, 100, 4, 100, 0)), "budget spent"),  # 30 days over target
    ],
)
def test_given_cold_start_or_spent_budget_when_pacing_then_falls_back_to_progressive(
    kw: dict, why: str
) -> None:
    assert plan(busy_floor()).calls > 2  # the same floor, warm and healthy, dials ahead
    p = plan(busy_floor(ringing=[3.0], **kw))
    assert (p.calls, p.mode) == (1, PROGRESSIVE)  # 2 Ready - 1 ringing: no overdial
    assert why in p.reason


def test_given_the_rate_near_the_target_when_pacing_then_dials_less_ahead() -> None:
    relaxed = Budget(0.03, 20_000, 100, 2000, 10)  # 0.5% today
    tight = Budget(0.03, 20_000, 100, 2000, 55)  # 2.75% today, still 5 abandons left
    assert tight.allowed() >= 1
    assert plan(busy_floor(budget=tight)).calls < plan(busy_floor(budget=relaxed)).calls


def test_given_many_calls_ringing_and_no_free_agent_when_pacing_then_no_new_call() -> None:
    s = PacingState(ready=0, in_call=[5.0] * 10, ringing=[1.0] * 20, estimates=WARM,
                    budget=HEALTHY)  # fmt: skip
    p = plan(s)
    assert p.calls == 0 and p.p_no_agent > 0.5


def test_given_contacts_waiting_for_an_agent_when_pacing_then_they_count_as_answers() -> None:
    assert plan(busy_floor(waiting=3)).calls < plan(busy_floor()).calls


@given(
    ready=st.integers(0, 30),
    in_call=st.lists(st.floats(0, 900), max_size=30),
    wrap_up=st.lists(st.floats(0, 120), max_size=10),
    ringing=st.lists(st.floats(0, 40), max_size=60),
    waiting=st.integers(0, 5),
    max_lines=st.integers(0, 80),
    ratio=st.floats(1.0, 5.0),
    answer_rate=st.floats(0.0, 1.0),
    mode=st.sampled_from([PREDICTIVE, PROGRESSIVE]),
)
def test_given_any_state_when_pacing_then_within_limits_and_never_below_progressive(
    ready: int, in_call: list[float], wrap_up: list[float], ringing: list[float],
    waiting: int, max_lines: int, ratio: float, answer_rate: float, mode: str,
) -> None:  # fmt: skip
    limits = Limits(max_lines=max_lines, max_dial_ratio=ratio)
    est = Estimates(**{**WARM.__dict__, "answer_rate": answer_rate})
    s = PacingState(ready=ready, in_call=in_call, wrap_up=wrap_up, ringing=ringing,
                    waiting=waiting, estimates=est, budget=HEALTHY, limits=limits, mode=mode)  # fmt: skip
    n = calls_to_place(s)
    logged = ready + len(in_call) + len(wrap_up)
    cap = max(0, min(max_lines, math.floor(ratio * logged)) - len(ringing))
    assert 0 <= n <= cap
    assert n >= min(max(0, ready - len(ringing) - waiting), cap)
    if mode == PROGRESSIVE:
        assert n == min(max(0, ready - len(ringing) - waiting), cap)


@pytest.mark.parametrize(
    "kw",
    [
        dict(ready=-1),
        dict(ready=1.5),
        dict(in_call=[math.nan]),
        dict(ringing=[-2.0]),
        dict(wrap_up=[math.inf]),
        dict(waiting=-1),
        dict(mode="preview"),
    ],
)
def test_given_a_bad_state_when_pacing_then_a_clear_error(kw: dict) -> None:
    with pytest.raises(Invalid):
        calls_to_place(busy_floor(**kw))


@pytest.mark.parametrize("kw", [dict(max_lines=-1), dict(max_dial_ratio=0.5)])
def test_given_bad_limits_when_building_them_then_refused(kw: dict) -> None:
    with pytest.raises(Invalid):
        Limits(**kw)

"""Predictive mode of the bridge's campaign engine (ami_bridge.dialer): every tick, per
running predictive campaign, the pacer (outbound.pacing.plan, pure) says how many calls to
place now, from a snapshot of the campaign read from the database:

- agents Ready on this bridge (session up, Ready on the voice channel), not reserved, and
  free per the database (no live call, no wrap-up);
- agents in a call and in wrap-up, calls ringing, answered contacts being classified
  (outbound.campaigns.predictive.floor);
- the live estimates and the abandon budget (30 days and today), rebuilt from the
  campaign's attempts every sweep (`refresh`), so that a restarted bridge paces exactly as
  before: the database is their only memory.

The calls are placed without an agent: the classify route picks one when a person answers
(outbound.campaigns.predictive.pick_agent) and abandons the person, with the campaign's
message and opt-out, when none is free. The plan's figures go into each attempt's audit
line ("why was this dialed?"), and the last plan per campaign is kept for the dashboard.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from outbound import pacing
from outbound.campaigns import predictive
from outbound.model import Campaign

if TYPE_CHECKING:
    from .dialer import CampaignInfo, Dialer

log = logging.getLogger("ami_bridge.pacer")


class Predictive:
    """The predictive mode of one Dialer: its estimates and budgets, and its tick."""

    def __init__(
        self,
        dialer: Dialer,
        *,
        priors: pacing.Priors | None = None,
        min_dials: int = 50,
        min_calls: int = 10,
        limits: pacing.Limits | None = None,
        tuning: pacing.Tuning | None = None,
    ) -> None:
        self.dialer = dialer
        self.priors = priors
        self.min_dials = min_dials
        self.min_calls = min_calls
        self.limits = limits or pacing.Limits()
        self.tuning = tuning or pacing.Tuning()
        self.estimates: dict[int, pacing.Estimates] = {}
        self.budgets: dict[int, pacing.Budget] = {}
        self.last_plan: dict[int, pacing.Plan] = {}

    async def refresh(self, campaign: CampaignInfo) -> None:
        """Estimates and abandon budget of the campaign, from its attempts."""
        d = self.dialer
        now = datetime.now(UTC)

        def read() -> tuple[pacing.Estimates, pacing.Budget]:
            with d.factory() as s:
                c = s.get(Campaign, campaign.id)
                target = c.abandon_target if c is not None else pacing.DEFAULT_TARGET
                est = predictive.estimators(
                    s,
                    campaign.id,
                    self.priors,
                    min_dials=self.min_dials,
                    min_calls=self.min_calls,
                ).snapshot()
                budget = predictive.ledger(s, campaign.id, now.date(), target).budget(now.date())
                return est, budget

        self.estimates[campaign.id], self.budgets[campaign.id] = await d._db(read)

    async def tick(self, campaign: CampaignInfo) -> None:
        d = self.dialer
        if campaign.id not in self.estimates:
            await self.refresh(campaign)
        ready = await d._ready_agents(campaign)
        now = datetime.now(UTC)

        def read() -> predictive.Floor:
            with d.factory() as s:
                return predictive.floor(s, campaign.id, now)

        fl = await d._db(read)
        free = [a for a in ready if a not in fl.busy_agents]
        state = pacing.PacingState(
            ready=len(free),
            in_call=fl.in_call,
            wrap_up=fl.wrap_up,
            ringing=fl.ringing,
            waiting=fl.waiting,
            estimates=self.estimates[campaign.id],
            budget=self.budgets[campaign.id],
            limits=self.limits,
            tuning=self.tuning,
        )
        plan = pacing.plan(state)
        self.last_plan[campaign.id] = plan
        if plan.calls <= 0:
            return
        audit = {"pacing": _figures(plan, state)}
        log.info(
            "campaign %s: %d calls (%s; %d ready, %d in call, %d wrap-up, %d ringing)",
            *(campaign.name, plan.calls, plan.reason, len(free), len(fl.in_call)),
            *(len(fl.wrap_up), len(fl.ringing)),
        )
        from .dialer import Placed  # the engine's own vocabulary

        for _ in range(plan.calls):
            placed = await d._place(campaign, None, None, audit)
            if placed in (Placed.EMPTY, Placed.PAUSED):
                return


def _figures(plan: pacing.Plan, state: pacing.PacingState) -> dict[str, Any]:
    """The plan and the snapshot behind it, rounded, for the attempt's audit line."""
    out: dict[str, Any] = {
        k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(plan).items()
    }
    out.update(
        ready=state.ready,
        in_call=len(state.in_call),
        wrap_up=len(state.wrap_up),
        ringing=len(state.ringing),
        waiting=state.waiting,
        rate_today=round(state.budget.rate_today, 4),
        rate_30d=round(state.budget.rate_30d, 4),
        abandons_allowed=state.budget.allowed(),
    )
    return out

"""Predictive dialing's database side: what the pacer (outbound.pacing) needs to know of a
campaign, read from the attempts (the source of truth, so a restarted bridge paces exactly
as before), and the agent picked for a person when they answer.

- `floor`: the campaign's calls and agents right now: agents in a call (elapsed talk),
  in wrap-up (elapsed wrap-up), calls ringing (elapsed ring) and answered contacts being
  classified (counted as waiting for an agent: the pacer then assumes each is a person,
  which errs on the side of fewer abandons).
- `estimators`: the live estimates fed with the campaign's most recent ended attempts, in
  the order they ended (answer rate, ring time to a live answer, talk, wrap-up).
- `ledger`: live answers and abandons per day over the rolling 30 days (UTC days), the
  abandon budget's input. A live answer is a call connected to an agent or abandoned
  (answered by a person, nobody connected within 2 s).
- `pick_agent`: in predictive mode no agent is reserved before the dial; the classify
  route asks for one when AMD says a person answered. Members who are Ready on the voice
  channel with their session up (live state in Redis), longest Ready first; the agent is
  reserved in Redis (the same SET NX key the dialer's reservations use, so neither a
  progressive tick nor another answer takes them meanwhile), then checked free in the
  database and written on the attempt in one transaction, then the reservation is dropped
  (the attempt row now says the agent is busy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from .. import live, names
from ..model import AgentCampaign, AttemptState, CallAttempt, CallResult, CaseEvent, transaction
from ..pacing import WINDOW_DAYS, AbandonLedger, Estimators, Priors
from .callback_offers import has_open_offer
from .interaction import agent_is_free, agents_in_wrapup

HISTORY = 500  # ended attempts the estimates are fed with
PICK_TTL_S = 30  # a picker that dies holds its reservation this long at most
_RINGING = (AttemptState.CREATED, AttemptState.ORIGINATING, AttemptState.RINGING)

# Take an agent only if not reserved; drop the reservation only if it is still ours.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def _secs(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return max(0.0, (later - earlier).total_seconds())


@dataclass(frozen=True)
class Floor:
    in_call: list[float] = field(default_factory=list)
    wrap_up: list[float] = field(default_factory=list)
    ringing: list[float] = field(default_factory=list)
    waiting: int = 0
    busy_agents: frozenset[str] = frozenset()  # in a call or in wrap-up (any campaign)


def floor(s: Session, campaign_id: int, now: datetime) -> Floor:
    """The campaign's live attempts and wrap-ups at `now` (aware, as read back)."""
    rows = s.execute(
        select(
            CallAttempt.agent_id,
            CallAttempt.state,
            CallAttempt.created_at,
            CallAttempt.originated_at,
            CallAttempt.answered_at,
            CallAttempt.connected_at,
        ).where(CallAttempt.campaign_id == campaign_id, CallAttempt.state != AttemptState.ENDED)
    ).all()
    in_call: list[float] = []
    ringing: list[float] = []
    waiting = 0
    busy: set[str] = set()
    for agent, state, created, originated, answered, connected in rows:
        if agent is not None:
            busy.add(agent)
            since = connected or answered
            if since is not None:
                in_call.append(_secs(now, since) or 0.0)
            elif state in _RINGING:  # progressive / preview: the agent waits for it
                ringing.append(_secs(now, originated or created) or 0.0)
            continue
        if state in _RINGING:
            ringing.append(_secs(now, originated or created) or 0.0)
        else:  # answered, being classified: may need an agent within 2 s
            waiting += 1
    wrap = agents_in_wrapup(s, campaign_id)
    busy |= set(wrap)
    return Floor(
        in_call=in_call,
        wrap_up=[_secs(now, since) or 0.0 for since in wrap.values()],
        ringing=ringing,
        waiting=waiting,
        busy_agents=frozenset(busy),
    )


def _is_live(result: CallResult | None, connected: datetime | None) -> bool:
    return connected is not None or result is CallResult.ABANDONED


def estimators(
    s: Session,
    campaign_id: int,
    priors: Priors | None = None,
    *,
    history: int = HISTORY,
    min_dials: int = 50,
    min_calls: int = 10,
) -> Estimators:
    """Estimators fed with the campaign's last `history` ended attempts, oldest first."""
    est = Estimators(priors, min_dials=min_dials, min_calls=min_calls)
    rows = list(
        s.execute(
            select(
                CallAttempt.id,
                CallAttempt.result,
                CallAttempt.originated_at,
                CallAttempt.answered_at,
                CallAttempt.connected_at,
                CallAttempt.ended_at,
            )
            .where(
                CallAttempt.campaign_id == campaign_id,
                CallAttempt.state == AttemptState.ENDED,
                CallAttempt.originated_at.is_not(None),
                CallAttempt.result.is_not(None),
                CallAttempt.result != CallResult.CANCELLED,
            )
            .order_by(CallAttempt.ended_at.desc())
            .limit(history)
        )
    )
    rows.reverse()
    done_at = _dispositions(s, [r.id for r in rows if r.connected_at is not None])
    for aid, result, originated, answered, connected, ended in rows:
        is_live = _is_live(result, connected)
        est.dial_ended(is_live, _secs(answered, originated) if is_live else None)
        talk = _secs(ended, connected)
        if talk is not None:
            est.talk_ended(talk)
            wrap = _secs(done_at.get(aid), ended)
            if wrap is not None:
                est.wrap_ended(wrap)
    return est


def _dispositions(s: Session, attempt_ids: list[str]) -> dict[str, datetime]:
    """When each attempt was marked done (its disposition case event)."""
    out: dict[str, datetime] = {}
    for i in range(0, len(attempt_ids), 500):
        for aid, at in s.execute(
            select(CaseEvent.attempt_id, CaseEvent.created_at).where(
                CaseEvent.kind == "disposition",
                CaseEvent.attempt_id.in_(attempt_ids[i : i + 500]),
            )
        ):
            if aid is not None:
                out[aid] = at
    return out


def ledger(s: Session, campaign_id: int, today: date, target: float) -> AbandonLedger:
    """Live answers and abandons per UTC day, over the 30 days ending `today`."""
    led = AbandonLedger(target)
    first = datetime.combine(today - timedelta(days=WINDOW_DAYS - 1), time(0), UTC)
    day = func.date(CallAttempt.answered_at)
    abandoned = func.sum(case((CallAttempt.result == CallResult.ABANDONED, 1), else_=0))
    rows = s.execute(
        select(day, func.count(), abandoned)
        .where(
            CallAttempt.campaign_id == campaign_id,
            CallAttempt.answered_at >= first,
            or_(
                CallAttempt.connected_at.is_not(None),
                CallAttempt.result == CallResult.ABANDONED,
            ),
        )
        .group_by(day)
    ).all()
    for d, answered, ab in rows:
        when = d if isinstance(d, date) else date.fromisoformat(str(d))
        led.record(when, answered=int(answered), abandoned=int(ab or 0))
    return led


# ------------------------------------------------------------ the agent for a person


async def pick_agent(
    redis: Any,
    factory: sessionmaker[Session],
    campaign_id: int,
    attempt_id: str,
    *,
    run: Any,
    exclude: frozenset[str] = frozenset(),
) -> str | None:
    """The agent for the person who answered attempt `attempt_id`, written on the attempt;
    None if no member is Ready and free. `run(fn)` runs a blocking database function with
    the caller's deadline (a thread); Redis calls are the caller's async client."""
    members = await run(lambda: _members(factory, campaign_id))
    if not members:
        return None
    pipe = redis.pipeline(transaction=False)
    for agent in members:
        pipe.hgetall(live.agent_key(agent))
    states = [live.decode(h) for h in await pipe.execute()]
    candidates = sorted(
        (float(st.get("ts") or 0), agent)
        for agent, st in zip(members, states, strict=True)
        if agent not in exclude and st.get("session") == "up" and st.get("ready_voice") == "1"
    )
    token = f"attempt:{attempt_id}"
    release = redis.register_script(_RELEASE)
    for _, agent in candidates:
        key = names.key_agent_reservation(agent)
        if not await redis.set(key, token, nx=True, ex=PICK_TTL_S):
            continue  # a progressive tick or another answer has them
        try:
            if await run(lambda agent=agent: _assign(factory, attempt_id, agent)):
                return agent
        finally:
            await release(keys=[key], args=[token])
    return None


def _members(factory: sessionmaker[Session], campaign_id: int) -> list[str]:
    with factory() as s:
        return list(
            s.scalars(
                select(AgentCampaign.agent_id).where(AgentCampaign.campaign_id == campaign_id)
            )
        )


def _assign(factory: sessionmaker[Session], attempt_id: str, agent_id: str) -> bool:
    """Write the agent on the attempt if the agent is free and the attempt still has none
    and is being classified (a hung-up contact needs nobody)."""
    with transaction(factory) as s:
        a = s.get(CallAttempt, attempt_id, with_for_update=True)
        if a is None or a.agent_id is not None or a.state is AttemptState.ENDED:
            return False
        if not agent_is_free(s, agent_id) or has_open_offer(s, agent_id):
            return False  # in a call, in wrap-up, or looking at a record (a callback)
        a.agent_id = agent_id
        a.audit = {**a.audit, "agent_picked": agent_id}
        return True


def unassign(factory: sessionmaker[Session], attempt_id: str, agent_id: str) -> None:
    """The picked agent turned out not to be in their conference (Asterisk said so):
    the attempt is theirs no more (the call is abandoned, not their wrap-up)."""
    with transaction(factory) as s:
        a = s.get(CallAttempt, attempt_id, with_for_update=True)
        if a is not None and a.agent_id == agent_id and a.connected_at is None:
            a.agent_id = None
            a.audit = {**a.audit, "agent_unpicked": agent_id}

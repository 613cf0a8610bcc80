"""Is an agent free for a new call? Read from the attempts (the truth): no live call and no
call waiting for its disposition (wrap-up). Used by every dial mode and by pacing."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..model import AttemptState, CallAttempt

__all__ = ["agent_is_free", "agents_in_wrapup"]


def agent_is_free(session: Session, agent_id: str) -> bool:
    """The agent may be given a new call: no live attempt, and no connected attempt that
    ended without a disposition (wrap-up). Read in the caller's session/transaction."""
    live = session.scalar(
        select(CallAttempt.id)
        .where(CallAttempt.agent_id == agent_id, CallAttempt.state != AttemptState.ENDED)
        .limit(1)
    )
    if live is not None:
        return False
    wrapup = session.scalar(
        select(CallAttempt.id)
        .where(
            CallAttempt.agent_id == agent_id,
            CallAttempt.state == AttemptState.ENDED,
            CallAttempt.connected_at.is_not(None),
            CallAttempt.disposition.is_(None),
        )
        .limit(1)
    )
    return wrapup is None


def agents_in_wrapup(session: Session, campaign_id: int) -> dict[str, datetime]:
    """Agents of the campaign in wrap-up -> since when (their call's end): pacing counts
    them as about to be free."""
    rows = session.execute(
        select(CallAttempt.agent_id, CallAttempt.ended_at, CallAttempt.created_at).where(
            CallAttempt.campaign_id == campaign_id,
            CallAttempt.agent_id.is_not(None),
            CallAttempt.state == AttemptState.ENDED,
            CallAttempt.connected_at.is_not(None),
            CallAttempt.disposition.is_(None),
        )
    ).all()
    out: dict[str, datetime] = {}
    for agent_id, ended, created in rows:
        assert agent_id is not None
        since = ended or created
        if agent_id not in out or since < out[agent_id]:
            out[agent_id] = since
    return out

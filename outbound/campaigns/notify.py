"""Tell agents that a campaign was loaded or started, and list an agent's campaigns.

A load or start is first committed to the database (the truth); only then does anything
reach Redis: one event on the events stream (the status page, the web push) and one
notification in each member agent's own inbox (a capped Redis stream), from which the
agent page pops up "Join" (and "Get record" in preview). A transition that is refused or
rolled back notifies nobody. Redis being down never undoes a committed transition: the
failure is logged and reported in the returned `Delivery`; the inbox is a convenience
that the agent page can rebuild from "My campaigns" (database) at any time.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis as sredis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .. import names
from ..errors import Invalid, NotFound
from ..model import Agent, AgentCampaign, Campaign, DialMode, transaction
from .lifecycle import LifecycleEvent, get_campaign, transition

log = logging.getLogger(__name__)

# Lifecycle event -> notification kind; other events notify nobody.
KINDS = {"load": "campaign_loaded", "start": "campaign_started"}
INBOX_CAP = 50  # notifications kept per agent; older ones are dropped when more arrive
EVENTS_MAXLEN = 100_000  # as the bridge and the features AGI trim the events stream
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


@dataclass(frozen=True)
class CampaignNotice:
    """What to announce, read inside the transaction so it matches what was committed."""

    kind: str
    campaign_id: int
    campaign: str
    mode: DialMode
    description: str
    agent_ids: tuple[str, ...]

    @property
    def actions(self) -> list[str]:
        """Every notification offers "join"; preview also lets the agent fetch a record
        at once (push preview delivers records itself, so it does not)."""
        return ["join", "get_record"] if self.mode is DialMode.PREVIEW else ["join"]


@dataclass(frozen=True)
class Delivery:
    """What reached Redis. `error` is set when Redis failed: then nothing was published
    (the writes go in one MULTI/EXEC) and every member is in `undelivered`."""

    kind: str
    campaign: str
    event_published: bool
    delivered: tuple[str, ...]
    undelivered: tuple[str, ...]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "campaign": self.campaign,
            "event_published": self.event_published,
            "delivered": list(self.delivered),
            "undelivered": list(self.undelivered),
            "error": self.error,
        }


def connect(url: str, timeout_s: float = 2.0) -> sredis.Redis:
    """A client for one-shot use (the CLI): short timeouts and no retries, so a Redis that
    does not answer costs seconds, not minutes."""
    return sredis.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry=None
    )


def notice_for(s: Session, ev: LifecycleEvent) -> CampaignNotice | None:
    """The notice a lifecycle event calls for (None for stop / unload), members included."""
    kind = KINDS.get(ev.event)
    if kind is None or not ev.notify_agents:
        return None
    c = get_campaign(s, ev.campaign_id)
    members = s.scalars(
        select(AgentCampaign.agent_id)
        .where(AgentCampaign.campaign_id == c.id)
        .order_by(AgentCampaign.agent_id)
    ).all()
    return CampaignNotice(kind, c.id, c.name, c.mode, c.description, tuple(members))


def notify(
    redis: Any, notice: CampaignNotice, *, now: datetime | None = None, cap: int = INBOX_CAP
) -> Delivery:
    """Publish the event and fill every member's inbox, all or nothing (MULTI/EXEC).
    Call it only after the transition was committed. Never raises for Redis trouble."""
    at = (now or datetime.now(UTC)).astimezone(UTC)
    event = {
        "event": notice.kind,
        "campaign_id": str(notice.campaign_id),
        "campaign": notice.campaign,
        "mode": notice.mode.value,
        "delivery_mode": notice.mode.delivery,
        "agents": str(len(notice.agent_ids)),
        "ts": str(time.time()),
    }
    item = {
        "kind": notice.kind,
        "campaign_id": str(notice.campaign_id),
        "campaign": notice.campaign,
        "mode": notice.mode.value,
        "delivery_mode": notice.mode.delivery,
        "description": notice.description,
        "actions": json.dumps(notice.actions),
        "at": at.isoformat(),
    }
    try:
        pipe = redis.pipeline(transaction=True)
        pipe.xadd(names.KEY_EVENTS, event, maxlen=EVENTS_MAXLEN, approximate=True)
        for aid in notice.agent_ids:
            pipe.xadd(names.key_agent_inbox(aid), item, maxlen=cap, approximate=False)
        pipe.execute()
    except (sredis.RedisError, OSError) as exc:
        log.warning(
            "%s of campaign %r committed, but agents were not notified: %s",
            notice.kind,
            notice.campaign,
            exc,
        )
        return Delivery(notice.kind, notice.campaign, False, (), notice.agent_ids, str(exc))
    return Delivery(notice.kind, notice.campaign, True, notice.agent_ids, ())


def transition_and_notify(
    factory: sessionmaker[Session], redis: Any, name_or_id: str | int, event: str
) -> tuple[LifecycleEvent, Delivery | None]:
    """Apply a lifecycle event in its own transaction and, once committed, notify the
    members (load / start). A refused transition raises (Conflict, ...) and notifies
    nobody; the Delivery is None for events that notify nobody."""
    with transaction(factory) as s:
        ev = transition(s, name_or_id, event)
        notice = notice_for(s, ev)
    # Leaving the block committed; a failed commit raised before anyone was told.
    return ev, (notify(redis, notice) if notice is not None else None)


def _agent_id(agent_id: str) -> str:
    if not isinstance(agent_id, str) or not 0 < len(agent_id) <= 32 or not agent_id.isprintable():
        raise Invalid(f"agent id {agent_id!r} must be 1-32 printable characters")
    return agent_id


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def inbox(redis: Any, agent_id: str, count: int = INBOX_CAP) -> list[dict[str, Any]]:
    """The agent's own notifications, newest first: id, kind, campaign, actions, at."""
    key = names.key_agent_inbox(_agent_id(agent_id))
    out = []
    for sid, raw in redis.xrevrange(key, count=count):
        f = {_text(k): _text(v) for k, v in raw.items()}
        out.append(
            {
                "id": _text(sid),
                "kind": f.get("kind", ""),
                "campaign_id": int(f.get("campaign_id", 0)),
                "campaign": f.get("campaign", ""),
                "mode": f.get("mode", ""),
                "delivery_mode": f.get("delivery_mode", ""),
                "description": f.get("description", ""),
                "actions": json.loads(f.get("actions", "[]")),
                "at": f.get("at", ""),
            }
        )
    return out


def ack(redis: Any, agent_id: str, notification_id: str) -> bool:
    """Dismiss one of the agent's own notifications; False when it was not there (already
    dismissed, dropped by the cap, or another agent's id)."""
    if not isinstance(notification_id, str) or not _STREAM_ID.match(notification_id):
        raise Invalid(f"{notification_id!r} is not a notification id")
    return bool(redis.xdel(names.key_agent_inbox(_agent_id(agent_id)), notification_id))


def my_campaigns(s: Session, agent_id: str) -> list[dict[str, Any]]:
    """The "My campaigns" list: every campaign the agent belongs to, by name, with its
    status, dial mode, the delivery mode agents see (manual / semi-automatic / automatic)
    and the description."""
    if s.get(Agent, _agent_id(agent_id)) is None:
        raise NotFound(f"no agent {agent_id!r}")
    rows = s.scalars(
        select(Campaign)
        .join(AgentCampaign, AgentCampaign.campaign_id == Campaign.id)
        .where(AgentCampaign.agent_id == agent_id)
        .order_by(Campaign.name)
    ).all()
    return [
        {
            "id": c.id,
            "name": c.name,
            "status": c.state.value,
            "mode": c.mode.value,
            "delivery_mode": c.mode.delivery,
            "description": c.description,
        }
        for c in rows
    ]

"""A campaign world for core tests of the engine: one campaign with its dial queue, its
records (in queue order) and member agents with live state, on a real database and Redis."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import redis
from sqlalchemy.orm import Session, sessionmaker

from outbound import live
from outbound.dial_queue import DialQueue
from outbound.model import AgentCampaign, Contact, transaction, utcnow
from tests.helpers.db import add_agent, add_contact


@dataclass
class World:
    factory: sessionmaker[Session]
    r: redis.Redis
    campaign_id: int
    queue: DialQueue
    contacts: list[int] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)

    def agent(self, ready: bool = True, member: bool = True, preview: bool | None = None) -> str:
        """A logged-in agent: Ready on the voice channel when `ready`, on the outbound
        preview channel when `preview` (default: as `ready`), a campaign member when
        `member`."""
        agent_id = str(random.randrange(10**9, 10**10))
        add_agent(self.factory, agent_id)
        if member:
            with transaction(self.factory) as s:
                s.add(AgentCampaign(agent_id=agent_id, campaign_id=self.campaign_id))
        fields = live.agent_fields("up", ready=ready)
        if preview is not None:
            fields["ready_preview"] = "1" if preview else "0"
        self.r.hset(live.agent_key(agent_id), mapping=fields)
        self.agents.append(agent_id)
        return agent_id

    def contact(self, number: str, name: str = "", **kw: Any) -> int:
        """A record of the campaign; each one older than the next, so queue order is
        creation order."""
        cid = add_contact(self.factory, number, campaign=f"c{self.campaign_id}", **kw)
        with transaction(self.factory) as s:
            c = s.get(Contact, cid)
            assert c is not None
            c.name = name
            c.created_at = utcnow() - timedelta(minutes=10 - len(self.contacts))
        self.contacts.append(cid)
        return cid

    def fill(self) -> None:
        self.queue.rebuild(self.factory, utcnow())

    def row(self, cls: Any, key: Any) -> Any:
        with self.factory() as s:
            return s.get(cls, key)


W = TypeVar("W", bound="World")


def make_world(
    world_cls: type[W],
    factory: sessionmaker[Session],
    r: redis.Redis,
    number: str,
    name: str = "",
    **campaign: Any,
) -> Iterator[W]:
    """A `world_cls` world whose campaign (created with `campaign`'s fields) holds one
    record; the queue and the agents' live state are removed afterwards."""
    cid = random.randrange(10**6, 10**8)
    w = world_cls(factory, r, cid, DialQueue(r, cid))
    w.contact(number, name, id=cid, **campaign)
    try:
        yield w
    finally:
        w.queue.drop()
        for a in w.agents:
            r.delete(live.agent_key(a))

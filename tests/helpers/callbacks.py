"""Callbacks in a real database, a private real Redis, and what the sweep published.

The scheduler's tests run their own `redis-server` (a free loopback port, no
persistence): a FLUSHALL there cannot wipe another test's data in the shared Redis.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, time
from typing import Any

import redis as redis_lib
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from outbound import names
from outbound.model import (
    Callback,
    CallbackState,
    Campaign,
    CampaignState,
    CaseEvent,
    Contact,
    ContactList,
    ContactState,
    DialMode,
    PhoneNumber,
    transaction,
)
from tests.helpers.until import until

ALL_DAY = (time(0, 0), time(23, 59, 59))  # calling hours that hold (almost) all day


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_redis() -> Iterator[str]:
    """A real redis-server of our own on a free loopback port; yields its URL. Our own:
    if the port was taken meanwhile (another process picked it too), our server exits
    and a ping would reach the other one, so that is checked and another port tried."""
    with tempfile.TemporaryDirectory() as d:
        for _ in range(5):
            port = free_port()
            proc = subprocess.Popen(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    d,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            url = f"redis://127.0.0.1:{port}/0"
            client = redis_lib.Redis.from_url(url)
            try:
                until(client.ping, timeout=10, ignore=(redis_lib.ConnectionError,))
                if proc.poll() is None and client.info("server")["process_id"] == proc.pid:
                    break
            except BaseException:
                client.close()
                proc.kill()
                proc.wait(timeout=10)
                raise
            client.close()
            proc.kill()
            proc.wait(timeout=10)
        else:
            raise RuntimeError("could not start a private redis-server on a free port")
        try:
            yield url
        finally:
            client.close()
            proc.terminate()
            proc.wait(timeout=10)


def make_campaign(
    factory: sessionmaker[Session],
    *,
    hours: tuple[time, time] = ALL_DAY,
    max_days: int = 3,
    state: CampaignState = CampaignState.RUNNING,
) -> int:
    with transaction(factory) as s:
        c = Campaign(
            name=f"cb-{uuid.uuid4().hex[:8]}",
            mode=DialMode.PROGRESSIVE,
            state=state,
            calling_hours_start=hours[0],
            calling_hours_end=hours[1],
            callback_max_days=max_days,
        )
        s.add(c)
        s.flush()
        s.add(ContactList(campaign_id=c.id, name="l"))
        return c.id


def add_contact(
    factory: sessionmaker[Session], campaign_id: int, zone: str | None, number: str
) -> int:
    """A contact waiting for a callback (state CALLBACK) with one number."""
    with transaction(factory) as s:
        lst = s.scalar(select(ContactList.id).where(ContactList.campaign_id == campaign_id))
        ct = Contact(
            campaign_id=campaign_id,
            list_id=lst,
            external_key=uuid.uuid4().hex,
            timezone=zone,
            state=ContactState.CALLBACK,
            attempts=1,
        )
        s.add(ct)
        s.flush()
        s.add(PhoneNumber(contact_id=ct.id, e164=number))
        return ct.id


def add_callback(
    factory: sessionmaker[Session],
    campaign_id: int,
    contact_id: int,
    due_at: datetime,
    *,
    window: tuple[time, time] | None = None,
    new_number: str | None = None,
) -> int:
    with transaction(factory) as s:
        cb = Callback(
            campaign_id=campaign_id,
            contact_id=contact_id,
            due_at=due_at,
            new_number=new_number,
            window_start=window[0] if window else None,
            window_end=window[1] if window else None,
        )
        s.add(cb)
        s.flush()
        return cb.id


def bulk_callbacks(
    factory: sessionmaker[Session], campaign_id: int, zone: str, dues: list[datetime]
) -> list[int]:
    """One contact and one callback per due time, inserted in bulk (fast for thousands)."""
    with transaction(factory) as s:
        lst = s.scalar(select(ContactList.id).where(ContactList.campaign_id == campaign_id))
        contacts = [
            Contact(
                campaign_id=campaign_id,
                list_id=lst,
                external_key=uuid.uuid4().hex,
                timezone=zone,
                state=ContactState.CALLBACK,
                attempts=1,
            )
            for _ in dues
        ]
        s.add_all(contacts)
        s.flush()
        s.add_all(PhoneNumber(contact_id=c.id, e164=f"+1555{c.id:07d}") for c in contacts)
        cbs = [
            Callback(campaign_id=campaign_id, contact_id=c.id, due_at=d)
            for c, d in zip(contacts, dues, strict=True)
        ]
        s.add_all(cbs)
        s.flush()
        return [cb.id for cb in cbs]


def callback(factory: sessionmaker[Session], cb_id: int) -> Callback:
    with factory() as s:
        cb = s.get(Callback, cb_id)
        assert cb is not None
        return cb


def states(factory: sessionmaker[Session], ids: list[int]) -> Counter[CallbackState]:
    with factory() as s:
        return Counter(s.scalars(select(Callback.state).where(Callback.id.in_(ids))).all())


def case_counts(factory: sessionmaker[Session], kind: str) -> Counter[int]:
    """callback id -> how many case events of `kind` name it."""
    with factory() as s:
        rows = s.scalars(select(CaseEvent.data).where(CaseEvent.kind == kind)).all()
    return Counter(int(d["callback_id"]) for d in rows)


def queued_count(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        q = select(func.count()).where(Callback.state == CallbackState.QUEUED)
        return int(s.scalar(q) or 0)


def due_events(r: Any) -> Counter[int]:
    """callback id -> how many callback_due events the stream holds for it."""
    out: Counter[int] = Counter()
    for _sid, raw in r.xrange(names.KEY_EVENTS):
        ev = {k.decode(): v.decode() for k, v in raw.items()}
        if ev.get("event") == "callback_due":
            out[int(ev["callback_id"])] += 1
    return out


def queue_members(r: Any, campaign_id: int) -> set[int]:
    return {int(m) for m in r.zrange(names.key_callback_queue(campaign_id), 0, -1)}

"""Campaign load / start notifications and "My campaigns", on real Redis and a real
database (SQLite and PostgreSQL). Redis db 10 is this file's; every key it writes is
unique to the test (agent ids and campaign names carry a random suffix) and removed after.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis as sredis
from click.testing import CliRunner
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from outbound import names
from outbound.campaigns.lifecycle import create_campaign, get_campaign
from outbound.campaigns.notify import (
    ack,
    connect,
    inbox,
    my_campaigns,
    notice_for,
    notify,
    transition_and_notify,
)
from outbound.cli import main
from outbound.errors import Conflict, Invalid, NotFound
from outbound.model import (
    Agent,
    CampaignState,
    transaction,
)
from tests.helpers.db import add_agent
from tests.helpers.redis_url import redis_url

REDIS_URL = redis_url(10)


class World:
    """Agents and campaigns with random names, and the Redis keys they may have touched."""

    def __init__(self, factory: sessionmaker[Session], r: sredis.Redis) -> None:
        self.factory = factory
        self.r: Any = r  # bytes replies (no decode_responses), like the runtimes
        self.tag = uuid.uuid4().hex[:8]
        self.agents: list[str] = []
        self.campaigns: list[str] = []

    def agent(self, n: str) -> str:
        aid = f"{n}-{self.tag}"
        self.agents.append(add_agent(self.factory, aid))
        return aid

    def campaign(self, mode: str, members: list[str], description: str = "") -> str:
        name = f"c{len(self.campaigns)}-{self.tag}"
        with transaction(self.factory) as s:
            c = create_campaign(s, name, mode, description=description)
            for aid in members:
                agent = s.get_one(Agent, aid)
                agent.campaigns.append(c)
        self.campaigns.append(name)
        return name

    def events(self) -> list[dict[str, str]]:
        """Events on the shared stream about this test's campaigns."""
        out = []
        for _sid, raw in self.r.xrange(names.KEY_EVENTS):
            f = {k.decode(): v.decode() for k, v in raw.items()}
            if f.get("campaign") in self.campaigns:
                out.append(f)
        return out

    def state(self, name: str) -> CampaignState:
        with transaction(self.factory) as s:
            return get_campaign(s, name).state

    def cleanup(self) -> None:
        for aid in self.agents:
            self.r.delete(names.key_agent_inbox(aid))
        for sid, raw in self.r.xrange(names.KEY_EVENTS):
            if raw.get(b"campaign", b"").decode() in self.campaigns:
                self.r.xdel(names.KEY_EVENTS, sid)
        if self.r.xlen(names.KEY_EVENTS) == 0:  # nobody else's events in there
            self.r.delete(names.KEY_EVENTS)


@pytest.fixture
def world(factory: sessionmaker[Session]) -> Iterator[World]:
    r = sredis.Redis.from_url(REDIS_URL)
    w = World(factory, r)
    yield w
    w.cleanup()
    r.close()


@pytest.fixture
def dead_redis_url() -> str:
    """A port nobody listens on: bound, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def kinds(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(i["kind"], i["campaign"]) for i in items]


def test_given_members_when_loaded_and_started_then_each_member_and_nobody_else_is_notified(
    world: World,
) -> None:
    a, b, outsider = world.agent("a"), world.agent("b"), world.agent("o")
    camp = world.campaign("progressive", [a, b])
    other = world.campaign("preview", [outsider])

    ev, sent = transition_and_notify(world.factory, world.r, camp, "load")
    assert ev.new is CampaignState.LOADED
    assert sent is not None and sent.ok and sent.event_published
    assert sorted(sent.delivered) == sorted([a, b]) and sent.undelivered == ()
    _, sent2 = transition_and_notify(world.factory, world.r, camp, "start")
    assert sent2 is not None and sent2.ok

    for aid in (a, b):
        got = inbox(world.r, aid)
        assert kinds(got) == [("campaign_started", camp), ("campaign_loaded", camp)]  # newest 1st
        assert all(n["actions"] == ["join"] for n in got)
        assert all(n["delivery_mode"] == "automatic" and n["mode"] == "progressive" for n in got)
        assert all(n["at"].endswith("+00:00") and n["id"] for n in got)
    assert inbox(world.r, outsider) == []
    assert [(e["event"], e["campaign"], e["agents"]) for e in world.events()] == [
        ("campaign_loaded", camp, "2"),
        ("campaign_started", camp, "2"),
    ]
    assert other not in {e["campaign"] for e in world.events()}


def test_given_a_preview_campaign_when_started_then_join_and_get_record_are_offered(
    world: World,
) -> None:
    a = world.agent("a")
    camp = world.campaign("preview", [a], description="Spring offer")
    transition_and_notify(world.factory, world.r, camp, "load")
    (n,) = inbox(world.r, a)
    assert n["actions"] == ["join", "get_record"]
    assert (n["delivery_mode"], n["description"]) == ("manual", "Spring offer")


def test_given_stop_and_unload_when_applied_then_nobody_is_notified(world: World) -> None:
    a = world.agent("a")
    camp = world.campaign("push_preview", [a])
    transition_and_notify(world.factory, world.r, camp, "load")
    transition_and_notify(world.factory, world.r, camp, "start")
    before = inbox(world.r, a)
    for ev in ("stop", "unload"):
        _, sent = transition_and_notify(world.factory, world.r, camp, ev)
        assert sent is None
    assert inbox(world.r, a) == before
    assert len(world.events()) == 2


def test_given_a_refused_transition_when_attempted_then_nobody_is_notified(world: World) -> None:
    a = world.agent("a")
    camp = world.campaign("progressive", [a])
    with pytest.raises(Conflict):
        transition_and_notify(world.factory, world.r, camp, "start")  # created: not loadable
    assert world.state(camp) is CampaignState.CREATED
    assert inbox(world.r, a) == [] and world.events() == []


def test_given_a_commit_that_fails_when_loading_then_nothing_changes_and_nobody_is_notified(
    world: World,
) -> None:
    a = world.agent("a")
    camp = world.campaign("progressive", [a])

    def refuse(_session: Session) -> None:
        raise RuntimeError("commit refused")

    event.listen(world.factory, "before_commit", refuse)
    try:
        with pytest.raises(RuntimeError, match="commit refused"):
            transition_and_notify(world.factory, world.r, camp, "load")
    finally:
        event.remove(world.factory, "before_commit", refuse)
    assert world.state(camp) is CampaignState.CREATED
    assert inbox(world.r, a) == [] and world.events() == []


def test_given_a_notification_when_acked_then_it_is_gone_for_that_agent_only(
    world: World,
) -> None:
    a, b = world.agent("a"), world.agent("b")
    camp = world.campaign("progressive", [a, b])
    transition_and_notify(world.factory, world.r, camp, "load")
    (na,) = inbox(world.r, a)

    assert ack(world.r, a, na["id"]) is True
    assert inbox(world.r, a) == []
    assert ack(world.r, a, na["id"]) is False  # already dismissed
    assert kinds(inbox(world.r, b)) == [("campaign_loaded", camp)]  # b's own copy stays


def test_given_bad_ids_when_reading_or_acking_then_invalid(world: World) -> None:
    with pytest.raises(Invalid):
        ack(world.r, "a", "*")
    with pytest.raises(Invalid):
        inbox(world.r, "")
    with pytest.raises(Invalid):
        ack(world.r, "x" * 33, "1-0")


def test_given_more_notifications_than_the_cap_when_read_then_only_the_newest_are_kept(
    world: World,
) -> None:
    a = world.agent("a")
    camp = world.campaign("progressive", [a])
    ev, _ = transition_and_notify(world.factory, world.r, camp, "load")
    with transaction(world.factory) as s:
        notice = notice_for(s, ev)
    assert notice is not None
    for _ in range(6):
        assert notify(world.r, notice, cap=3).ok
    assert world.r.xlen(names.key_agent_inbox(a)) == 3
    assert len(inbox(world.r, a)) == 3


def test_given_redis_down_when_started_then_the_transition_stands_and_the_error_is_reported(
    world: World, dead_redis_url: str
) -> None:
    a = world.agent("a")
    camp = world.campaign("progressive", [a])
    dead = connect(dead_redis_url, timeout_s=0.5)
    ev, sent = transition_and_notify(world.factory, dead, camp, "load")
    assert ev.new is CampaignState.LOADED and world.state(camp) is CampaignState.LOADED
    assert sent is not None and not sent.ok and sent.error
    assert (sent.event_published, sent.delivered, sent.undelivered) == (False, (), (a,))
    assert inbox(world.r, a) == []


def test_given_an_agent_in_some_campaigns_when_listing_my_campaigns_then_those_with_modes(
    world: World,
) -> None:
    a, b = world.agent("a"), world.agent("b")
    c_prev = world.campaign("preview", [a], description="manual one")
    c_push = world.campaign("push_preview", [a, b])
    c_pred = world.campaign("predictive", [a])
    world.campaign("progressive", [b])  # a is not a member
    transition_and_notify(world.factory, world.r, c_pred, "load")
    with transaction(world.factory) as s:
        got = my_campaigns(s, a)
        assert [
            (r["name"], r["status"], r["mode"], r["delivery_mode"], r["description"]) for r in got
        ] == [
            (c_prev, "created", "preview", "manual", "manual one"),
            (c_push, "created", "push_preview", "semi-automatic", ""),
            (c_pred, "loaded", "predictive", "automatic", ""),
        ]
        assert my_campaigns(s, world.agent("lonely")) == []
        with pytest.raises(NotFound):
            my_campaigns(s, "nobody-" + world.tag)


def _cli(db_url: str, redis_url: str, *args: str) -> Any:
    return CliRunner().invoke(
        main,
        ["--set", f"database.url={db_url}", "--set", f"redis.url={redis_url}", *args],
        catch_exceptions=False,
    )


def test_given_the_cli_when_campaign_start_then_a_member_finds_it_in_the_inbox(
    world: World, db_url: str
) -> None:
    a, outsider = world.agent("a"), world.agent("o")
    camp = world.campaign("preview", [a])
    assert _cli(db_url, REDIS_URL, "campaign", "load", camp).exit_code == 0
    r = _cli(db_url, REDIS_URL, "campaign", "start", camp)
    assert r.exit_code == 0, r.output
    assert "notified 1 member agent(s)" in r.output
    assert kinds(inbox(world.r, a)) == [("campaign_started", camp), ("campaign_loaded", camp)]
    assert inbox(world.r, a)[0]["actions"] == ["join", "get_record"]
    assert inbox(world.r, outsider) == []


def test_given_redis_down_when_cli_loads_then_it_says_so_and_the_campaign_is_loaded(
    world: World, db_url: str, dead_redis_url: str
) -> None:
    a = world.agent("a")
    camp = world.campaign("progressive", [a])
    r = _cli(db_url, dead_redis_url, "campaign", "load", camp, "--json")
    assert r.exit_code == 0, r.output
    assert '"event_published": false' in r.output and f'"{a}"' in r.output
    assert world.state(camp) is CampaignState.LOADED
    r = _cli(db_url, dead_redis_url, "campaign", "start", camp)
    assert r.exit_code == 0
    assert "agents NOT notified" in r.output
    assert world.state(camp) is CampaignState.RUNNING

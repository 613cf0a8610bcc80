"""Desk-phone log-in rules: which phone a channel is, the PIN check, and the wrong-PIN
lockout (PinGuard, on the real local Redis, its own db and keys)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aredis

from outbound import names
from outbound.agents import PinGuard, PinPolicy, add_agent, phone_of, verify_pin
from outbound.config import ConfigError, load_config
from outbound.model import make_engine, session_factory, transaction, upgrade
from tests.helpers.redis_url import redis_url

REDIS_URL = redis_url(14)


@pytest.fixture
async def redis() -> AsyncIterator[aredis.Redis]:
    r = aredis.Redis.from_url(REDIS_URL)
    yield r
    await r.aclose()


def _ids() -> tuple[str, str]:
    n = uuid.uuid4().int
    return str(10_000 + n % 89_999), f"PJSIP/t{n % 10**9}"


@pytest.mark.parametrize(
    ("channel", "phone"),
    [
        ("PJSIP/1001-0000002a", "PJSIP/1001"),
        ("PJSIP/desk-12-0000002a", "PJSIP/desk-12"),
        ("Local/1001@sim-deskphone-0000002a;1", "Local/1001@sim-deskphone"),
        ("PJSIP/1001", None),  # no call suffix: not a channel name
        ("PJSIP/10 01-0000002a", None),
        ("", None),
        ("Local/1001@x-0000002a;1\n", None),
    ],
)
def test_given_a_channel_name_when_phone_of_then_its_device_or_none(
    channel: str, phone: str | None
) -> None:
    assert phone_of(channel) == phone


def test_given_an_agent_with_a_pin_when_verifying_then_only_the_right_pin_passes(
    tmp_path: Path,
) -> None:
    e = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    upgrade(e)
    f = session_factory(e)
    with transaction(f) as s:
        add_agent(s, "4711", "Ann", "PJSIP/1001", pin="0123")
        add_agent(s, "4712", "Bob", "PJSIP/1002")  # no PIN: cannot log in by phone
    with f() as s:
        assert verify_pin(s, "4711", "0123") == (True, True)
        assert verify_pin(s, "4711", "123") == (True, False)  # a leading 0 counts
        assert verify_pin(s, "4711", "0124") == (True, False)
        assert verify_pin(s, "4712", "") == (True, False)
        assert verify_pin(s, "9999", "0123") == (False, False)
        assert verify_pin(s, "47a1", "0123") == (False, False)


async def test_given_three_wrong_pins_then_only_that_agent_on_that_phone_is_locked(
    redis: aredis.Redis,
) -> None:
    agent, phone = _ids()
    g = PinGuard(redis, PinPolicy(attempts=3, lockout_s=120, attempts_global=10))
    assert await g.failed(agent, phone) == []
    assert await g.failed(agent, phone) == []
    assert await g.locked_for(agent, phone) == 0
    assert await g.failed(agent, phone) == ["pair"]
    left = await g.locked_for(agent, phone)
    assert 110 <= left <= 120
    assert 110 <= await redis.ttl(names.key_pin_lock("pair", f"{agent}@{phone}")) <= 120
    assert await redis.exists(names.key_pin_lock("agent", agent)) == 0
    # The count is spent by the lock; a right PIN does not lift the lock.
    assert await redis.exists(names.key_pin_failures("pair", f"{agent}@{phone}")) == 0
    await g.succeeded(agent, phone)
    assert await g.locked_for(agent, phone) > 0
    # Nobody else is locked out: the agent from another phone, a colleague on this phone.
    other_agent, other_phone = _ids()
    assert await g.locked_for(agent, other_phone) == 0
    assert await g.locked_for(other_agent, phone) == 0


async def test_given_wrong_pins_from_many_phones_then_the_id_locks_at_the_global_count(
    redis: aredis.Redis,
) -> None:
    agent, phone = _ids()
    g = PinGuard(redis, PinPolicy(attempts=3, lockout_s=120, attempts_global=7))
    locked: list[str] = []
    for n in range(7):  # 2 + 2 + 2 + 1 from four phones: no pair reaches 3
        locked += await g.failed(agent, f"{phone}-{n // 2}")
    assert locked == ["agent"]
    assert 110 <= await redis.ttl(names.key_pin_lock("agent", agent)) <= 120
    # Now refused from every phone, a fresh one too.
    _, fresh = _ids()
    assert await g.locked_for(agent, fresh) > 0


async def test_given_many_ids_tried_from_one_phone_then_the_phone_locks_at_the_global_count(
    redis: aredis.Redis,
) -> None:
    _, phone = _ids()
    g = PinGuard(redis, PinPolicy(attempts=2, lockout_s=60, attempts_global=4))
    agents = [_ids()[0] for _ in range(4)]
    results = [await g.failed(a, phone) for a in agents]
    assert results == [[], [], [], ["phone"]]
    assert await g.locked_for(_ids()[0], phone) > 0


async def test_given_a_right_pin_then_the_global_counts_are_not_reset(
    redis: aredis.Redis,
) -> None:
    agent, phone = _ids()
    g = PinGuard(redis, PinPolicy(attempts=3, lockout_s=60, attempts_global=4))
    for n in range(3):
        await g.failed(agent, f"{phone}-{n}")
    await g.succeeded(agent, f"{phone}-0")  # the agent logs in somewhere meanwhile
    assert await g.failed(agent, f"{phone}-9") == ["agent"]


async def test_given_a_right_pin_between_wrong_ones_then_the_count_starts_again(
    redis: aredis.Redis,
) -> None:
    agent, phone = _ids()
    g = PinGuard(redis, PinPolicy(attempts=3, lockout_s=60))
    await g.failed(agent, phone)
    await g.failed(agent, phone)
    await g.succeeded(agent, phone)
    assert await g.failed(agent, phone) == []
    assert await g.failed(agent, phone) == []
    assert await g.locked_for(agent, phone) == 0


async def test_given_unknown_ids_then_only_the_phone_counts_and_locks(
    redis: aredis.Redis,
) -> None:
    _, phone = _ids()
    g = PinGuard(redis, PinPolicy(attempts=1, lockout_s=60, attempts_global=2))
    assert await g.failed(None, phone) == []
    assert await g.failed(None, phone) == ["phone"]
    assert await g.locked_for(None, phone) > 0


async def test_given_a_short_lockout_when_it_expires_then_login_is_allowed_again(
    redis: aredis.Redis,
) -> None:
    agent, phone = _ids()
    g = PinGuard(redis, PinPolicy(attempts=1, lockout_s=1, attempts_global=1))
    assert await g.failed(agent, phone) == ["pair", "agent", "phone"]
    assert await g.locked_for(agent, phone) == 1
    await asyncio.sleep(1.3)  # Redis expires the lock itself: this waits for the TTL
    assert await g.locked_for(agent, phone) == 0


async def test_given_concurrent_wrong_pins_then_exactly_one_of_them_locks(
    redis: aredis.Redis,
) -> None:
    agent, phone = _ids()
    g = PinGuard(redis, PinPolicy(attempts=3, lockout_s=60, attempts_global=3))
    results = await asyncio.gather(*(g.failed(agent, f"{phone}{i}") for i in range(3)))
    assert sum("agent" in r for r in results) == 1


def test_given_agents_settings_then_parsed_and_bad_values_named(tmp_path: Path) -> None:
    cfg = load_config(env={}, cwd=tmp_path)
    assert cfg.get("agents", "pin_attempts") == 3 and cfg.get("agents", "pin_lockout") == 300
    cfg = load_config(env={"OUTBOUND_AGENTS_PIN_LOCKOUT": "900"}, cwd=tmp_path)
    assert cfg.get("agents", "pin_lockout") == 900
    with pytest.raises(ConfigError, match=r"\[agents\] pin_attempts = '0'"):
        load_config(env={}, cwd=tmp_path, overrides={"agents.pin_attempts": "0"})
    assert cfg.get("agents", "pin_attempts_global") == 10
    with pytest.raises(ConfigError, match=r"pin_attempts_global = 4 must not be below"):
        load_config(
            env={"OUTBOUND_AGENTS_PIN_ATTEMPTS_GLOBAL": "4"},
            cwd=tmp_path,
            overrides={"agents.pin_attempts": "5"},
        )

"""The demo's world: a predictive campaign, its member agents on simulated desk phones,
and a few hundred simulated contacts with a realistic mix of what happens when they are
called (written into the sandbox's AstDB, where its dialplan reads it per number)."""

from __future__ import annotations

import csv
import random
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .. import live, names
from ..agents import add_agent, set_password
from ..campaigns.lifecycle import create_campaign, transition
from ..contacts_import import import_contacts
from ..dial_queue import DialQueue
from ..model import Agent, Campaign, CampaignState, transaction
from ..sandbox import SandboxInfo, daytime_zone

AGENT_BASE = 9100  # demo-1 is agent (and simulated phone) 9101, demo-2 9102, ...
DISPOSITIONS = ["sale", "no-interest", "call-back", "wrong-person"]

# What a called number does (a scenario of the sandbox's sim-scenario context), and how
# often. People answer after 1-6 rings and talk; machines greet; some never answer.
MIX: list[tuple[str, float]] = [
    ("human_talk", 0.46),
    ("machine_late", 0.18),
    ("noanswer", 0.12),
    ("busy", 0.12),
    ("congestion", 0.04),
    ("hangup", 0.03),
    ("hangup_greeting", 0.05),
]


@dataclass(frozen=True)
class Contact:
    number: str
    scenario: str
    ring_s: int
    stay_s: int  # how long a person stays on the line after "hello"


def agent_ids(n: int) -> list[str]:
    return [str(AGENT_BASE + i) for i in range(1, n + 1)]


def make_contacts(n: int, talk: tuple[int, int], rng: random.Random) -> list[Contact]:
    """`n` contacts with unique numbers (so AstDB's counters are this run's). Most people
    stay longer than the agent talks (the agent ends the call); one in six hangs up
    while talking."""
    scenarios, weights = zip(*MIX, strict=True)
    prefix = rng.randrange(100, 1000)
    out = []
    for i in range(n):
        sc = rng.choices(scenarios, weights)[0]
        stay = talk[1] + 30 if rng.random() > 1 / 6 else rng.randint(max(2, talk[0]), talk[1])
        out.append(Contact(f"+4930{prefix}{i:06d}", sc, rng.randint(1, 6), stay))
    return out


def create_world(
    factory: sessionmaker[Session],
    agents: int,
    contacts: list[Contact],
    workdir: Path,
    abandon_target: float = 0.1,
) -> int:
    """A new running predictive campaign (earlier demo campaigns still running, from an
    interrupted run, are stopped so the dialer leaves them), its member agents created
    as `outbound agent add` would, and the contacts imported from a CSV as an admin's
    list. Returns the campaign id."""
    name = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with transaction(factory) as s:
        for old in s.scalars(select(Campaign).where(Campaign.name.like("demo-%"))):
            if old.state is CampaignState.RUNNING:
                transition(s, old.id, "stop")
        camp = create_campaign(
            s,
            name,
            "predictive",
            description="sandbox demo: simulated contacts and agents",
            dispositions=DISPOSITIONS,
            max_attempts=1,  # one call per contact: a clean count against the CDR
            abandon_target=abandon_target,
        )
        camp.callback_grace_s = 0  # a fired callback goes to whoever is free
        for i, aid in enumerate(agent_ids(agents), start=1):
            a = s.get(Agent, aid)
            if a is None:
                a = add_agent(s, aid, f"demo-{i}", f"Local/{aid}@sim-phones")
            a.extension = f"Local/{aid}@sim-phones"
            a.campaigns.append(camp)  # the dialer serves a campaign's member agents
        camp_id = camp.id
    path = workdir / "contacts.csv"
    zone = daytime_zone()  # calling hours allow dialing there now, at any hour here
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "name", "phone", "timezone"])
        for i, c in enumerate(contacts):
            w.writerow([f"{name}-{i}", f"Contact {i} ({c.scenario})", c.number, zone])
    import_contacts(factory, camp_id, path, default_region="DE", list_name=name)
    with transaction(factory) as s:
        transition(s, camp_id, "load")
        transition(s, camp_id, "start")
    return camp_id


def write_scenarios(info: SandboxInfo, contacts: list[Contact], timeout: float = 30) -> None:
    """DB(simscenario|simring|simtalk/<number>) for every contact, through the sandbox's
    admin AMI account (DBPut, one connection, events off)."""
    with socket.create_connection((info.ami_host, info.ami_port), timeout=timeout) as sock:
        f = sock.makefile("rwb")

        def action(fields: dict[str, str]) -> None:
            f.write(b"".join(f"{k}: {v}\r\n".encode() for k, v in fields.items()) + b"\r\n")

        def response() -> dict[str, str]:
            block: dict[str, str] = {}
            while True:
                line = f.readline()
                if not line:
                    raise ConnectionError("AMI closed the connection")
                text = line.decode(errors="replace").rstrip("\r\n")
                if not text:
                    if "Response" in block:
                        return block
                    block = {}
                    continue
                k, _, v = text.partition(":")
                block[k.strip()] = v.strip()

        f.readline()  # the banner
        action(
            {
                "Action": "Login",
                "Username": info.admin_ami_user,
                "Secret": info.admin_ami_secret,
                "Events": "off",
            }
        )
        f.flush()
        if response().get("Response") != "Success":
            raise ConnectionError("the sandbox's admin AMI account refused the log-in")
        puts = 0
        for c in contacts:
            for family, value in (
                ("simscenario", c.scenario),
                ("simring", str(c.ring_s)),
                ("simtalk", str(c.stay_s)),
            ):
                action({"Action": "DBPut", "Family": family, "Key": c.number, "Val": value})
                puts += 1
        f.flush()
        for _ in range(puts):
            got = response()
            if got.get("Response") != "Success":
                raise ConnectionError(f"AMI DBPut failed: {got.get('Message')}")
        action({"Action": "Logoff"})
        f.flush()


def forget(redis: Any, campaign_id: int, agents: list[str], server: str) -> None:
    """Drop what the demo's campaign, agents and bridge keep in Redis: campaign ids start
    at 1 in every new database, so a shared Redis may hold an earlier run's queue under
    the same keys; and a run leaves nothing behind."""
    keys = [*DialQueue(redis, campaign_id).all_keys(), names.key_commands(server)]
    keys += [names.key_callback_queue(campaign_id), names.key_callback_queue_built(campaign_id)]
    for a in agents:
        keys += [live.agent_key(a), names.key_agent_reservation(a), names.key_agent_inbox(a)]
    redis.delete(*keys)


SUPERVISOR = "9100"


def supervisor_login(factory: sessionmaker[Session]) -> tuple[str, str]:
    """A supervisor account for the status page's dashboard, with a new random password
    each run (shown in the terminal only): (id, password)."""
    password = secrets.token_urlsafe(9)
    with transaction(factory) as s:
        if s.get(Agent, SUPERVISOR) is None:
            add_agent(
                s,
                SUPERVISOR,
                "demo supervisor",
                f"Local/{SUPERVISOR}@sim-phones",
                password=password,
                role="supervisor",
            )
        else:
            set_password(s, SUPERVISOR, password, None)
    return SUPERVISOR, password

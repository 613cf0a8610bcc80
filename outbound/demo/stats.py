"""What the demo shows: the campaign's figures read from the database (its attempt rows,
callbacks and the agents' dispositions; a few cheap queries, twice a second), and at the
end the same calls counted in Asterisk's own CDR (Master.csv), to show that both agree."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ..model import AttemptState, CallAttempt, Callback, CallbackState, CallResult, CaseEvent

CDR_DISPOSITION = 14  # Master.csv columns: see asterisk_conf/sandbox/cdr.conf


@dataclass
class Snapshot:
    """The campaign at one instant (this run's attempts only)."""

    ids: set[str] = field(default_factory=set)
    placed: int = 0
    ringing: int = 0
    live: int = 0  # not ended yet
    answered: int = 0
    human: int = 0
    machine: int = 0
    connected: int = 0
    abandoned: int = 0
    machine_hung_up: int = 0
    results: Counter[str] = field(default_factory=Counter)
    callbacks_scheduled: int = 0
    callbacks_fired: int = 0
    busy_s: float = 0.0  # agents' talk + wrap-up time

    @property
    def abandon_pct(self) -> float:
        """Abandoned share of the answered people (the rate the pacer keeps under target)."""
        people = self.connected + self.abandoned
        return 100.0 * self.abandoned / people if people else 0.0


def snapshot(factory: sessionmaker[Session], campaign_id: int, now: datetime) -> Snapshot:
    """Every campaign of the demo is new: all its attempts are this run's."""
    sn = Snapshot()
    with factory() as s:
        rows = s.execute(
            select(
                CallAttempt.id,
                CallAttempt.state,
                CallAttempt.result,
                CallAttempt.amd_status,
                CallAttempt.answered_at,
                CallAttempt.connected_at,
            ).where(CallAttempt.campaign_id == campaign_id)
        ).all()
        done_at = dict(
            s.execute(
                select(CaseEvent.attempt_id, CaseEvent.created_at)
                .join(CallAttempt, CallAttempt.id == CaseEvent.attempt_id)
                .where(
                    CallAttempt.campaign_id == campaign_id,
                    CaseEvent.kind == "disposition",
                )
            ).all()
        )
        cbs = s.scalars(select(Callback.state).where(Callback.campaign_id == campaign_id)).all()
    for aid, state, result, amd, answered, connected in rows:
        sn.ids.add(aid)
        sn.placed += 1
        sn.ringing += state in (AttemptState.ORIGINATING, AttemptState.RINGING)
        sn.live += state is not AttemptState.ENDED
        sn.answered += answered is not None
        sn.human += amd == "HUMAN" or connected is not None
        sn.machine += amd == "MACHINE"
        sn.connected += connected is not None
        sn.abandoned += result is CallResult.ABANDONED
        sn.machine_hung_up += result is CallResult.ANSWERING_MACHINE
        if state is AttemptState.ENDED:
            sn.results[result.value if result else "unsettled"] += 1
        if connected is not None:
            until = done_at.get(aid) or now
            sn.busy_s += max(0.0, (until - connected).total_seconds())
    sn.callbacks_scheduled = len(cbs)
    sn.callbacks_fired = sum(st in (CallbackState.QUEUED, CallbackState.DONE) for st in cbs)
    return sn


def utilisation(sn: Snapshot, agents: int, logged_in_s: float) -> float:
    """Talk + wrap-up share of the agents' logged-in time, in percent."""
    total = agents * logged_in_s
    return min(100.0, 100.0 * sn.busy_s / total) if total > 0 else 0.0


@dataclass(frozen=True)
class Cdr:
    placed: int  # attempt ids with a CDR row
    answered: int  # attempt ids with an ANSWERED row


def read_cdr(path: Path, ids: set[str]) -> Cdr:
    """The attempts Asterisk recorded: rows whose first column (accountcode, set by the
    product's dialplan to the attempt id) is one of `ids`."""
    placed: set[str] = set()
    answered: set[str] = set()
    if path.exists():
        with path.open(newline="", errors="replace") as fh:
            for row in csv.reader(fh):
                if row and row[0] in ids:
                    placed.add(row[0])
                    if len(row) > CDR_DISPOSITION and row[CDR_DISPOSITION] == "ANSWERED":
                        answered.add(row[0])
    return Cdr(len(placed), len(answered))


def _mmss(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 60}:{s % 60:02d}"


def progress_table(
    sn: Snapshot, *, agents: int, elapsed: float, remaining: float, logged_in_s: float
) -> Table:
    t = Table(title="outbound demo: predictive campaign on the sandbox Asterisk", min_width=60)
    t.add_column("")
    t.add_column("now", justify="right")
    rows = [
        ("calls placed", sn.placed),
        ("ringing", sn.ringing),
        ("answered", sn.answered),
        ("human / machine", f"{sn.human} / {sn.machine}"),
        ("connected to an agent", sn.connected),
        ("abandoned", f"{sn.abandoned} ({sn.abandon_pct:.1f}%)"),
        ("callbacks scheduled / fired", f"{sn.callbacks_scheduled} / {sn.callbacks_fired}"),
        ("agents' utilisation", f"{utilisation(sn, agents, logged_in_s):.0f}%"),
        ("elapsed / remaining", f"{_mmss(elapsed)} / {_mmss(remaining)}"),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    return t


def summary_table(sn: Snapshot, cdr: Cdr, *, agents: int, logged_in_s: float) -> Table:
    """The end of the run. The first four rows are what a test compares."""
    t = Table(title="demo summary: database and Asterisk's CDR", min_width=50)
    t.add_column("what")
    t.add_column("calls", justify="right")
    t.add_row("placed (database)", str(sn.placed))
    t.add_row("placed (Asterisk CDR)", str(cdr.placed))
    t.add_row("answered (database)", str(sn.answered))
    t.add_row("answered (Asterisk CDR)", str(cdr.answered))
    t.add_section()
    for k, v in sorted(sn.results.items()):
        t.add_row(f"result {k}", str(v))
    t.add_section()
    t.add_row("humans connected", str(sn.connected))
    t.add_row("machine hung up", str(sn.machine_hung_up))
    t.add_row("abandoned", f"{sn.abandoned} ({sn.abandon_pct:.1f}%)")
    t.add_row("callbacks scheduled", str(sn.callbacks_scheduled))
    t.add_row("callbacks fired", str(sn.callbacks_fired))
    t.add_row("agents' utilisation", f"{utilisation(sn, agents, logged_in_s):.0f}%")
    return t

"""Classification feedback and AMD error rates.

Asterisk's AMD is tuned by timing parameters per campaign (outbound.campaigns.amd), and
the only way to tune them from evidence is to know how often it is wrong. Two people can
tell: the agent a call was connected to ("this was really a machine": a false human), and
a supervisor reviewing calls AMD classified as machine ("this was a person": a false
machine; or confirming / overruling an agent's flag). Their verdicts are stored beside
the AMD decision on the attempt and never change it, so the decision and its correction
can always be compared.

Pure helpers (verdict arithmetic, rates, input checks) come first; the database functions
after them take a session factory and do one short transaction each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from ..errors import Conflict, Invalid, NotFound
from ..model import Agent, AgentRole, CallAttempt, CallResult, Campaign, CaseEvent, transaction
from ..model.types import utcnow

MACHINE = "machine"
HUMAN = "human"
VERDICTS = (HUMAN, MACHINE)
DEFAULT_TRUNK = "(default)"  # attempts dialed through the configured default trunk
NO_CAUSE = "(none)"
NOTE_MAX = 500
PAGE_MAX = 1000
ATTEMPT_ID = re.compile(r"^[0-9A-Za-z-]{1,36}\Z")
_SINCE_REL = re.compile(r"^\s*(\d{1,5})\s*([mhdw])\s*\Z")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class NotAllowed(Conflict):
    """The person may not act on this call: an agent on a call that was not connected to
    them, or someone who is not a supervisor reviewing. A Conflict, so every existing
    error mapping treats it as a refusal; a web layer can map it to 403 by its class."""


# ---------------------------------------------------------------- pure: input checks
def check_attempt_id(attempt_id: str) -> str:
    """Attempt ids are uuids; anything else is refused before it reaches the database
    (PostgreSQL rejects NUL in text outright, which would otherwise surface as a crash)."""
    if not isinstance(attempt_id, str) or not ATTEMPT_ID.match(attempt_id):
        raise Invalid(f"{attempt_id!r} is not a call attempt id")
    return attempt_id


def check_verdict(verdict: str) -> str:
    v = (verdict or "").strip().lower()
    if v not in VERDICTS:
        raise Invalid(f"verdict must be human or machine, not {verdict!r}")
    return v


def check_note(note: str | None) -> str | None:
    """An optional free-text note: stripped, at most 500 characters, no control characters
    (it is shown on pages and in terminals, where CR/LF/NUL would forge lines)."""
    if note is None or not note.strip():
        return None
    note = note.strip()
    if len(note) > NOTE_MAX:
        raise Invalid(f"note must be at most {NOTE_MAX} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in note):
        raise Invalid("note must not contain control characters (CR, LF, NUL, ...)")
    return note


def check_page(limit: int, offset: int) -> tuple[int, int]:
    if not 1 <= limit <= PAGE_MAX:
        raise Invalid(f"limit must be 1-{PAGE_MAX}, not {limit}")
    if offset < 0:
        raise Invalid(f"offset must not be negative, not {offset}")
    return limit, offset


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`7d`, `12h`, `30m`, `2w` (ago), or an ISO date / date-time (naive means UTC)."""
    now = now or utcnow()
    m = _SINCE_REL.match(text)
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise Invalid(
            f"since {text!r}: use e.g. 7d, 12h, 30m, 2w or an ISO date like 2026-11-01"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def cause_kind(cause: str | None) -> str:
    """AMDCAUSE without its measured numbers: `LONGGREETING-1620-1500` -> `LONGGREETING`,
    the part that points at the AMD parameter to tune."""
    kind = (cause or "").split("-", 1)[0].strip().upper()
    return kind or NO_CAUSE


# ---------------------------------------------------------------- pure: verdicts and rates
def outcome(connected: bool, result: str | None, feedback: str | None, review: str | None) -> str:
    """What one classified call counts as in the error rates.

    Connected calls were classified human: a supervisor's review wins, else the agent's
    flag; `machine` makes it a false human. Machine-classified calls count only once a
    supervisor reviewed them; `human` makes it a false machine. Everything else (silence,
    hang-up, abandoned: no one could tell) is `other`."""
    if connected:
        return "false_human" if (review or feedback) == MACHINE else "human_ok"
    if result == CallResult.ANSWERING_MACHINE.value:
        if review is None:
            return "machine_unreviewed"
        return "false_machine" if review == HUMAN else "machine_ok"
    return "other"


def rate(part: int, whole: int) -> float | None:
    """part/whole, or None when nothing was measured (0 of 0 is unknown, not 0%)."""
    return part / whole if whole else None


@dataclass
class CauseTally:
    judged: int = 0  # calls whose verdict is known (connected, or machine and reviewed)
    wrong: int = 0  # of those, AMD was wrong


@dataclass
class Rates:
    """Error counts of one group (a campaign, a trunk, or everything)."""

    key: str
    human: int = 0  # classified human and connected to an agent
    false_human: int = 0  # of those, judged machine (agent flag not overruled, or review)
    flags_unreviewed: int = 0  # agent flags no supervisor has confirmed or overruled yet
    machine: int = 0  # classified answering machine
    machine_reviewed: int = 0
    false_machine: int = 0  # of the reviewed, judged human
    causes: dict[str, CauseTally] = field(default_factory=dict)

    @property
    def machine_unreviewed(self) -> int:
        return self.machine - self.machine_reviewed

    @property
    def false_human_rate(self) -> float | None:
        return rate(self.false_human, self.human)

    @property
    def false_machine_rate(self) -> float | None:
        return rate(self.false_machine, self.machine_reviewed)

    def add(
        self,
        connected: bool,
        result: str | None,
        feedback: str | None,
        review: str | None,
        cause: str | None,
        n: int = 1,
    ) -> None:
        o = outcome(connected, result, feedback, review)
        if o == "other":
            return
        if o in ("human_ok", "false_human"):
            self.human += n
            if o == "false_human":
                self.false_human += n
            if feedback == MACHINE and review is None:
                self.flags_unreviewed += n
        else:
            self.machine += n
            if o != "machine_unreviewed":
                self.machine_reviewed += n
            if o == "false_machine":
                self.false_machine += n
        if o != "machine_unreviewed":
            t = self.causes.setdefault(cause_kind(cause), CauseTally())
            t.judged += n
            t.wrong += n if o in ("false_human", "false_machine") else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "human": self.human,
            "false_human": self.false_human,
            "false_human_rate": self.false_human_rate,
            "flags_unreviewed": self.flags_unreviewed,
            "machine": self.machine,
            "machine_reviewed": self.machine_reviewed,
            "machine_unreviewed": self.machine_unreviewed,
            "false_machine": self.false_machine,
            "false_machine_rate": self.false_machine_rate,
            "causes": {
                k: {"judged": t.judged, "wrong": t.wrong} for k, t in sorted(self.causes.items())
            },
        }


@dataclass(frozen=True)
class Row:
    """One group of identical classified attempts, as the database counted them."""

    campaign: str
    trunk: str | None
    connected: bool
    result: str | None
    feedback: str | None
    review: str | None
    cause: str | None
    n: int


@dataclass
class Report:
    since: datetime | None
    campaign: str | None
    campaigns: list[Rates]
    trunks: list[Rates]
    total: Rates

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "campaign": self.campaign,
            "campaigns": [r.as_dict() for r in self.campaigns],
            "trunks": [r.as_dict() for r in self.trunks],
            "total": self.total.as_dict(),
        }


def fold(rows: list[Row], since: datetime | None = None, campaign: str | None = None) -> Report:
    """Sum the counted groups into per-campaign, per-trunk and overall rates (pure)."""
    camps: dict[str, Rates] = {}
    trunks: dict[str, Rates] = {}
    total = Rates("total")
    for r in rows:
        tkey = r.trunk or DEFAULT_TRUNK
        for bucket in (
            camps.setdefault(r.campaign, Rates(r.campaign)),
            trunks.setdefault(tkey, Rates(tkey)),
            total,
        ):
            bucket.add(r.connected, r.result, r.feedback, r.review, r.cause, r.n)
    return Report(
        since,
        campaign,
        [camps[k] for k in sorted(camps)],
        [trunks[k] for k in sorted(trunks)],
        total,
    )


# ---------------------------------------------------------------- database
def _view(a: CallAttempt, changed: bool) -> dict[str, Any]:
    return {
        "attempt_id": a.id,
        "campaign_id": a.campaign_id,
        "agent_id": a.agent_id,
        "trunk": a.trunk,
        "amd_status": a.amd_status,
        "amd_cause": a.amd_cause,
        "result": a.result.value if a.result else None,
        "feedback": a.feedback,
        "feedback_by": a.feedback_by,
        "feedback_at": a.feedback_at.isoformat() if a.feedback_at else None,
        "feedback_note": a.feedback_note,
        "review": a.review,
        "reviewed_by": a.reviewed_by,
        "reviewed_at": a.reviewed_at.isoformat() if a.reviewed_at else None,
        "review_note": a.review_note,
        "changed": changed,
    }


def _attempt(s: Session, attempt_id: str) -> CallAttempt:
    a = s.get(CallAttempt, check_attempt_id(attempt_id), with_for_update=True)
    if a is None:
        raise NotFound(f"no call attempt {attempt_id}")
    return a


def flag_machine(
    factory: sessionmaker[Session], attempt_id: str, agent_id: str, note: str | None = None
) -> dict[str, Any]:
    """The agent says a call AMD passed as human was really a machine.

    Only the agent the call was connected to may flag it (NotAllowed otherwise, nothing
    changed: an agent acts only on their own interactions). Idempotent: flagging again
    changes nothing and reports `changed: False`. The AMD columns are not touched; a case
    event records the flag in the contact's history."""
    note = check_note(note)
    with transaction(factory) as s:
        a = _attempt(s, attempt_id)
        if a.agent_id is None or a.agent_id != agent_id or a.connected_at is None:
            raise NotAllowed(
                f"call {a.id} was not connected to agent {agent_id}: "
                "an agent can flag only their own calls"
            )
        if a.amd_status is None:
            raise Conflict(f"call {a.id} was not classified by AMD: there is nothing to correct")
        if a.feedback == MACHINE:
            return _view(a, changed=False)
        a.feedback, a.feedback_by, a.feedback_at, a.feedback_note = (
            MACHINE,
            agent_id,
            utcnow(),
            note,
        )
        s.add(
            CaseEvent(
                contact_id=a.contact_id,
                attempt_id=a.id,
                agent_id=agent_id,
                kind="amd_flag",
                data={"verdict": MACHINE, "amd_status": a.amd_status, "amd_cause": a.amd_cause},
                text=note or "",
            )
        )
        s.flush()
        return _view(a, changed=True)


def review(
    factory: sessionmaker[Session],
    attempt_id: str,
    verdict: str,
    by: str,
    note: str | None = None,
) -> dict[str, Any]:
    """A supervisor's verdict (human / machine) on a call AMD classified as machine, or on
    an agent's flag (confirm with `machine`, overrule with `human`).

    `by` must be a supervisor's agent id (NotAllowed for an agent, NotFound for nobody).
    Reviewing again with the same verdict changes nothing; a different verdict replaces
    the earlier one (both are kept in the case history)."""
    v = check_verdict(verdict)
    note = check_note(note)
    with transaction(factory) as s:
        sup = s.get(Agent, by) if isinstance(by, str) and len(by) <= 32 else None
        if sup is None:
            raise NotFound(f"no supervisor with id {by!r}")
        if sup.role is not AgentRole.SUPERVISOR:
            raise NotAllowed(f"{by} is not a supervisor: only supervisors review calls")
        a = _attempt(s, attempt_id)
        machine = a.amd_status is not None and a.result is CallResult.ANSWERING_MACHINE
        if not machine and a.feedback != MACHINE:
            raise Conflict(
                f"call {a.id} was neither classified machine nor flagged: nothing to review"
            )
        if a.review == v:
            return _view(a, changed=False)
        a.review, a.reviewed_by, a.reviewed_at, a.review_note = v, by, utcnow(), note
        s.add(
            CaseEvent(
                contact_id=a.contact_id,
                attempt_id=a.id,
                agent_id=by,
                kind="amd_review",
                data={"verdict": v, "amd_status": a.amd_status, "amd_cause": a.amd_cause},
                text=note or "",
            )
        )
        s.flush()
        return _view(a, changed=True)


def _campaign_id(s: Session, campaign: str | int | None) -> int | None:
    if campaign is None:
        return None
    from .lifecycle import get_campaign

    return get_campaign(s, campaign).id


def pending_review(
    factory: sessionmaker[Session],
    campaign: str | int | None = None,
    *,
    limit: int = 50,
    offset: int = 0,
    include_flags: bool = True,
) -> list[dict[str, Any]]:
    """Calls waiting for a supervisor: classified machine (and, unless `include_flags` is
    False, flagged machine by their agent) with no review yet; newest first, paged."""
    limit, offset = check_page(limit, offset)
    machine = CallAttempt.result == CallResult.ANSWERING_MACHINE
    wanted = or_(machine, CallAttempt.feedback == MACHINE) if include_flags else machine
    with factory() as s:
        cid = _campaign_id(s, campaign)
        q = (
            select(CallAttempt, Campaign.name)
            .join(Campaign, Campaign.id == CallAttempt.campaign_id)
            .where(CallAttempt.amd_status.is_not(None), CallAttempt.review.is_(None), wanted)
            .order_by(CallAttempt.created_at.desc(), CallAttempt.id.desc())
            .limit(limit)
            .offset(offset)
        )
        if cid is not None:
            q = q.where(CallAttempt.campaign_id == cid)
        return [
            {
                "attempt_id": a.id,
                "campaign": name,
                "created_at": a.created_at.isoformat(),
                "e164": a.e164,
                "trunk": a.trunk or DEFAULT_TRUNK,
                "agent_id": a.agent_id,
                "amd_status": a.amd_status,
                "amd_cause": a.amd_cause,
                "result": a.result.value if a.result else None,
                "why": "agent flag" if a.feedback == MACHINE else "classified machine",
            }
            for a, name in s.execute(q)
        ]


def error_rates(
    factory: sessionmaker[Session],
    since: datetime | None = None,
    campaign: str | int | None = None,
) -> Report:
    """Classification error rates per campaign and per trunk (and overall), from calls
    created at or after `since`: false-human rate = connected calls judged machine /
    connected calls; false-machine rate = machine calls judged human / machine calls
    reviewed. The database counts groups; `fold` does the arithmetic."""
    if since is not None and since.tzinfo is None:
        raise Invalid("since must carry a time zone (UTC)")
    A = CallAttempt
    cols = (Campaign.name, A.trunk, A.result, A.feedback, A.review, A.amd_cause)
    rows: list[Row] = []
    with factory() as s:
        cid = _campaign_id(s, campaign)
        # Two plain GROUP BYs instead of one over a CASE: PostgreSQL refuses a GROUP BY
        # whose parameterised expression differs from the selected one.
        for connected in (True, False):
            q = (
                select(*cols, func.count())
                .join(Campaign, Campaign.id == A.campaign_id)
                .where(A.amd_status.is_not(None))
                .group_by(*cols)
            )
            if connected:
                q = q.where(A.connected_at.is_not(None))
            else:
                q = q.where(A.connected_at.is_(None), A.result == CallResult.ANSWERING_MACHINE)
            if cid is not None:
                q = q.where(A.campaign_id == cid)
            if since is not None:
                q = q.where(A.created_at >= since)
            for name, trunk, result, fb, rv, cause, n in s.execute(q):
                rows.append(
                    Row(name, trunk, connected, result.value if result else None, fb, rv, cause, n)
                )
    return fold(rows, since, str(campaign) if campaign is not None else None)

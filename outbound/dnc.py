"""Do-not-call lists: global and per campaign."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from .errors import Invalid, NotFound
from .model import CallAttempt, CaseEvent, Contact, ContactState, DncEntry
from .phones import InvalidNumber, normalize

# DncEntry.source of an entry made by the called person's key press.
OPTOUT_SOURCE = "optout"


def add(
    s: Session,
    number: str,
    region: str,
    *,
    campaign_id: int | None = None,
    reason: str = "",
    source: str = "admin",
) -> tuple[str, bool]:
    """Add a number; returns (e164, created). Adding it twice changes nothing."""
    try:
        e164 = normalize(number, region)
    except InvalidNumber as exc:
        raise Invalid(str(exc)) from None
    if any(c in reason for c in "\r\n\0") or len(reason) > 200:
        raise Invalid("reason must be at most 200 characters without control characters")
    existing = s.scalar(
        select(DncEntry.id).where(
            DncEntry.e164 == e164,
            DncEntry.campaign_id.is_(None)
            if campaign_id is None
            else DncEntry.campaign_id == campaign_id,
        )
    )
    if existing is not None:
        return e164, False
    s.add(DncEntry(e164=e164, campaign_id=campaign_id, reason=reason, source=source))
    s.flush()
    return e164, True


def matches(s: Session, e164s: Iterable[str], campaign_id: int | None) -> list[DncEntry]:
    """DNC entries (global, or of this campaign) that match any of the numbers."""
    nums = list(e164s)
    if not nums:
        return []
    scope: ColumnElement[bool] = DncEntry.campaign_id.is_(None)
    if campaign_id is not None:
        scope = or_(scope, DncEntry.campaign_id == campaign_id)
    return list(s.scalars(select(DncEntry).where(DncEntry.e164.in_(nums), scope)).all())


def check(s: Session, number: str, region: str, campaign_id: int | None = None) -> dict[str, Any]:
    try:
        e164 = normalize(number, region)
    except InvalidNumber as exc:
        raise Invalid(str(exc)) from None
    hits = matches(s, [e164], campaign_id)
    return {
        "number": e164,
        "blocked": bool(hits),
        "entries": [
            {
                "scope": "global" if h.campaign_id is None else f"campaign {h.campaign_id}",
                "reason": h.reason,
                "source": h.source,
                "added": h.created_at.isoformat(),
            }
            for h in hits
        ],
    }


def import_file(
    s: Session, path: Path, region: str, campaign_id: int | None = None
) -> dict[str, Any]:
    """Import numbers from a CSV (first column, or a column named phone/number).
    Bad lines are reported with line number and reason; good ones are added."""
    added = present = 0
    errors: list[dict[str, Any]] = []
    try:
        fh = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise Invalid(f"{path}: cannot read: {exc.strerror}") from None
    with fh:
        reader = csv.reader(fh)
        col = 0
        for row in reader:
            line = reader.line_num
            if not row or not any(x.strip() for x in row):
                continue
            lowered = [x.strip().lower() for x in row]
            if line == 1 and any(x in ("phone", "number", "e164") for x in lowered):
                col = next(i for i, x in enumerate(lowered) if x in ("phone", "number", "e164"))
                continue
            try:
                _, created = add(
                    s,
                    row[col] if col < len(row) else "",
                    region,
                    campaign_id=campaign_id,
                    source="import",
                )
            except Invalid as exc:
                errors.append({"line": line, "reason": str(exc)})
                continue
            added += created
            present += not created
    return {"added": added, "already_present": present, "errors": errors}


_E164 = re.compile(r"\+[1-9][0-9]{5,14}")


def opt_out(s: Session, attempt_id: str, *, key: str, scope: str = "global") -> dict[str, Any]:
    """The person on `attempt_id`'s call pressed the opt-out key: put the dialled number
    on the do-not-call list (`scope` "global", or "campaign": this campaign's list),
    take the contact out of the campaign (state DNC, so no treatment redials it), and
    note it in the case history and the attempt's audit. Idempotent: a second press
    adds nothing. Returns what was recorded; NotFound for an unknown attempt.

    An opt-out is never refused for the number's form: the number was dialled, so if
    `phonenumbers` no longer calls it valid, its E.164 text is stored as it is."""
    a = s.get(CallAttempt, attempt_id, with_for_update=True)
    if a is None:
        raise NotFound(f"no call attempt {attempt_id}")
    if scope not in ("global", "campaign"):
        raise Invalid(f"opt-out scope must be global or campaign, not {scope!r}")
    campaign_id = a.campaign_id if scope == "campaign" else None
    reason = f"opt-out key {key} pressed on call attempt {attempt_id}"
    try:
        e164, created = add(
            s, a.e164, "ZZ", campaign_id=campaign_id, reason=reason, source=OPTOUT_SOURCE
        )
    except Invalid:
        if not _E164.fullmatch(a.e164):
            raise
        e164, created = a.e164, not matches(s, [a.e164], campaign_id)
        if created:
            s.add(DncEntry(e164=e164, campaign_id=campaign_id, reason=reason, source=OPTOUT_SOURCE))
    contact = s.get(Contact, a.contact_id)
    if contact is not None:
        contact.state = ContactState.DNC
        contact.next_at = None
    record = {"number": e164, "scope": scope, "key": key, "created": created}
    a.audit = {**a.audit, "optout": record}
    s.add(
        CaseEvent(
            contact_id=a.contact_id,
            attempt_id=attempt_id,
            kind="optout",
            data=record,
            text=f"Opt-out key {key} pressed: {e164} added to the {scope} do-not-call list",
        )
    )
    s.flush()
    return record

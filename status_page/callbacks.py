"""The agent's callbacks over the API: schedule on my call or preview, edit, cancel,
uncheck "Schedule callback", and list my pending ones (outbound/callbacks.py).

Ownership and the DST / window / number rules are the core's: another agent's call,
preview or callback is NotAllowed (403), bad input Invalid (422, the message says what
to fix; on a call it also blocks mark done until fixed or cancelled), a closed
interaction a Conflict (409). The body fields here only bound the input (length, no
CR/LF/NUL); the core checks their meaning, so that every invalid attempt is remembered
on the call."""

from __future__ import annotations

from typing import Any

from outbound.callbacks import cancel, discard, edit, my_callbacks, schedule
from outbound.errors import NotFound
from outbound.model import PhoneType

from .http import Call
from .schema import ATTEMPT_ID, MAX_DB_INT, Field, path_int

# The callback id in /api/callbacks/{callback_id}: bounded like every other integer id.

_TEXT = r"[^\x00-\x1f\x7f]{1,%d}"
PHONE = Field(max_len=40, pattern=_TEXT % 40, description="a phone number (E.164 or national)")
CALLBACK = {
    "date": Field(
        required=True, max_len=10, pattern=_TEXT % 10, description="YYYY-MM-DD, my local date"
    ),
    "time": Field(required=True, max_len=8, pattern=_TEXT % 8, description="HH:MM, my local time"),
    "personal": Field(type="boolean", required=True, description="true: routed to me"),
    "number": Field(
        max_len=40, pattern=_TEXT % 40, description="one of the contact's numbers (E.164)"
    ),
    "new_number": PHONE,
    "new_number_type": Field(enum=tuple(t.value for t in PhoneType), max_len=10),
    "window_from": Field(
        max_len=5, pattern=_TEXT % 5, description="HH:MM, the contact's local time"
    ),
    "window_to": Field(max_len=5, pattern=_TEXT % 5, description="HH:MM, the contact's local time"),
}
SCHEDULE = {
    "attempt_id": ATTEMPT_ID,
    "offer_id": Field(type="integer", description="the previewed record (offer) id"),
    **CALLBACK,
}
INTERACTION_QUERY = {
    "attempt_id": ATTEMPT_ID,
    "offer_id": Field(max_len=10, pattern=r"[0-9]{1,10}", description="an offer id"),
}


def _fields(c: Call) -> dict[str, Any]:
    b = c.body
    return {
        "when": f"{b['date']} {b['time']}",
        "personal": b["personal"],
        "number": b.get("number"),
        "new_number": b.get("new_number"),
        "new_number_type": b.get("new_number_type"),
        "window_from": b.get("window_from"),
        "window_to": b.get("window_to"),
        "region": c.ctx.config.default_region,
    }


def _offer_id(value: Any) -> int | None:
    """A bounded offer id (a huge one is a clean 404, never a database overflow)."""
    if value is None:
        return None
    n = int(value)
    if not 0 < n <= MAX_DB_INT:
        raise NotFound(f"no preview record (offer) {value}")
    return n


def _callback_id(c: Call) -> int:
    cid = path_int(c.params["callback_id"])
    if cid is None:
        raise NotFound(f"no callback {c.params['callback_id']}")
    return cid


async def create(c: Call) -> Any:
    """Schedule a callback on my call (attempt_id) or previewed record (offer_id); a
    second one on the same interaction replaces the first."""
    return await c.ctx.blocking(
        lambda: schedule(
            c.ctx.factory,
            c.me,
            attempt_id=c.body.get("attempt_id"),
            offer_id=_offer_id(c.body.get("offer_id")),
            **_fields(c),
        )
    )


async def update(c: Call) -> Any:
    cid = _callback_id(c)
    return await c.ctx.blocking(lambda: edit(c.ctx.factory, c.me, cid, **_fields(c)))


async def remove(c: Call) -> Any:
    cid = _callback_id(c)
    return await c.ctx.blocking(cancel, c.ctx.factory, c.me, cid)


async def uncheck(c: Call) -> Any:
    """ "Schedule callback" unchecked on my call or preview: its callback (if any) is
    cancelled and a standing invalid attempt no longer blocks mark done."""
    return await c.ctx.blocking(
        lambda: discard(
            c.ctx.factory,
            c.me,
            attempt_id=c.query.get("attempt_id"),
            offer_id=_offer_id(c.query.get("offer_id")),
        )
    )


async def mine(c: Call) -> Any:
    def read() -> dict[str, Any]:
        with c.ctx.factory() as s:
            return {"callbacks": my_callbacks(s, c.me)}

    return await c.ctx.blocking(read)

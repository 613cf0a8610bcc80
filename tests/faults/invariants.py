"""What must hold after every fault, asked of the database and of Asterisk separately
(neither is taken on the other's word):

- every contact final or rescheduled, its state explained by its attempts and the
  campaign's treatments (tests/helpers/hive.py `unexplained`); no contact and no agent in
  two attempts whose lives overlap;
- Asterisk's own count per number (DB(simcount/<n>) in the sandbox dialplan) never more
  than the attempts written for it, nor than the campaign's max_attempts, never less than
  the attempts that got a far-end result; DB(simdup/<n>) never set (never two calls to one
  number at once); the CDR (Master.csv, accountcode = attempt id) agrees: one trunk leg
  per attempt at most, as many per number as simcount;
- every callback done, fired once (one `callback_due` case event, one attempt carrying its
  id), never before it was due.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select

from outbound import names
from outbound.model import CallAttempt, Callback, CallbackState, CallResult
from tests.faults.live import MAX_ATTEMPTS, LiveCampaign
from tests.helpers import hive
from tests.helpers.ami import AmiClient
from tests.helpers.callbacks import case_counts, due_events
from tests.helpers.until import async_until
from tests.integration.conftest import read_cdr_rows

# Results only a far end gives: the call reached the (simulated) number.
REACHED = {CallResult.ANSWERED, CallResult.BUSY, CallResult.CONGESTION, CallResult.HANGUP}


async def invariants(lv: LiveCampaign, admin: AmiClient, *, stream: bool = True) -> None:
    """Assert them all; one AssertionError lists every breach. `stream`: also count the
    `callback_due` events on the Redis stream (off when the test wiped Redis)."""
    wrong = database_breaches(lv) + callback_breaches(lv, stream=stream)
    wrong += await asterisk_breaches(lv, admin)
    assert wrong == [], "\n".join(wrong)


def by_contact(rows: list[CallAttempt]) -> dict[int, list[CallAttempt]]:
    out: dict[int, list[CallAttempt]] = {}
    for a in rows:
        out.setdefault(a.contact_id, []).append(a)
    return out


def database_breaches(lv: LiveCampaign) -> list[str]:
    rows = lv.attempts()
    wrong = hive.unexplained(lv.factory, lv.campaign_id, by_contact(rows))
    wrong += [
        f"contact in two calls: {p}" for p in hive.overlaps(rows, lambda a: str(a.contact_id))
    ]
    wrong += [f"agent in two calls: {p}" for p in hive.overlaps(rows, lambda a: a.agent_id)]
    return wrong


def callback_breaches(lv: LiveCampaign, *, stream: bool) -> list[str]:
    with lv.factory() as s:
        cbs = list(s.scalars(select(Callback).where(Callback.id.in_(lv.callbacks))))
    per_cb = Counter(
        int(a.audit["callback_id"]) for a in lv.attempts() if a.audit.get("callback_id")
    )
    fired = case_counts(lv.factory, "callback_due")
    on_stream = due_events(lv.r) if stream else Counter()
    wrong: list[str] = []
    for cb in cbs:
        what = f"callback {cb.id} ({cb.state.value}, fired {cb.fired_at}, due {cb.due_at})"
        if cb.state is not CallbackState.DONE:
            wrong.append(f"{what}: not done")
        if cb.fired_at is None or cb.fired_at < cb.due_at:
            wrong.append(f"{what}: fired early or never")
        if fired[cb.id] != 1:
            wrong.append(f"{what}: {fired[cb.id]} callback_due case events")
        if per_cb[cb.id] != 1:
            wrong.append(f"{what}: {per_cb[cb.id]} attempts")
        if stream and on_stream[cb.id] != 1:
            wrong.append(f"{what}: {on_stream[cb.id]} callback_due events on the stream")
    if len(cbs) != len(lv.callbacks):
        wrong.append(f"callbacks lost: {len(cbs)} of {len(lv.callbacks)}")
    return wrong


async def asterisk_breaches(lv: LiveCampaign, admin: AmiClient) -> list[str]:
    mine = by_contact(lv.attempts())
    counts: dict[int, int] = {}
    wrong: list[str] = []
    for contact, number in lv.numbers.items():
        rows = mine.get(contact, [])
        n = int(await admin.db_get("simcount", number) or 0)
        counts[contact] = n
        reached = sum(1 for a in rows if a.result in REACHED)
        if not reached <= n <= min(len(rows), MAX_ATTEMPTS):
            results = [a.result and a.result.value for a in rows]
            wrong.append(f"{number}: Asterisk saw {n} calls, attempts {results}")
        if await admin.db_get("simdup", number) is not None:
            wrong.append(f"{number}: in two calls at once (simdup)")

    def trunk_legs() -> Counter[str]:
        return Counter(
            r["accountcode"]
            for r in read_cdr_rows(lv.sb.cdr_csv_path)
            if r["dcontext"] == names.CTX_DIAL
        )

    def cdr_agrees() -> bool:
        legs = trunk_legs()
        return all(sum(legs[a.id] for a in mine.get(c, [])) == n for c, n in counts.items())

    # CDR rows are written as the calls' channels go: give the last ones a moment.
    try:
        await async_until(cdr_agrees, 15, 0.3, message="the CDR agrees with simcount")
    except AssertionError:
        legs = trunk_legs()
        for c, n in counts.items():
            got = sum(legs[a.id] for a in mine.get(c, []))
            if got != n:
                wrong.append(f"{lv.numbers[c]}: {got} trunk legs in the CDR, simcount {n}")
    ids = {a.id for rows in mine.values() for a in rows}
    wrong += [
        f"attempt {aid}: {k} trunk legs in the CDR"
        for aid, k in trunk_legs().items()
        if k > 1 and aid in ids
    ]
    return wrong

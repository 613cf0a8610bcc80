"""The dial queue of a campaign, in Redis: ordering and leases only.

The database decides what is dialable; this queue only says in which order records are
handed out and who holds one right now, and it can always be rebuilt from the database
(`rebuild`). Per campaign (keys in `outbound.names`):

- the *ordered part* (`key_dial_queue`), a sorted set: higher priority first, then earlier
  due time (whole seconds), then lower contact id;
- *later*, records pushed with a due time still to come: moved into the ordered part by
  whichever call looks first once it has come, so a record not yet due is never leased;
- the *top*, before everything, first in first out: records rejected, pushed back,
  declined with "call later", or whose lease expired;
- the *leases*: contact -> owner, and contact -> expiry.

A record is in at most one of them, and every step that touches more than one key is one
Lua script, so two dialer workers can never lease the same record. Members are contact ids
zero-padded to 15 digits, so that Redis's tie-break between equal scores (bytewise) is the
numeric order of ids. The ordered score is `-priority * 2**33 + due_seconds`: exact in a
double for |priority| < 2**19 and due times up to the year 2242.

Callers change the database first and the queue second (settle after the attempt row is
written): a queue that is ahead of the database could hand out a record twice.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from . import names
from .dial_queue_lua import LUA, PRELUDE
from .errors import Conflict, Invalid
from .model import AttemptState, CallAttempt, Contact, ContactState

T = TypeVar("T")

PRIORITY_LIMIT = 2**19 - 1
_DUE_SPAN = 2**33  # seconds: due times from 1970 to 2242
CHUNK = 2000  # records per pipeline / Lua call in bulk steps
REBUILD_TTL_S = 600  # a rebuild that takes longer loses its turn (Conflict)
SWEEP_OVERLAP_S = 120  # enqueue_due looks back this far: late commits are not missed

_REBUILD_PARTS = ("rebuild", "journal", "staging", "staging_meta")

# --- pure helpers, shared by the sync and async queues ---


def member(contact_id: int) -> str:
    """The Redis member of a contact (padded: Redis breaks score ties bytewise)."""
    if isinstance(contact_id, bool) or not isinstance(contact_id, int) or contact_id <= 0:
        raise Invalid(f"contact id must be a positive integer, not {contact_id!r}")
    if contact_id >= 10**15:
        raise Invalid(f"contact id {contact_id} is too large for the dial queue")
    return f"{contact_id:015d}"


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _epoch(at: datetime | None, what: str = "now") -> str:
    """A time as epoch seconds for Lua; '' lets the script use the Redis server's clock,
    which every worker shares."""
    if at is None:
        return ""
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise Invalid(f"{what} must be a time-zone aware datetime, not {at!r}")
    return repr(at.timestamp())


def ordered_score(priority: int, due: datetime) -> int:
    """Sort key of the ordered part: higher priority first, then earlier due second."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise Invalid(f"priority must be an integer, not {priority!r}")
    if abs(priority) > PRIORITY_LIMIT:
        raise Invalid(f"priority {priority} is outside ±{PRIORITY_LIMIT}")
    _epoch(due, "due")
    seconds = max(0, int(due.timestamp()))
    if seconds >= _DUE_SPAN:
        raise Invalid(f"due time {due.isoformat()} is too far ahead")
    return -priority * _DUE_SPAN + seconds


def decode_score(score: float | int | str) -> tuple[int, datetime]:
    """(priority, due) back from an ordered score."""
    s = int(float(score))
    priority = -(s // _DUE_SPAN)
    return priority, datetime.fromtimestamp(s + priority * _DUE_SPAN, UTC)


def _owner(owner: str) -> str:
    if not isinstance(owner, str) or not owner:
        raise Invalid("a lease owner must be a non-empty string")
    return owner


def _ttl(ttl_s: float) -> str:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not ttl_s > 0:
        raise Invalid(f"lease time must be a positive number of seconds, not {ttl_s!r}")
    return repr(float(ttl_s))


@dataclass(frozen=True)
class Lease:
    owner: str
    expires_at: datetime
    reclaims: int  # how often this record's lease expired before (a stuck worker, a bug)


@dataclass(frozen=True)
class Entry:
    """A waiting record as `peek` shows it; priority and due are None in the top."""

    contact_id: int
    section: str  # "top" or "queued"
    priority: int | None = None
    due: datetime | None = None


@dataclass(frozen=True)
class Placement:
    """Where a record is (for "why is this record not dialing?")."""

    section: str  # leased / top / queued / later / absent
    position: int | None  # 0: handed out next; None unless top or queued
    lease: Lease | None
    due: datetime | None  # for "later": when it becomes due


@dataclass(frozen=True)
class Depth:
    top: int
    queued: int  # due, waiting in the ordered part
    later: int  # pushed with a due time still to come
    leased: int

    @property
    def waiting(self) -> int:
        """Records a lease would hand out now."""
        return self.top + self.queued


@dataclass(frozen=True)
class RebuildCounts:
    dialable: int  # what the database said
    queued: int
    top: int
    top_dropped: int  # top entries the database no longer calls dialable
    leased: int
    later: int


@dataclass(frozen=True)
class _Plan(Generic[T]):
    script: str
    args: list[str]
    decode: Callable[[Any], T]


def _refuse(contact_id: int, st: str, doing: str) -> Conflict:
    why = {
        "other": "it is leased by another owner",
        "top": "its lease ended: it is back at the top of the queue",
        "queued": "it is not leased: it waits in the queue",
        "later": "it is not leased: it waits for its due time",
        "absent": "it is not in the queue",
        "leased": "it is leased: its owner must release it",
    }[st]
    return Conflict(f"cannot {doing} contact {contact_id}: {why}")


def _decode_lease(cid: int, doing: str) -> Callable[[Any], bool]:
    """settle / release: ok -> True; already gone -> False (a retry is harmless); someone
    else's or a lapsed lease -> Conflict."""

    def decode(raw: Any) -> bool:
        st = _text(raw)
        if st == "ok":
            return True
        if st == "absent":
            return False
        raise _refuse(cid, st, doing)

    return decode


def _decode_placement(raw: Any) -> Placement:
    st, pos, owner, exp, recl, due = (_text(v) for v in raw)
    lease = None
    if owner:
        lease = Lease(owner, datetime.fromtimestamp(float(exp), UTC), int(recl))
    return Placement(
        section=st,
        position=int(pos) if int(pos) >= 0 else None,
        lease=lease,
        due=datetime.fromtimestamp(float(due), UTC) if due else None,
    )


def _decode_peek(raw: Any) -> list[Entry]:
    top, rest = raw
    out = [Entry(int(_text(m)), "top") for m in top]
    for i in range(0, len(rest), 2):
        p, due = decode_score(_text(rest[i + 1]))
        out.append(Entry(int(_text(rest[i])), "queued", p, due))
    return out


class _Common:
    """Keys and the argument/result plans of every step, so the sync and async queues
    differ only in how they run a plan."""

    def __init__(self, campaign_id: int) -> None:
        self.campaign_id = campaign_id
        cid = campaign_id
        self.keys = [
            names.key_dial_queue(cid),
            *(names.key_queue_part(cid, p) for p in ("top", "later", "meta", "seq")),
            *(names.key_queue_part(cid, p) for p in ("expiry", "reclaims")),
            names.key_leases(cid),
            *(names.key_queue_part(cid, p) for p in _REBUILD_PARTS),
        ]
        self.swept_key = names.key_queue_part(cid, "swept")

    def all_keys(self) -> list[str]:
        """Every key of this campaign's queue (to drop it, or to simulate its loss)."""
        return [*self.keys, self.swept_key]

    def _push(self, items: list[tuple[int, int, datetime]], now: datetime | None) -> _Plan[Any]:
        args = [_epoch(now)]
        for cid, priority, due in items:
            args += [member(cid), str(ordered_score(priority, due)), _epoch(due, "due")]
        return _Plan("push", args, lambda raw: [_text(v) for v in raw])

    def _push_top(self, contact_id: int) -> _Plan[bool]:
        def decode(raw: Any) -> bool:
            st = _text(raw)
            if st == "leased":
                raise _refuse(contact_id, st, "push to the top")
            return st != "top"

        return _Plan("push_top", [member(contact_id)], decode)

    def _lease(self, owner: str, ttl_s: float, now: datetime | None) -> _Plan[int | None]:
        def decode(raw: Any) -> int | None:
            return int(_text(raw)) if raw else None

        return _Plan("lease", [_owner(owner), _ttl(ttl_s), _epoch(now)], decode)

    def _renew(
        self, contact_id: int, owner: str, ttl_s: float, now: datetime | None
    ) -> _Plan[datetime]:
        def decode(raw: Any) -> datetime:
            st, exp = _text(raw[0]), _text(raw[1])
            if st != "ok":
                raise _refuse(contact_id, st, "renew the lease of")
            return datetime.fromtimestamp(float(exp), UTC)

        args = [member(contact_id), _owner(owner), _ttl(ttl_s), _epoch(now)]
        return _Plan("renew", args, decode)

    def _settle(self, contact_id: int, owner: str) -> _Plan[bool]:
        args = [member(contact_id), _owner(owner)]
        return _Plan("settle", args, _decode_lease(contact_id, "settle"))

    def _release(self, contact_id: int, owner: str, top: bool) -> _Plan[bool]:
        args = [member(contact_id), _owner(owner), "1" if top else "0"]
        return _Plan("release", args, _decode_lease(contact_id, "release"))

    def _reclaim(self, now: datetime | None) -> _Plan[list[int]]:
        return _Plan("reclaim", [_epoch(now), str(CHUNK)], lambda r: [int(_text(m)) for m in r])

    def _remove(self, contact_id: int) -> _Plan[bool]:
        return _Plan("remove", [member(contact_id)], lambda raw: _text(raw) != "absent")

    def _peek(self, n: int, now: datetime | None) -> _Plan[list[Entry]]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise Invalid(f"peek needs a count >= 0, not {n!r}")
        return _Plan("peek", [_epoch(now), str(n)], _decode_peek)

    def _locate(self, contact_id: int, now: datetime | None) -> _Plan[Placement]:
        return _Plan("locate", [_epoch(now), member(contact_id)], _decode_placement)

    def _depth(self, now: datetime | None) -> _Plan[Depth]:
        return _Plan("depth", [_epoch(now)], lambda raw: Depth(*(int(v) for v in raw)))

    def _swap(self, token: str, dialable: int) -> _Plan[RebuildCounts]:
        def decode(raw: Any) -> RebuildCounts:
            if int(raw[0]) < 0:
                raise Conflict(
                    f"rebuild of campaign {self.campaign_id}'s dial queue lost its turn "
                    f"(took over {REBUILD_TTL_S} s or was cancelled); nothing was replaced"
                )
            return RebuildCounts(dialable, *(int(v) for v in raw))

        return _Plan("swap", [token], decode)

    def _staging_commands(self, pipe: Any, rows: list[tuple[int, int, datetime]]) -> None:
        scores = {member(cid): ordered_score(p, due) for cid, p, due in rows}
        pipe.zadd(self.keys[10], scores)
        pipe.hset(self.keys[11], mapping={m: str(s) for m, s in scores.items()})
        pipe.expire(self.keys[10], REBUILD_TTL_S)
        pipe.expire(self.keys[11], REBUILD_TTL_S)

    def _busy(self) -> Conflict:
        return Conflict(f"a rebuild of campaign {self.campaign_id}'s dial queue is running")


# --- the database side: what is dialable ---


def _dialable_query(campaign_id: int, now: datetime, since: datetime | None = None) -> Any:
    """Contacts the database calls dialable now: in state ready, next_at unset or come, no
    live attempt. With `since`: only those whose next_at came after it (a sweep)."""
    _epoch(now)
    live = (
        select(CallAttempt.id)
        .where(CallAttempt.contact_id == Contact.id, CallAttempt.state != AttemptState.ENDED)
        .exists()
    )
    due = Contact.next_at <= now
    when = or_(Contact.next_at.is_(None), due) if since is None else (Contact.next_at > since) & due
    return (
        select(Contact.id, Contact.priority, Contact.next_at, Contact.created_at)
        .where(Contact.campaign_id == campaign_id, Contact.state == ContactState.READY, when)
        .where(~live)
        .order_by(Contact.id)
    )


def dialable_chunks(
    factory: sessionmaker[Session], campaign_id: int, now: datetime, since: datetime | None = None
) -> Iterator[list[tuple[int, int, datetime]]]:
    """(contact id, priority, due) in chunks, streamed. A record never scheduled is due
    since it was created, so within a priority records wait in the order they became
    dialable."""
    q = _dialable_query(campaign_id, now, since).execution_options(yield_per=CHUNK)
    with factory() as s:
        for part in s.execute(q).partitions():
            yield [(cid, prio, next_at or created) for cid, prio, next_at, created in part]


def _since(raw: Any) -> datetime | None:
    if raw is None:
        return None
    return datetime.fromtimestamp(float(_text(raw)) - SWEEP_OVERLAP_S, UTC)


# --- the two queues ---


class DialQueue(_Common):
    """The dial queue of one campaign on a synchronous `redis.Redis`."""

    def __init__(self, redis: Any, campaign_id: int) -> None:
        super().__init__(campaign_id)
        self.redis = redis
        self._scripts = {k: redis.register_script(PRELUDE + v) for k, v in LUA.items()}

    def _do(self, plan: _Plan[T]) -> T:
        return plan.decode(self._scripts[plan.script](keys=self.keys, args=plan.args))

    def push(
        self, contact_id: int, priority: int, due: datetime, now: datetime | None = None
    ) -> str:
        """Queue a record in its ordered place (or in "later" if not yet due); updates the
        place of a queued one. Returns queued / later, or leased / top (left where it is)."""
        return str(self._do(self._push([(contact_id, priority, due)], now))[0])

    def push_many(
        self, items: list[tuple[int, int, datetime]], now: datetime | None = None
    ) -> list[str]:
        """`push` for many records, a chunk per script call (a sweep, an import)."""
        out: list[str] = []
        for i in range(0, len(items), CHUNK):
            out += self._do(self._push(items[i : i + CHUNK], now))
        return out

    def push_top(self, contact_id: int) -> bool:
        """Put a waiting (or new) record at the end of the top; False if already there.
        A leased record is its owner's to release: Conflict."""
        return self._do(self._push_top(contact_id))

    def lease(self, owner: str, ttl_s: float, now: datetime | None = None) -> int | None:
        """Hand out the first waiting record (top first) to `owner` for `ttl_s`; None if
        nothing is due."""
        return self._do(self._lease(owner, ttl_s, now))

    def renew(
        self, contact_id: int, owner: str, ttl_s: float, now: datetime | None = None
    ) -> datetime:
        """Extend a lease held by `owner`; Conflict otherwise. Returns the new expiry."""
        return self._do(self._renew(contact_id, owner, ttl_s, now))

    def settle(self, contact_id: int, owner: str) -> bool:
        """The lease ends and the record leaves the queue (write the database first)."""
        return self._do(self._settle(contact_id, owner))

    def release(self, contact_id: int, owner: str, top: bool = True) -> bool:
        """The lease ends; the record goes back to the top, or to its ordered place."""
        return self._do(self._release(contact_id, owner, top))

    def reclaim(self, now: datetime | None = None) -> list[int]:
        """Expired leases go back to the top (in expiry order) with their count raised."""
        out: list[int] = []
        while True:
            got = self._do(self._reclaim(now))
            out += got
            if len(got) < CHUNK:
                return out

    def remove(self, contact_id: int) -> bool:
        """Forget a record wherever it is (lease included); False if it was not there."""
        return self._do(self._remove(contact_id))

    def depth(self, now: datetime | None = None) -> Depth:
        return self._do(self._depth(now))

    def peek(self, n: int, now: datetime | None = None) -> list[Entry]:
        """The next `n` records a lease would hand out, in order, without leasing."""
        return self._do(self._peek(n, now))

    def locate(self, contact_id: int, now: datetime | None = None) -> Placement:
        return self._do(self._locate(contact_id, now))

    def position(self, contact_id: int, now: datetime | None = None) -> int | None:
        """0 if handed out next; None if not waiting (leased, later or absent)."""
        return self.locate(contact_id, now).position

    def lease_of(self, contact_id: int) -> Lease | None:
        return self.locate(contact_id).lease

    def drop(self) -> None:
        """Delete the whole queue of the campaign (after unload); `rebuild` restores it."""
        self.redis.delete(*self.all_keys())

    def rebuild(self, factory: sessionmaker[Session], now: datetime) -> RebuildCounts:
        """Replace the ordered part with what the database calls dialable now, keeping live
        leases and the top entries that are still dialable; changes made meanwhile win."""
        token = uuid.uuid4().hex
        if not self.redis.set(self.keys[8], token, nx=True, ex=REBUILD_TTL_S):
            raise self._busy()
        try:
            self.redis.delete(*self.keys[9:12])
            n = 0
            for rows in dialable_chunks(factory, self.campaign_id, now):
                pipe = self.redis.pipeline(transaction=False)
                self._staging_commands(pipe, rows)
                pipe.execute()
                n += len(rows)
            return self._do(self._swap(token, n))
        finally:  # failed half-way: the staging keys go, the live queue is untouched
            if _text(self.redis.get(self.keys[8]) or b"") == token:
                self.redis.delete(*self.keys[8:12])

    def enqueue_due(self, factory: sessionmaker[Session], now: datetime) -> int:
        """Push the records whose next_at came due since the last sweep (the first sweep
        takes all due ones). Returns how many are now queued."""
        since = _since(self.redis.get(self.swept_key))
        n = 0
        for rows in dialable_chunks(factory, self.campaign_id, now, since):
            n += sum(s == "queued" for s in self._do(self._push(rows, now)))
        self.redis.set(self.swept_key, _epoch(now))
        return n


class AsyncDialQueue(_Common):
    """The same queue on `redis.asyncio.Redis` (same scripts, same keys)."""

    def __init__(self, redis: Any, campaign_id: int) -> None:
        super().__init__(campaign_id)
        self.redis = redis
        self._scripts = {k: redis.register_script(PRELUDE + v) for k, v in LUA.items()}

    async def _do(self, plan: _Plan[T]) -> T:
        call: Awaitable[Any] = self._scripts[plan.script](keys=self.keys, args=plan.args)
        return plan.decode(await call)

    async def push(
        self, contact_id: int, priority: int, due: datetime, now: datetime | None = None
    ) -> str:
        return str((await self._do(self._push([(contact_id, priority, due)], now)))[0])

    async def push_top(self, contact_id: int) -> bool:
        return await self._do(self._push_top(contact_id))

    async def lease(self, owner: str, ttl_s: float, now: datetime | None = None) -> int | None:
        return await self._do(self._lease(owner, ttl_s, now))

    async def renew(
        self, contact_id: int, owner: str, ttl_s: float, now: datetime | None = None
    ) -> datetime:
        return await self._do(self._renew(contact_id, owner, ttl_s, now))

    async def settle(self, contact_id: int, owner: str) -> bool:
        return await self._do(self._settle(contact_id, owner))

    async def release(self, contact_id: int, owner: str, top: bool = True) -> bool:
        return await self._do(self._release(contact_id, owner, top))

    async def reclaim(self, now: datetime | None = None) -> list[int]:
        out: list[int] = []
        while True:
            got = await self._do(self._reclaim(now))
            out += got
            if len(got) < CHUNK:
                return out

    async def remove(self, contact_id: int) -> bool:
        return await self._do(self._remove(contact_id))

    async def depth(self, now: datetime | None = None) -> Depth:
        return await self._do(self._depth(now))

    async def peek(self, n: int, now: datetime | None = None) -> list[Entry]:
        return await self._do(self._peek(n, now))

    async def locate(self, contact_id: int, now: datetime | None = None) -> Placement:
        return await self._do(self._locate(contact_id, now))

    async def position(self, contact_id: int, now: datetime | None = None) -> int | None:
        return (await self.locate(contact_id, now)).position

    async def lease_of(self, contact_id: int) -> Lease | None:
        return (await self.locate(contact_id)).lease

    async def enqueue_due(self, factory: sessionmaker[Session], now: datetime) -> int:
        """As `DialQueue.enqueue_due`; the database is read in a worker thread."""
        since = _since(await self.redis.get(self.swept_key))
        chunks = await asyncio.to_thread(
            lambda: list(dialable_chunks(factory, self.campaign_id, now, since))
        )
        n = 0
        for rows in chunks:
            n += sum(s == "queued" for s in await self._do(self._push(rows, now)))
        await self.redis.set(self.swept_key, _epoch(now))
        return n

    async def rebuild(self, factory: sessionmaker[Session], now: datetime) -> RebuildCounts:
        """As `DialQueue.rebuild`; the database is read in a worker thread."""
        token = uuid.uuid4().hex
        if not await self.redis.set(self.keys[8], token, nx=True, ex=REBUILD_TTL_S):
            raise self._busy()
        try:
            await self.redis.delete(*self.keys[9:12])
            chunks = await asyncio.to_thread(
                lambda: list(dialable_chunks(factory, self.campaign_id, now))
            )
            for rows in chunks:
                pipe = self.redis.pipeline(transaction=False)
                self._staging_commands(pipe, rows)
                await pipe.execute()
            return await self._do(self._swap(token, sum(map(len, chunks))))
        finally:
            if _text(await self.redis.get(self.keys[8]) or b"") == token:
                await self.redis.delete(*self.keys[8:12])

    async def drop(self) -> None:
        await self.redis.delete(*self.all_keys())

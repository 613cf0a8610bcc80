"""Poll until a condition holds, with a deadline: never sleep and hope.

    row = until(lambda: find_row(path, uid), timeout=5, message="CDR row written")
    event = await async_until(lambda: ami.find_event("Hangup", Uniqueid=uid), timeout=5)

The predicate's truthy result is returned. On timeout an AssertionError says what was
awaited and the last value (or exception) the predicate gave.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["async_until", "until"]


def _fail(message: str | None, pred: Any, timeout: float, last: Any, error: Any) -> AssertionError:
    what = message or getattr(pred, "__name__", repr(pred))
    detail = f"last error {error!r}" if error is not None else f"last value {last!r}"
    return AssertionError(f"{what}: not true within {timeout:g}s ({detail})")


def until(
    pred: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.05,
    message: str | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``pred`` every ``interval`` seconds until it returns something truthy and
    return that; exceptions listed in ``ignore`` count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            last = pred()
            error = None
            if last:
                return last
        except ignore as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise _fail(message, pred, timeout, last, error)
        time.sleep(interval)


async def async_until(
    pred: Callable[[], Awaitable[Any] | Any],
    timeout: float = 5.0,
    interval: float = 0.05,
    message: str | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """``until`` for asyncio: ``pred`` may be a plain function or return an awaitable;
    waiting yields to the event loop."""
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            value = pred()
            if inspect.isawaitable(value):
                value = await value
            last = value
            error = None
            if last:
                return last
        except ignore as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise _fail(message, pred, timeout, last, error)
        await asyncio.sleep(interval)

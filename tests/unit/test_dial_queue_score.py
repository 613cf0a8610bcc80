"""The dial queue's ordered score: exact, reversible, and sorting as promised."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbound.dial_queue import PRIORITY_LIMIT, decode_score, member, ordered_score
from outbound.errors import Invalid

priorities = st.integers(-PRIORITY_LIMIT, PRIORITY_LIMIT)
dues = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(priorities, dues)
def test_score_is_exact_in_a_double_and_decodes_back(priority: int, due: datetime) -> None:
    score = ordered_score(priority, due)
    assert float(score) == score  # Redis stores a double: nothing may be lost
    assert decode_score(str(float(score))) == (priority, due.replace(microsecond=0))


@given(priorities, dues, priorities, dues)
def test_score_orders_by_priority_then_due_second(
    p1: int, d1: datetime, p2: int, d2: datetime
) -> None:
    s1, s2 = ordered_score(p1, d1), ordered_score(p2, d2)
    key1, key2 = (-p1, int(d1.timestamp())), (-p2, int(d2.timestamp()))
    assert (s1 < s2) == (key1 < key2)


@given(st.integers(1, 10**15 - 1), st.integers(1, 10**15 - 1))
def test_members_sort_bytewise_like_their_ids(a: int, b: int) -> None:
    assert (member(a) < member(b)) == (a < b)


@pytest.mark.parametrize(
    "priority, due",
    [
        (PRIORITY_LIMIT + 1, datetime(2030, 1, 1, tzinfo=UTC)),
        (0, datetime(2030, 1, 1)),
        (0, datetime(2300, 1, 1, tzinfo=UTC)),
        (1.5, datetime(2030, 1, 1, tzinfo=UTC)),
    ],
)
def test_bad_priority_or_due_is_invalid(priority: int, due: datetime) -> None:
    with pytest.raises(Invalid):
        ordered_score(priority, due)


def test_due_before_1970_sorts_as_1970() -> None:
    old = datetime(1960, 1, 1, tzinfo=UTC)
    assert ordered_score(0, old) == ordered_score(0, datetime(1970, 1, 1, tzinfo=UTC))
    assert ordered_score(0, old + timedelta(days=1)) == 0

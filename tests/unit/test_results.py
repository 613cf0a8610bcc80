"""Mapping of Asterisk's dial outcomes to call results."""

from __future__ import annotations

import pytest

from outbound.campaigns.results import dial_result
from outbound.model.types import CallResult as R


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"reason": 4}, R.ANSWERED),
        ({"reason": 5}, R.BUSY),
        ({"reason": 3}, R.NO_ANSWER),
        ({"reason": 8}, R.CONGESTION),
        ({"reason": 0}, R.FAILED),
        ({"reason": 0, "cause": 1}, R.INVALID_NUMBER),
        ({"reason": 8, "cause": 34}, R.CONGESTION),
        ({"reason": 1, "cause": 17}, R.BUSY),
        ({"reason": 1, "cause": 19}, R.NO_ANSWER),
        ({"dial_status": "BUSY", "reason": 5}, R.BUSY),
        ({"dial_status": "NOANSWER", "reason": 0}, R.NO_ANSWER),
        ({"dial_status": "CHANUNAVAIL", "cause": 1}, R.INVALID_NUMBER),
        ({"dial_status": "CHANUNAVAIL", "cause": 38}, R.CONGESTION),
        ({"dial_status": "CONGESTION"}, R.CONGESTION),
        ({"dial_status": "CANCEL"}, R.CANCELLED),
        ({"dial_status": "ANSWER", "cause": 16}, R.ANSWERED),
        ({}, R.FAILED),
        ({"reason": 99}, R.FAILED),
    ],
)
def test_dial_outcomes_map_to_the_call_result_vocabulary(kw: dict, expected: R) -> None:
    assert dial_result(**kw) is expected

"""AMD verdict + campaign policy -> result and route."""

from __future__ import annotations

import pytest

from outbound.campaigns.amd import amd_args, decide
from outbound.errors import Invalid
from outbound.model.types import CallResult as R


@pytest.mark.parametrize(
    ("status", "cause", "policy", "agent", "result", "route"),
    [
        ("HUMAN", "HUMAN-300-500", {}, True, R.ANSWERED, "connect"),
        ("HUMAN", "HUMAN-300-500", {}, False, R.ABANDONED, "abandon"),
        ("MACHINE", "LONGGREETING-1500-1500", {}, True, R.ANSWERING_MACHINE, "hangup"),
        (
            "MACHINE",
            "MAXWORDS-2-2",
            {"machine": "message", "message": "vm-goodbye"},
            True,
            R.ANSWERING_MACHINE,
            "message",
        ),
        ("MACHINE", "INITIALSILENCE-2500-2500", {}, True, R.SILENCE, "hangup"),
        ("NOTSURE", "TOOLONG-5000", {}, True, R.ANSWERED, "connect"),
        ("NOTSURE", "TOOLONG-5000", {"notsure": "machine"}, True, R.ANSWERING_MACHINE, "hangup"),
        ("HANGUP", "", {}, True, R.HANGUP, "hangup"),
        ("", "", {}, False, R.ABANDONED, "abandon"),
    ],
)
def test_decisions(status, cause, policy, agent, result, route) -> None:  # type: ignore[no-untyped-def]
    d = decide(status, cause, policy, agent)
    assert (d.result, d.route) == (result, route)


def test_amd_arguments_default_and_validated() -> None:
    assert amd_args({}) == ["2500", "1500", "800", "5000", "100", "50", "2", "256", "5000"]
    assert amd_args({"greeting": 1200})[1] == "1200"
    with pytest.raises(Invalid):
        amd_args({"greeting": "1200\nHANGUP"})

"""What happens after each call result: retry (with a growing delay), next number, final, DNC.

A campaign stores overrides keyed by call result or by the agent's disposition code;
anything not overridden falls back to DEFAULT_TREATMENTS.
"""

from __future__ import annotations

from typing import Any

from ..errors import Invalid
from ..model.types import CallResult

ACTIONS = ("retry", "next_number", "final", "dnc")

# Sensible defaults a contact centre would start from (minutes).
DEFAULT_TREATMENTS: dict[str, dict[str, Any]] = {
    CallResult.BUSY: {"action": "retry", "delay_min": 10, "increment_min": 0, "factor": 1.0},
    CallResult.NO_ANSWER: {"action": "retry", "delay_min": 120, "increment_min": 0, "factor": 1.0},
    CallResult.ANSWERING_MACHINE: {"action": "retry", "delay_min": 240, "factor": 1.0},
    CallResult.SILENCE: {"action": "retry", "delay_min": 60, "factor": 1.0},
    CallResult.HANGUP: {"action": "retry", "delay_min": 60, "factor": 1.0},
    CallResult.CONGESTION: {"action": "retry", "delay_min": 5, "factor": 2.0},
    CallResult.FAILED: {"action": "retry", "delay_min": 30, "factor": 2.0},
    CallResult.ABANDONED: {"action": "retry", "delay_min": 60 * 72, "factor": 1.0},
    CallResult.CANCELLED: {"action": "retry", "delay_min": 1, "factor": 1.0},
    CallResult.FAX: {"action": "next_number"},
    CallResult.INVALID_NUMBER: {"action": "next_number"},
    CallResult.ANSWERED: {"action": "final"},
    CallResult.AGENT_CALLBACK: {"action": "final"},
}


def validate_treatment(key: str, t: dict[str, Any]) -> dict[str, Any]:
    action = t.get("action")
    if action not in ACTIONS:
        raise Invalid(f"treatment for {key!r}: action must be one of {', '.join(ACTIONS)}")
    out: dict[str, Any] = {"action": action}
    if action == "retry":
        for f, lo in (("delay_min", 0), ("increment_min", 0), ("factor", 1.0)):
            if f in t:
                try:
                    v = float(t[f])
                except (TypeError, ValueError):
                    raise Invalid(f"treatment for {key!r}: {f} must be a number") from None
                if v < lo:
                    raise Invalid(f"treatment for {key!r}: {f} must be at least {lo}")
                out[f] = v
        if "max_attempts" in t:
            out["max_attempts"] = int(t["max_attempts"])
    return out


def treatment_for(overrides: dict[str, Any], key: str) -> dict[str, Any]:
    if key in overrides:
        return dict(overrides[key])
    return dict(DEFAULT_TREATMENTS.get(key, {"action": "final"}))


def retry_delay_min(t: dict[str, Any], retry_no: int) -> float:
    """Delay before retry number `retry_no` (1 for the first retry): fixed, plus an increment
    per earlier retry, times a factor per earlier retry."""
    base = float(t.get("delay_min", 60))
    inc = float(t.get("increment_min", 0))
    factor = float(t.get("factor", 1.0))
    n = max(0, retry_no - 1)
    return (base + inc * n) * (factor**n)

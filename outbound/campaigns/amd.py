"""Answer classification policy: Asterisk's AMD verdict + the campaign's policy -> what
happens to the answered call (pure: no I/O).

AMD() reports AMDSTATUS (HUMAN, MACHINE, NOTSURE, HANGUP) and AMDCAUSE (e.g.
INITIALSILENCE-2500-2500, LONGGREETING-1500-1500, HUMAN-300-500). The campaign says what
NOTSURE means, what a machine gets (hang up, or a message after the beep), and AMD's
timing parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import Invalid
from ..model.types import CallResult

# AMD() positional parameters, in order, with Asterisk's defaults (ms / counts).
AMD_PARAMS: list[tuple[str, int]] = [
    ("initial_silence", 2500),
    ("greeting", 1500),
    ("after_greeting_silence", 800),
    ("total_analysis_time", 5000),
    ("min_word_length", 100),
    ("between_words_silence", 50),
    ("maximum_number_of_words", 2),
    ("silence_threshold", 256),
    ("maximum_word_length", 5000),
]

DEFAULT_POLICY: dict[str, Any] = {
    "notsure": "human",  # a person is worse to lose than a machine is to connect
    "machine": "hangup",  # or "message": play `message` after the beep
    "message": "",
}


@dataclass(frozen=True)
class Decision:
    result: CallResult  # what the attempt is recorded as
    route: str  # extension of outbound-after-classify: connect / abandon / hangup / message

    @property
    def is_human(self) -> bool:
        return self.route in ("connect", "abandon")


def amd_args(policy: dict[str, Any]) -> list[str]:
    """AMD()'s arguments from the campaign's policy (defaults where it says nothing)."""
    out = []
    for name, default in AMD_PARAMS:
        v = policy.get(name, default)
        if not isinstance(v, int) or not 0 < v <= 60_000:
            raise Invalid(f"AMD parameter {name} must be a whole number 1-60000, not {v!r}")
        out.append(str(v))
    return out


def decide(status: str, cause: str, policy: dict[str, Any], agent_reserved: bool) -> Decision:
    p = {**DEFAULT_POLICY, **policy}
    status = (status or "NOTSURE").upper()
    if status == "HANGUP":
        return Decision(CallResult.HANGUP, "hangup")
    if status == "NOTSURE":
        if cause.upper().startswith("INITIALSILENCE") and p["notsure"] != "human":
            return Decision(CallResult.SILENCE, "hangup")
        status = "HUMAN" if p["notsure"] == "human" else "MACHINE"
    if status == "MACHINE":
        if cause.upper().startswith("INITIALSILENCE"):
            return Decision(CallResult.SILENCE, "hangup")
        route = "message" if p["machine"] == "message" and p.get("message") else "hangup"
        return Decision(CallResult.ANSWERING_MACHINE, route)
    if agent_reserved:
        return Decision(CallResult.ANSWERED, "connect")
    return Decision(CallResult.ABANDONED, "abandon")

"""Answer classification policy: Asterisk's AMD verdict + the campaign's policy -> what
happens to the answered call (pure: no I/O).

AMD() reports AMDSTATUS (HUMAN, MACHINE, NOTSURE, HANGUP) and AMDCAUSE (e.g.
INITIALSILENCE-2500-2500, LONGGREETING-1500-1500, HUMAN-300-500). The campaign says what
NOTSURE means, what a machine gets (hang up, or a message after the beep), AMD's timing
parameters, and what a person hears when no agent is free (the identification message
and the opt-out key). The policy lives in `Campaign.amd_policy` (JSON): new keys need no
migration, and `validate_policy` checks every key this module reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import Invalid
from ..model.types import CallResult

# AMD() positional parameters, in order, with Asterisk's defaults (ms / counts).
# The defaults meet the 2-second rule on the sandbox: AMD decides HUMAN
# `after_greeting_silence` (800 ms) after a short greeting ends, which leaves over a
# second for the agent check and the ConfBridge join (tests/integration/test_routing.py).
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
    # Answered by a person and no agent free: the campaign's short identification
    # message (a sound name; "" falls back to the PBX's OUTBOUND_ABANDON_PROMPT global,
    # and without that the call is hung up silently).
    "abandon_message": "",
    # Pressing this key during or up to `optout_wait` seconds after that message puts
    # the number on the do-not-call list ("" offers no opt-out); `optout_confirm` is
    # played once it is recorded.
    "optout_key": "9",
    "optout_wait": 5,
    "optout_confirm": "removed",
    # "global": the person asked us, not one campaign, to stop calling (what opt-out
    # rules mean); "campaign" keeps the entry to this campaign's list.
    "optout_scope": "global",
    # Seconds of fax (CNG tone) detection from the start of classification; 0: off.
    "fax_detect": 6,
}

# A prompt as Playback()/Read() take it: sound names (letters, digits, _ and -, in up to
# three sub-folders of the sounds directory) joined by "&". No dot (so no "..", no
# extension), no leading "/" (only the sounds directory), no comma (an argument
# separator of the application), no "$" or quotes.
_SOUND = re.compile(r"[A-Za-z0-9_-]{1,64}(?:/[A-Za-z0-9_-]{1,64}){0,3}")
MAX_SOUNDS = 5
# Keys a person can press at Read(): not "#", which Read() takes as the end of input
# (the digit read would be empty, so a "#" opt-out could never be recorded).
OPTOUT_KEYS = frozenset("0123456789*")
LATE_CONNECT_MS = 2000  # the 2-second rule, from the end of the greeting


@dataclass(frozen=True)
class Decision:
    result: CallResult  # what the attempt is recorded as
    route: str  # extension of outbound-after-classify: connect / abandon / hangup / message
    why: str = ""  # for the audit: why a person was not connected

    @property
    def is_human(self) -> bool:
        return self.route in ("connect", "abandon")


@dataclass(frozen=True)
class AbandonPlan:
    """What an abandoned person hears, as dialplan values (all validated)."""

    prompt: str  # "" : keep the dialplan's OUTBOUND_ABANDON_PROMPT
    optout_key: str  # "" : no opt-out offered
    optout_wait: int  # seconds
    optout_confirm: str


def is_sound_name(value: object) -> bool:
    """True for a safe Playback()/Read() prompt: `hello`, `custom/acme-id`,
    `im-sorry&goodbye`; False for paths, dots, commas, variables, empty text."""
    if not isinstance(value, str) or not value:
        return False
    parts = value.split("&")
    return len(parts) <= MAX_SOUNDS and all(_SOUND.fullmatch(p) for p in parts)


def _sound(policy: dict[str, Any], key: str, *, empty_ok: bool) -> str:
    v = policy.get(key, DEFAULT_POLICY[key])
    if v == "" and empty_ok:
        return ""
    if not is_sound_name(v):
        raise Invalid(
            f"AMD policy {key} must be a sound name (letters, digits, _ - and / joined "
            f"by &, no dots or commas), not {v!r}"
        )
    return str(v)


def _choice(policy: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    v = policy.get(key, DEFAULT_POLICY[key])
    if v not in allowed:
        raise Invalid(f"AMD policy {key} must be one of {', '.join(allowed)}, not {v!r}")
    return str(v)


def _whole(policy: dict[str, Any], key: str, low: int, high: int) -> int:
    v = policy.get(key, DEFAULT_POLICY[key])
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise Invalid(f"AMD policy {key} must be a whole number {low}-{high}, not {v!r}")
    return v


def abandon_plan(policy: dict[str, Any]) -> AbandonPlan:
    """The abandon message and opt-out settings of a policy; Invalid if any is unsafe
    (the values become dialplan application arguments)."""
    key = policy.get("optout_key", DEFAULT_POLICY["optout_key"])
    if key == "#":
        raise Invalid(
            "AMD policy optout_key cannot be '#': Read() ends input on '#', so the key "
            "would never be seen; use 0-9 or *"
        )
    if not (key == "" or (isinstance(key, str) and len(key) == 1 and key in OPTOUT_KEYS)):
        raise Invalid(
            f"AMD policy optout_key must be one DTMF key 0-9 or * (or empty), not {key!r}"
        )
    return AbandonPlan(
        prompt=_sound(policy, "abandon_message", empty_ok=True),
        optout_key=key,
        optout_wait=_whole(policy, "optout_wait", 1, 30),
        optout_confirm=_sound(policy, "optout_confirm", empty_ok=False),
    )


def validate_policy(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy with defaults filled in, every key this module reads checked; Invalid
    says which key is wrong. Keys it does not know are left alone (other parts of the
    product may keep their own settings beside these)."""
    if not isinstance(policy, dict):
        raise Invalid(f"AMD policy must be a JSON object, not {type(policy).__name__}")
    p = {**DEFAULT_POLICY, **policy}
    _choice(p, "notsure", ("human", "machine"))
    machine = _choice(p, "machine", ("hangup", "message"))
    if machine == "message" and p.get("message") == "":
        # Else every machine would be hung up on, silently, against the campaign's intent.
        raise Invalid("AMD policy message (a sound name) is required when machine is 'message'")
    _sound(p, "message", empty_ok=True)
    _choice(p, "optout_scope", ("global", "campaign"))
    _whole(p, "fax_detect", 0, 30)
    abandon_plan(p)
    amd_args(p)
    return p


def amd_args(policy: dict[str, Any]) -> list[str]:
    """AMD()'s arguments from the campaign's policy (defaults where it says nothing)."""
    out = []
    for name, default in AMD_PARAMS:
        v = policy.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 60_000:
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
    return Decision(CallResult.ABANDONED, "abandon", "no agent reserved for the call")


def agent_availability(parties: str | None, marked: str | None) -> tuple[bool, str]:
    """Is the reserved agent free, from Asterisk's CONFBRIDGE_INFO(parties|marked, <the
    agent's conference>)? Free: the agent (the marked user) is in the conference and
    nobody else is (no contact, no third party). Returns (free, why not)."""
    try:
        n_parties, n_marked = int(parties or 0), int(marked or 0)
    except ValueError:
        return False, f"unreadable conference state (parties={parties!r}, marked={marked!r})"
    if n_marked < 1:
        return False, "agent not in their conference (not logged in)"
    if n_parties > n_marked:
        return False, f"agent busy ({n_parties - n_marked} other party in the conference)"
    return True, ""


def route_to_agent(decision: Decision, agent_free: bool, why: str) -> Decision:
    """A person decided for `connect` whose agent turns out not to be free is abandoned
    (the identification message, logged ABANDONED) rather than left waiting."""
    if decision.route == "connect" and not agent_free:
        return Decision(CallResult.ABANDONED, "abandon", why or "agent not free")
    return decision


def connect_delay_ms(decided_at: datetime, connected_at: datetime) -> int:
    """Milliseconds from AMD's decision to the contact's join into the agent's bridge."""
    return round((connected_at - decided_at).total_seconds() * 1000)


def is_late_connect(delay_ms: int | None, policy: dict[str, Any]) -> bool:
    """Did a connect break the 2-second rule? AMD decides HUMAN once the greeting has
    been followed by `after_greeting_silence` ms of silence, so the greeting ended that
    long before the decision: late when that plus the decision-to-join delay is over 2 s.
    No connect (None): not late."""
    if delay_ms is None:
        return False
    silence = policy.get("after_greeting_silence", dict(AMD_PARAMS)["after_greeting_silence"])
    return int(silence) + delay_ms > LATE_CONNECT_MS


def connect_timing(
    audit: dict[str, Any], connected_at: datetime | None, campaign_policy: dict[str, Any]
) -> dict[str, Any] | None:
    """The 2-second rule's audit entries (`connect_ms`, `late_connect`) of a connected
    call, once both ends are known: classify's decision (audit `decided_at`, ISO time)
    and the join (`connected_at`, set by the AMI bridge on ConfbridgeJoin). Whichever of
    the two writes comes second calls this, so nothing has to wait or poll. None while
    one end is missing, when already stored (the first computation stands), or when
    `decided_at` is unreadable. `campaign_policy` is the campaign's raw policy; an
    invalid one counts as the defaults, as it did for classify."""
    raw = audit.get("decided_at")
    if connected_at is None or "connect_ms" in audit or not isinstance(raw, str):
        return None
    try:
        decided = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if decided.tzinfo is None:
        decided = decided.replace(tzinfo=UTC)
    try:
        policy = validate_policy(campaign_policy)
    except Invalid:
        policy = dict(DEFAULT_POLICY)
    ms = connect_delay_ms(decided, connected_at)
    return {"connect_ms": ms, "late_connect": is_late_connect(ms, policy)}

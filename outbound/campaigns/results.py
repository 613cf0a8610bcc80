"""Dial results: from Asterisk's OriginateResponse reasons, DIALSTATUS and Q.850 hang-up
causes to the one vocabulary of call results (outbound.model.types.CallResult)."""

from __future__ import annotations

from ..model.types import CallResult

R = CallResult

# OriginateResponse "Reason" (the AST_CONTROL_* code that ended the outgoing leg).
ORIGINATE_REASONS: dict[int, CallResult] = {
    0: R.FAILED,  # no such channel / technology refused / dial string empty
    1: R.HANGUP,  # hung up before answer by the far end (cause decides, see below)
    3: R.NO_ANSWER,  # rang out
    4: R.ANSWERED,
    5: R.BUSY,
    8: R.CONGESTION,
}

# Q.850 causes that say more than the reason does.
INVALID_CAUSES = frozenset({1, 3, 22, 28})  # unallocated, no route, number changed, bad format
BUSY_CAUSES = frozenset({17})
NO_ANSWER_CAUSES = frozenset({18, 19, 20})  # no user responding, no answer, subscriber absent
CONGESTION_CAUSES = frozenset({27, 34, 38, 41, 42, 44, 47})  # network/circuit trouble
REJECTED_CAUSES = frozenset({21})  # call rejected

DIAL_STATUSES: dict[str, CallResult] = {
    "ANSWER": R.ANSWERED,
    "BUSY": R.BUSY,
    "NOANSWER": R.NO_ANSWER,
    "CONGESTION": R.CONGESTION,
    "CANCEL": R.CANCELLED,
    "CHANUNAVAIL": R.CONGESTION,
    "INVALIDARGS": R.FAILED,
}


def from_cause(cause: int | None) -> CallResult | None:
    """The result a hang-up cause implies on its own, or None when it says nothing special."""
    if cause is None:
        return None
    if cause in INVALID_CAUSES:
        return R.INVALID_NUMBER
    if cause in BUSY_CAUSES:
        return R.BUSY
    if cause in NO_ANSWER_CAUSES:
        return R.NO_ANSWER
    if cause in CONGESTION_CAUSES:
        return R.CONGESTION
    if cause in REJECTED_CAUSES:
        return R.FAILED
    return None


def dial_result(
    *, reason: int | None = None, dial_status: str | None = None, cause: int | None = None
) -> CallResult:
    """Combine what Asterisk told us about an unanswered (or answered) dial.

    The dialplan's OutboundDialResult (DIALSTATUS + cause) is the most precise; then the
    cause; then the OriginateResponse reason. A specific cause (e.g. 1, number not in
    service) wins over a generic status (CHANUNAVAIL, or reason 0/1/8)."""
    by_cause = from_cause(cause)
    if dial_status:
        status = dial_status.upper()
        if status == "ANSWER":
            return R.ANSWERED
        if by_cause is R.INVALID_NUMBER:
            return by_cause
        if status in DIAL_STATUSES:
            return DIAL_STATUSES[status]
    if by_cause is not None:
        return by_cause
    if reason is not None:
        return ORIGINATE_REASONS.get(reason, R.FAILED)
    return R.FAILED

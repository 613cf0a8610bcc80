"""One small function per AMI action the bridge uses, each taking the connection first.

Every value goes through `outbound.wire` (the connection checks each header; variables
are built with `channel_variable`). Failures are `AmiError` subclasses from
`ami_bridge.connection`: `AmiActionFailed` when Asterisk answers Error, `AmiTimeout`,
`AmiConnectionLost`, `AmiNotReady`. An action on a channel that does not exist (any more)
raises `NoSuchChannel`, an `AmiActionFailed`, so callers can tell "the call is gone" from
"Asterisk refused". Channels may be named by channel name or by Uniqueid (the ChannelId
given at Originate): Asterisk looks both up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from panoramisk.message import Message

from ami_bridge.connection import AmiActionFailed, AmiConnection
from outbound.wire import channel_variable, check_key, check_value

__all__ = [
    "NoSuchChannel",
    "bridge_info",
    "bridge_list",
    "confbridge_kick",
    "confbridge_list",
    "confbridge_mute",
    "confbridge_unmute",
    "core_show_channels",
    "getvar",
    "hangup",
    "originate",
    "play_dtmf",
    "redirect",
    "setvar",
    "status",
]

DTMF_DIGIT = re.compile(r"^[0-9*#A-Da-d]\Z")
# What Asterisk answers (Hangup, Redirect, Setvar/Getvar, PlayDTMF, Status) when the
# channel is not there.
_GONE = ("no such channel", "does not exist", "channel not found")
_NO_CONFERENCE = ("no active conferences", "no conference by that name")


class NoSuchChannel(AmiActionFailed):
    """Asterisk says the channel does not exist: it hung up, or never was. Nothing ran."""


async def _on_channel(
    conn: AmiConnection, action: str, fields: Mapping[str, Any], timeout: float | None
) -> Message:
    try:
        return await conn.send(action, fields, timeout=timeout)
    except AmiActionFailed as exc:
        if any(s in str(exc.response.get("Message", "")).lower() for s in _GONE):
            raise NoSuchChannel(action, exc.response) from None
        raise


async def originate(
    conn: AmiConnection,
    channel: str,
    *,
    context: str,
    exten: str,
    priority: int = 1,
    channel_id: str | None = None,
    variables: Mapping[str, object] | None = None,
    timeout_ms: int = 30000,
    caller_id: str | None = None,
    account: str | None = None,
    timeout: float | None = None,
) -> Message:
    """AMI `Originate` with `Async: true` into a dialplan location: returns as soon as
    Asterisk queued it ("Originate successfully queued"); the outcome comes later as the
    `OriginateResponse` event whose Uniqueid is `channel_id` (fire and track, never
    awaited here). Variables become `Variable: NAME=value` headers. Raises
    AmiActionFailed if Asterisk refuses (permission, bad channel technology)."""
    fields: dict[str, Any] = {
        "Channel": channel,
        "Context": context,
        "Exten": exten,
        "Priority": str(priority),
        "Async": "true",
        "Timeout": str(int(timeout_ms)),
    }
    if channel_id is not None:
        fields["ChannelId"] = channel_id
    if caller_id is not None:
        fields["CallerID"] = caller_id
    if account is not None:
        fields["Account"] = account
    if variables:
        fields["Variable"] = [channel_variable(k, v) for k, v in variables.items()]
    return await conn.send("Originate", fields, timeout=timeout)


async def hangup(
    conn: AmiConnection, channel: str, cause: int = 16, *, timeout: float | None = None
) -> Message:
    """AMI `Hangup` of one channel with a Q.850 cause (16 normal clearing). Raises
    NoSuchChannel if it is already gone."""
    return await _on_channel(conn, "Hangup", {"Channel": channel, "Cause": str(cause)}, timeout)


async def redirect(
    conn: AmiConnection,
    channel: str,
    context: str,
    exten: str,
    priority: int = 1,
    extra_channel: str | None = None,
    extra_context: str | None = None,
    extra_exten: str | None = None,
    extra_priority: int | None = None,
    *,
    timeout: float | None = None,
) -> Message:
    """AMI `Redirect`: send a channel (out of whatever it runs, a ConfBridge included) to a
    dialplan location; with `extra_channel`, a second one at the same moment (to the same
    place unless `extra_*` say otherwise). Raises NoSuchChannel if a channel is gone."""
    fields: dict[str, Any] = {
        "Channel": channel,
        "Context": context,
        "Exten": exten,
        "Priority": str(priority),
    }
    if extra_channel is not None:
        fields["ExtraChannel"] = extra_channel
        fields["ExtraContext"] = extra_context or context
        fields["ExtraExten"] = extra_exten or exten
        fields["ExtraPriority"] = str(extra_priority if extra_priority is not None else priority)
    return await _on_channel(conn, "Redirect", fields, timeout)


async def setvar(
    conn: AmiConnection, channel: str, name: str, value: object, *, timeout: float | None = None
) -> Message:
    """AMI `Setvar` of a channel variable (the value is stored as is, never evaluated).
    Raises NoSuchChannel if the channel is gone."""
    check_key(name)
    fields = {"Channel": channel, "Variable": name, "Value": check_value(name, value)}
    return await _on_channel(conn, "Setvar", fields, timeout)


async def getvar(
    conn: AmiConnection, channel: str, name: str, *, timeout: float | None = None
) -> str | None:
    """AMI `Getvar` of a channel variable (or function, e.g. `CHANNEL(name)`); None when
    unset. Raises NoSuchChannel if the channel is gone."""
    resp = await _on_channel(
        conn, "Getvar", {"Channel": channel, "Variable": check_key(name)}, timeout
    )
    value = resp.get("Value")
    return None if value in (None, "", "(null)") else str(value)


async def play_dtmf(
    conn: AmiConnection,
    channel: str,
    digit: str,
    duration_ms: int = 120,
    *,
    timeout: float | None = None,
) -> Message:
    """AMI `PlayDTMF`: send one DTMF digit out of `channel` (towards its far end; Asterisk
    answers after the digit's duration). Raises ValueError for anything but 0-9 * # A-D,
    NoSuchChannel if the channel is gone."""
    if not isinstance(digit, str) or not DTMF_DIGIT.match(digit):
        raise ValueError(f"not a DTMF digit: {digit!r}")
    fields = {"Channel": channel, "Digit": digit.upper(), "Duration": str(int(duration_ms))}
    return await _on_channel(conn, "PlayDTMF", fields, timeout)


async def confbridge_list(
    conn: AmiConnection, conference: str, *, timeout: float | None = None
) -> list[Message]:
    """AMI `ConfbridgeList`: the members of one conference (`ConfbridgeList` events with
    Channel, Uniqueid, MarkedUser, Muted...); [] when the conference does not exist."""
    try:
        return await conn.send_list("ConfbridgeList", {"Conference": conference}, timeout=timeout)
    except AmiActionFailed as exc:
        if any(s in str(exc.response.get("Message", "")).lower() for s in _NO_CONFERENCE):
            return []
        raise


async def confbridge_kick(
    conn: AmiConnection, conference: str, channel: str, *, timeout: float | None = None
) -> Message:
    """AMI `ConfbridgeKick` of a member (by channel name) out of a conference. Raises
    AmiActionFailed if the conference or the member is not there."""
    return await conn.send(
        "ConfbridgeKick", {"Conference": conference, "Channel": channel}, timeout=timeout
    )


async def confbridge_mute(
    conn: AmiConnection, conference: str, channel: str, *, timeout: float | None = None
) -> Message:
    """AMI `ConfbridgeMute` of a member (by channel name). Raises AmiActionFailed if the
    conference or the member is not there."""
    return await conn.send(
        "ConfbridgeMute", {"Conference": conference, "Channel": channel}, timeout=timeout
    )


async def confbridge_unmute(
    conn: AmiConnection, conference: str, channel: str, *, timeout: float | None = None
) -> Message:
    """AMI `ConfbridgeUnmute` of a member (by channel name). Raises AmiActionFailed if the
    conference or the member is not there."""
    return await conn.send(
        "ConfbridgeUnmute", {"Conference": conference, "Channel": channel}, timeout=timeout
    )


async def core_show_channels(conn: AmiConnection, *, timeout: float | None = None) -> list[Message]:
    """AMI `CoreShowChannels`: one `CoreShowChannel` event per live channel (Channel,
    Uniqueid, Application, ApplicationData, BridgeId...). Raises AmiError on failure."""
    return await conn.send_list("CoreShowChannels", timeout=timeout)


async def bridge_list(
    conn: AmiConnection, bridge_type: str | None = None, *, timeout: float | None = None
) -> list[Message]:
    """AMI `BridgeList`: one `BridgeListItem` per bridge (BridgeUniqueid, BridgeType,
    BridgeNumChannels...), optionally of one type (basic, base...)."""
    fields = {"BridgeType": bridge_type} if bridge_type else None
    return await conn.send_list("BridgeList", fields, timeout=timeout)


async def bridge_info(
    conn: AmiConnection, bridge_id: str, *, timeout: float | None = None
) -> list[Message]:
    """AMI `BridgeInfo`: one `BridgeInfoChannel` event per channel in the bridge. Raises
    AmiActionFailed if the bridge does not exist."""
    return await conn.send_list("BridgeInfo", {"BridgeUniqueid": bridge_id}, timeout=timeout)


async def status(conn: AmiConnection, channel: str, *, timeout: float | None = None) -> Message:
    """AMI `Status` of one channel: its `Status` event (Channel = current name, Uniqueid,
    Application, Data, BridgeID, Context...). Raises NoSuchChannel if it is gone."""
    try:
        events = await conn.send_list("Status", {"Channel": channel}, timeout=timeout)
    except AmiActionFailed as exc:
        if any(s in str(exc.response.get("Message", "")).lower() for s in _GONE):
            raise NoSuchChannel("Status", exc.response) from None
        raise
    for ev in events:
        if ev.get("Event") == "Status":
            return ev
    raise NoSuchChannel("Status", Message({"Response": "Error", "Message": "No such channel"}))

"""The bridge refuses to run with an AMI account that has more rights than it needs.

Asterisk cannot list an account's own classes over AMI, so the bridge probes: it asks for
things only an over-privileged account may do, each harmless if it does succeed
(read-only), and expects "Permission denied" for every one."""

from __future__ import annotations

from .connection import AmiActionFailed, AmiConnection, AmiError

# action, fields, the class that would allow it
PROBES: list[tuple[str, dict[str, str], str]] = [
    ("Command", {"Command": "core show uptime"}, "command"),
    ("GetConfig", {"Filename": "manager.conf"}, "config"),
    # Writes a harmless key if it is allowed at all (DBGet is open to 'reporting').
    ("DBPut", {"Family": "outbound-probe", "Key": "probe", "Val": "1"}, "system"),
]


class TooManyRights(AmiError):
    """The AMI account may do things the dialer never needs; run it with least privilege."""


async def excess_rights(ami: AmiConnection) -> list[str]:
    """The classes the account has beyond what the dialer needs (empty list: fine)."""
    excess = []
    for action, fields, cls in PROBES:
        try:
            await ami.send(action, fields, timeout=5)
        except AmiActionFailed as exc:
            if "permission denied" in str(exc).lower():
                continue
            excess.append(cls)  # refused for another reason: it got past the check
        else:
            excess.append(cls)
    return excess


async def ensure_least_privilege(ami: AmiConnection) -> None:
    extra = await excess_rights(ami)
    if extra:
        raise TooManyRights(
            "the AMI account has rights the dialer must not have ("
            + ", ".join(extra)
            + "): use asterisk_conf/manager_outbound.conf (read=call,dtmf,user,system "
            "write=originate,call,reporting)"
        )

"""Checks on every value bound for Asterisk (AMI headers, AGI arguments, channel variables).

A CR or LF inside an AMI header value ends the header and lets the rest become a new header
(or a whole new action); in AGI it becomes a second command. NUL truncates in C. So every
value is checked here before anything is written to a socket, and refused with a clear
error instead of being "cleaned" into something nobody asked for.
"""

from __future__ import annotations

import re

# Asterisk 22 rejects an AMI header line of about 1022 bytes or more ("line too long"),
# which would turn a long value into a failed action: stay well below, in UTF-8 bytes.
MAX_VALUE = 900
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_()-]{0,79}")
_BAD = ("\r", "\n", "\0")


class UnsafeValue(ValueError):
    """A value would change the meaning of the protocol stream; nothing was sent."""


def check_value(name: str, value: object, max_len: int = MAX_VALUE) -> str:
    """Return `value` as text if it is safe on the wire, else raise UnsafeValue naming it."""
    if isinstance(value, bytes | bytearray | memoryview):
        # str() would send the repr ("b'\\xff'"): text nobody asked for.
        raise UnsafeValue(f"{name}: bytes, not text; decode them first; refused")
    text = value if isinstance(value, str) else str(value)
    for ch in _BAD:
        if ch in text:
            what = {"\r": "CR", "\n": "LF", "\0": "NUL"}[ch]
            raise UnsafeValue(f"{name}: contains {what}; refused before sending")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnsafeValue(f"{name}: not valid UTF-8 text; refused") from None
    if size > max_len:
        raise UnsafeValue(f"{name}: {size} bytes, more than {max_len}; refused")
    return text


def check_key(name: str) -> str:
    if not _KEY.fullmatch(name):  # fullmatch: "$" would accept a trailing newline
        raise UnsafeValue(f"header or variable name {name!r} is not a plain identifier")
    return name


def check_fields(fields: dict[str, object]) -> dict[str, str | list[str]]:
    """Check every key and value of an AMI action; lists (e.g. Variable) element by element."""
    out: dict[str, str | list[str]] = {}
    for k, v in fields.items():
        check_key(k)
        if isinstance(v, list | tuple):
            out[k] = [check_value(f"{k}[{i}]", x) for i, x in enumerate(v)]
        else:
            out[k] = check_value(k, v)
    return out


def channel_variable(name: str, value: object) -> str:
    """`NAME=value` for an Originate/Setvar Variable header, both halves checked."""
    check_key(name)
    return f"{name}={check_value(name, value)}"

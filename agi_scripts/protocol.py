"""The AGI wire format, pure: command lines out, header and answer lines in.

No sockets here; `agi_scripts.server` does the I/O. Everything a handler hands to Asterisk
becomes an argument of one command line, built by `format_command`:

* every argument goes inside double quotes, with ``\\`` and ``"`` escaped by a backslash:
  res_agi's argument parser (``parse_args`` in res_agi.c) splits on blanks outside double
  quotes and drops a backslash before the character it escapes, so a quoted and escaped
  value comes back as exactly one argument, byte for byte;
* a value holding CR, LF or NUL is refused (`outbound.wire.check_value`): a line break
  would end the command and let the rest of the value run as a second AGI command;
* a line longer than res_agi reads (AGI_BUF_LEN, 2048 bytes) is refused too, since
  Asterisk would cut it and run the remains as another command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from outbound.wire import UnsafeValue, check_key, check_value

__all__ = [
    "MAX_COMMAND_BYTES",
    "Answer",
    "AgiError",
    "AgiHangup",
    "AgiProtocolError",
    "AgiTimeout",
    "UnsafeValue",
    "format_command",
    "parse_answer",
    "parse_header_line",
    "quote_arg",
]

# res_agi reads a command into a 2048-byte buffer (AGI_BUF_LEN); keep well inside it.
MAX_COMMAND_BYTES = 2000

_WORD = re.compile(r"^[A-Z][A-Z ]*[A-Z]\Z")
_HEADER = re.compile(r"^(agi_[a-z0-9_]{1,64}): ?(.*)$")
_ANSWER = re.compile(r"^(\d{3})([ -])(.*)$")
_RESULT = re.compile(r"^result=(-?\d+)(.*)$")


class AgiError(Exception):
    """The AGI session cannot go on (base of every error of this package)."""


class AgiHangup(AgiError):
    """The channel hung up (``HANGUP``, ``511`` or ``result=-1``): the session ends.
    The server swallows it; a handler may catch it to clean up."""


class AgiProtocolError(AgiError):
    """The peer sent something that is not AGI (oversize, garbage, early EOF)."""


class AgiTimeout(AgiError):
    """The peer did not answer within the deadline."""


@dataclass(frozen=True)
class Answer:
    """One answer to a command: ``200 result=1 (value) endpos=0`` gives code 200,
    result 1, data ``value`` and rest ``endpos=0``."""

    code: int
    result: int
    data: str | None
    rest: str
    line: str


def quote_arg(name: str, value: object) -> str:
    """One command argument, checked and quoted; `name` says which in an UnsafeValue."""
    text = check_value(name, value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_command(command: str, *args: object) -> bytes:
    """``COMMAND "arg1" "arg2"\\n`` as bytes. `command` is a fixed word sequence of
    ours (``SET VARIABLE``), never data; every argument is quoted by `quote_arg`."""
    if not _WORD.match(command):
        raise UnsafeValue(f"AGI command {command!r} is not a plain upper-case word sequence")
    parts = [command, *(quote_arg(f"{command} argument {i + 1}", a) for i, a in enumerate(args))]
    line = (" ".join(parts) + "\n").encode("utf-8")
    if len(line) > MAX_COMMAND_BYTES:
        raise UnsafeValue(f"{command}: {len(line)} bytes, more than {MAX_COMMAND_BYTES}; refused")
    return line


def variable_name(name: str) -> str:
    """A channel variable or function name (``OUTBOUND_NEXT``, ``CDR(userfield)``)."""
    return check_key(name)


def parse_header_line(line: str) -> tuple[str, str]:
    """``agi_channel: PJSIP/1-0001`` -> (``agi_channel``, ``PJSIP/1-0001``); anything
    else raises AgiProtocolError."""
    m = _HEADER.match(line)
    if not m:
        raise AgiProtocolError(f"not an AGI header line: {line[:60]!r}")
    return m.group(1), m.group(2)


def parse_answer(line: str) -> Answer:
    """Parse one answer line (without its newline). ``511`` (dead channel) and
    ``result=-1`` raise AgiHangup; other codes than 200 raise AgiError."""
    m = _ANSWER.match(line)
    if not m:
        raise AgiProtocolError(f"not an AGI answer: {line[:60]!r}")
    code, text = int(m.group(1)), m.group(3)
    if code == 511:
        raise AgiHangup(f"channel is dead: {line[:80]}")
    if code != 200:
        raise AgiError(f"AGI answered {line[:200]!r}")
    r = _RESULT.match(text)
    if not r:
        raise AgiProtocolError(f"200 answer without result: {line[:60]!r}")
    result, rest = int(r.group(1)), r.group(2)
    if result == -1:
        raise AgiHangup(f"command failed on a hung-up channel: {line[:80]}")
    data = None
    rest = rest.strip()
    if rest.startswith("("):
        # The value may itself hold ") " (GET VARIABLE gives it raw): take the last ")".
        end = rest.rfind(")")
        if end > 0:
            data, rest = rest[1:end], rest[end + 1 :].strip()
    return Answer(code=code, result=result, data=data, rest=rest, line=line)

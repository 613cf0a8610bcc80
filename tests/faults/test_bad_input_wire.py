"""Hypothesis over every value the bridge hands to AMI and the AGI server hands to
res_agi, through the real builders and (for AMI) the real connection to a fake AMI
server on loopback: each value is either refused with UnsafeValue (or, for a DTMF
digit, ValueError) before a byte is written, or it arrives as exactly one header line
(one AGI command line) holding exactly that value. Values: CR, LF, NUL, quotes,
backslashes, any Unicode, lone surrogates (what non-UTF-8 bytes become when decoded
with surrogateescape), raw bytes, and more than 8 KB.

tests/unit/test_wire.py holds the same properties for the checks alone, without a
builder or a socket, and tests/unit/test_agi_protocol.py the AGI quoting of short
values; here it is end to end on the wire."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agi_scripts.protocol import format_command
from ami_bridge import actions
from ami_bridge.connection import AmiConnection
from outbound.wire import UnsafeValue
from tests.helpers import fake_ami
from tests.helpers.fake_ami import EOM, SECRET, FakeAmi
from tests.unit.test_agi_protocol import res_agi_split

OK = "Response: Success\r\nActionID: {aid}\r\nMessage: ok\r\n\r\n"
FAST = settings(
    database=None,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Anything a contact file, a web form or a database row could hold.
hostile = (
    st.text(max_size=40)
    | st.builds(
        lambda a, b, c: a + b + c,
        st.text(max_size=20),
        st.sampled_from(["\r", "\n", "\0", "\r\n", "\r\n\r\nAction: Command\r\n", '"', "\\"]),
        st.text(max_size=20),
    )
    | st.integers(0xD800, 0xDFFF).map(lambda c: "name" + chr(c))
    | st.binary(min_size=1, max_size=20)
    | st.integers(8 * 1024, 12 * 1024).map(lambda n: "x" * n)
)
EXAMPLES = [
    '"Eve" <1>\r\nAction: Originate\r\nChannel: Local/666@outbound-dial',
    "Eve\r\n\r\nAction: Command\r\nCommand: core stop now",
    b"\xff\xfe caf\xe9",
    "café".encode("latin-1").decode("utf-8", "surrogateescape"),
    "C:\\dial\\\\plan \\r\\n \"quoted\" 'single' ${EXTEN} $[1+1] ;,|=:",
    "x" * 9000,
    "",
]
ORIGINATE_FIELDS = ["caller_id", "channel", "variable", "exten"]
CHANNEL_ACTIONS = ["setvar", "dtmf", "kick", "mute", "redirect"]
AGI_COMMANDS = ["SET VARIABLE", "EXEC", "VERBOSE"]


class Wire:
    """A logged-in AmiConnection on a fake AMI server, driven from a sync test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = FakeAmi()
        self.run(self.server.start())
        self.conn = AmiConnection("127.0.0.1", self.server.port, "outbound", SECRET)
        self.run(self.conn.start(wait=3))

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.conn.close())
        self.run(self.server.stop())
        self.loop.close()

    def send(self, call: Callable[[AmiConnection], Awaitable[Any]]) -> list[tuple[str, bytes]]:
        """Run one builder; the header lines it put on the wire (after the server read
        them), or the refusal it raised with nothing written."""
        before = len(self.server.raw)
        try:
            self.run(call(self.conn))
        except (UnsafeValue, ValueError):
            self.run(self.conn.send("Ping"))  # whatever was written has arrived by now
            assert self.server.raw[before:].startswith(b"Action: Ping\r\n"), "bytes leaked"
            raise
        packet = bytes(self.server.raw[before:])
        assert packet.endswith(EOM) and packet.count(EOM) == 1, packet[:200]
        lines = packet[: -len(EOM)].split(b"\r\n")
        for line in lines:
            assert b"\r" not in line and b"\n" not in line and b"\0" not in line, line
        return [(k.decode(), v) for k, _, v in (line.partition(b": ") for line in lines)]


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Iterator[Wire]:
    for name in ("setvar", "playdtmf", "redirect", "confbridgekick", "confbridgemute"):
        monkeypatch.setitem(fake_ami.ANSWERS, name, OK)
    w = Wire()
    yield w
    w.close()


def expect_wire(value: object) -> bytes:
    """The bytes a value must arrive as: its text in UTF-8, nothing added or removed."""
    assert not isinstance(value, bytes), "bytes must be refused, not sent as their repr"
    return str(value).encode("utf-8")


def refused_or_sent(wire: Wire, call: Callable[[AmiConnection], Awaitable[Any]]) -> Any:
    try:
        return wire.send(call)
    except (UnsafeValue, ValueError) as exc:
        assert str(exc), "a refusal names what was wrong"
        return None


def with_examples(other: str, options: list[str]) -> Callable[[Any], Any]:
    """Every hand-picked value at every place `other` names."""

    def deco(fn: Any) -> Any:
        for e in EXAMPLES:
            for o in options:
                fn = example(value=e, **{other: o})(fn)
        return fn

    return deco


def test_given_hostile_originate_fields_then_refused_or_one_line_each_with_exactly_the_value(
    wire: Wire,
) -> None:
    @FAST
    @given(value=hostile, where=st.sampled_from(ORIGINATE_FIELDS))
    @with_examples("where", ORIGINATE_FIELDS)
    def prop(value: Any, where: str) -> None:
        kw: dict[str, Any] = {"context": "outbound-dial", "exten": "s", "channel_id": "att-1"}
        channel = "Local/+12125550101@outbound-dial"
        if where == "caller_id":
            kw["caller_id"] = value
        elif where == "channel":
            channel = value
        elif where == "exten":
            kw["exten"] = value
        else:
            kw["variables"] = {"OUTBOUND_CONTACT_NAME": value, "OUTBOUND_ATTEMPT_ID": "att-1"}
        sent = refused_or_sent(wire, lambda c: actions.originate(c, channel, **kw))
        if sent is None:
            return
        got = dict(sent)
        header = {"caller_id": "CallerID", "channel": "Channel", "exten": "Exten"}.get(where)
        if header is not None:
            assert got[header] == expect_wire(value)
        else:
            variables = [v for k, v in sent if k == "Variable"]
            assert variables[0] == b"OUTBOUND_CONTACT_NAME=" + expect_wire(value)
            assert variables[1] == b"OUTBOUND_ATTEMPT_ID=att-1"

    prop()


def test_given_hostile_channel_variable_conference_and_dtmf_values_then_refused_or_exact(
    wire: Wire,
) -> None:
    @FAST
    @given(value=hostile, which=st.sampled_from(CHANNEL_ACTIONS))
    @with_examples("which", CHANNEL_ACTIONS)
    def prop(value: Any, which: str) -> None:
        chan = "PJSIP/agent-00000001"
        if which == "dtmf" and isinstance(value, bytes):
            # play_dtmf takes str (mypy holds callers to it); bytes as a decoded form.
            value = value.decode("utf-8", "surrogateescape")
        call: dict[str, Callable[[AmiConnection], Awaitable[Any]]] = {
            "setvar": lambda c: actions.setvar(c, chan, "OUTBOUND_NOTE", value),
            "dtmf": lambda c: actions.play_dtmf(c, chan, value),
            "kick": lambda c: actions.confbridge_kick(c, value, chan),
            "mute": lambda c: actions.confbridge_mute(c, "agent-1001", value),
            "redirect": lambda c: actions.redirect(c, chan, "outbound-agent", value),
        }
        header = {"setvar": "Value", "dtmf": "Digit", "kick": "Conference"}.get(which)
        header = header or {"mute": "Channel", "redirect": "Exten"}[which]
        sent = refused_or_sent(wire, call[which])
        if sent is None:
            return
        expected = expect_wire(value)
        if which == "dtmf":
            assert len(expected) == 1 and expected.upper() in b"0123456789*#ABCD"
            expected = expected.upper()
        assert dict(sent)[header] == expected

    prop()


@FAST
@given(value=hostile, command=st.sampled_from(AGI_COMMANDS))
@with_examples("command", AGI_COMMANDS)
@example(value="y" * 1990, command="VERBOSE")  # over the 2000 bytes res_agi reads, with quotes
def test_given_hostile_agi_arguments_then_refused_or_one_command_line_that_splits_back(
    value: Any, command: str
) -> None:
    try:
        line = format_command(command, "OUTBOUND_NOTE", value)
    except UnsafeValue as exc:
        assert str(exc).startswith(command)
        return
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert b"\r" not in line and b"\0" not in line and len(line) <= 2000
    assert res_agi_split(line.decode("utf-8")) == [
        *command.split(),
        "OUTBOUND_NOTE",
        expect_wire(value).decode("utf-8"),
    ]

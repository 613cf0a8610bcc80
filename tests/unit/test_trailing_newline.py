"""A trailing newline must never pass a validator: Python's `$` matches before one.
(Found by the hypothesis property on header names; every validator is checked here.)"""

from __future__ import annotations

import pytest

from agi_scripts.protocol import format_command
from ami_bridge.control import DialTemplates, InvalidTarget
from outbound.agents import AGENT_ID, EXTENSION
from outbound.wire import UnsafeValue, check_key


@pytest.mark.parametrize("tail", ["\n", "\r\n", "\r"])
def test_validators_refuse_a_trailing_line_break(tail: str) -> None:
    with pytest.raises(UnsafeValue):
        check_key("Variable" + tail)
    assert AGENT_ID.match("1001" + tail) is None
    assert EXTENSION.match("PJSIP/1001" + tail) is None
    with pytest.raises(InvalidTarget):
        DialTemplates().target("+4930123456" + tail)
    with pytest.raises(ValueError):
        format_command("GET VARIABLE" + tail, "X")

"""Every wire name declared in outbound/names.py is the one the shipped dialplan uses."""

from __future__ import annotations

from importlib import resources

from outbound import names


def _conf(name: str) -> str:
    return resources.files("asterisk_conf").joinpath(name).read_text()


def test_every_context_in_names_is_defined_in_the_dialplan() -> None:
    text = _conf("extensions_outbound.conf") + _conf("sandbox/extensions.conf")
    for attr in dir(names):
        if attr.startswith("CTX_"):
            assert f"[{getattr(names, attr)}]" in text, attr


def test_every_variable_and_event_in_names_is_used_by_the_dialplan() -> None:
    text = _conf("extensions_outbound.conf")
    for attr in dir(names):
        if attr.startswith(("VAR_", "EVENT_")) and attr not in {
            "VAR_CAMPAIGN_ID",
            "VAR_CONTACT_ID",
            "VAR_NUMBER",  # read by AGI, not dialplan
        }:
            assert getattr(names, attr) in text, attr


def test_confbridge_profiles_exist() -> None:
    text = _conf("confbridge_outbound.conf")
    for p in (names.CONFBRIDGE_PROFILE, names.CONFBRIDGE_AGENT_USER, names.CONFBRIDGE_CONTACT_USER):
        assert f"[{p}]" in text
    assert names.agent_bridge("1001") == "outbound-agent-1001"
    assert "ConfBridge(outbound-agent-${OUTBOUND_AGENT}" in _conf("extensions_outbound.conf")

"""The pure parts of `outbound asterisk install-conf` and `check` (no Asterisk needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from outbound.asterisk_install import (
    APP_MODULES,
    FUNCTION_MODULES,
    CheckReport,
    apply_plan,
    dialplan_uses,
    judge_actions,
    needed_modules,
    plan_install,
    snippet_text,
)
from outbound.errors import Invalid


def test_every_application_and_function_of_the_dialplan_has_a_known_module() -> None:
    apps, funcs = dialplan_uses(snippet_text("extensions_outbound.conf"))
    assert {"Dial", "ConfBridge", "AGI", "Return", "Set"} <= apps  # ExecIf's branch too
    assert {"FILTER", "CONFBRIDGE_INFO", "BASE64_DECODE", "CDR"} <= funcs
    assert apps - APP_MODULES.keys() == set(), "add these applications to APP_MODULES"
    assert funcs - FUNCTION_MODULES.keys() == set(), "add these functions to FUNCTION_MODULES"


def test_needed_modules_name_why_and_follow_the_trunk_template() -> None:
    dialplan = snippet_text("extensions_outbound.conf")
    needs = {n.module: n for n in needed_modules(dialplan, ["PJSIP/${NUMBER}@trunk"])}
    assert "AMD()" in needs["app_amd"].why
    assert "AMI PlayDTMF" in needs["app_senddtmf"].why
    assert needs["chan_pjsip"].required and not needs["res_fax"].required
    local = {n.module for n in needed_modules(dialplan, ["Local/${NUMBER}@sim-contacts"])}
    assert "chan_pjsip" not in local


def _etc(tmp_path: Path, manager: str, extensions: str = "[general]\n") -> Path:
    (tmp_path / "manager.conf").write_text(manager)
    (tmp_path / "extensions.conf").write_text(extensions)
    return tmp_path


def test_debians_quoted_manager_d_include_counts_as_present(tmp_path: Path) -> None:
    etc = _etc(tmp_path, '[general]\nenabled = yes\n\n#include "manager.d/*.conf" \n')
    plan = plan_install(etc)
    changed = {c.path.name for c in plan.changes}
    assert "manager.conf" not in changed and "outbound.conf" in changed
    assert plan.notes == ()


def test_a_config_without_globals_gets_one_and_ami_off_is_noted(tmp_path: Path) -> None:
    etc = _etc(tmp_path, "[general]\nenabled = no\n")
    plan = plan_install(etc, agi_host="10.0.0.5", agi_port=4600)
    ext = next(c.new for c in plan.changes if c.path.name == "extensions.conf")
    assert "[globals]\nOUTBOUND_AGI_BASE = agi://10.0.0.5:4600" in ext
    assert ext.index("[globals]") < ext.index("#include extensions_outbound.conf")
    assert any("enabled = no" in n for n in plan.notes)
    assert plan.secret not in plan.diff() and "secret = ***" in plan.diff()


def test_an_old_agi_base_in_globals_is_replaced_not_added(tmp_path: Path) -> None:
    etc = _etc(tmp_path, "[general]\n", "[globals]\nOUTBOUND_AGI_BASE = agi://old:1\n")
    ext = next(c.new for c in plan_install(etc).changes if c.path.name == "extensions.conf")
    assert ext.count("OUTBOUND_AGI_BASE") == 1 and "agi://127.0.0.1:4573" in ext


def test_not_an_asterisk_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="not an Asterisk configuration folder"):
        plan_install(tmp_path)


def test_an_account_that_may_run_commands_is_a_problem() -> None:
    report = CheckReport()
    judge_actions(report, {"Originate", "Command", "DBPut", "Ping"})
    problems = {r.item for r in report.problems}
    assert {"no 'command' class", "no 'system' class", "Hangup", "PlayDTMF"} <= problems
    assert report.exit_code == 1


def test_latin1_bytes_of_the_admins_files_pass_through_unchanged(tmp_path: Path) -> None:
    etc = _etc(tmp_path, "[general]\n")
    (etc / "extensions.conf").write_bytes(b"; M\xfcller's PBX\n[general]\n")
    apply_plan(plan_install(etc))
    text = (etc / "extensions.conf").read_bytes()
    assert text.startswith(b"; M\xfcller's PBX\n[general]\n") and b"#include" in text
    assert (etc / "extensions.conf.outbound-bak").read_bytes() == b"; M\xfcller's PBX\n[general]\n"
    assert plan_install(etc).changes == ()

"""Least privilege of the dialer's own AMI account (manager_outbound.conf: write =
originate,call,reporting), probed on the real sandbox Asterisk: whoever steals that secret
gets no shell, no configuration and no module control. The admin account's success with
the same `Command` shows the probe itself works (a refusal for another reason, say a
typo in the action, would make the test pass for nothing).

tests/integration/test_sandbox.py already probes Command, Originate to System and DBPut
with this account; here the configuration and module actions, and the proof that
nothing ran."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from outbound.sandbox import SandboxInfo
from tests.helpers.ami import AmiClient
from tests.integration.conftest import dialer_ami  # noqa: F401 - fixture, by name

DENIED = ("Error", "Permission denied")


def refusal(resp: dict[str, str]) -> tuple[str, str]:
    return resp.get("Response", ""), resp.get("Message", "")


async def test_given_the_dialer_account_when_it_runs_a_cli_command_then_refused_and_admin_may(
    dialer_ami: AmiClient,  # noqa: F811
    admin_ami: AmiClient,
) -> None:
    refused = await dialer_ami.send("Command", check=False, Command="core show channels")
    allowed = await admin_ami.send("Command", check=False, Command="core show channels")

    assert refusal(refused) == DENIED, refused
    assert allowed["Response"] == "Success", allowed
    assert any("active channel" in line for line in allowed.all("Output"))


async def test_given_the_dialer_account_when_it_originates_to_system_then_refused_and_nothing_ran(
    sandbox: SandboxInfo,
    dialer_ami: AmiClient,  # noqa: F811
) -> None:
    marker = f"/tmp/ob-system-{uuid.uuid4().hex[:8]}"  # inside the chroot
    resp = await dialer_ami.send(
        "Originate",
        check=False,
        Channel="Local/1@sim-phones",
        Application="System",
        Data=f"touch {marker}",
    )

    assert resp["Response"] == "Error", resp
    assert "Forbidden" in resp["Message"] or resp["Message"] == "Permission denied", resp
    # Refused before anything was queued: no channel, so the marker can never appear.
    assert not (sandbox.root / marker.lstrip("/")).exists()


@pytest.mark.parametrize(
    ("action", "headers"),
    [
        ("GetConfig", {"Filename": "manager.conf"}),
        ("GetConfigJSON", {"Filename": "manager.conf"}),
        (
            "UpdateConfig",
            {
                "SrcFilename": "manager.conf",
                "DstFilename": "manager.conf",
                "Reload": "manager",
                "Action-000000": "Append",
                "Cat-000000": "general",
                "Var-000000": "displayconnects",
                "Value-000000": "yes",
            },
        ),
        ("ModuleLoad", {"LoadType": "unload", "Module": "app_confbridge.so"}),
        ("ModuleLoad", {"LoadType": "load", "Module": "res_agi.so"}),
        ("Reload", {"Module": "manager"}),
    ],
    ids=["GetConfig", "GetConfigJSON", "UpdateConfig", "ModuleUnload", "ModuleLoad", "Reload"],
)
async def test_given_the_dialer_account_when_it_touches_configuration_or_modules_then_refused(
    dialer_ami: AmiClient,  # noqa: F811
    admin_ami: AmiClient,
    action: str,
    headers: dict[str, Any],
) -> None:
    resp = await dialer_ami.send(action, check=False, **headers)

    assert refusal(resp) == DENIED, resp
    # Nothing changed: ConfBridge is still loaded, and manager.conf has no new line.
    modules = await admin_ami.command("module show like app_confbridge")
    assert "app_confbridge.so" in modules
    conf = await admin_ami.send("GetConfig", check=False, Filename="manager.conf")
    assert conf["Response"] == "Success", conf
    assert not any(v == "displayconnects=yes" for k, v in conf.items() if k.startswith("Line-"))

"""`outbound asterisk ...`: put the dialer's snippets into a PBX's configuration, and ask
the running Asterisk whether it has what the dialer needs.

The install logic is in asterisk_install.py; `check` speaks AMI through the product's
own connection (ami_bridge.connection, imported lazily like every runtime package) with
the configured [ami] account, so it sees exactly what the bridge will see.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from .cli_common import Ctx, emit, errors, json_option, table


@click.group()
def asterisk() -> None:
    """Install the dialer's Asterisk configuration and check a running Asterisk."""


def _default_agi_host(obj: Ctx) -> str:
    host = str(obj.config.get("agi", "host"))
    # The AGI server may listen on every address; Asterisk connects to one of them.
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


@asterisk.command("install-conf")
@click.option(
    "--conf-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/etc/asterisk"),
    show_default=True,
    help="Asterisk's configuration folder.",
)
@click.option("--dry-run", is_flag=True, help="Show the diff and change nothing.")
@click.option(
    "--ami-user", default=None, help="The dialer's AMI username (default: [ami] username)."
)
@click.option(
    "--agi-host", default=None, help="Where Asterisk reaches FastAGI (default: [agi] host)."
)
@click.option("--agi-port", type=int, default=None, help="FastAGI port (default: [agi] port).")
@click.pass_obj
@errors
def install_conf(
    obj: Ctx,
    conf_dir: Path,
    dry_run: bool,
    ami_user: str | None,
    agi_host: str | None,
    agi_port: int | None,
) -> None:
    """Copy the dialplan, ConfBridge and AMI-account snippets into CONF_DIR and include
    them once from extensions.conf, confbridge.conf and manager.conf (backups:
    <file>.outbound-bak). Running it again changes nothing; the secret is kept."""
    from .asterisk_install import apply_plan, plan_install

    plan = plan_install(
        conf_dir,
        ami_user=str(obj.config.get("ami", "username")) if ami_user is None else ami_user,
        agi_host=_default_agi_host(obj) if agi_host is None else agi_host,
        agi_port=int(obj.config.get("agi", "port")) if agi_port is None else agi_port,
    )
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)
    if dry_run:
        if not plan.changes:
            click.echo(f"{conf_dir}: up to date (dry run)")
            return
        click.echo(plan.diff(), nl=False)
        click.echo(f"dry run: {len(plan.changes)} file(s) would change; nothing written")
        return
    if not plan.changes:
        click.echo(f"{conf_dir}: up to date")
    for path, backup in apply_plan(plan):
        click.echo(f"wrote {path}" + (f" (backup {backup})" if backup else ""))
    click.echo(
        f"\nThe dialer's AMI account is in {plan.manager_path} (secret = ...).\n"
        "Put this into outbound.ini:\n\n"
        f"[ami]\nusername = {plan.ami_user}\nsecret = {plan.secret}\nport = {plan.ami_port}\n\n"
        "Then load it: asterisk -rx 'dialplan reload' -rx 'module reload app_confbridge.so'"
        " -rx 'manager reload'; and run `outbound asterisk check`."
    )


@asterisk.command("check")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for AMI.")
@json_option
@click.pass_obj
@errors
def check(obj: Ctx, timeout: float, as_json: bool) -> None:
    """Log in with the [ami] account and report the Asterisk version, the modules,
    AMI rights and dialplan contexts the dialer needs. Exit code 1 on any problem."""
    import asyncio

    report = asyncio.run(_check(obj, timeout))
    rows = [asdict(r) for r in report.rows]
    emit(
        {"ok": report.exit_code == 0, "rows": rows},
        as_json,
        lambda: table(rows, ["check", "item", "status", "detail"], title="outbound asterisk check"),
    )
    if not as_json:
        n = len(report.problems)
        click.echo("all good" if n == 0 else f"{n} problem(s)", err=True)
    sys.exit(report.exit_code)


async def _check(obj: Ctx, timeout: float) -> Any:
    from ami_bridge.connection import AmiActionFailed, AmiConnection, AmiError

    from .asterisk_install import (
        CDR_BACKENDS,
        CheckReport,
        dialplan_contexts,
        judge_actions,
        judge_contexts,
        judge_modules,
        needed_modules,
        snippet_text,
    )

    cfg = obj.config
    report = CheckReport()
    host, port, user = cfg.get("ami", "host"), cfg.get("ami", "port"), cfg.get("ami", "username")
    ami = AmiConnection(
        host,
        port,
        user,
        cfg.get("ami", "secret"),
        action_timeout=min(timeout, float(cfg.get("ami", "action_timeout"))),
    )
    try:
        # ready = logged in and FullyBooted seen, which needs read=system.
        await ami.start(wait=timeout)
    except AmiError as exc:
        await ami.close()
        hint = "" if "login failed" in str(exc) else " (FullyBooted needs read=system)"
        report.add("ami", f"{user}@{host}:{port}", "problem", f"{exc}{hint}")
        return report
    try:
        report.add("ami", f"{user}@{host}:{port}", "ok", "logged in, Asterisk fully booted")
        try:
            settings = await ami.send("CoreSettings")
            report.add("asterisk", "version", "info", str(settings.get("AsteriskVersion", "?")))
        except AmiActionFailed as exc:
            report.add("asterisk", "version", "unknown", str(exc))

        # ListCommands is open to every account and lists only the actions its write
        # classes allow: the account's rights without trying anything.
        listed = await ami.send("ListCommands")
        allowed = {str(k) for k in listed if k not in ("Response", "ActionID", "Message")}
        judge_actions(report, allowed)
        report.add(
            "right",
            "read classes",
            "info",
            "not visible over AMI; read=system shown by FullyBooted, call/dtmf/user as "
            "given by manager_outbound.conf",
        )

        dialplan = snippet_text("extensions_outbound.conf")
        trunks = [str(cfg.get("dialer", "trunk")), str(cfg.get("dialer", "internal"))]
        needs = needed_modules(dialplan, trunks)
        loaded: dict[str, bool | None] = {}
        # IFMODULE through Getvar (write=call): ModuleCheck would need 'system'.
        for mod in [n.module for n in needs] + list(CDR_BACKENDS):
            try:
                resp = await ami.send("Getvar", {"Variable": f"IFMODULE({mod}.so)"})
                value = str(resp.get("Value", ""))
                loaded[mod] = {"1": True, "0": False}.get(value)
            except AmiActionFailed:
                loaded[mod] = None
        judge_modules(report, needs, loaded)

        present: dict[str, bool] = {}
        needed = [c for c in dialplan_contexts(dialplan) if c.startswith("outbound-")]
        for ctx in needed:
            try:
                await ami.send_list("ShowDialPlan", {"Context": ctx})
                present[ctx] = True
            except AmiActionFailed:
                present[ctx] = False
        judge_contexts(report, needed, present)

        try:
            base = await ami.send("Getvar", {"Variable": "OUTBOUND_AGI_BASE"})
            value = str(base.get("Value", "") or "")
            port = int(cfg.get("agi", "port"))
            used = value or "agi://127.0.0.1:4573"
            if used.startswith("agi://") and not used.rstrip("/").endswith(f":{port}"):
                report.add(
                    "dialplan", "OUTBOUND_AGI_BASE", "warning", f"{used}, but [agi] port is {port}"
                )
            else:
                report.add("dialplan", "OUTBOUND_AGI_BASE", "info", value or f"not set: {used}")
        except AmiActionFailed as exc:
            report.add("dialplan", "OUTBOUND_AGI_BASE", "unknown", str(exc))
    except AmiError as exc:
        report.add("ami", "session", "problem", str(exc))
    finally:
        await ami.close()
    return report

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

    from .cli import asterisk_check  # the AMI connection: wired in the composition root

    report = asyncio.run(asterisk_check(obj, timeout))
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

"""The admin commands of `outbound`: configuration, schema, campaigns, contacts, agents,
do-not-call lists and the sandbox Asterisk. No runtime is imported here."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import click
from sqlalchemy.orm import Session

from .cli_common import Ctx, emit, errors, json_option, table


# ---------------------------------------------------------------- config / db
@click.group()
def config() -> None:
    """Show the effective configuration."""


@config.command("show")
@json_option
@click.pass_obj
@errors
def config_show(obj: Ctx, as_json: bool) -> None:
    """Print every setting with where it came from (secrets hidden)."""
    cfg = obj.config
    data = cfg.as_dict()
    rows = [
        {"setting": f"{s}.{k}", "value": v, "from": cfg.source(s, k)}
        for s, kv in data.items()
        for k, v in kv.items()
    ]
    emit(data, as_json, lambda: table(rows, ["setting", "value", "from"]))


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_obj
@errors
def db_upgrade(obj: Ctx, revision: str) -> None:
    """Create or upgrade the schema to the newest version (safe to run twice)."""
    from .model.db import current_revision, make_engine, upgrade

    engine = make_engine(obj.config.database_url)
    upgrade(engine, revision)
    click.echo(f"database at revision {current_revision(engine)}")


@db.command("current")
@click.pass_obj
@errors
def db_current(obj: Ctx) -> None:
    """Print the schema revision of the database."""
    from .model.db import current_revision, make_engine

    click.echo(current_revision(make_engine(obj.config.database_url)) or "empty")


# ---------------------------------------------------------------- campaigns
@click.group()
def campaign() -> None:
    """Create campaigns and move them through created/loaded/running/stopped/unloaded."""


@campaign.command("create")
@click.argument("name")
@click.option(
    "--mode",
    required=True,
    type=click.Choice(["preview", "push_preview", "progressive", "predictive"]),
)
@click.option("--description", default="")
@click.option("--caller-id", "caller_ids", multiple=True, help="Caller ID number (repeatable).")
@click.option("--ask-caller-id", is_flag=True, help="Agents pick the caller ID before dialing.")
@click.option(
    "--calling-hours",
    default="08:00-21:00",
    show_default=True,
    help="Allowed hours in the contact's local time.",
)
@click.option("--max-attempts", default=5, show_default=True, type=int)
@click.option("--disposition", "dispositions", multiple=True, help="Disposition code (repeatable).")
@click.option("--disposition-required", is_flag=True)
@click.option("--abandon-target", default=0.03, show_default=True, type=float)
@click.option("--trunk", default=None, help="Dial string with ${NUMBER}; default from config.")
@click.option(
    "--interaction-preview",
    is_flag=True,
    help="Progressive: show the record to the agent first (accept dials, reject: back on top).",
)
@click.option(
    "--push-timeout", default=30, show_default=True, type=int, help="Seconds to accept a record."
)
@click.option("--agent", "agent_ids", multiple=True, help="Member agent id (repeatable).")
@json_option
@click.pass_obj
@errors
def campaign_create(
    obj: Ctx,
    name: str,
    mode: str,
    description: str,
    caller_ids: tuple[str, ...],
    ask_caller_id: bool,
    calling_hours: str,
    max_attempts: int,
    dispositions: tuple[str, ...],
    disposition_required: bool,
    abandon_target: float,
    trunk: str | None,
    interaction_preview: bool,
    push_timeout: int,
    agent_ids: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create a campaign (state: created)."""
    from .agents import get_agent
    from .campaigns.lifecycle import campaign_summary, create_campaign

    start, dash, end = calling_hours.partition("-")
    if not dash:
        raise click.BadParameter("use HH:MM-HH:MM", param_hint="--calling-hours")
    with obj.tx() as s:
        c = create_campaign(
            s,
            name,
            mode,
            description=description,
            caller_ids=list(caller_ids),
            ask_caller_id=ask_caller_id,
            region=obj.config.default_region,
            calling_hours=(start, end),
            max_attempts=max_attempts,
            dispositions=list(dispositions),
            disposition_required=disposition_required,
            abandon_target=abandon_target,
            trunk=trunk,
            interaction_preview=interaction_preview,
            push_timeout_s=push_timeout,
        )
        for aid in agent_ids:
            get_agent(s, aid).campaigns.append(c)
        s.flush()
        summary = campaign_summary(s, c)
    emit(
        summary,
        as_json,
        lambda: click.echo(f"created campaign {name!r} ({mode}), id {summary['id']}"),
    )


@campaign.command("list")
@json_option
@click.pass_obj
@errors
def campaign_list(obj: Ctx, as_json: bool) -> None:
    """List campaigns with state and contact counts."""
    from sqlalchemy import select

    from .campaigns.lifecycle import campaign_summary
    from .model import Campaign

    with obj.tx() as s:
        rows = [campaign_summary(s, c) for c in s.scalars(select(Campaign).order_by(Campaign.id))]
    flat = [
        {**r, "ready": r["contacts"]["ready"], "total": sum(r["contacts"].values())} for r in rows
    ]
    emit(
        rows,
        as_json,
        lambda: table(
            flat, ["id", "name", "mode", "delivery_mode", "state", "ready", "total", "description"]
        ),
    )


@campaign.command("show")
@click.argument("name")
@json_option
@click.pass_obj
@errors
def campaign_show(obj: Ctx, name: str, as_json: bool) -> None:
    """Show one campaign's settings and contact counts."""
    from .campaigns.lifecycle import campaign_summary, get_campaign

    with obj.tx() as s:
        summary = campaign_summary(s, get_campaign(s, name))
    emit(
        summary,
        as_json,
        lambda: table(
            [
                {"field": k, "value": json.dumps(v) if isinstance(v, dict | list) else v}
                for k, v in summary.items()
            ],
            ["field", "value"],
            title=f"campaign {name}",
        ),
    )


def _lifecycle(event: str) -> Callable[..., None]:
    @click.argument("name")
    @json_option
    @click.pass_obj
    @errors
    def cmd(obj: Ctx, name: str, as_json: bool) -> None:
        from .campaigns.notify import connect, transition_and_notify

        # load / start notify the member agents once committed; Redis trouble is reported,
        # the transition stands (exit code 0: it must not be retried).
        redis = connect(obj.config.redis_url)
        try:
            ev, sent = transition_and_notify(obj.factory, redis, name, event)
        finally:
            redis.close()
        out = {
            "campaign": ev.campaign,
            "event": ev.event,
            "from": ev.old.value,
            "to": ev.new.value,
            "notified": sent.to_dict() if sent else None,
        }

        def text() -> None:
            click.echo(f"campaign {ev.campaign!r}: {ev.old.value} -> {ev.new.value}")
            if sent is not None and sent.ok:
                click.echo(f"notified {len(sent.delivered)} member agent(s)")
            elif sent is not None:
                click.echo(f"warning: agents NOT notified (Redis: {sent.error})", err=True)

        emit(out, as_json, text)

    cmd.__doc__ = f"{event.capitalize()} a campaign (see the lifecycle in the README)."
    return cmd


for _ev in ("load", "start", "stop", "unload"):
    campaign.command(_ev)(_lifecycle(_ev))


# ---------------------------------------------------------------- contacts
@click.group()
def contacts() -> None:
    """Import contact lists; explain why a record is (not) dialing."""


@contacts.command("import")
@click.argument("campaign_name", metavar="CAMPAIGN")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--list-name", default=None, help="Name of the contact list (default: file name).")
@click.option("--region", default=None, help="Region for national numbers (default: config).")
@click.option(
    "--errors",
    "errors_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the bad rows (line, reason) to this CSV file.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
@click.pass_obj
@errors
def contacts_import(
    obj: Ctx,
    campaign_name: str,
    file: Path,
    list_name: str | None,
    region: str | None,
    errors_file: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Import FILE.csv into CAMPAIGN: numbers validated and normalised to E.164, bad rows
    reported with line number and reason, re-import adds no duplicates."""
    import csv

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TransferSpeedColumn

    from .campaigns.lifecycle import get_campaign
    from .config import region_code
    from .contacts_import import RowError, import_contacts

    try:
        reg = region_code(region) if region else obj.config.default_region
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--region") from None
    with obj.tx() as s:
        camp_id = get_campaign(s, campaign_name).id
    err_console = Console(stderr=True)
    errfh = errors_file.open("w", newline="", encoding="utf-8") if errors_file else None
    writer = csv.writer(errfh) if errfh else None
    if writer:
        writer.writerow(["line", "reason"])
    shown = 0

    def on_error(e: RowError) -> None:
        nonlocal shown
        if writer:
            writer.writerow([e.line, e.reason])
        if not as_json and shown < 20:
            err_console.print(f"line {e.line}: {e.reason}", markup=False, highlight=False)
        shown += 1

    progress_cb = None
    prog = None
    if not quiet and not as_json and sys.stderr.isatty():
        prog = Progress(
            TextColumn("importing"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TransferSpeedColumn(),
            console=err_console,
        )
        task = prog.add_task("import", total=file.stat().st_size)
        prog.start()

        def progress_cb(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

    try:
        report = import_contacts(
            obj.factory,
            camp_id,
            file,
            default_region=reg,
            list_name=list_name,
            progress=progress_cb,
            on_error=on_error,
        )
    finally:
        if prog:
            prog.stop()
        if errfh:
            errfh.close()
    out = {
        "rows": report.rows,
        "imported": report.imported,
        "already_present": report.already_present,
        "duplicates_in_file": report.duplicates_in_file,
        "errors": [{"line": e.line, "reason": e.reason} for e in report.errors],
        "error_count": shown,
        "elapsed_s": round(report.elapsed_s, 3),
        "rows_per_s": round(report.rows_per_s),
    }

    def text() -> None:
        if shown > 20:
            err_console.print(
                f"... and {shown - 20} more bad rows"
                + (f" (all in {errors_file})" if errors_file else "")
            )
        click.echo(
            f"{report.rows} rows: {report.imported} imported, {report.already_present} "
            f"already present, {report.duplicates_in_file} duplicates in file, "
            f"{shown} bad ({out['rows_per_s']} rows/s)"
        )

    emit(out, as_json, text)


@contacts.command("why")
@click.argument("contact_ref", metavar="CONTACT")
@click.option("--campaign", "campaign_name", default=None, help="Campaign of the contact key.")
@click.option("--at", "at", default=None, help="Evaluate at this time (ISO, UTC if no zone).")
@json_option
@click.pass_obj
@errors
def contacts_why(
    obj: Ctx, contact_ref: str, campaign_name: str | None, at: str | None, as_json: bool
) -> None:
    """Why is this record (not) dialing? CONTACT: the contact id or its external key (with
    --campaign). Shows every compliance rule with its reason, and the next time the record
    is dialable, in UTC and in the contact's time zone."""
    from datetime import UTC, datetime

    from .compliance import find_contact, why

    try:
        now = datetime.fromisoformat(at) if at else datetime.now(UTC)
    except ValueError:
        raise click.BadParameter(f"{at!r} is not an ISO date and time", param_hint="--at") from None
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    with obj.tx() as s:
        verdict = why(s, find_contact(s, contact_ref, campaign_name), now)
    emit(verdict.to_dict(), as_json, lambda: click.echo("\n".join(verdict.lines())))


# ---------------------------------------------------------------- agents
@click.group()
def agent() -> None:
    """Agent accounts (argon2-hashed password and keypad PIN)."""


@agent.command("add")
@click.argument("agent_id")
@click.option("--name", required=True)
@click.option("--extension", required=True, help="Desk phone channel, e.g. PJSIP/1001.")
@click.option("--password", default=None, help="Web password (prompted if --prompt).")
@click.option("--pin", default=None, help="Keypad PIN, 4-12 digits.")
@click.option("--prompt", "prompt_secret", is_flag=True, help="Ask for the password interactively.")
@click.option("--role", type=click.Choice(["agent", "supervisor"]), default="agent")
@click.option("--timezone", default="UTC", show_default=True)
@click.option("--campaign", "campaign_names", multiple=True, help="Member of (repeatable).")
@json_option
@click.pass_obj
@errors
def agent_add(
    obj: Ctx,
    agent_id: str,
    name: str,
    extension: str,
    password: str | None,
    pin: str | None,
    prompt_secret: bool,
    role: str,
    timezone: str,
    campaign_names: tuple[str, ...],
    as_json: bool,
) -> None:
    """Add an agent."""
    from .agents import add_agent
    from .campaigns.lifecycle import get_campaign

    if prompt_secret:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    with obj.tx() as s:
        camps = [get_campaign(s, n) for n in campaign_names]
        a = add_agent(
            s,
            agent_id,
            name,
            extension,
            password=password,
            pin=pin,
            role=role,
            timezone=timezone,
            campaigns=camps,
        )
        out = {
            "id": a.id,
            "name": a.name,
            "role": a.role.value,
            "campaigns": [c.name for c in camps],
        }
    emit(out, as_json, lambda: click.echo(f"added agent {agent_id} ({name})"))


@agent.command("list")
@json_option
@click.pass_obj
@errors
def agent_list(obj: Ctx, as_json: bool) -> None:
    """List agents (hashes are never shown)."""
    from .agents import list_agents

    with obj.tx() as s:
        rows = list_agents(s)
    emit(
        rows,
        as_json,
        lambda: table(
            [{**r, "campaigns": ",".join(r["campaigns"])} for r in rows],
            ["id", "name", "extension", "role", "timezone", "campaigns", "has_password", "has_pin"],
        ),
    )


@agent.command("passwd")
@click.argument("agent_id")
@click.option("--password", default=None, help="New password (prompted when neither is given).")
@click.option("--pin", default=None, help="New keypad PIN.")
@click.pass_obj
@errors
def agent_passwd(obj: Ctx, agent_id: str, password: str | None, pin: str | None) -> None:
    """Set an agent's password and/or PIN (a new PIN also clears a PIN lock)."""
    from .agents import get_agent, set_password

    if password is None and pin is None:
        with obj.tx() as s:
            get_agent(s, agent_id)  # fail before prompting for a missing agent
        password = click.prompt("new password", hide_input=True, confirmation_prompt=True)
    with obj.tx() as s:
        set_password(s, agent_id, password, pin)
    click.echo(f"updated agent {agent_id}")


# ---------------------------------------------------------------- DNC
@click.group()
def dnc() -> None:
    """Do-not-call lists (global, or per campaign with --campaign)."""


campaign_option = click.option(
    "--campaign", "campaign_name", default=None, help="Campaign scope (default: the global list)."
)


def _campaign_id(s: Session, name: str | None) -> int | None:
    from .campaigns.lifecycle import get_campaign

    return None if name is None else get_campaign(s, name).id


@dnc.command("add")
@click.argument("number")
@campaign_option
@click.option("--reason", default="")
@json_option
@click.pass_obj
@errors
def dnc_add(obj: Ctx, number: str, campaign_name: str | None, reason: str, as_json: bool) -> None:
    """Add NUMBER to a do-not-call list."""
    from . import dnc as dnc_mod

    with obj.tx() as s:
        e164, created = dnc_mod.add(
            s,
            number,
            obj.config.default_region,
            campaign_id=_campaign_id(s, campaign_name),
            reason=reason,
        )
    emit(
        {"number": e164, "created": created},
        as_json,
        lambda: click.echo(f"{e164}: {'added' if created else 'already listed'}"),
    )


@dnc.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@campaign_option
@json_option
@click.pass_obj
@errors
def dnc_import(obj: Ctx, file: Path, campaign_name: str | None, as_json: bool) -> None:
    """Import numbers from a CSV file (column phone/number, else the first column)."""
    from . import dnc as dnc_mod

    with obj.tx() as s:
        out = dnc_mod.import_file(
            s, file, obj.config.default_region, _campaign_id(s, campaign_name)
        )

    def text() -> None:
        for e in out["errors"][:20]:
            click.echo(f"line {e['line']}: {e['reason']}", err=True)
        click.echo(
            f"{out['added']} added, {out['already_present']} already listed, "
            f"{len(out['errors'])} bad lines"
        )

    emit(out, as_json, text)


@dnc.command("check")
@click.argument("number")
@campaign_option
@json_option
@click.pass_obj
@errors
def dnc_check(obj: Ctx, number: str, campaign_name: str | None, as_json: bool) -> None:
    """Tell whether NUMBER may be called (exit code 3 when it is blocked)."""
    from . import dnc as dnc_mod

    with obj.tx() as s:
        out = dnc_mod.check(s, number, obj.config.default_region, _campaign_id(s, campaign_name))

    def text() -> None:
        if not out["blocked"]:
            click.echo(f"{out['number']}: not on a do-not-call list")
        for e in out["entries"]:
            click.echo(f"{out['number']}: BLOCKED ({e['scope']}, {e['source']}) {e['reason']}")

    emit(out, as_json, text)
    if out["blocked"]:
        sys.exit(3)


COMMANDS = [config, db, campaign, contacts, agent, dnc]

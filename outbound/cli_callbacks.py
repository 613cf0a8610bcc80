"""`outbound callbacks`: list, show and cancel scheduled callbacks (outbound/callbacks.py).
Agents schedule them from the status page; this is the admin's view and override."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from .cli_common import Ctx, emit, errors, json_option, table

STATES = ("pending", "queued", "done", "cancelled", "expired")
COLUMNS = [
    "id",
    "campaign_id",
    "contact_id",
    "state",
    "due_at",
    "personal",
    "agent_id",
    "number",
    "window",
    "created_by",
]


@click.group()
def callbacks() -> None:
    """Scheduled callbacks: schedule (admin), list, show, cancel."""


def _instant(value: str | None) -> datetime | None:
    """An ISO date-time; without a zone it is UTC."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO date-time (e.g. 2026-04-01T18:00 or 2026-04-01T18:00+02:00)",
            param_hint="--due-before",
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@callbacks.command("list")
@click.option("--campaign", "campaign", default=None, help="Only this campaign (name or id).")
@click.option("--state", type=click.Choice(STATES), default=None, help="Only in this state.")
@click.option("--due-before", default=None, help="Only due before this time (ISO; UTC if no zone).")
@json_option
@click.pass_obj
@errors
def callbacks_list(
    obj: Ctx, campaign: str | None, state: str | None, due_before: str | None, as_json: bool
) -> None:
    """List callbacks by due time."""
    from .callbacks import list_callbacks

    with obj.tx() as s:
        rows = list_callbacks(s, campaign, state, _instant(due_before))
    emit(rows, as_json, lambda: table(rows, COLUMNS, title=f"{len(rows)} callback(s)"))


@callbacks.command("show")
@click.argument("callback_id", metavar="ID", type=int)
@json_option
@click.pass_obj
@errors
def callbacks_show(obj: Ctx, callback_id: int, as_json: bool) -> None:
    """Show one callback with its case history."""
    from .callbacks import show

    with obj.tx() as s:
        out = show(s, callback_id)

    def text() -> None:
        fields: list[dict[str, Any]] = [
            {"field": k, "value": v} for k, v in out.items() if k != "history"
        ]
        table(fields, ["field", "value"], title=f"callback {callback_id}")
        for h in out["history"]:
            click.echo(f"{h['at']}  {h['agent_id'] or '-'}  {h['text']}")

    emit(out, as_json, text)


@callbacks.command("cancel")
@click.argument("callback_id", metavar="ID", type=int)
@click.option("--reason", default="", help="Why (kept in the contact's case history).")
@json_option
@click.pass_obj
@errors
def callbacks_cancel(obj: Ctx, callback_id: int, reason: str, as_json: bool) -> None:
    """Cancel a pending or queued callback; the contact goes back as if there had been none."""
    from .callbacks import admin_cancel

    out = admin_cancel(obj.factory, callback_id, reason)
    emit(out, as_json, lambda: click.echo(f"callback {callback_id} cancelled"))


@callbacks.command("schedule")
@click.argument("contact")
@click.option("--campaign", default=None, help="Campaign of CONTACT when it is an external key.")
@click.option("--at", "when", required=True, help='"YYYY-MM-DD HH:MM" on the --tz wall clock.')
@click.option("--tz", default=None, help="Time zone of --at (default: the contact's).")
@click.option("--agent", "agent_id", default=None, help="Personal: routed to this agent only.")
@click.option("--number", default=None, help="One of the contact's numbers (default: current).")
@click.option("--new-number", default=None, help="A new number to call back on.")
@click.option("--type", "new_number_type", default=None, help="Its type (mobile, work, home...).")
@click.option("--from", "window_from", default=None, help="Reachability window From (HH:MM).")
@click.option("--to", "window_to", default=None, help="Reachability window To (HH:MM).")
@json_option
@click.pass_obj
@errors
def callbacks_schedule(
    obj: Ctx,
    contact: str,
    campaign: str | None,
    when: str,
    tz: str | None,
    agent_id: str | None,
    number: str | None,
    new_number: str | None,
    new_number_type: str | None,
    window_from: str | None,
    window_to: str | None,
    as_json: bool,
) -> None:
    """Schedule a callback for CONTACT (id or external key), personal or pooled."""
    from .callbacks_admin import admin_schedule
    from .compliance import find_contact

    with obj.tx() as s:
        out = admin_schedule(
            s,
            find_contact(s, contact, campaign),
            when=when,
            tz=tz,
            agent_id=agent_id,
            number=number,
            new_number=new_number,
            new_number_type=new_number_type,
            window_from=window_from,
            window_to=window_to,
            region=obj.config.default_region,
        )
    cb = out["callback"]
    emit(
        out,
        as_json,
        lambda: click.echo(
            f"callback {cb['id']} scheduled: {cb.get('due_local') or cb['due_at']}"
            + "".join(f"\nnote: {n}" for n in out["notes"])
        ),
    )

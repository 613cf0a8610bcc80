"""`outbound amd`: classification feedback and AMD error-rate reports
(outbound/campaigns/feedback.py), so a campaign's AMD parameters can be tuned from
evidence rather than guessed."""

from __future__ import annotations

from typing import Any

import click

from .cli_common import Ctx, emit, errors, json_option, table


@click.group()
def amd() -> None:
    """Answer classification feedback: agent flags, supervisor reviews, error rates."""


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


@amd.command("flag")
@click.argument("attempt_id", metavar="ATTEMPT")
@click.option("--agent", "agent_id", required=True, help="The agent the call was connected to.")
@click.option("--note", default=None, help="Optional note (at most 500 characters).")
@json_option
@click.pass_obj
@errors
def amd_flag(obj: Ctx, attempt_id: str, agent_id: str, note: str | None, as_json: bool) -> None:
    """Flag a connected call as really an answering machine (AMD said human).

    Only the agent the call was connected to can flag it; flagging twice changes nothing.
    The AMD decision itself is kept as it was."""
    from .campaigns.feedback import flag_machine

    out = flag_machine(obj.factory, attempt_id, agent_id, note)
    emit(
        out,
        as_json,
        lambda: click.echo(
            f"call {attempt_id} flagged machine by agent {agent_id}"
            + ("" if out["changed"] else " (already flagged)")
        ),
    )


@amd.command("review")
@click.argument("attempt_id", metavar="[ATTEMPT]", required=False)
@click.argument(
    "verdict", metavar="[VERDICT]", required=False, type=click.Choice(["human", "machine"])
)
@click.option("--by", "by", default=None, help="Reviewing supervisor's agent id.")
@click.option("--note", default=None, help="Optional note (at most 500 characters).")
@click.option("--campaign", default=None, help="Only this campaign (name or id) when listing.")
@click.option("--limit", default=50, show_default=True, type=int, help="Page size when listing.")
@click.option("--offset", default=0, show_default=True, type=int, help="Skip this many rows.")
@json_option
@click.pass_obj
@errors
def amd_review(
    obj: Ctx,
    attempt_id: str | None,
    verdict: str | None,
    by: str | None,
    note: str | None,
    campaign: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """Review calls classified machine (or flagged machine by an agent).

    Without ATTEMPT: list the calls still waiting for a review, newest first.
    With ATTEMPT and a verdict: record the supervisor's verdict (needs --by)."""
    from .campaigns.feedback import pending_review, review

    if attempt_id is None:
        rows = pending_review(obj.factory, campaign, limit=limit, offset=offset)
        emit(
            rows,
            as_json,
            lambda: table(
                rows,
                ["attempt_id", "campaign", "created_at", "trunk", "amd_status", "amd_cause", "why"],
                title=f"calls waiting for review ({len(rows)} shown)",
            ),
        )
        return
    if verdict is None:
        raise click.UsageError("give a verdict after the attempt: human or machine")
    if not by:
        raise click.UsageError("--by is required to record a review")
    out = review(obj.factory, attempt_id, verdict, by, note)
    emit(
        out,
        as_json,
        lambda: click.echo(
            f"call {attempt_id} reviewed {out['review']} by {by}"
            + ("" if out["changed"] else " (unchanged)")
        ),
    )


@amd.command("report")
@click.option("--campaign", default=None, help="Only this campaign (name or id).")
@click.option("--since", default=None, help="Calls since: 7d, 12h, 30m, 2w or an ISO date.")
@json_option
@click.pass_obj
@errors
def amd_report(obj: Ctx, campaign: str | None, since: str | None, as_json: bool) -> None:
    """Classification error rates per campaign and per trunk.

    false-human rate: connected calls judged machine / connected calls (agent flags not
    overruled). false-machine rate: machine calls judged human / machine calls reviewed."""
    from .campaigns.feedback import error_rates, parse_since

    rep = error_rates(obj.factory, parse_since(since) if since else None, campaign)
    data = rep.as_dict()
    cols = [
        "key",
        "human",
        "false_human",
        "false_human_rate",
        "flags_unreviewed",
        "machine",
        "machine_reviewed",
        "false_machine",
        "false_machine_rate",
        "machine_unreviewed",
    ]

    def shown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                **r,
                "false_human_rate": _pct(r["false_human_rate"]),
                "false_machine_rate": _pct(r["false_machine_rate"]),
            }
            for r in rows
        ]

    def text() -> None:
        table(shown(data["campaigns"]), cols, title="AMD errors per campaign")
        table(shown(data["trunks"]), cols, title="AMD errors per trunk")
        causes = [
            {"cause": k, **v, "wrong_rate": _pct(v["wrong"] / v["judged"] if v["judged"] else None)}
            for k, v in data["total"]["causes"].items()
        ]
        table(causes, ["cause", "judged", "wrong", "wrong_rate"], title="by AMD cause")

    emit(data, as_json, text)

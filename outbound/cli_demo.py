"""`outbound demo`: the main job on a fresh machine (the README's first command)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from .cli_common import Ctx, errors

if TYPE_CHECKING:
    pass


def _talk(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    from .demo import parse_talk

    try:
        return parse_talk(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


# ---------------------------------------------------------------- demo
@click.command("demo")
@click.option(
    "--contacts",
    default=300,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Simulated contacts in the campaign.",
)
@click.option(
    "--agents",
    default=5,
    show_default=True,
    type=click.IntRange(1, 99),
    help="Simulated agents (demo-1..N) on simulated desk phones.",
)
@click.option(
    "--duration",
    default=180,
    show_default=True,
    type=click.IntRange(1, 86_400),
    help="Seconds of dialing; then live calls end and the summary is shown.",
)
@click.option(
    "--talk",
    default="20-120",
    show_default=True,
    callback=_talk,
    help="MIN-MAX seconds an agent talks before ending a call.",
)
@click.option("--keep", is_flag=True, help="Leave the sandbox Asterisk running afterwards.")
@click.option("--sandbox-name", default="demo", show_default=True)
@click.option(
    "--web-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port of the status page (default: a free one).",
)
@click.option("--seed", type=int, default=None, help="Random seed of the simulated world.")
@click.option(
    "--abandon-target",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.5, 50.0),
    help="The campaign's abandon target in percent (real campaigns: 3; live "
    "answers earn the budget, so a short demo dials ahead only with more).",
)
@click.pass_obj
@errors
def demo(
    obj: Ctx,
    contacts: int,
    agents: int,
    duration: int,
    talk: tuple[int, int],
    keep: bool,
    sandbox_name: str,
    web_port: int | None,
    seed: int | None,
    abandon_target: float,
) -> None:
    """Run a predictive campaign on the sandbox Asterisk with real calls: the bridge,
    FastAGI (AMD and policy: people reach an agent, machines are hung up), the scheduler's
    worker and beat (callbacks) and the status page; simulated agents talk, wrap up,
    mark calls done and schedule a few callbacks. Live figures while it runs; a summary
    checked against Asterisk's CDR at the end. Ctrl-C stops everything cleanly."""
    from .demo import Options, run_demo

    opts = Options(
        contacts=contacts,
        agents=agents,
        duration=duration,
        talk=talk,
        keep=keep,
        sandbox_name=sandbox_name,
        web_port=web_port,
        seed=seed,
        abandon_target=abandon_target / 100,
    )
    from .cli import start_stack  # the bridge and FastAGI: wired in the composition root

    code = run_demo(
        opts, config_path=obj.config_path, overrides=obj.overrides, start_stack=start_stack
    )
    if code:
        raise SystemExit(code)

"""The `outbound` command: the one composition root that wires the runtimes together.

Runtime packages (ami_bridge, agi_scripts, scheduler, status_page) are imported lazily,
inside the commands that run them, so `outbound --help` and the admin commands stay light.
The admin commands live in cli_admin.py.
"""

from __future__ import annotations

import sys

import click

from .cli_admin import COMMANDS
from .cli_amd import amd
from .cli_asterisk import asterisk
from .cli_callbacks import callbacks
from .cli_common import Ctx
from .cli_demo import demo
from .cli_run import agi, run
from .cli_sandbox import sandbox


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="OUTBOUND_CONFIG",
    help="INI file (default: $OUTBOUND_CONFIG, else ./outbound.ini, else built-in defaults).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override one setting (repeatable), e.g. --set database.url=sqlite:///x.db",
)
@click.version_option(package_name="asterisk-outbound")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, sets: tuple[str, ...]) -> None:
    """asterisk-outbound: an outbound campaign dialer for an existing Asterisk PBX."""
    overrides: dict[str, str] = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise click.BadParameter(f"{item!r} is not SECTION.KEY=VALUE", param_hint="--set")
        overrides[key.strip()] = value
    ctx.obj = Ctx(config_path, overrides)


for _cmd in [*COMMANDS, sandbox]:
    main.add_command(_cmd)
main.add_command(amd)
main.add_command(callbacks)
main.add_command(run)
main.add_command(agi)
main.add_command(demo)
main.add_command(asterisk)


def agi_main() -> None:
    """The `outbound-agi` console script: `outbound agi` for the dialplan's AGI().
    Configuration: $OUTBOUND_CONFIG (Asterisk passes its environment on), or --config /
    --set given before the route."""
    args: list[str] = []
    rest = sys.argv[1:]
    while rest and rest[0].split("=", 1)[0] in ("--config", "--set"):
        n = 1 if "=" in rest[0] else 2
        args, rest = args + rest[:n], rest[n:]
    main(args=[*args, "agi", *rest], prog_name="outbound-agi")


if __name__ == "__main__":  # pragma: no cover
    main()

"""`outbound sandbox`: a real Asterisk 22 for tests and the demo (outbound/sandbox)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .cli_common import Ctx, emit, errors, json_option, table
from .errors import NotFound


# ---------------------------------------------------------------- sandbox
@click.group()
def sandbox() -> None:
    """A real Asterisk 22 for tests and the demo (a cached Debian chroot, loopback only)."""


def _sandbox(obj: Ctx, name: str) -> Any:
    from .sandbox import Sandbox

    cache = obj.config.get("sandbox", "cache_dir") or None
    return Sandbox(
        cache_dir=Path(cache) if cache else None,
        name=name,
        log=lambda m: click.echo(m, err=True),
    )


name_option = click.option(
    "--name",
    default="default",
    show_default=True,
    help="Instance name (several can run side by side).",
)


@sandbox.command("up")
@name_option
@json_option
@click.pass_obj
@errors
def sandbox_up(obj: Ctx, name: str, as_json: bool) -> None:
    """Build the Asterisk root if needed (once per machine), then start an instance."""
    from dataclasses import asdict

    info = _sandbox(obj, name).up()
    data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(info).items()}
    emit(
        data,
        as_json,
        lambda: click.echo(
            f"sandbox {name!r} up: Asterisk {info.version}, AMI 127.0.0.1:{info.ami_port}, "
            f"SIP udp 127.0.0.1:{info.sip_port}, pid {info.pid}"
        ),
    )


@sandbox.command("down")
@name_option
@click.pass_obj
@errors
def sandbox_down(obj: Ctx, name: str) -> None:
    """Stop an instance cleanly (core stop now; killed if it does not stop in time)."""
    _sandbox(obj, name).down()
    click.echo(f"sandbox {name!r} down")


@sandbox.command("status")
@name_option
@json_option
@click.pass_obj
@errors
def sandbox_status(obj: Ctx, name: str, as_json: bool) -> None:
    """Is the instance running, on which ports."""
    st = _sandbox(obj, name).status()
    emit(
        st,
        as_json,
        lambda: table(
            [{"key": k, "value": v} for k, v in st.items()],
            ["key", "value"],
            title=f"sandbox {name}",
        ),
    )


@sandbox.command("cli")
@click.argument("command", nargs=-1, required=True)
@name_option
@click.pass_obj
@errors
def sandbox_cli(obj: Ctx, command: tuple[str, ...], name: str) -> None:
    """Run an Asterisk CLI command in the instance, e.g. `outbound sandbox cli core show channels`."""
    sb = _sandbox(obj, name)
    if not sb.status().get("running"):
        raise NotFound(f"sandbox {name!r} is not running (outbound sandbox up)")
    click.echo(sb.cli(" ".join(command)), nl=False)

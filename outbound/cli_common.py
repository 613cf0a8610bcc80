"""Shared pieces of the `outbound` command: the context object, error mapping, output."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar

import click
from sqlalchemy.orm import Session, sessionmaker

from .config import Config, ConfigError, load_config
from .errors import OutboundError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Ctx:
    """What every command gets: settings and a database session factory, made lazily."""

    config_path: str | None
    overrides: dict[str, str]
    _config: Config | None = None
    _factory: sessionmaker[Session] | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path, overrides=self.overrides)
        return self._config

    @property
    def factory(self) -> sessionmaker[Session]:
        if self._factory is None:
            from .model import make_engine, session_factory

            self._factory = session_factory(make_engine(self.config.database_url))
        return self._factory

    @contextmanager
    def tx(self) -> Iterator[Session]:
        from .model import transaction

        with transaction(self.factory) as s:
            yield s


def errors(fn: F) -> F:
    """Turn domain and configuration errors into a clean one-line message and exit code 1."""

    @wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except (OutboundError, ConfigError) as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:  # database down, bad URL, ...: say what, not a traceback
            from sqlalchemy.exc import SQLAlchemyError

            if isinstance(exc, SQLAlchemyError):
                orig = getattr(exc, "orig", None)
                msg = str(orig) if orig else str(exc)
                raise click.ClickException(f"database error: {msg.splitlines()[0]}") from None
            raise

    return wrapper  # type: ignore[return-value]


def emit(obj: Any, as_json: bool, text: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=2, default=str, sort_keys=True))
    else:
        text()


def table(rows: list[dict[str, Any]], cols: list[str], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(r.get(c, "")) for c in cols])
    Console().print(t)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")

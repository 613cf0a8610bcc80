"""Layered configuration: DEFAULTS, then an INI file, then conf.d, then OUTBOUND_* env, then CLI.

Nothing else in the project reads configuration files or the environment: every runtime
receives a `Config` built here. A bad value raises `ConfigError` naming the key and the file
(or the environment variable) it came from, so an admin knows exactly what to fix.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

ENV_PREFIX = "OUTBOUND_"
CONFIG_ENV = "OUTBOUND_CONFIG"
DEFAULT_FILE = "outbound.ini"

# section -> key -> default (as the string an INI file would hold).
DEFAULTS: dict[str, dict[str, str]] = {
    "database": {"url": "sqlite:///./outbound.db"},
    "redis": {"url": "redis://127.0.0.1:6379/0"},
    "ami": {
        "host": "127.0.0.1",
        "port": "5038",
        "username": "outbound",
        "secret": "",
        "ping_interval": "5",
        "action_timeout": "10",
    },
    "agi": {"host": "127.0.0.1", "port": "4573"},
    # The status page and its JSON API (status_page/): loopback unless the admin opens it.
    # Sessions live in Redis for session_ttl seconds of inactivity; cookie_secure = on
    # when served over HTTPS (behind a TLS proxy). login_attempts wrong passwords for one
    # agent id (login_attempts_ip from one client address) within login_window seconds
    # refuse further log-ins until the window ends. Events (SSE) connections close after
    # sse_max seconds (the browser reconnects) with a heartbeat every sse_heartbeat s.
    # metrics: GET /metrics (Prometheus) open to whoever reaches the port (on), not served
    # (off), or any other value: a token the scraper sends as "Authorization: Bearer ...".
    "web": {
        "host": "127.0.0.1",
        "port": "8080",
        "secret_key": "",
        "cookie_secure": "off",
        "session_ttl": "28800",
        "login_attempts": "5",
        "login_attempts_ip": "20",
        "login_window": "300",
        "command_timeout": "10",
        "sse_max": "300",
        "sse_heartbeat": "15",
        "metrics": "on",
    },
    "dialer": {
        "default_region": "DE",
        "trunk": "PJSIP/${NUMBER}@trunk",
        "internal": "PJSIP/${NUMBER}",
        "ring_timeout": "30",
        "server": "default",
        # The campaign engine in the bridge (ami_bridge/dialer.py): off for a bridge that
        # should only carry agent sessions and commands (another worker dials).
        "engine": "on",
    },
    # Desk-phone log-in (*51): wrong PINs allowed for one agent id on one phone, then that
    # pair is locked (s); pin_attempts_global wrong PINs for an agent id from any phones (or
    # for any ids from one phone) lock the id (the phone) everywhere.
    "agents": {"pin_attempts": "3", "pin_attempts_global": "10", "pin_lockout": "300"},
    # The Celery scheduler (scheduler/app.py): beat sends a sweep every sweep_interval
    # seconds; a sweep claims due callbacks batch_size at a time, for at most sweep_budget
    # seconds (the next sweep goes on). broker: Celery's Redis; empty = the [redis] url.
    "scheduler": {
        "sweep_interval": "1",
        "batch_size": "500",
        "sweep_budget": "20",
        "broker": "",
    },
    "sandbox": {"cache_dir": ""},
    "log": {"level": "INFO", "format": "text"},
}


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names key and source."""


def _port(v: str) -> int:
    n = int(v)
    if not 1 <= n <= 65535:
        raise ValueError("must be a TCP/UDP port between 1 and 65535")
    return n


def _positive_float(v: str) -> float:
    f = float(v)
    if f <= 0:
        raise ValueError("must be a positive number")
    return f


def _host(v: str) -> str:
    if not v or any(c in v for c in " \r\n\t\0/"):
        raise ValueError("must be a host name or IP address")
    try:
        ipaddress.ip_address(v)
    except ValueError:
        if not all(part.replace("-", "").isalnum() for part in v.split(".")):
            raise ValueError("must be a host name or IP address") from None
    return v


def _db_url(v: str) -> str:
    if not (v.startswith("sqlite:") or v.startswith("postgresql")):
        raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
    return v


def _redis_url(v: str) -> str:
    if not v.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be a redis:// URL")
    return v


def region_code(v: str) -> str:
    v = v.strip().upper()
    if v not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError("must be a two-letter region code known to phonenumbers, e.g. DE or US")
    return v


def _no_ctl(v: str) -> str:
    if any(c in v for c in "\r\n\0"):
        raise ValueError("must not contain CR, LF or NUL")
    return v


def _log_level(v: str) -> str:
    v = v.upper()
    if v not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return v


def _choice(*allowed: str) -> Callable[[str], str]:
    def check(v: str) -> str:
        if v not in allowed:
            raise ValueError("must be one of " + ", ".join(allowed))
        return v

    return check


def _metrics(v: str) -> str:
    _no_ctl(v)
    if v in ("on", "off") or (len(v) >= 16 and not any(c.isspace() for c in v)):
        return v
    raise ValueError("must be on, off, or a token of at least 16 characters without spaces")


def _trunk(v: str) -> str:
    _no_ctl(v)
    if "${NUMBER}" not in v:
        raise ValueError("must contain ${NUMBER} where the dialed number goes")
    return v


def _int_between(lo: int, hi: int) -> Callable[[str], int]:
    def check(v: str) -> int:
        n = int(v)
        if not lo <= n <= hi:
            raise ValueError(f"must be a whole number from {lo} to {hi}")
        return n

    return check


def timezone_name(v: str) -> str:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {v!r}") from None
    return v


_PARSERS: dict[tuple[str, str], Callable[[str], Any]] = {
    ("database", "url"): _db_url,
    ("redis", "url"): _redis_url,
    ("ami", "host"): _host,
    ("ami", "port"): _port,
    ("ami", "username"): _no_ctl,
    ("ami", "secret"): _no_ctl,
    ("ami", "ping_interval"): _positive_float,
    ("ami", "action_timeout"): _positive_float,
    ("agi", "host"): _host,
    ("agi", "port"): _port,
    ("web", "host"): _host,
    ("web", "port"): _port,
    ("web", "cookie_secure"): _choice("on", "off"),
    ("web", "session_ttl"): _int_between(60, 30 * 24 * 3600),
    ("web", "login_attempts"): _int_between(1, 100),
    ("web", "login_attempts_ip"): _int_between(1, 10_000),
    ("web", "login_window"): _int_between(1, 24 * 3600),
    ("web", "command_timeout"): _positive_float,
    ("web", "sse_max"): _positive_float,
    ("web", "sse_heartbeat"): _positive_float,
    ("web", "metrics"): _metrics,
    ("dialer", "default_region"): region_code,
    ("dialer", "trunk"): _trunk,
    ("dialer", "internal"): _trunk,
    ("dialer", "ring_timeout"): lambda v: max(15, _port(v)),
    ("dialer", "server"): _no_ctl,
    ("dialer", "engine"): _choice("on", "off"),
    ("scheduler", "sweep_interval"): _positive_float,
    ("scheduler", "batch_size"): _int_between(1, 5000),
    ("scheduler", "sweep_budget"): _positive_float,
    ("scheduler", "broker"): lambda v: _redis_url(v) if v else "",
    ("log", "level"): _log_level,
    ("log", "format"): _choice("text", "json"),
    ("agents", "pin_attempts"): _int_between(1, 100),
    ("agents", "pin_attempts_global"): _int_between(1, 1000),
    ("agents", "pin_lockout"): _int_between(1, 7 * 24 * 3600),
}


@dataclass(frozen=True)
class Config:
    """Typed, validated settings. `sources` says where each value came from."""

    values: Mapping[str, Mapping[str, Any]]
    sources: Mapping[str, str] = field(default_factory=dict)
    files: tuple[Path, ...] = ()

    def get(self, section: str, key: str) -> Any:
        return self.values[section][key]

    def source(self, section: str, key: str) -> str:
        return self.sources.get(f"{section}.{key}", "default")

    # Convenience accessors for the settings every runtime needs.
    @property
    def database_url(self) -> str:
        return str(self.get("database", "url"))

    @property
    def redis_url(self) -> str:
        return str(self.get("redis", "url"))

    @property
    def broker_url(self) -> str:
        """Celery's broker: [scheduler] broker, else the [redis] url."""
        return str(self.get("scheduler", "broker") or self.redis_url)

    @property
    def default_region(self) -> str:
        return str(self.get("dialer", "default_region"))

    def as_dict(self, redact: bool = True) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for s, kv in self.values.items():
            out[s] = {}
            for k, v in kv.items():
                token = (s, k) == ("web", "metrics") and v not in ("on", "off")
                hide = redact and (k in {"secret", "secret_key"} or token) and v
                out[s][k] = "***" if hide else v
        return out


def _read_ini(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as fh:
            cp.read_file(fh)
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return cp


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    """Build the configuration.

    The file is `path`, else `$OUTBOUND_CONFIG`, else `./outbound.ini` if it exists, else none
    (built-in defaults). Files in `<file>.d/*.ini` (conf.d) are read after it in name order.
    Then `OUTBOUND_<SECTION>_<KEY>` environment variables, then `overrides` given as
    `{"section.key": value}` (from the command line). Unknown sections or keys in a file
    are errors, so a typo never silently falls back to a default.
    """
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    raw: dict[str, dict[str, str]] = {s: dict(kv) for s, kv in DEFAULTS.items()}
    sources: dict[str, str] = {}
    files: list[Path] = []

    chosen: Path | None = None
    if path is not None:
        chosen = Path(path)
        if not chosen.is_file():
            raise ConfigError(f"{chosen}: configuration file not found (from --config)")
    elif env.get(CONFIG_ENV):
        chosen = Path(env[CONFIG_ENV])
        if not chosen.is_file():
            raise ConfigError(f"{chosen}: configuration file not found (from ${CONFIG_ENV})")
    elif (cwd / DEFAULT_FILE).is_file():
        chosen = cwd / DEFAULT_FILE

    if chosen is not None:
        confd = chosen.with_name(chosen.name + ".d")
        extra = sorted(confd.glob("*.ini")) if confd.is_dir() else []
        for f in [chosen, *extra]:
            files.append(f)
            cp = _read_ini(f)
            for section in cp.sections():
                if section not in raw:
                    raise ConfigError(f"{f}: unknown section [{section}]")
                for key, value in cp.items(section):
                    if key not in raw[section]:
                        raise ConfigError(f"{f}: unknown key '{key}' in section [{section}]")
                    raw[section][key] = value.strip()
                    sources[f"{section}.{key}"] = str(f)

    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section in raw:
            if rest.startswith(section + "_") and rest[len(section) + 1 :] in raw[section]:
                raw[section][rest[len(section) + 1 :]] = value
                sources[f"{section}.{rest[len(section) + 1 :]}"] = f"${name}"
                break

    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in raw or key not in raw[section]:
            raise ConfigError(f"command line: unknown setting '{dotted}'")
        raw[section][key] = value
        sources[dotted] = "command line"

    values: dict[str, dict[str, Any]] = {}
    for section, kv in raw.items():
        values[section] = {}
        for key, value in kv.items():
            parse = _PARSERS.get((section, key), _no_ctl)
            try:
                values[section][key] = parse(value)
            except (ValueError, TypeError) as exc:
                where = sources.get(f"{section}.{key}", "built-in defaults")
                raise ConfigError(f"{where}: [{section}] {key} = {value!r}: {exc}") from None
    agents = values["agents"]
    if agents["pin_attempts_global"] < agents["pin_attempts"]:
        where = sources.get("agents.pin_attempts_global", "built-in defaults")
        raise ConfigError(
            f"{where}: [agents] pin_attempts_global = {agents['pin_attempts_global']} must not "
            f"be below pin_attempts = {agents['pin_attempts']}"
        )
    return Config(values=values, sources=sources, files=tuple(files))

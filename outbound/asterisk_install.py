"""Putting the product's Asterisk snippets into a PBX's configuration folder, and what
`outbound asterisk check` must find in a running Asterisk.

Install: ``plan_install`` reads the folder and computes every file's new text (pure
apart from reading); ``apply_plan`` writes only what changed, each changed file backed
up first as ``<file>.outbound-bak``. A second run plans nothing, so the command is
idempotent and ``--dry-run`` is just the plan's diff. The admin's own files get one
``#include`` line each (never a second one) and, in ``extensions.conf``'s ``[globals]``,
the ``OUTBOUND_AGI_BASE`` line; the dialer's AMI account goes into
``manager.d/outbound.conf`` with a generated secret that later runs keep.

Check: which Asterisk modules, AMI actions and dialplan contexts the dialer needs, taken
from the snippets themselves where possible, and the pure verdicts over what Asterisk
answered (the AMI side is in ``cli_asterisk.py``).
"""

from __future__ import annotations

import difflib
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import Invalid

BACKUP_SUFFIX = ".outbound-bak"
MANAGER_FILE = "manager.d/outbound.conf"
TEMPLATE = "outbound-dialer"  # the account template in manager_outbound.conf
# Copied as they are (refreshed when the package's text changes). The pjsip sample is
# not: trunks and phones are the admin's business.
SNIPPETS = ("extensions_outbound.conf", "confbridge_outbound.conf")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.:-]{0,252}[A-Za-z0-9])?")
_SECRET_LINE = re.compile(r"^\s*secret\s*=\s*(\S+)\s*$", re.M)
_MASK = "<generated at install>"


def _plain(what: str, value: str) -> str:
    """Refuse CR, LF and NUL: in a configuration file they would start a new line the
    admin never wrote (another account, another `#include`)."""
    for ch, name in (("\r", "CR"), ("\n", "LF"), ("\0", "NUL")):
        if ch in value:
            raise Invalid(f"{what}: contains {name}; refused")
    return value


def check_name(what: str, value: str) -> str:
    _plain(what, value)
    if not _NAME.fullmatch(value) or value in ("general", TEMPLATE):
        raise Invalid(f"{what} {value!r}: use letters, digits, _ . - (not 'general')")
    return value


def check_host(what: str, value: str) -> str:
    _plain(what, value)
    if not _HOST.fullmatch(value):
        raise Invalid(f"{what} {value!r}: not a host name or IP address")
    return value


def check_port(what: str, value: int) -> int:
    if not 1 <= value <= 65535:
        raise Invalid(f"{what} {value}: must be a port from 1 to 65535")
    return value


def snippet_text(name: str) -> str:
    """A product snippet as the installed package ships it."""
    return resources.files("asterisk_conf").joinpath(name).read_text()


@dataclass(frozen=True)
class FileChange:
    """One file's text before (None: it does not exist yet) and after the install."""

    path: Path
    old: str | None
    new: str
    secret: bool = False  # holds the AMI secret: 0640, masked in diffs

    def diff(self, mask: str | None = None) -> str:
        old, new = self.old or "", self.new
        if mask:
            old, new = old.replace(mask, "***"), new.replace(mask, "***")
        text = "".join(
            difflib.unified_diff(
                old.splitlines(keepends=True),
                new.splitlines(keepends=True),
                fromfile=str(self.path) if self.old is not None else "/dev/null",
                tofile=str(self.path),
            )
        )
        # Printable whatever the files' encoding (undecodable bytes shown as U+FFFD).
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass(frozen=True)
class InstallPlan:
    conf_dir: Path
    ami_user: str
    secret: str
    secret_is_new: bool
    agi_base: str
    changes: tuple[FileChange, ...]
    notes: tuple[str, ...] = ()
    ami_port: int = 5038

    @property
    def manager_path(self) -> Path:
        return self.conf_dir / MANAGER_FILE

    def diff(self) -> str:
        """The unified diff of every change; the secret never appears in it."""
        return "".join(c.diff(self.secret) for c in self.changes)


def _include_re(target: str) -> re.Pattern[str]:
    # `#include x`, `#include "x"`, `#tryinclude /etc/asterisk/x`: any path ending in x.
    name = re.escape(target)
    return re.compile(rf'^\s*#\s*(?:try)?include\s+"?(?:[^"\s]*/)?{name}"?\s*$', re.M)


def _with_include(text: str, target: str, why: str) -> str:
    if _include_re(target).search(text):
        return text
    sep = "" if not text or text.endswith("\n") else "\n"
    return f"{text}{sep}\n; asterisk-outbound: {why}\n#include {target}\n"


_AGI_COMMENT = "   ; asterisk-outbound: where its FastAGI server listens"


def _globals_line(text: str, agi_base: str) -> str:
    """Set OUTBOUND_AGI_BASE in extensions.conf's own [globals] (pbx_config reads only
    the first [globals] section, so a second one in our snippet would be ignored)."""
    line = f"OUTBOUND_AGI_BASE = {agi_base}"
    lines = text.splitlines(keepends=True)
    section = None
    start = None
    for i, raw in enumerate(lines):
        m = re.match(r"^\s*\[([^\]]+)\]", raw)
        if m:
            section = m.group(1).strip().lower()
            if section == "globals" and start is None:
                start = i
            continue
        if section == "globals" and re.match(r"^\s*OUTBOUND_AGI_BASE\s*=>?", raw):
            if raw.split(";", 1)[0].strip() == line:
                return text
            lines[i] = f"{line}{_AGI_COMMENT}\n"
            return "".join(lines)
    if start is not None:
        lines.insert(start + 1, f"{line}{_AGI_COMMENT}\n")
        return "".join(lines)
    sep = "" if not text or text.endswith("\n") else "\n"
    return f"{text}{sep}\n[globals]\n{line}   ; asterisk-outbound: its FastAGI server\n"


def _ini_value(text: str, section: str, key: str) -> str | None:
    """A key's value in one section of an Asterisk .conf (first occurrence; enough to
    read manager.conf's [general] without a full parser)."""
    current = None
    for raw in text.splitlines():
        line = raw.split(";", 1)[0].strip()
        m = re.match(r"^\[([^\]]+)\]", line)
        if m:
            current = m.group(1).strip().lower()
            continue
        if current == section and "=" in line:
            k, _, v = line.partition("=")
            if k.strip().lower() == key:
                return v.lstrip(">").strip()
    return None


def manager_account(user: str, secret: str) -> str:
    """manager.d/outbound.conf: the least-privilege template, then the account."""
    return (
        f"{snippet_text('manager_outbound.conf').rstrip()}\n\n"
        "; The dialer's account (written by `outbound asterisk install-conf`; the secret is\n"
        "; kept when it runs again). The same username and secret go into outbound.ini [ami].\n"
        f"[{user}]({TEMPLATE})\n"
        f"secret = {secret}\n"
    )


# An admin's files may hold Latin-1 comments (Debian's stock minivm.conf does): their
# bytes pass through unchanged instead of failing the install or being re-encoded.
def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Invalid(f"{path}: cannot read: {exc}") from None


def plan_install(
    conf_dir: Path,
    *,
    ami_user: str = "outbound",
    agi_host: str = "127.0.0.1",
    agi_port: int = 4573,
    new_secret: Callable[[], str] = lambda: secrets.token_hex(24),
) -> InstallPlan:
    """What installing into ``conf_dir`` would change. Reads files, writes nothing.

    Raises Invalid for a bad value or a folder that is not an Asterisk configuration
    (no extensions.conf or manager.conf)."""
    _plain("configuration folder", str(conf_dir))
    check_name("AMI user", ami_user)
    check_host("AGI host", agi_host)
    check_port("AGI port", agi_port)
    agi_base = f"agi://{agi_host}:{agi_port}"
    if not conf_dir.is_dir():
        raise Invalid(f"{conf_dir}: no such folder")
    texts = {n: _read(conf_dir / n) for n in ("extensions.conf", "manager.conf")}
    missing = [n for n, t in texts.items() if t is None]
    if missing:
        raise Invalid(f"{conf_dir}: not an Asterisk configuration folder (no {', '.join(missing)})")
    changes: list[FileChange] = []
    notes: list[str] = []

    def change(name: str, new: str, secret: bool = False) -> None:
        path = conf_dir / name
        old = _read(path)
        if old != new:
            changes.append(FileChange(path, old, new, secret))

    for name in SNIPPETS:
        change(name, snippet_text(name))
    ext = texts["extensions.conf"] or ""
    ext = _globals_line(ext, agi_base)
    ext = _with_include(ext, "extensions_outbound.conf", "the outbound dialer's contexts")
    change("extensions.conf", ext)
    bridge = _read(conf_dir / "confbridge.conf")
    if bridge is None:
        bridge = "[general]\n"
    change(
        "confbridge.conf",
        _with_include(bridge, "confbridge_outbound.conf", "the agents' conference profiles"),
    )
    manager = texts["manager.conf"] or ""
    if not (
        _include_re("manager.d/*.conf").search(manager) or _include_re(MANAGER_FILE).search(manager)
    ):
        manager = _with_include(manager, "manager.d/*.conf", "AMI accounts, the dialer's too")
        change("manager.conf", manager)
    existing = _read(conf_dir / MANAGER_FILE)
    found = _SECRET_LINE.search(existing or "")
    secret = _plain("AMI secret", found.group(1) if found else new_secret())
    change(MANAGER_FILE, manager_account(ami_user, secret), secret=True)

    enabled = (_ini_value(manager, "general", "enabled") or "no").lower()
    if enabled not in ("yes", "true", "on", "1"):
        notes.append(
            f"{conf_dir / 'manager.conf'}: [general] enabled = {enabled}: AMI is off; set "
            "enabled = yes (and bindaddr = 127.0.0.1) for the dialer to connect"
        )
    port_text = _ini_value(manager, "general", "port") or "5038"
    return InstallPlan(
        conf_dir=conf_dir,
        ami_user=ami_user,
        secret=secret,
        secret_is_new=found is None,
        agi_base=agi_base,
        changes=tuple(changes),
        notes=tuple(notes),
        ami_port=int(port_text) if port_text.isdigit() else 5038,
    )


def _owner_of(conf_dir: Path, name: str) -> os.stat_result | None:
    try:
        return (conf_dir / name).stat()
    except OSError:
        return None


def apply_plan(plan: InstallPlan) -> list[tuple[Path, Path | None]]:
    """Write the planned files (atomically, through a temporary file), each existing one
    backed up first as ``<file>.outbound-bak`` (the text right before this change).
    New files get the owner and group of ``manager.conf`` (Asterisk runs as its own user
    and must read them); the file with the secret is 0640. Returns (file, backup)."""
    done: list[tuple[Path, Path | None]] = []
    like = _owner_of(plan.conf_dir, "manager.conf")
    for ch in plan.changes:
        ch.path.parent.mkdir(parents=True, exist_ok=True)
        backup = None
        st = _owner_of(ch.path.parent, ch.path.name)
        if ch.old is not None:
            backup = ch.path.with_name(ch.path.name + BACKUP_SUFFIX)
            _write(backup, ch.old, st.st_mode & 0o777 if st else 0o640, st)
        mode = 0o640 if ch.secret else (st.st_mode & 0o777 if st else 0o644)
        _write(ch.path, ch.new, mode, st or like)
        done.append((ch.path, backup))
    return done


def _write(path: Path, text: str, mode: int, owner: os.stat_result | None) -> None:
    tmp = path.with_name(f".{path.name}.outbound-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        if owner is not None and os.geteuid() == 0:
            os.chown(tmp, owner.st_uid, owner.st_gid)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- check
# Where each application and function the product's dialplan (and the AGI's EXEC) uses
# comes from; None: built into Asterisk's core. A unit test keeps this table complete.
APP_MODULES: dict[str, str | None] = {
    "AGI": "res_agi",
    "AMD": "app_amd",  # EXEC'd by the classify AGI route
    "Answer": None,
    "Bridge": None,
    "Busy": None,
    "ConfBridge": "app_confbridge",
    "Congestion": None,
    "Dial": "app_dial",
    "ExecIf": "app_exec",
    "Goto": None,
    "GotoIf": None,
    "Hangup": None,
    "Log": "app_verbose",
    "MusicOnHold": "res_musiconhold",
    "NoOp": None,
    "Playback": "app_playback",
    "Read": "app_read",
    "Return": "app_stack",
    "Set": None,
    "UserEvent": "app_userevent",
    "WaitForSilence": "app_waitforsilence",
}
FUNCTION_MODULES: dict[str, str | None] = {
    "BASE64_DECODE": "func_base64",
    "CDR": "func_cdr",
    "CHANNEL": "func_channel",
    "CONFBRIDGE": "app_confbridge",
    "CONFBRIDGE_INFO": "app_confbridge",
    "EVAL": "func_strings",
    "FAXOPT": "res_fax",
    "FILTER": "func_strings",
    "IF": "func_logic",
    "IFMODULE": "func_module",
    "ISNULL": "func_logic",
    "LEN": "func_strings",
}
# Used, but only where the module is there (the dialplan asks IFMODULE first).
OPTIONAL_MODULES = {"res_fax": "fax tone detection during classification"}
# AMI actions the bridge sends (ami_bridge/actions.py, connection.py) and their modules.
NEEDED_ACTIONS: dict[str, str | None] = {
    "Originate": None,
    "Hangup": None,
    "Redirect": None,
    "Setvar": None,
    "Getvar": None,
    "Status": None,
    "CoreShowChannels": None,
    "BridgeList": None,
    "BridgeInfo": None,
    "Ping": None,
    "PlayDTMF": "app_senddtmf",
    "ConfbridgeList": "app_confbridge",
    "ConfbridgeListRooms": "app_confbridge",
    "ConfbridgeKick": "app_confbridge",
    "ConfbridgeMute": "app_confbridge",
    "ConfbridgeUnmute": "app_confbridge",
}
# Actions only an over-privileged account is offered, by the class that grants them.
EXCESS_ACTIONS: dict[str, str] = {
    "Command": "command",
    "GetConfig": "config",
    "UpdateConfig": "config",
    "CreateConfig": "config",
    "DBPut": "system",
    "ModuleLoad": "system",
    "Reload": "system",
    "DialplanExtensionAdd": "system",
    "AGI": "agi",
}
CDR_BACKENDS = (
    "cdr_csv",
    "cdr_custom",
    "cdr_adaptive_odbc",
    "cdr_odbc",
    "cdr_pgsql",
    "cdr_sqlite3_custom",
    "cdr_radius",
    "cdr_tds",
    "cdr_beanstalkd",
)

_LINE = re.compile(
    r"^\s*(?:exten\s*=>\s*[^,]+,|same\s*=>\s*)[^,]+,\s*([A-Za-z][A-Za-z0-9_]*)\(", re.M
)
_INNER_APP = re.compile(r"\?\s*([A-Za-z][A-Za-z0-9_]*)\(")
_FUNC = re.compile(r"(?:\$\{|\bSet\()([A-Z][A-Z0-9_]*)\(")
_CONTEXT = re.compile(r"^\s*\[([A-Za-z0-9_-]+)\]", re.M)


def dialplan_uses(text: str) -> tuple[set[str], set[str]]:
    """(applications, functions) a dialplan file calls: the application of every
    `exten =>`/`same =>` line and of ExecIf's branch, every ``${FUNC(`` and ``Set(FUNC(``."""
    text = "\n".join(line.split(";", 1)[0] for line in text.splitlines())
    apps = set(_LINE.findall(text))
    for line in text.splitlines():
        if "ExecIf(" in line:
            apps.update(_INNER_APP.findall(line))
    return apps, set(_FUNC.findall(text))


def dialplan_contexts(text: str) -> list[str]:
    """The contexts a dialplan file defines, in order."""
    return _CONTEXT.findall(text)


@dataclass(frozen=True)
class ModuleNeed:
    module: str
    why: tuple[str, ...]
    required: bool = True


def needed_modules(
    dialplan: str, trunk_templates: Iterable[str] = (), exec_apps: Iterable[str] = ("AMD",)
) -> list[ModuleNeed]:
    """The modules the dialer needs, with what needs each. Raises KeyError for an
    application or function missing from the tables (the unit test's business)."""
    apps, funcs = dialplan_uses(dialplan)
    why: dict[str, list[str]] = {}
    for app in sorted(apps | set(exec_apps)):
        mod = APP_MODULES[app]
        if mod:
            why.setdefault(mod, []).append(f"{app}()")
    for fn in sorted(funcs):
        mod = FUNCTION_MODULES[fn]
        if mod:
            why.setdefault(mod, []).append(f"{fn}()")
    for action, mod in NEEDED_ACTIONS.items():
        if mod:
            why.setdefault(mod, []).append(f"AMI {action}")
    for tpl in trunk_templates:
        if tpl.upper().startswith("PJSIP/"):
            why.setdefault("chan_pjsip", []).append(f"dial string {tpl}")
    return [
        ModuleNeed(m, tuple(dict.fromkeys(w)), m not in OPTIONAL_MODULES)
        for m, w in sorted(why.items())
    ]


@dataclass
class CheckRow:
    check: str
    item: str
    status: str  # ok | problem | warning | unknown | info
    detail: str = ""


@dataclass
class CheckReport:
    rows: list[CheckRow] = field(default_factory=list)

    def add(self, check: str, item: str, status: str, detail: str = "") -> None:
        self.rows.append(CheckRow(check, item, status, detail))

    @property
    def problems(self) -> list[CheckRow]:
        return [r for r in self.rows if r.status == "problem"]

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0


def judge_modules(
    report: CheckReport, needs: list[ModuleNeed], loaded: Mapping[str, bool | None]
) -> None:
    """`loaded`: module -> True / False / None (could not be asked)."""
    for need in needs:
        state = loaded.get(need.module)
        uses = ", ".join(need.why)
        if state is True:
            report.add("module", need.module, "ok", uses)
        elif state is None:
            report.add("module", need.module, "unknown", f"could not ask; needed for {uses}")
        elif need.required:
            report.add("module", need.module, "problem", f"not loaded; needed for {uses}")
        else:
            report.add("module", need.module, "info", f"not loaded; optional: {uses}")
    cdr = {m: loaded.get(m) for m in CDR_BACKENDS}
    on = [m for m, v in cdr.items() if v]
    if on:
        report.add("module", "cdr backend", "ok", ", ".join(on))
    elif all(v is None for v in cdr.values()):
        report.add("module", "cdr backend", "unknown", "could not ask")
    else:
        report.add(
            "module", "cdr backend", "warning", "none loaded: calls leave no CDR (cdr_csv or other)"
        )


def judge_actions(report: CheckReport, allowed: set[str]) -> None:
    """`allowed`: the actions ListCommands offers this account (only those its write
    classes permit, and only of loaded modules)."""
    ok = []
    for action, mod in NEEDED_ACTIONS.items():
        if action in allowed:
            ok.append(action)
        else:
            hint = f" (or {mod} not loaded)" if mod else ""
            report.add("right", action, "problem", f"not allowed for this account{hint}")
    if ok:
        report.add("right", f"{len(ok)} of {len(NEEDED_ACTIONS)} actions", "ok", ", ".join(ok))
    excess: dict[str, list[str]] = {}
    for action, cls in EXCESS_ACTIONS.items():
        if action in allowed:
            excess.setdefault(cls, []).append(action)
    for cls, actions in sorted(excess.items()):
        report.add(
            "right",
            f"no '{cls}' class",
            "problem",
            f"the account may {', '.join(actions)}: too many rights; use the "
            f"[{TEMPLATE}] template of manager_outbound.conf",
        )
    if not excess:
        report.add("right", "least privilege", "ok", "no command, config, system or agi actions")


def judge_contexts(report: CheckReport, needed: list[str], present: Mapping[str, bool]) -> None:
    for ctx in needed:
        if present.get(ctx):
            report.add("context", ctx, "ok")
        else:
            report.add(
                "context", ctx, "problem", "not in the dialplan (#include extensions_outbound.conf)"
            )

"""`outbound asterisk install-conf` into a stock-like PBX configuration, run by a real
Asterisk, and `outbound asterisk check` against it and against the session's sandbox.

The stock-like folder is what a PBX admin has before installing: extensions.conf with
its own [globals] and a context, a confbridge.conf, a manager.conf with AMI enabled and
an admin account. Its AMI port and admin account are sandbox placeholders, filled when
the sandbox starts Asterisk on the folder (``Sandbox(etc_from=...)``).
"""

from __future__ import annotations

import asyncio
import configparser
import difflib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from outbound.asterisk_install import BACKUP_SUFFIX, MANAGER_FILE, snippet_text
from outbound.cli import main
from outbound.sandbox import Sandbox, SandboxError, SandboxInfo
from tests.helpers.ami import AmiClient, AmiError

AGI_PORT = 4599
STOCK = {
    "extensions.conf": (
        "[general]\nstatic = yes\nwriteprotect = no\nautofallthrough = yes\n\n"
        "[globals]\nCONSOLE = Console/dsp\n\n"
        "[from-internal]\nexten => 100,1,Answer()\n same => n,Hangup()\n"
    ),
    "confbridge.conf": "[general]\n\n[default_user]\ntype = user\n\n"
    "[default_bridge]\ntype = bridge\n",
    "manager.conf": (
        "[general]\nenabled = yes\nbindaddr = 127.0.0.1\nport = @@AMI_PORT@@\n"
        "webenabled = no\n\n"
        "; the PBX's own admin account (the sandbox logs in with it to see it is up)\n"
        "[@@ADMIN_USER@@]\nsecret = @@ADMIN_SECRET@@\ndeny = 0.0.0.0/0.0.0.0\n"
        "permit = 127.0.0.1/255.255.255.255\nread = all\nwrite = all\n"
    ),
}


def _stock(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, text in STOCK.items():
        (folder / name).write_text(text)
    return folder


def _tree(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (
            p.read_text(errors="surrogateescape"),
            p.stat().st_mode & 0o777,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _cli(*args: str, config: Path | None = None) -> Result:
    pre = ["--config", str(config)] if config else ["--set", f"agi.port={AGI_PORT}"]
    return CliRunner().invoke(main, [*pre, "asterisk", *args], catch_exceptions=False)


def _install(etc: Path, *extra: str) -> Result:
    return _cli("install-conf", "--conf-dir", str(etc), *extra)


def test_given_a_stock_config_when_dry_run_then_a_diff_and_nothing_written(tmp_path: Path) -> None:
    etc = _stock(tmp_path / "etc")
    before = _tree(etc)
    r = _install(etc, "--dry-run")
    assert r.exit_code == 0, r.output
    assert _tree(etc) == before, "a dry run wrote something"
    assert not (etc / "manager.d").exists()
    assert "+#include extensions_outbound.conf" in r.output
    assert "+#include confbridge_outbound.conf" in r.output
    assert "+#include manager.d/*.conf" in r.output
    assert f"+OUTBOUND_AGI_BASE = agi://127.0.0.1:{AGI_PORT}" in r.output
    assert "+[outbound](outbound-dialer)" in r.output
    assert "+secret = ***" in r.output, "the secret must not be shown"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A stock-like folder after one install-conf; (folder, the command's output)."""
    etc = _stock(tmp_path_factory.mktemp("pbx") / "etc")
    r = _install(etc)
    assert r.exit_code == 0, r.output
    return etc, r.output


def _ami_block(output: str) -> dict[str, str]:
    """The [ami] section install-conf tells the admin to put into outbound.ini."""
    m = re.search(r"^\[ami\]\n(?:.+\n)+", output, re.M)
    assert m, output
    cp = configparser.ConfigParser()
    cp.read_string(m.group(0))
    return dict(cp["ami"])


def test_given_an_install_then_includes_once_backups_and_a_private_account(
    installed: tuple[Path, str],
) -> None:
    etc, output = installed
    for name in ("extensions_outbound.conf", "confbridge_outbound.conf"):
        assert (etc / name).read_text() == snippet_text(name)
    assert not (etc / "pjsip_outbound.conf.sample").exists()
    assert not (etc / "manager_outbound.conf").exists()
    for name, line in [
        ("extensions.conf", "#include extensions_outbound.conf"),
        ("confbridge.conf", "#include confbridge_outbound.conf"),
        ("manager.conf", "#include manager.d/*.conf"),
    ]:
        assert (etc / name).read_text().count(line) == 1, name
        assert (etc / (name + BACKUP_SUFFIX)).read_text() == STOCK[name]
    ext = (etc / "extensions.conf").read_text()
    # Inside the admin's own [globals] (pbx_config reads only the first one).
    assert re.search(
        rf"\[globals\]\nOUTBOUND_AGI_BASE = agi://127.0.0.1:{AGI_PORT}.*\nCONSOLE", ext
    ), ext
    account = etc / MANAGER_FILE
    assert account.stat().st_mode & 0o777 == 0o640
    ami = _ami_block(output)
    assert ami["username"] == "outbound" and len(ami["secret"]) >= 32
    assert f"[outbound](outbound-dialer)\nsecret = {ami['secret']}\n" in account.read_text()


def test_given_an_install_when_run_again_then_nothing_changes(
    installed: tuple[Path, str],
) -> None:
    etc, first = installed
    before = _tree(etc)
    r = _install(etc)
    assert r.exit_code == 0, r.output
    assert "up to date" in r.output and "wrote" not in r.output
    assert _tree(etc) == before
    assert _ami_block(r.output)["secret"] == _ami_block(first)["secret"], "secret not kept"
    dry = _install(etc, "--dry-run")
    assert dry.exit_code == 0 and "up to date" in dry.output and "+++" not in dry.output


@pytest.mark.parametrize(
    "args",
    [
        ["--ami-user", "out\nbound"],
        ["--ami-user", "general"],
        ["--agi-host", "127.0.0.1\n[x]"],
        ["--agi-host", "host name"],
        ["--agi-port", "0"],
    ],
)
def test_given_a_bad_value_then_refused_and_nothing_written(
    tmp_path: Path, args: list[str]
) -> None:
    etc = _stock(tmp_path / "etc")
    before = _tree(etc)
    r = _install(etc, *args)
    assert r.exit_code == 1, r.output
    assert re.search(r"refused|use letters|not a host|must be a port", r.output), r.output
    assert _tree(etc) == before


@pytest.fixture(scope="module")
def pbx(installed: tuple[Path, str]) -> Iterator[tuple[Sandbox, SandboxInfo, dict[str, str]]]:
    """A real Asterisk running the installed folder; (sandbox, info, the [ami] block)."""
    etc, output = installed
    sb = Sandbox(name=f"test-{os.getpid()}-installconf", etc_from=etc, log=lambda _m: None)
    try:
        info = sb.up(timeout=60)
    except SandboxError as exc:
        pytest.fail(f"Asterisk did not start on the installed configuration: {exc}")
    try:
        yield sb, info, _ami_block(output)
    finally:
        sb.remove()


def test_given_the_installed_config_then_asterisk_loads_it_without_errors(
    pbx: tuple[Sandbox, SandboxInfo, dict[str, str]],
) -> None:
    sb, info, ami = pbx
    shown = sb.cli("dialplan show")
    loaded = set(re.findall(r"\[ Context '([^']+)' created by 'pbx_config' \]", shown))
    wanted = set(
        re.findall(r"^\[(outbound-[a-z-]+)\]", snippet_text("extensions_outbound.conf"), re.M)
    )
    assert len(wanted) > 10 and wanted <= loaded, wanted - loaded
    assert "from-internal" in loaded, "the admin's own dialplan is gone"
    assert f"OUTBOUND_AGI_BASE=agi://127.0.0.1:{AGI_PORT}" in sb.cli("dialplan show globals")
    assert "outbound_agent_bridge" in sb.cli("confbridge profile show bridge outbound_agent_bridge")
    user = sb.cli(f"manager show user {ami['username']}")
    perms = dict(re.findall(r"(read|write) perm: (\S+)", user))
    assert set(perms["read"].split(",")) == {"call", "dtmf", "user", "system"}, user
    assert set(perms["write"].split(",")) == {"originate", "call", "reporting"}, user

    async def login() -> str:
        client = await AmiClient.connect(
            info.ami_host, info.ami_port, ami["username"], ami["secret"]
        )
        try:
            return client.banner
        finally:
            await client.close()

    assert asyncio.run(login()).startswith("Asterisk Call Manager")
    with pytest.raises(AmiError):
        asyncio.run(AmiClient.connect(info.ami_host, info.ami_port, ami["username"], "wrong"))
    logs = info.full_log_path.read_text() + sb.console_log_path.read_text()
    errors = [ln for ln in logs.splitlines() if "ERROR" in ln]
    ours = [ln for ln in logs.splitlines() if "WARNING" in ln and "outbound" in ln.lower()]
    assert errors == [] and ours == [], errors + ours


def _ini(tmp_path: Path, host: str, port: int, username: str, secret: str) -> Path:
    path = tmp_path / "outbound.ini"
    path.write_text(
        f"[ami]\nhost = {host}\nport = {port}\nusername = {username}\nsecret = {secret}\n"
        f"[agi]\nport = {AGI_PORT}\n"
    )
    return path


def _check(config: Path) -> tuple[int, list[dict[str, str]]]:
    r = _cli("check", "--json", "--timeout", "5", config=config)
    data = json.loads(r.output)
    assert data["ok"] == (r.exit_code == 0), r.output
    return r.exit_code, data["rows"]


def _problems(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if r["status"] == "problem"]


def test_given_the_installed_account_then_check_is_all_good(
    pbx: tuple[Sandbox, SandboxInfo, dict[str, str]], tmp_path: Path
) -> None:
    _sb, info, ami = pbx
    code, rows = _check(
        _ini(tmp_path, info.ami_host, info.ami_port, ami["username"], ami["secret"])
    )
    assert code == 0, _problems(rows)
    items = {(r["check"], r["item"]): r["status"] for r in rows}
    assert items[("context", "outbound-dial")] == "ok"
    assert items[("module", "app_amd")] == "ok"
    assert items[("right", "least privilege")] == "ok"


def test_given_the_admin_account_then_check_reports_too_many_rights(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    user, secret = sandbox.admin_ami_user, sandbox.admin_ami_secret
    code, rows = _check(_ini(tmp_path, sandbox.ami_host, sandbox.ami_port, user, secret))
    assert code == 1
    bad = {r["item"] for r in _problems(rows)}
    assert {"no 'command' class", "no 'system' class", "no 'config' class"} <= bad, bad
    assert all(r["check"] == "right" for r in _problems(rows)), _problems(rows)
    # The same sandbox with the dialer's own account: nothing to complain about.
    ini = _ini(tmp_path, sandbox.ami_host, sandbox.ami_port, sandbox.ami_user, sandbox.ami_secret)
    code, rows = _check(ini)
    assert code == 0, _problems(rows)


def test_given_a_dialplan_without_the_include_then_check_reports_the_contexts(
    pbx: tuple[Sandbox, SandboxInfo, dict[str, str]], tmp_path: Path
) -> None:
    sb, info, ami = pbx
    ext = sb.etc_dir / "extensions.conf"
    installed = ext.read_text()
    ext.write_text(installed.replace("#include extensions_outbound.conf", ""))
    sb.cli("dialplan reload")
    try:
        ini = _ini(tmp_path, info.ami_host, info.ami_port, ami["username"], ami["secret"])
        code, rows = _check(ini)
    finally:  # the other tests of this module share the instance
        ext.write_text(installed)
        sb.cli("dialplan reload")
    assert code == 1
    missing = {r["item"] for r in _problems(rows) if r["check"] == "context"}
    assert {"outbound-dial", "outbound-answered", "outbound-agent"} <= missing, rows
    assert [r for r in _problems(rows) if r["check"] != "context"] == []


def test_given_debians_stock_configuration_then_only_our_lines_are_added(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    """What the docker image's build does: install-conf on Debian's own /etc/asterisk
    (here the sandbox root's, from the same package)."""
    etc = tmp_path / "asterisk"
    shutil.copytree(sandbox.root / "etc" / "asterisk", etc, symlinks=True)
    stock = _tree(etc)
    r = _install(etc)
    assert r.exit_code == 0, r.output
    after = _tree(etc)
    changed = {n for n in after if after[n] != stock.get(n)}
    backups = {n for n in changed if n.endswith(BACKUP_SUFFIX)}
    assert changed - backups == {
        "extensions.conf",
        "confbridge.conf",
        "extensions_outbound.conf",
        "confbridge_outbound.conf",
        MANAGER_FILE,
    }, "Debian's quoted #include of manager.d/*.conf must be recognised"
    for name in ("extensions.conf", "confbridge.conf"):
        old, new = stock[name][0].splitlines(), after[name][0].splitlines()
        diff = list(difflib.unified_diff(old, new, lineterm="", n=0))[2:]
        assert not [ln for ln in diff if ln.startswith("-")], diff  # nothing of Debian's lost
        assert len([ln for ln in diff if ln.startswith("+")]) <= 4, diff
    assert _install(etc).output.startswith(f"{etc}: up to date")

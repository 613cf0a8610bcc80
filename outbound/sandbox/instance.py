"""Sandbox Asterisk instances in the shared chroot.

``Sandbox`` is one named instance: it picks free loopback ports, renders its
configuration from the ``asterisk_conf`` package (see ``conf``), starts and
stops ``asterisk -f -n -C <conf>`` inside the chroot, and keeps a ``state.json`` so any
later process can find it. ``SandboxInfo`` says how to reach a running instance;
``list_instances`` names those that have files in the root.

Pure standard library plus subprocess: no panoramisk, celery or web imports here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .conf import _conf_files, _render
from .corpus import install_corpus
from .probes import _ami_login, _cmdline, _pid_alive, _port_taken, free_port
from .root import (
    Log,
    SandboxError,
    _check_version,
    _locked,
    _remove_tree,
    _tail,
    default_cache_dir,
    ensure_root,
)

__all__ = ["Sandbox", "SandboxInfo", "list_instances"]

# Where instances live, seen from inside the chroot.
_INSTANCES_IN_ROOT = "/var/lib/outbound-sandbox"
_AMI_USER = "outbound"
_ADMIN_USER = "sandboxadmin"


@dataclass(frozen=True)
class SandboxInfo:
    """How to reach a running sandbox. Paths are host paths."""

    name: str
    root: Path
    instance_dir: Path
    ami_host: str
    ami_port: int
    ami_user: str  # the dialer's least-privilege account (manager_outbound.conf)
    ami_secret: str
    admin_ami_user: str  # sandbox-only, full rights: for tests to inspect and arrange
    admin_ami_secret: str
    sip_port: int
    agi_port: int
    pid: int
    cdr_csv_path: Path
    full_log_path: Path
    version: str

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxInfo:
        paths = ("root", "instance_dir", "cdr_csv_path", "full_log_path")
        kwargs: dict[str, Any] = {
            k: Path(data[k]) if k in paths else data[k] for k in cls.__dataclass_fields__
        }
        return cls(**kwargs)


class Sandbox:
    """One named Asterisk instance in the shared sandbox root.

    Its files live in ``ROOT/var/lib/outbound-sandbox/<name>/`` (etc, run, log, spool,
    lib); ``state.json`` there lets any later process (``outbound sandbox down``) find and
    stop it. Instances with different names never share a port, socket or file.

    With ``etc_from``, Asterisk runs that configuration folder (as a PBX admin has it,
    e.g. after ``outbound asterisk install-conf``) on the sandbox's directories and
    modules; its ``@@AMI_PORT@@``, ``@@ADMIN_USER@@`` and ``@@ADMIN_SECRET@@`` placeholders
    are filled so that ``up()`` can reach it. The saved ``ami_user``/``ami_secret`` are
    then only the folder's if it uses ``@@AMI_USER@@``/``@@AMI_SECRET@@`` too.
    """

    def __init__(
        self,
        cache_dir: Path | None = None,
        name: str = "default",
        agi_port: int | None = None,
        log: Log = print,
        etc_from: Path | None = None,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise SandboxError(f"invalid sandbox name {name!r} (letters, digits, _ . -)")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.name = name
        self.agi_port = agi_port
        self.log = log
        # A configuration folder to run instead of the product's snippets (see
        # _write_config), e.g. a PBX configuration `outbound asterisk install-conf` wrote.
        self.etc_from = Path(etc_from) if etc_from is not None else None
        self.root = self.cache_dir / "root"
        self.inner_dir = f"{_INSTANCES_IN_ROOT}/{name}"  # as Asterisk sees it
        self.instance_dir = self.root / self.inner_dir.lstrip("/")
        self.state_path = self.instance_dir / "state.json"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths

    @property
    def conf_path(self) -> str:
        """This instance's asterisk.conf, as seen inside the chroot (for ``-C``)."""
        return f"{self.inner_dir}/etc/asterisk.conf"

    @property
    def etc_dir(self) -> Path:
        """Host path of the instance's configuration folder. Tests that need more
        dialplan or PJSIP objects write ``extensions_sandbox_extra.conf`` or
        ``pjsip_sandbox_extra.conf`` here and reload (``cli("dialplan reload")``)."""
        return self.instance_dir / "etc"

    @property
    def corpus_dir(self) -> Path:
        """Host path of the instance's copy of the greeting corpus (``corpus.py``):
        the ``greet_<file>`` simulated contacts play it from here."""
        return self.instance_dir / "sounds" / "corpus"

    @property
    def console_log_path(self) -> Path:
        return self.instance_dir / "log" / "console.log"

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return _locked(self.root / _INSTANCES_IN_ROOT.lstrip("/") / f".{self.name}.lock")

    # -- state

    def info(self) -> SandboxInfo | None:
        """The saved SandboxInfo of this instance (running or not), or None."""
        try:
            return SandboxInfo.from_json(json.loads(self.state_path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _is_ours(self, pid: int) -> bool:
        return _pid_alive(pid) and self.conf_path in _cmdline(pid)

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        return self._is_ours(pid)

    def status(self) -> dict[str, Any]:
        """``running``, ``pid``, ports, ``version`` and ``uptime`` (seconds, asked of
        Asterisk with ``core show uptime seconds``) of this instance."""
        info = self.info()
        running = info is not None and self._alive(info.pid)
        uptime: int | None = None
        if running:
            with contextlib.suppress(SandboxError):
                m = re.search(r"System uptime:\s*(\d+)", self.cli("core show uptime seconds"))
                uptime = int(m.group(1)) if m else None
        return {
            "name": self.name,
            "running": running,
            "pid": info.pid if running and info else None,
            "ami_port": info.ami_port if running and info else None,
            "sip_port": info.sip_port if running and info else None,
            "agi_port": info.agi_port if running and info else None,
            "version": info.version if info else None,
            "uptime": uptime,
            "instance_dir": str(self.instance_dir),
        }

    # -- commands

    def cli(self, command: str, timeout: float = 10) -> str:
        """Run an Asterisk CLI command in this instance (``asterisk -C <conf> -rx``)
        and return its output. Raises SandboxError if it cannot be run."""
        cmd = ["chroot", str(self.root), "asterisk", "-C", self.conf_path, "-rx", command]
        try:
            out = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, check=False, env=_ENV
            )
        except subprocess.TimeoutExpired as exc:
            raise SandboxError(f"sandbox {self.name}: `{command}` timed out") from exc
        except OSError as exc:
            raise SandboxError(f"sandbox {self.name}: cannot run `{command}`: {exc}") from exc
        if out.returncode != 0 or "Unable to connect to remote asterisk" in out.stdout:
            raise SandboxError(
                f"sandbox {self.name}: `{command}` failed (rc={out.returncode}): "
                f"{(out.stdout + out.stderr).strip()}"
            )
        return out.stdout

    # -- lifecycle

    def up(self, timeout: float = 60) -> SandboxInfo:
        """Start this instance (building the root first if needed) and return how to
        reach it; if it already runs, return its info.

        Picks free loopback ports, writes the configuration, starts
        ``chroot ROOT asterisk -f -n -C <conf>`` in its own session and waits, within
        ``timeout`` seconds, for ``core waitfullybooted`` and an AMI login. Raises
        SandboxError (with the tail of Asterisk's output) if it does not come up.
        """
        # The first-ever build of the root (a minute or more) is not part of the timeout.
        root = ensure_root(self.cache_dir, self.log)
        (root / _INSTANCES_IN_ROOT.lstrip("/")).mkdir(parents=True, exist_ok=True)
        with self._lock():
            deadline = time.monotonic() + timeout
            info = self.info()
            if info is not None and self._alive(info.pid):
                if self.agi_port is not None and info.agi_port != self.agi_port:
                    raise SandboxError(
                        f"sandbox {self.name} already runs with FastAGI port "
                        f"{info.agi_port}, not {self.agi_port}; stop it first"
                    )
                self.log(f"sandbox {self.name}: already running (pid {info.pid})")
                return info
            version = _check_version(root)
            last: SandboxError | None = None
            # A port picked as free can be taken before Asterisk binds it (another
            # parallel run): then start again with new ports.
            for _attempt in range(3):
                try:
                    return self._start(version, deadline)
                except _PortClash as exc:
                    last = exc
                    self.log(f"sandbox {self.name}: {exc}; retrying with other ports")
            raise SandboxError(
                f"sandbox {self.name}: did not come up on free ports three times: {last}\n"
                f"{self._tails()}"
            )

    def _start(self, version: str, deadline: float) -> SandboxInfo:
        started = time.monotonic()
        ami_port = free_port("tcp")
        sip_port = free_port("udp")
        agi_port = self.agi_port
        while agi_port is None or agi_port == ami_port:
            agi_port = free_port("tcp")
        info = SandboxInfo(
            name=self.name,
            root=self.root,
            instance_dir=self.instance_dir,
            ami_host="127.0.0.1",
            ami_port=ami_port,
            ami_user=_AMI_USER,
            ami_secret=secrets.token_hex(16),
            admin_ami_user=_ADMIN_USER,
            admin_ami_secret=secrets.token_hex(16),
            sip_port=sip_port,
            agi_port=agi_port,
            pid=0,
            cdr_csv_path=self.instance_dir / "log" / "cdr-csv" / "Master.csv",
            full_log_path=self.instance_dir / "log" / "full.log",
            version=version,
        )
        self._write_config(info)
        console = open(self.console_log_path, "wb")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                ["chroot", str(self.root), "asterisk", "-f", "-n", "-C", self.conf_path],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=_ENV,
            )
        except OSError as exc:
            raise SandboxError(f"sandbox {self.name}: cannot start asterisk: {exc}") from exc
        finally:
            console.close()
        self._proc = proc
        info = dataclasses.replace(info, pid=proc.pid)
        try:
            self._wait_ready(info, deadline)
        except BaseException:
            self._kill(proc.pid)
            raise
        self._save(info)
        self.log(
            f"sandbox {self.name}: Asterisk {version} up in {time.monotonic() - started:.1f}s "
            f"(pid {proc.pid}, AMI 127.0.0.1:{ami_port}, SIP udp/{sip_port}, "
            f"FastAGI {agi_port})"
        )
        return info

    def _write_config(self, info: SandboxInfo) -> None:
        _remove_tree(self.instance_dir)
        for sub in ("etc", "run", "log/cdr-csv", "spool", "lib/keys", "cache"):
            (self.instance_dir / sub).mkdir(parents=True, exist_ok=True)
        self.instance_dir.chmod(0o700)  # secrets live in etc/manager.conf and state.json
        install_corpus(self.corpus_dir, self.cache_dir, self.log)
        values = {
            "NAME": self.name,
            "INSTANCE": self.inner_dir,
            "MODDIR": self._moddir(),
            "AMI_PORT": str(info.ami_port),
            "AMI_USER": info.ami_user,
            "AMI_SECRET": info.ami_secret,
            "ADMIN_USER": info.admin_ami_user,
            "ADMIN_SECRET": info.admin_ami_secret,
            "SIP_PORT": str(info.sip_port),
            "AGI_PORT": str(info.agi_port),
        }
        product, overlay = _conf_files()
        etc = self.instance_dir / "etc"
        if self.etc_from is not None:
            # Only the sandbox's plumbing (asterisk.conf, modules, logger, ...) is written;
            # the given folder's files replace it where they overlap, and the product
            # snippets come from that folder alone, so it runs as it was installed.
            product = {}
        for fname, text in product.items():
            (etc / fname).write_text(text)
        for fname, text in overlay.items():
            (etc / fname).write_text(_render(text, values))
        if self.etc_from is not None:
            _copy_conf_tree(self.etc_from, etc, values)

    def _moddir(self) -> str:
        for cand in sorted(self.root.glob("usr/lib/*/asterisk/modules")):
            if (cand / "chan_pjsip.so").exists():
                return "/" + str(cand.relative_to(self.root))
        raise SandboxError(f"no Asterisk modules directory found in {self.root}")

    def _wait_ready(self, info: SandboxInfo, deadline: float) -> None:
        ctl = self.instance_dir / "run" / "asterisk.ctl"
        booted = False
        refused_since: float | None = None
        while True:
            if not self._alive(info.pid):
                raise SandboxError(
                    f"sandbox {self.name}: asterisk exited during start-up\n{self._tails()}"
                )
            now = time.monotonic()
            if now > deadline:
                raise SandboxError(
                    f"sandbox {self.name}: not ready in time (booted={booted})\n{self._tails()}"
                )
            if not booted and ctl.exists():
                with contextlib.suppress(SandboxError):
                    self.cli("core waitfullybooted", timeout=max(1.0, min(10.0, deadline - now)))
                    booted = True
            if booted:
                if _ami_login(
                    info.ami_host,
                    info.ami_port,
                    info.admin_ami_user,
                    info.admin_ami_secret,
                    timeout=2,
                ):
                    if not _port_taken(info.sip_port, "udp"):
                        raise _PortClash(f"SIP port udp/{info.sip_port} not bound by Asterisk")
                    return
                # Fully booted means the manager is configured: a listener that stays
                # away is a port someone else took.
                refused_since = refused_since or now
                if now - refused_since > 3:
                    raise _PortClash(f"AMI port {info.ami_port} not answering")
            time.sleep(0.05)

    def _tails(self) -> str:
        return (
            f"--- {self.console_log_path} ---\n{_tail(self.console_log_path, 30)}\n"
            f"--- full.log ---\n{_tail(self.instance_dir / 'log' / 'full.log', 30)}"
        )

    def _save(self, info: SandboxInfo) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(info.to_json(), fh, indent=2)
        os.replace(tmp, self.state_path)

    def _wait_gone(self, pid: int, until: float) -> bool:
        while time.monotonic() < until:
            if not self._alive(pid):
                return True
            time.sleep(0.05)
        return not self._alive(pid)

    def _kill(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self._wait_gone(pid, time.monotonic() + 5)

    def down(self, timeout: float = 20) -> None:
        """Stop this instance: ``core stop now``, wait for the process to end, SIGKILL
        its process group if it has not within ``timeout`` seconds. Does nothing if it is
        not running. Logs are kept; the state file is removed."""
        deadline = time.monotonic() + timeout
        if not self.instance_dir.exists():
            self.log(f"sandbox {self.name}: not running")
            return
        with self._lock():
            info = self.info()
            if info is None or not self._alive(info.pid):
                with contextlib.suppress(OSError):
                    self.state_path.unlink()
                self.log(f"sandbox {self.name}: not running")
                return
            with contextlib.suppress(SandboxError):
                self.cli("core stop now", timeout=max(1.0, min(10.0, timeout / 2)))
            how = "stopped"
            if not self._wait_gone(info.pid, deadline):
                how = "killed (did not stop in time)"
                self._kill(info.pid)
            if self._alive(info.pid):
                raise SandboxError(f"sandbox {self.name}: pid {info.pid} does not die")
            if self._proc is not None:
                with contextlib.suppress(Exception):
                    self._proc.wait(timeout=1)
                self._proc = None
            with contextlib.suppress(OSError):
                self.state_path.unlink()
            self.log(f"sandbox {self.name}: {how} (pid {info.pid})")

    def remove(self, timeout: float = 20) -> None:
        """``down()``, then delete the instance's files (configuration, logs, CDRs)."""
        self.down(timeout=timeout)
        with self._lock():
            _remove_tree(self.instance_dir)
        with contextlib.suppress(OSError):
            (self.root / _INSTANCES_IN_ROOT.lstrip("/") / f".{self.name}.lock").unlink()


def list_instances(cache_dir: Path | None = None) -> list[str]:
    """Names of the sandbox instances that have files in the root (running or not)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = cache / "root" / _INSTANCES_IN_ROOT.lstrip("/")
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def _copy_conf_tree(src: Path, dest: Path, values: dict[str, str]) -> None:
    """Copy a configuration folder (subfolders such as manager.d too) into an instance's
    etc, filling the same ``@@KEY@@`` placeholders as the overlay: a folder that runs in
    the sandbox must name the run-time AMI port and the sandbox's admin account."""
    if not src.is_dir():
        raise SandboxError(f"configuration folder {src} does not exist")
    for path in sorted(src.rglob("*")):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Bytes that are not UTF-8 (Latin-1 comments) pass through unchanged.
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
            target.write_text(_render(text, values), encoding="utf-8", errors="surrogateescape")


class _PortClash(SandboxError):
    pass


_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}

"""Sandbox Asterisk for tests and the demo.

A real Asterisk (22 or newer) from Debian unstable, installed once per machine into a
debootstrap chroot kept in a cache folder outside the repository, then run as any number
of independent instances inside that chroot. Each instance has its own directory tree,
its own ``asterisk.conf`` (passed with ``-C``) and its own free loopback ports, so
parallel test runs never collide.

Pure standard library plus subprocess: no panoramisk, celery or web imports here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "CACHE_ENV",
    "DEBIAN_MIRROR",
    "MIN_MAJOR",
    "PACKAGES",
    "Sandbox",
    "SandboxError",
    "SandboxInfo",
    "asterisk_version",
    "default_cache_dir",
    "ensure_root",
    "free_port",
    "list_instances",
]

CACHE_ENV = "OUTBOUND_SANDBOX_CACHE"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
SUITE = "sid"
PACKAGES = (
    "asterisk",
    "asterisk-modules",
    "asterisk-core-sounds-en-gsm",
    "asterisk-moh-opsound-gsm",
)
MIN_MAJOR = 22

# Written last into a finished root: a root without it is a half-built leftover.
_MARKER = ".outbound-sandbox-ready"
# Where instances live, seen from inside the chroot.
_INSTANCES_IN_ROOT = "/var/lib/outbound-sandbox"
_AMI_USER = "outbound"
_ADMIN_USER = "sandboxadmin"

Log = Callable[[str], Any]


class SandboxError(RuntimeError):
    """The sandbox could not be built, started, reached or stopped."""


def default_cache_dir() -> Path:
    """``$OUTBOUND_SANDBOX_CACHE`` or ``~/.cache/asterisk-outbound``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "asterisk-outbound"


# --------------------------------------------------------------------------- the root


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (deepest first), from /proc/mounts."""
    prefix = str(path.resolve())
    found = []
    with contextlib.suppress(OSError), open("/proc/mounts") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 2:
                continue
            mnt = parts[1].replace("\\040", " ")
            if mnt == prefix or mnt.startswith(prefix + "/"):
                found.append(mnt)
    return sorted(found, key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """Delete a (partial) root. A failed debootstrap can leave /proc or /sys mounted
    inside it; deleting through those mounts would be disastrous, so unmount first and
    refuse if anything is still mounted."""
    if not path.exists():
        return
    for mnt in _mounts_under(path):
        subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
    left = _mounts_under(path)
    if left:
        raise SandboxError(f"refusing to delete {path}: still mounted: {left}")
    shutil.rmtree(path, ignore_errors=True)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def asterisk_version(root: Path, timeout: float = 30) -> str:
    """``asterisk -V`` inside the chroot, e.g. ``"22.5.2"``. Raises SandboxError."""
    try:
        out = subprocess.run(
            ["chroot", str(root), "asterisk", "-V"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"cannot run asterisk -V in {root}: {exc}") from exc
    m = re.search(r"Asterisk\s+(\S+)", out.stdout)
    if out.returncode != 0 or not m:
        raise SandboxError(
            f"asterisk -V in {root} failed (rc={out.returncode}): {out.stdout}{out.stderr}"
        )
    return m.group(1)


def _major(version: str) -> int:
    m = re.match(r"(\d+)", version)
    return int(m.group(1)) if m else 0


def _check_version(root: Path) -> str:
    version = asterisk_version(root)
    if _major(version) < MIN_MAJOR:
        raise SandboxError(
            f"the sandbox root {root} has Asterisk {version}; {MIN_MAJOR}.x or newer is "
            f"needed. Delete {root} to rebuild it from Debian {SUITE}."
        )
    return version


def ensure_root(
    cache_dir: Path | None = None, log: Log = print, mirror: str = DEBIAN_MIRROR
) -> Path:
    """Return ``cache_dir/root``, a Debian unstable chroot with Asterisk, building it the
    first time (debootstrap, about a minute and ~500 MB).

    The build goes into a temporary folder renamed into place only when complete (with a
    marker file), under an exclusive file lock so concurrent callers wait for one build.
    Raises SandboxError with the tail of the debootstrap log when it cannot build, or
    when the installed Asterisk is older than ``MIN_MAJOR``.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / "root"
    if (root / _MARKER).exists():
        return root
    with _locked(cache / "root.lock"):
        if (root / _MARKER).exists():  # another process built it while we waited
            return root
        debootstrap = shutil.which("debootstrap")
        if debootstrap is None:
            raise SandboxError(
                "debootstrap is not installed; run `apt-get install -y debootstrap` "
                "(the sandbox Asterisk is built from Debian unstable with it)"
            )
        if os.geteuid() != 0:
            raise SandboxError("building and running the sandbox Asterisk needs root (chroot)")
        for stale in cache.glob("root.tmp-*"):
            log(f"sandbox: removing stale partial build {stale}")
            _remove_tree(stale)
        if root.exists():
            log(f"sandbox: removing incomplete root {root}")
            _remove_tree(root)
        tmp = cache / f"root.tmp-{os.getpid()}"
        build_log = cache / "debootstrap.log"
        cmd = [
            debootstrap,
            "--variant=minbase",
            "--include=" + ",".join(PACKAGES),
            SUITE,
            str(tmp),
            mirror,
        ]
        log(f"sandbox: building Asterisk root (first time, ~1-3 min): {' '.join(cmd)}")
        started = time.monotonic()
        try:
            with open(build_log, "w") as out:
                proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
        except OSError as exc:
            _remove_tree(tmp)
            raise SandboxError(f"cannot run debootstrap: {exc}") from exc
        if proc.returncode != 0:
            tail = _tail(build_log)
            inner = _tail(tmp / "debootstrap" / "debootstrap.log", 20)
            _remove_tree(tmp)
            raise SandboxError(
                f"debootstrap failed (rc={proc.returncode}) building the sandbox Asterisk "
                f"root from {mirror} ({SUITE}). Log {build_log}, last lines:\n"
                f"{tail}\n--- debootstrap's own log ---\n{inner}"
            )
        try:
            version = _check_version(tmp)
        except SandboxError:
            _remove_tree(tmp)
            raise
        (tmp / _MARKER).write_text(
            json.dumps({"asterisk": version, "built": time.time(), "suite": SUITE}) + "\n"
        )
        os.rename(tmp, root)
        log(f"sandbox: built Asterisk {version} root in {time.monotonic() - started:.0f}s")
        return root


# --------------------------------------------------------------------------- helpers


def free_port(kind: str = "tcp", host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` right now (the OS picks it)."""
    sock_type = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, sock_type) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_taken(port: int, kind: str, host: str = "127.0.0.1") -> bool:
    sock_type = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, sock_type) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _pid_alive(pid: int | None) -> bool:
    """True if ``pid`` runs and is not a zombie (a stopped Asterisk whose parent has not
    reaped it yet is gone for our purposes)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _ami_login(host: str, port: int, user: str, secret: str, timeout: float) -> bool:
    """Log in to AMI with a raw socket and log off: proves the listener, the account
    and the secret, without any AMI library."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            buf = b""
            while b"\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                buf += chunk
            if not buf.startswith(b"Asterisk Call Manager"):
                return False
            s.sendall(
                f"Action: Login\r\nActionID: sandbox-up\r\nUsername: {user}\r\n"
                f"Secret: {secret}\r\nEvents: off\r\n\r\n".encode()
            )
            buf = buf.split(b"\r\n", 1)[1]
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                buf += chunk
            ok = b"Response: Success" in buf.split(b"\r\n\r\n", 1)[0]
            with contextlib.suppress(OSError):
                s.sendall(b"Action: Logoff\r\n\r\n")
            return ok
    except OSError:
        return False


def _render(text: str, values: dict[str, str]) -> str:
    """Replace ``@@KEY@@`` placeholders (Asterisk owns ``${...}``)."""
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    left = sorted(set(re.findall(r"@@[A-Z0-9_]+@@", text)))
    if left:
        raise SandboxError(f"unknown placeholders in sandbox configuration: {left}")
    return text


def _conf_files() -> tuple[dict[str, str], dict[str, str]]:
    """The product snippets and the sandbox overlay, from the asterisk_conf package."""
    pkg = resources.files("asterisk_conf")
    product = {
        p.name: p.read_text() for p in pkg.iterdir() if p.is_file() and p.name.endswith(".conf")
    }
    overlay_dir = pkg.joinpath("sandbox")
    overlay = {
        p.name: p.read_text()
        for p in overlay_dir.iterdir()
        if p.is_file() and p.name.endswith(".conf")
    }
    if "asterisk.conf" not in overlay or "extensions_outbound.conf" not in product:
        raise SandboxError("the asterisk_conf package is incomplete (is it installed?)")
    return product, overlay


# --------------------------------------------------------------------------- instances


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
    """

    def __init__(
        self,
        cache_dir: Path | None = None,
        name: str = "default",
        agi_port: int | None = None,
        log: Log = print,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise SandboxError(f"invalid sandbox name {name!r} (letters, digits, _ . -)")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.name = name
        self.agi_port = agi_port
        self.log = log
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
        for fname, text in product.items():
            (etc / fname).write_text(text)
        for fname, text in overlay.items():
            (etc / fname).write_text(_render(text, values))

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


class _PortClash(SandboxError):
    pass


_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}

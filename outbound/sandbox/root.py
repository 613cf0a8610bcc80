"""Building and caching the sandbox's Debian chroot.

``ensure_root`` installs Asterisk (``MIN_MAJOR`` or newer) from Debian unstable with
debootstrap into ``<cache>/root`` once per machine, under an exclusive file lock and
through a temporary folder renamed into place only when complete. ``asterisk_version``
asks the chroot's Asterisk for its version. Also home to what every part of the
package shares: ``SandboxError``, the ``Log`` callback type, ``default_cache_dir``, the
file lock and the guarded tree removal.

Pure standard library plus subprocess.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CACHE_ENV",
    "DEBIAN_MIRROR",
    "MIN_MAJOR",
    "PACKAGES",
    "SUITE",
    "Log",
    "SandboxError",
    "asterisk_version",
    "default_cache_dir",
    "ensure_root",
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

Log = Callable[[str], Any]


class SandboxError(RuntimeError):
    """The sandbox could not be built, started, reached or stopped."""


def default_cache_dir() -> Path:
    """``$OUTBOUND_SANDBOX_CACHE`` or ``~/.cache/asterisk-outbound``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "asterisk-outbound"


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

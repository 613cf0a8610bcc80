"""Process and port probes for sandbox instances.

Free loopback ports, whether a port is taken, whether a pid is alive (and what its
command line is), and a raw-socket AMI login that proves an instance answers.

Pure standard library: no AMI library here.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

__all__ = ["free_port"]


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

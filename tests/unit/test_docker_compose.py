"""docker/compose.yaml is valid for Docker Compose v2 itself (`docker compose config`),
runs every `outbound run` process, and publishes nothing beyond 127.0.0.1.

Needs the compose v2 plugin, which scripts/setup installs; no Docker engine is needed
(``config`` only parses and resolves)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from outbound.cli import run

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker" / "compose.yaml"
PLUGIN = Path("/usr/local/lib/docker/cli-plugins/docker-compose")
SECRETS = {
    "OUTBOUND_AMI_SECRET": "0123456789abcdef0123",
    "POSTGRES_PASSWORD": "pw",
    "OUTBOUND_WEB_SECRET_KEY": "key",
}


def _compose(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        cmd = [docker, "compose"]
    else:  # the plugin also runs on its own
        assert PLUGIN.exists(), "docker compose v2 is missing: run scripts/setup"
        cmd = [str(PLUGIN)]
    env_file = tmp_path / "compose.env"  # given explicitly: a developer's docker/.env is not read
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OUTBOUND_", "POSTGRES_"))}
    return subprocess.run(
        [*cmd, "-f", str(COMPOSE), "--env-file", str(env_file), "config", *args],
        capture_output=True,
        text=True,
        env=clean,
        timeout=60,
    )


def test_compose_config_passes(tmp_path: Path) -> None:
    out = _compose(tmp_path, SECRETS, "-q")
    assert out.returncode == 0, out.stderr


def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    out = _compose(tmp_path, {k: v for k, v in SECRETS.items() if k != "POSTGRES_PASSWORD"}, "-q")
    assert out.returncode != 0 and "POSTGRES_PASSWORD" in out.stderr, out.stderr


def _services(tmp_path: Path) -> dict[str, Any]:
    out = _compose(tmp_path, SECRETS, "--format", "json")
    assert out.returncode == 0, out.stderr
    services: dict[str, Any] = json.loads(out.stdout)["services"]
    return services


def test_every_process_runs_and_only_loopback_is_published(tmp_path: Path) -> None:
    services = _services(tmp_path)
    commands = {
        name: s["command"] for name, s in services.items() if (s.get("command") or [""])[0] == "run"
    }
    # every process in its own container (`run all` is for a single box without compose)
    assert {c[1] for c in commands.values()} == set(run.commands) - {"all"}
    assert {"asterisk", "redis", "postgres", "migrate"} <= services.keys()
    for name, s in services.items():
        for port in s.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port}"
        if name != "migrate":
            assert s.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in commands:
        # AMI and FastAGI on loopback: the processes share Asterisk's network namespace.
        assert services[name]["network_mode"] == "service:asterisk", name
        env = services[name]["environment"]
        assert env["OUTBOUND_AMI_HOST"] == "127.0.0.1" and env["OUTBOUND_AMI_SECRET"]
    assert (
        services["asterisk"]["environment"]["OUTBOUND_AMI_SECRET"] == SECRETS["OUTBOUND_AMI_SECRET"]
    )


def test_the_app_image_runs_as_a_non_root_user() -> None:
    lines = (REPO / "docker" / "Dockerfile").read_text().splitlines()
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), users
    assert lines[[i for i, ln in enumerate(lines) if ln.startswith("FROM ")][-1]].startswith(
        "FROM python:3.11-slim"
    )

"""Configuration: defaults, INI file, conf.d, OUTBOUND_* environment, CLI overrides, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from outbound.config import ConfigError, load_config


def test_given_no_file_when_loaded_then_single_machine_defaults(tmp_path: Path) -> None:
    cfg = load_config(env={}, cwd=tmp_path)
    assert cfg.database_url == "sqlite:///./outbound.db"
    assert cfg.redis_url == "redis://127.0.0.1:6379/0"
    assert (cfg.get("ami", "host"), cfg.get("ami", "port")) == ("127.0.0.1", 5038)
    assert (cfg.get("agi", "host"), cfg.get("agi", "port")) == ("127.0.0.1", 4573)
    assert (cfg.get("web", "host"), cfg.get("web", "port")) == ("127.0.0.1", 8080)
    assert cfg.files == ()


def test_given_outbound_ini_in_cwd_when_loaded_then_it_is_used(tmp_path: Path) -> None:
    (tmp_path / "outbound.ini").write_text("[ami]\nport = 6038\n")
    cfg = load_config(env={}, cwd=tmp_path)
    assert cfg.get("ami", "port") == 6038
    assert cfg.source("ami", "port") == str(tmp_path / "outbound.ini")


def test_given_env_config_path_then_env_file_wins_over_cwd(tmp_path: Path) -> None:
    (tmp_path / "outbound.ini").write_text("[ami]\nport = 6038\n")
    other = tmp_path / "other.ini"
    other.write_text("[ami]\nport = 7038\n")
    cfg = load_config(env={"OUTBOUND_CONFIG": str(other)}, cwd=tmp_path)
    assert cfg.get("ami", "port") == 7038


def test_layers_apply_in_order_file_confd_env_cli(tmp_path: Path) -> None:
    f = tmp_path / "o.ini"
    f.write_text("[web]\nport = 9000\n[agi]\nport = 5000\n[dialer]\ndefault_region = us\n")
    (tmp_path / "o.ini.d").mkdir()
    (tmp_path / "o.ini.d" / "10-local.ini").write_text("[web]\nport = 9001\n")
    cfg = load_config(
        f,
        env={"OUTBOUND_AGI_PORT": "5001", "OUTBOUND_WEB_PORT": "9002"},
        overrides={"web.port": "9003"},
    )
    assert cfg.get("agi", "port") == 5001  # env over file
    assert cfg.get("web", "port") == 9003  # CLI over env over conf.d over file
    assert cfg.default_region == "US"
    assert cfg.source("web", "port") == "command line"
    assert cfg.source("agi", "port") == "$OUTBOUND_AGI_PORT"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("[ami]\nport = 99999\n", "[ami] port = '99999'"),
        ("[ami]\nport = abc\n", "[ami] port"),
        ("[dialer]\ndefault_region = XX\n", "default_region"),
        ("[dialer]\ntrunk = PJSIP/trunk\n", "${NUMBER}"),
        ("[database]\nurl = mysql://x\n", "[database] url"),
        ("[amii]\nport = 1\n", "unknown section [amii]"),
        ("[ami]\nprot = 1\n", "unknown key 'prot'"),
        ("not an ini", "cannot parse"),
    ],
)
def test_given_bad_value_in_file_then_error_names_key_and_file(
    tmp_path: Path, body: str, needle: str
) -> None:
    f = tmp_path / "bad.ini"
    f.write_text(body)
    with pytest.raises(ConfigError) as exc:
        load_config(f, env={})
    assert str(f) in str(exc.value)
    assert needle in str(exc.value)


def test_given_bad_env_value_then_error_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\$OUTBOUND_WEB_PORT: \[web\] port"):
        load_config(env={"OUTBOUND_WEB_PORT": "0"}, cwd=tmp_path)


def test_given_missing_config_file_then_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.ini", env={})


def test_given_secret_then_show_redacts_it(tmp_path: Path) -> None:
    cfg = load_config(env={"OUTBOUND_AMI_SECRET": "s3cret"}, cwd=tmp_path)
    assert cfg.get("ami", "secret") == "s3cret"
    assert cfg.as_dict()["ami"]["secret"] == "***"


def test_given_control_character_in_value_then_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CR, LF or NUL"):
        load_config(env={"OUTBOUND_AMI_USERNAME": "a\rb"}, cwd=tmp_path)

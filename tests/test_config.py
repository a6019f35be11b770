"""Config loading: the example config is valid; errors name the field; secrets stay hidden."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from terminal_gw.config import load_config, load_config_data, parse_size, redacted
from terminal_gw.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "terminal-gw.toml"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "terminal_gw", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def test_example_config_is_valid_and_complete() -> None:
    config = load_config(EXAMPLE, environ={})
    assert config.device.id == "vessel-042"
    assert config.outbox.max_bytes == 256 * 1024 * 1024
    # Every option of every section appears in the annotated example.
    text = EXAMPLE.read_text()
    for section, model in [
        ("gnss", config.gnss),
        ("gnss.reporting", config.gnss.reporting),
        ("modem", config.modem),
        ("rdss", config.rdss),
        ("mqtt", config.mqtt),
        ("outbox", config.outbox),
        ("log", config.log),
        ("status", config.status),
        ("record", config.record),
        ("commands", config.commands),
        ("clock", config.clock),
        ("daemon", config.daemon),
    ]:
        for key in type(model).model_fields:
            if isinstance(getattr(model, key), (dict, BaseModel)):
                assert f"[{section}.{key}]" in text, f"[{section}.{key}] is not documented"
                continue
            assert f"{key} =" in text, f"[{section}] {key} is not documented in the example config"


def test_check_config_prints_effective_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[device]\nid = "st-1"\n[mqtt]\npassword = "hunter2"\n')
    res = run_cli("check-config", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["device"]["id"] == "st-1"
    assert data["mqtt"]["password"] == "***"  # noqa: S105 - the redaction marker
    assert "hunter2" not in res.stdout + res.stderr


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ('[device]\nid = "x"\n[gnss]\nbaud = "fast"\n', "gnss.baud"),
        ('[device]\nid = "x"\n[mqtt]\nport = 70000\n', "mqtt.port"),
        ('[device]\nid = "x"\n[mqtt]\nbogus = 1\n', "mqtt.bogus"),
        ('[device]\nid = "x"\n[outbox]\nmax_bytes = "lots"\n', "outbox.max_bytes"),
        ("[gnss]\nbaud = 9600\n", "device"),
        ('[device]\nid = "has space"\n', "device.id"),
    ],
)
def test_check_config_exits_2_with_field_path(tmp_path: Path, body: str, path: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(body)
    res = run_cli("check-config", "--config", str(cfg))
    assert res.returncode == 2
    assert f"  {path}:" in res.stderr


def test_check_config_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    assert run_cli("check-config", "--config", str(tmp_path / "missing.toml")).returncode == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[device\nid=")
    res = run_cli("check-config", "--config", str(bad))
    assert res.returncode == 2
    assert "not valid TOML" in res.stderr


def test_env_overrides_secret() -> None:
    config = load_config_data(
        {"device": {"id": "a"}}, environ={"TGW_MQTT__PASSWORD": "s3cret", "TGW_MQTT__PORT": "8883"}
    )
    assert config.mqtt.effective_password() == "s3cret"
    assert config.mqtt.port == 8883
    assert redacted(config)["mqtt"]["password"] == "***"  # noqa: S105 - the redaction marker
    assert "s3cret" not in repr(config)


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    config = load_config_data(
        {"device": {"id": "a"}, "mqtt": {"password_file": str(secret)}}, environ={}
    )
    assert config.mqtt.effective_password() == "from-file"
    missing = load_config_data(
        {"device": {"id": "a"}, "mqtt": {"password_file": str(tmp_path / "nope")}}, environ={}
    )
    with pytest.raises(ConfigError, match="password_file"):
        missing.mqtt.effective_password()


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256MiB", 256 * 1024**2),
        ("10 MB", 10_000_000),
        ("4096", 4096),
        (123, 123),
        ("1.5KiB", 1536),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["12 parsecs", "", -1, True])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_size(bad)


def test_config_is_frozen() -> None:
    config = load_config_data({"device": {"id": "a"}}, environ={})
    with pytest.raises(ValueError, match="frozen"):
        config.device.id = "b"  # type: ignore[misc]

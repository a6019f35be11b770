"""[gpsd_server] and [nmea_out]: off by default (nothing hooked), documented, validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from terminal_gw.config import load_config, load_config_data
from terminal_gw.daemon import Daemon
from terminal_gw.errors import ConfigError
from tests.conftest import REPO

EXAMPLE = REPO / "config" / "terminal-gw.toml"


def test_off_by_default_and_then_nothing_is_hooked(tmp_path: Path) -> None:
    config = load_config_data(
        {
            "device": {"id": "v"},
            "gnss": {"port": "/dev/null"},
            "outbox": {"path": str(tmp_path / "o.db")},
        },
        environ={},
    )
    assert not config.gpsd_server.enabled
    assert config.gpsd_server.host == "127.0.0.1"
    assert config.gpsd_server.port == 2947
    assert config.nmea_out.tcp_port == 0
    assert config.nmea_out.udp_host == ""
    daemon = Daemon(config)
    assert daemon.serving.stages() == []
    assert daemon.gnss.pipeline.sentence_observers == []
    assert daemon.gnss.observers == []
    names = [s.name for s in daemon.stages()]
    assert "gpsd_server" not in names


def test_each_server_is_a_stage_of_its_own(tmp_path: Path) -> None:
    config = load_config_data(
        {
            "device": {"id": "v"},
            "gnss": {"port": "/dev/ttyUSB0"},
            "outbox": {"path": str(tmp_path / "o.db")},
            "gpsd_server": {"enabled": True},
            "nmea_out": {"tcp_port": 10110, "udp_host": "192.168.1.255"},
        },
        environ={},
    )
    daemon = Daemon(config)
    names = [s.name for s in daemon.stages()]
    assert {"gpsd_server", "nmea_tcp", "nmea_udp"} <= set(names)
    assert len(daemon.gnss.pipeline.sentence_observers) == 3
    assert daemon.serving.gpsd is not None
    assert daemon.serving.gpsd.device_path == "/dev/ttyUSB0"


def test_example_config_documents_every_option() -> None:
    config = load_config(EXAMPLE, environ={})
    text = EXAMPLE.read_text()
    for section, model in (("gpsd_server", config.gpsd_server), ("nmea_out", config.nmea_out)):
        assert f"[{section}]" in text
        body = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
        for key in type(model).model_fields:
            assert f"{key} =" in body, f"[{section}] {key} is not in the example config"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"gpsd_server": {"port": 70000}}, "gpsd_server.port"),
        ({"gpsd_server": {"max_queue_bytes": "1KB"}}, "gpsd_server.max_queue_bytes"),
        ({"gpsd_server": {"enable": True}}, "gpsd_server.enable"),
        ({"nmea_out": {"udp_port": 0}}, "nmea_out.udp_port"),
    ],
)
def test_bad_settings_name_their_field(data: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_data({"device": {"id": "v"}, **data}, environ={})
    assert path in [loc for loc, _ in info.value.problems]

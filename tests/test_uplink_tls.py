"""Uplink TLS and credentials against a real mosquitto: good and wrong CA, client certificates,
refused passwords (long backoff, a clear event and state), secrets never logged."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from terminal_gw.models import Event
from terminal_gw.outbox import Outbox
from terminal_gw.uplink import Failure, LinkState, Uplink
from tests.broker import Broker, free_port
from tests.tls import Pki, make_pki
from tests.uplink_support import DEVICE, Sms, make_config, running, subscriber, topic_of, wait_until

PASSWORD = "s3cret-Pa55"  # noqa: S105 - the test broker's password

MakeBroker = Callable[[list[str]], Broker]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Pki]:
    """The broker's CA and an unrelated one."""
    base = tmp_path_factory.mktemp("pki")
    return make_pki(base / "good", "good"), make_pki(base / "other", "other")


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[MakeBroker]:
    """Start mosquitto with the given listener lines (`{port}` is its port); killed afterwards."""
    brokers: list[Broker] = []

    def make(lines: list[str]) -> Broker:
        workdir = tmp_path / f"broker{len(brokers)}"
        workdir.mkdir()
        b = Broker(workdir)
        b.listener_conf = [line.format(port=b.port) for line in lines]
        brokers.append(b)
        b.start()
        return b

    yield make
    for b in brokers:
        b.kill()


def tls_listener(pki: Pki, *extra: str) -> list[str]:
    return [
        "listener {port} 127.0.0.1",
        f"cafile {pki.ca_cert}",
        f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}",
        *extra,
    ]


def password_file(directory: Path) -> Path:
    path = directory / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(path), "tgw", PASSWORD],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path


async def test_tls_with_the_right_ca_connects_and_delivers(
    tmp_path: Path, make_broker: MakeBroker, pki: tuple[Pki, Pki]
) -> None:
    good, _ = pki
    plain = free_port()
    broker = make_broker(
        [*tls_listener(good), f"listener {plain} 127.0.0.1", "allow_anonymous true"]
    )
    config = make_config(tmp_path, broker.port, mqtt={"tls": True, "ca_file": str(good.ca_cert)})
    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None)
        s = Sms(n=7)
        await outbox.put(topic_of(config, s), s)
        async with subscriber(plain, f"tgw/{DEVICE}/#") as got, running(uplink, outbox):
            await got.wait_for(lambda g: any(rid == s.id for _, rid in g.record_ids()))
            assert uplink.state is LinkState.CONNECTED
            status = got.payloads("/status")
            assert status[-1]["state"] == "online"


async def test_wrong_ca_fails_with_tls_reason_event_and_long_backoff(
    tmp_path: Path, make_broker: MakeBroker, pki: tuple[Pki, Pki]
) -> None:
    good, other = pki
    broker = make_broker([*tls_listener(good), "allow_anonymous true"])
    config = make_config(
        tmp_path,
        broker.port,
        mqtt={"tls": True, "ca_file": str(other.ca_cert), "auth_backoff_s": 300.0},
    )
    events: list[Event] = []
    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=events.append)
        async with running(uplink):
            await wait_until(lambda: uplink.state is LinkState.BACKING_OFF)
            assert uplink.failure is Failure.TLS
            assert "certificate verify failed" in (uplink.state_reason or "")
            assert uplink.retry_at is not None
            assert uplink.retry_at - time.time() > 250  # the long wait, not a tight loop
            await asyncio.sleep(0.3)
            assert uplink.counters.connect_failures == 1
    assert len(events) == 1
    assert events[0].kind == "uplink"
    assert events[0].severity == "error"
    assert events[0].data["failure"] == "tls"
    assert "certificate verify failed" in events[0].message


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_wrong_password_fails_with_auth_reason_and_long_backoff(
    tmp_path: Path, make_broker: MakeBroker, protocol: str
) -> None:
    broker = make_broker(
        [
            "listener {port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {password_file(tmp_path)}",
        ]
    )
    config = make_config(
        tmp_path,
        broker.port,
        mqtt={"protocol": protocol, "username": "tgw", "password": "wrong-one"},
    )
    events: list[Event] = []
    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=events.append)
        with structlog.testing.capture_logs() as logs:
            async with running(uplink):
                await wait_until(lambda: uplink.state is LinkState.BACKING_OFF)
                assert uplink.failure is Failure.AUTH
                assert "refused" in (uplink.state_reason or "")
                assert uplink.retry_at is not None
                assert uplink.retry_at - time.time() > 20
    assert [e.data["failure"] for e in events] == ["auth"]
    assert "wrong-one" not in json.dumps([e.to_json_dict() for e in events])
    assert "wrong-one" not in repr(logs)


@pytest.mark.parametrize("source", ["file", "environment"])
async def test_password_from_file_or_environment_connects_and_is_never_logged(
    tmp_path: Path, make_broker: MakeBroker, source: str
) -> None:
    from terminal_gw.config import load_config_data

    broker = make_broker(
        [
            "listener {port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {password_file(tmp_path)}",
        ]
    )
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD + "\n")
    base = make_config(tmp_path, broker.port, mqtt={"username": "tgw"})
    data: dict[str, Any] = base.model_dump(mode="json")
    environ: dict[str, str] = {}
    if source == "file":
        data["mqtt"]["password_file"] = str(secret)
    else:
        data["mqtt"].pop("password")
        environ["TGW_MQTT__PASSWORD"] = PASSWORD
    config = load_config_data(data, environ=environ)
    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None)
        with structlog.testing.capture_logs() as logs:
            async with running(uplink):
                await wait_until(lambda: uplink.state is LinkState.CONNECTED)
    assert PASSWORD not in repr(logs)


async def test_client_certificate_auth(
    tmp_path: Path, make_broker: MakeBroker, pki: tuple[Pki, Pki]
) -> None:
    good, other = pki
    broker = make_broker(
        [
            *tls_listener(good, "require_certificate true", "use_identity_as_username true"),
            "allow_anonymous false",
        ]
    )
    with_cert = make_config(
        tmp_path,
        broker.port,
        mqtt={
            "tls": True,
            "ca_file": str(good.ca_cert),
            "cert_file": str(good.client_cert),
            "key_file": str(good.client_key),
        },
    )
    async with Outbox(with_cert.outbox) as outbox:
        uplink = Uplink(with_cert, outbox, events=lambda e: None)
        async with running(uplink):
            await wait_until(lambda: uplink.state is LinkState.CONNECTED)

    # A certificate from another CA is refused by the broker during the handshake: reported
    # as a TLS failure at once, not after a CONNACK timeout.
    foreign = make_config(
        tmp_path,
        broker.port,
        mqtt={
            "tls": True,
            "ca_file": str(good.ca_cert),
            "cert_file": str(other.client_cert),
            "key_file": str(other.client_key),
            "publish_timeout_s": 30.0,
        },
    )
    events: list[Event] = []
    async with Outbox(foreign.outbox) as outbox:
        uplink = Uplink(foreign, outbox, events=events.append)
        async with running(uplink):
            await wait_until(lambda: uplink.state is LinkState.BACKING_OFF, within=5)
            assert uplink.failure is Failure.TLS
            # The broker's alert, or (TLS 1.3: the client's handshake is done before the
            # broker checks the certificate) the connection it then closes.
            reason = uplink.state_reason or ""
            assert reason.startswith("tls: "), reason
            assert "alert" in reason or "EOF" in reason, reason
    assert [e.data["failure"] for e in events] == ["tls"]


async def test_missing_certificate_file_is_a_tls_failure(
    tmp_path: Path, make_broker: MakeBroker, pki: tuple[Pki, Pki]
) -> None:
    good, _ = pki
    broker = make_broker([*tls_listener(good), "allow_anonymous true"])
    config = make_config(
        tmp_path,
        broker.port,
        mqtt={"tls": True, "ca_file": str(tmp_path / "no-such-ca.pem")},
    )
    events: list[Event] = []
    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=events.append)
        async with running(uplink):
            await wait_until(lambda: uplink.state is LinkState.BACKING_OFF)
            assert uplink.failure is Failure.TLS
            assert "cannot load" in (uplink.state_reason or "")
    assert len(events) == 1


async def test_insecure_tls_connects_to_an_untrusted_broker_and_warns(
    tmp_path: Path, make_broker: MakeBroker, pki: tuple[Pki, Pki]
) -> None:
    good, other = pki
    broker = make_broker([*tls_listener(good), "allow_anonymous true"])
    config = make_config(
        tmp_path,
        broker.port,
        mqtt={"tls": True, "ca_file": str(other.ca_cert), "tls_insecure": True},
    )
    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None)
        with structlog.testing.capture_logs() as logs:
            async with running(uplink):
                await wait_until(lambda: uplink.state is LinkState.CONNECTED)
    warnings = [e for e in logs if e["event"] == "mqtt_tls_insecure"]
    assert warnings
    assert warnings[0]["log_level"] == "warning"

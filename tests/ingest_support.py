"""Helpers for the ingest tests: configs, `terminal-gw ingest` processes, a QoS 1 publisher
that re-sends what the broker did not acknowledge, payloads of the real shapes, row counts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from terminal_gw.models import Event, Fix, Satellite, Sky, Status, iso_utc, new_id
from tests.broker import Broker
from tests.pg import Postgres
from tests.waiting import wait_until_sync

REPO = Path(__file__).resolve().parent.parent
PREFIX = "tgw"


def write_config(path: Path, broker: Broker, pg: Postgres, **ingest: Any) -> Path:
    """An ingest config for this broker and database; `ingest` keys override."""
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "dsn": pg.dsn,
        "batch_max_rows": 200,
        "batch_max_age_ms": 50,
        "backoff_min_s": 0.1,
        "backoff_max_s": 0.5,
        "once_idle_ms": 1500,
        "status_interval_s": 60.0,
    }
    values.update(ingest)
    lines = ["[ingest]"]
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    lines += ["", "[log]", 'format = "json"']
    path.write_text("\n".join(lines) + "\n")
    return path


def env() -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("TGW_")},
        "PYTHONPATH": str(REPO),
    }


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`terminal-gw ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "terminal_gw", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        cwd=REPO,
        check=False,
    )


def migrate(config: Path) -> None:
    res = run_cli("ingest", "--config", str(config), "--migrate")
    assert res.returncode == 0, res.stderr


class IngestProcess:
    """A running `terminal-gw ingest`; its JSON log lines collected as they come."""

    def __init__(self, config: Path, client_id: str, *extra: str) -> None:
        self.client_id = client_id
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "terminal_gw",
                "ingest",
                "--config",
                str(config),
                "--client-id",
                client_id,
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env(),
            cwd=REPO,
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            text = raw.decode("utf-8", "replace").strip()
            with self._lock:
                self.raw.append(text)
                with contextlib.suppress(ValueError):
                    self.lines.append(json.loads(text))

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [line for line in self.lines if line.get("event") == name]

    def wait_event(self, name: str, count: int = 1, timeout: float = 30) -> dict[str, Any]:
        """The `count`-th log line of event `name`, waiting for it."""
        wait_until_sync(
            lambda: len(self.events(name)) >= count or self.proc.poll() is not None,
            timeout,
            f"{self.client_id}: log event {name} x{count}",
        )
        found = self.events(name)
        assert len(found) >= count, f"{self.client_id} exited: {self.log()}"
        return found[count - 1]

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.raw[-40:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(5)

    def terminate(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def wait(self, timeout: float = 60) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc


class Publisher:
    """A device's side, as the outbox does it: QoS 1, a message is done only when PUBACKed;
    after a lost connection the unacknowledged ones are sent again."""

    def __init__(self, broker: Broker, client_id: str) -> None:
        self.broker = broker
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
        )
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.sent = 0

    def _connect(self, deadline: float) -> None:
        while True:
            try:
                self.client.connect(self.broker.host, self.broker.port, 30)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
            else:
                self.client.loop_start()
                return

    def publish_all(self, messages: Iterable[tuple[str, bytes]], timeout: float = 120) -> None:
        """Publish each message until the broker has acknowledged it (re-sending after a
        broker restart)."""
        deadline = time.monotonic() + timeout
        self._connect(deadline)
        try:
            window: list[tuple[tuple[str, bytes], paho.MQTTMessageInfo]] = []
            todo = list(messages)
            i = 0
            while i < len(todo) or window:
                while i < len(todo) and len(window) < 50:
                    topic, payload = todo[i]
                    window.append((todo[i], self.client.publish(topic, payload, qos=1)))
                    i += 1
                info = window[0][1]
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(2.0)
                if info.is_published():
                    window.pop(0)
                    self.sent += 1
                    continue
                if time.monotonic() > deadline:
                    raise TimeoutError("publisher: broker did not take the messages in time")
                if not self.client.is_connected():
                    # Not acknowledged before the link broke: send again once it is back.
                    self.client.loop_stop()
                    resend = [m for m, inf in window if not inf.is_published()]
                    window.clear()
                    self._reconnect(deadline)
                    window.extend((m, self.client.publish(m[0], m[1], qos=1)) for m in resend)
        finally:
            self.client.disconnect()
            self.client.loop_stop()

    def _reconnect(self, deadline: float) -> None:
        while True:
            try:
                self.client.reconnect()
                self.client.loop_start()
                wait_until_sync(self.client.is_connected, 10, "publisher reconnected")
            except (OSError, AssertionError):
                self.client.loop_stop()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
            else:
                return


# --- payloads of the real shapes -------------------------------------------------------------


def fix_payload(i: int, t0: float = 1_760_000_000.0) -> Fix:
    t = t0 + i
    return Fix(
        id=new_id(int(t * 1000)),
        time=iso_utc(t),
        mode=3,
        status=1,
        lat=31.2304 + i * 1e-5,
        lon=121.4737 - i * 1e-5,
        altHAE=12.5,
        altMSL=8.1,
        geoidSep=4.4,
        speed=5.2,
        track=87.0,
        hdop=0.9,
        vdop=1.2,
        pdop=1.5,
        nSat=18,
        uSat=12,
        used={"gps": 5, "bds": 7},
    )


def sky_payload(t: float = 1_760_000_000.0) -> Sky:
    sats = [
        Satellite(PRN=401, gnssid=3, svid=1, az=120.0, el=45.0, ss=42.0, used=True),
        Satellite(PRN=7, gnssid=0, svid=7, az=60.0, el=20.0, ss=30.0),
    ]
    return Sky(id=new_id(int(t * 1000)), time=iso_utc(t), satellites=sats, nSat=2, uSat=1)


def status_payload(state: str, t: float) -> Status:
    return Status(
        id=new_id(int(t * 1000)),
        time=iso_utc(t),
        state="online" if state == "online" else "offline",
        health={"healthy": True},
    )


def event_payload(t: float = 1_760_000_000.0) -> Event:
    return Event(
        id=new_id(int(t * 1000)),
        time=iso_utc(t),
        kind="antenna",
        severity="warning",
        message="antenna open",
        data={"state": "open"},
    )


def fix_messages(device: str, count: int, start: int = 0) -> Iterator[tuple[str, bytes]]:
    for i in range(start, start + count):
        yield f"{PREFIX}/{device}/gnss/fix", fix_payload(i).to_json().encode()


# --- database --------------------------------------------------------------------------------


def query(pg: Postgres, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg.dsn) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def count(pg: Postgres, table: str) -> int:
    try:
        rows = query(pg, f"SELECT count(*) FROM {table}")  # noqa: S608 - the tests' own names
        return int(rows[0][0])
    except psycopg.OperationalError:
        return -1


def ids_of(messages: Iterable[tuple[str, bytes]]) -> list[str]:
    out = []
    for _, payload in messages:
        out.append(json.loads(payload)["id"])
    return out

"""What a QoS 1 publish costs below the MQTT library: paho-mqtt 2 against bare packets.

    python bench/mqtt_floor.py [--messages 20000] [--inflight 16] [--repeat 3]

The uplink's goal of <= 50 us of CPU per published message sits below what paho-mqtt 2 itself
costs through its public API on the project's machines. This bench shows where the floor is:
against a mosquitto started here, with the same fix payloads (JSON; their size is printed) and the
same window of `--inflight` messages awaiting their PUBACK, it measures `time.process_time()`
per message of

- "paho": a plain paho-mqtt 2 client (MQTT 5, `loop()` in this thread, no asyncio), publishing
  at QoS 1 and waiting for every PUBACK (what `bench/uplink.py` calls "paho");
- "bare": an asyncio protocol that writes MQTT 5 PUBLISH packets itself (no properties) and
  reads the PUBACKs: the cost of the protocol's bytes and one event loop, with none of a
  library's bookkeeping (message objects, locks, reason-code and property objects).

The bare client is a measuring stick only: it has no reconnect, TLS, session, will or
downlink, and nothing in terminal_gw uses it.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import struct
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import paho.mqtt.client as paho  # noqa: E402 - after the path set-up
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from terminal_gw.models import Fix  # noqa: E402
from tests.broker import Broker  # noqa: E402

TOPIC = "terminal-gw/bench/gnss/fix"


def payloads(n: int) -> list[bytes]:
    return [
        Fix(mode=3, lat=31.0 + i * 1e-5, lon=121.0, speed=1.5, track=90.0).to_json().encode()
        for i in range(n)
    ]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(kind: int, body: bytes) -> bytes:
    return bytes((kind,)) + varint(len(body)) + body


def utf8(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


class Bare(asyncio.Protocol):
    """MQTT 5: CONNECT, then PUBLISH at QoS 1 with `inflight` awaiting PUBACK."""

    def __init__(self, messages: list[bytes], inflight: int) -> None:
        self.messages = messages
        self.inflight = inflight
        self.next = 0
        self.acked = 0
        self.buf = bytearray()
        self.connected = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()
        self.transport: Any = None
        self.topic = utf8(TOPIC)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        body = utf8("MQTT") + bytes((5, 0x02)) + struct.pack("!H", 60) + b"\x00"
        transport.write(packet(0x10, body + utf8("bench-bare")))

    def send(self, count: int) -> None:
        out = []
        topic = self.topic
        for _ in range(count):
            if self.next >= len(self.messages):
                break
            mid = self.next % 65535 + 1
            body = topic + struct.pack("!H", mid) + b"\x00" + self.messages[self.next]
            out.append(packet(0x32, body))
            self.next += 1
        if out:
            self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        freed = 0
        while len(buf) >= 2:
            # Remaining length: PUBACKs and CONNACKs here are short (one length byte).
            size = buf[1]
            if size & 0x80 or len(buf) < 2 + size:
                if size & 0x80:
                    raise ValueError("long packet not expected")
                break
            kind = buf[0] >> 4
            del buf[: 2 + size]
            if kind == 4:
                freed += 1
            elif kind == 2 and not self.connected.done():
                self.connected.set_result(None)
        if freed:
            self.acked += freed
            if self.acked >= len(self.messages):
                if not self.done.done():
                    self.done.set_result(None)
                return
            self.send(freed)


async def run_bare(port: int, messages: list[bytes], inflight: int) -> float:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(
        lambda: Bare(messages, inflight), "127.0.0.1", port
    )
    await proto.connected
    cpu0 = time.process_time()
    proto.send(inflight)
    await proto.done
    cpu = time.process_time() - cpu0
    transport.write(b"\xe0\x00")  # DISCONNECT
    transport.close()
    return cpu


def run_paho(port: int, messages: list[bytes], inflight: int) -> float:
    acked = [0]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho", protocol=paho.MQTTv5)
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.on_publish = lambda *a: acked.__setitem__(0, acked[0] + 1)
    connected: list[bool] = []
    client.on_connect = lambda *a: connected.append(True)
    client.connect("127.0.0.1", port, 60)
    while not connected:
        client.loop(0.1)
    cpu0 = time.process_time()
    for m in messages:
        client.publish(TOPIC, m, qos=1)
    while acked[0] < len(messages):
        client.loop(1.0)
    cpu = time.process_time() - cpu0
    client.disconnect()
    client.loop(0.1)
    return cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    messages = payloads(args.messages)
    print(
        f"machine: {platform.machine()}, Python {platform.python_version()},"
        f" paho-mqtt {metadata.version('paho-mqtt')}"
    )
    print(
        f"{args.messages} QoS 1 publishes of {sum(map(len, messages)) // len(messages)} B,"
        f" {args.inflight} in flight; us of CPU a message (this process), runs alternated"
    )
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp))
        broker.start()
        try:
            results: dict[str, list[float]] = {"paho": [], "bare": []}
            for _ in range(args.repeat):
                results["paho"].append(run_paho(broker.port, messages, args.inflight))
                results["bare"].append(asyncio.run(run_bare(broker.port, messages, args.inflight)))
        finally:
            broker.stop()
    for name, runs in results.items():
        per = [r / args.messages * 1e6 for r in runs]
        print(f"  {name:5} best {min(per):6.1f}   runs " + " / ".join(f"{p:.1f}" for p in per))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

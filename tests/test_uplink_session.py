"""Commands sent while the daemon is down are not lost: the real daemon as a process, stopped or
SIGKILLed, a real mosquitto that stays up, the Tiantong simulator on a pty.

The broker keeps the daemon's persistent session and queues its commands; after the restart each
runs once (answers counted by command id), and one SMS goes out for one `sms/send`.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from terminal_gw.outbox import codec
from terminal_gw.sim.modem import ModemSimulator
from terminal_gw.transport.pty import PtyDevice
from tests.broker import Broker
from tests.uplink_support import Received, subscriber

REPO = Path(__file__).resolve().parent.parent
DEVICE = "vessel-s"
BASE = f"tgw/{DEVICE}"


def write_config(tmp_path: Path, broker_port: int, modem_path: str, protocol: str) -> Path:
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[device]
id = "{DEVICE}"
[gnss]
port = "none"
[modem]
port = "{modem_path}"
baud = 115200
[mqtt]
host = "127.0.0.1"
port = {broker_port}
protocol = "{protocol}"
keepalive_s = 5
backoff_min_s = 0.1
backoff_max_s = 0.5
[outbox]
path = "{state}/outbox.db"
commit_interval_s = 0.05
[commands]
path = "{state}/commands.db"
[status]
path = "{state}/status.json"
interval_s = 0.5
[log]
level = "info"
format = "json"
"""
    )
    return cfg


class DaemonProcess:
    """`terminal-gw run` as a child process, started and killed at will."""

    def __init__(self, cfg: Path, log: Path) -> None:
        self.cfg = cfg
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "terminal_gw", "run", "--config", str(self.cfg)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def signal(self, sig: signal.Signals) -> int:
        """Send `sig` and wait for the exit; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(15)

    def kill_now(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait(15)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def answers(got: Received, name: str | None = None) -> list[dict[str, Any]]:
    """Command answers (cmd-result) seen so far, of `name` when given."""
    topic = f"{BASE}/cmd-result/" + (name or "")
    return [json.loads(p) for t, p, _ in got.messages if t.startswith(topic) and p]


def answered(got: Received) -> Counter[str]:
    """How many runs each command id had: distinct answers (an answer's own `id`; the outbox
    delivers at least once, so the same answer may arrive twice after a kill)."""
    unique = {str(a["id"]): str(a.get("command_id")) for a in answers(got)}
    return Counter(unique.values())


async def ping(client: aiomqtt.Client, command_id: str) -> None:
    await client.publish(f"{BASE}/cmd/ping", json.dumps({"id": command_id}), qos=1)


@asynccontextmanager
async def setup(
    tmp_path: Path, broker: Broker, protocol: str = "5"
) -> AsyncIterator[tuple[DaemonProcess, ModemSimulator, Received, aiomqtt.Client]]:
    device = PtyDevice(tmp_path / "dev" / "tiantong0")
    sim = ModemSimulator(device)
    cfg = write_config(tmp_path, broker.port, device.path, protocol)
    daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    try:
        async with (
            asyncio.TaskGroup() as tg,
            subscriber(broker.port, f"{BASE}/#", qos=1) as got,
            aiomqtt.Client(
                "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=5
            ) as ops,
        ):
            sim_task = tg.create_task(sim.run(), name="modem-sim")
            try:
                yield daemon, sim, got, ops
            finally:
                daemon.close()
                sim_task.cancel()
    finally:
        daemon.close()
        device.close()


async def first_contact(got: Received, ops: aiomqtt.Client) -> None:
    """Ping until answered: before its first subscription the broker has no session to queue in."""
    async with asyncio.timeout(30):
        for n in range(1000):
            await ping(ops, f"ready-{n}")
            with suppress(TimeoutError):
                await got.wait_for(lambda g: any(c.startswith("ready-") for c in answered(g)), 0.5)
                return


async def until_answered(got: Received, command_id: str, within: float = 30.0) -> None:
    await got.wait_for(lambda g: answered(g)[command_id] >= 1, within)


@pytest.mark.parametrize(
    ("sig", "protocol"),
    [(signal.SIGTERM, "5"), (signal.SIGKILL, "5"), (signal.SIGKILL, "3.1.1")],
    ids=["sigterm-mqtt5", "sigkill-mqtt5", "sigkill-mqtt311"],
)
async def test_commands_sent_while_the_daemon_is_down_run_once_after_restart(
    tmp_path: Path, broker: Broker, sig: signal.Signals, protocol: str
) -> None:
    async with setup(tmp_path, broker, protocol) as (daemon, sim, got, ops):
        daemon.start()
        await first_contact(got, ops)  # subscribed: the session exists on the broker
        code = daemon.signal(sig)
        assert code == (0 if sig is signal.SIGTERM else -signal.SIGKILL)

        # While it is down: pings, one SMS, and the clearing of a retained command.
        queued = [f"q-{i}" for i in range(8)]
        for cid in queued[:4]:
            await ping(ops, cid)
        sms = {"id": "m-1", "to": "+8613800138000", "text": "sent while the daemon was down"}
        await ops.publish(f"{BASE}/cmd/sms/send", json.dumps(sms), qos=1)
        await ops.publish(f"{BASE}/cmd/ping", b"", qos=1, retain=True)
        for cid in queued[4:]:
            await ping(ops, cid)

        daemon.start()
        # Commands run in order: once the last one is answered, all of them ran.
        for cid in queued:
            await until_answered(got, cid)
        await got.wait_for(
            lambda g: any(
                json.loads(p).get("state") == "sent"
                for t, p, _ in g.messages
                if t == f"{BASE}/sms/tx/m-1" and p
            ),
            30,
        )
        # And a retained empty payload while it is up (the usual way to clear one).
        await ops.publish(f"{BASE}/cmd/ping", b"", qos=1, retain=True)
        await ping(ops, "last")
        await until_answered(got, "last")
        assert daemon.signal(signal.SIGTERM) == 0

    counts = answered(got)
    print(
        f"{sig.name} {protocol}: {len(queued) + 1} commands queued while down,"
        f" {sum(counts[c] for c in [*queued, 'm-1'])} answered after restart,"
        f" duplicates {sum(max(0, counts[c] - 1) for c in [*queued, 'm-1'])},"
        f" sms sent {len(sim.sent)}"
    )
    assert all(counts[c] == 1 for c in queued), counts
    assert counts["m-1"] == 1, counts
    assert len(sim.sent) == 1  # one SMS on the air for one sms/send
    codes = [a.get("code") for a in answers(got)]
    assert "invalid_json" not in codes, codes  # the cleared retained command got no answer
    assert all(a["ok"] for a in answers(got)), answers(got)


def _inbox_rows(db: Path) -> list[tuple[int, float | None, bytes]]:
    """(seq, done, payload) of each stored command; the payload is dropped once done."""
    if not db.exists():
        return []
    with suppress(sqlite3.Error):
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)
        try:
            return [
                (r[0], r[1], bytes(r[2]))
                for r in conn.execute("SELECT seq, done, payload FROM inbox ORDER BY seq")
            ]
        finally:
            conn.close()
    return []


def _answer_stored(db: Path, command_id: str) -> bool:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
    try:
        rows = conn.execute(
            "SELECT payload FROM outbox WHERE topic LIKE ?", (f"{BASE}/cmd-result/%",)
        ).fetchall()
    finally:
        conn.close()
    return any(f'"command_id":"{command_id}"'.encode() in codec.decode(bytes(r[0])) for r in rows)


async def test_a_command_is_not_lost_or_run_twice_when_the_daemon_is_killed_at_receipt(
    tmp_path: Path, broker: Broker
) -> None:
    rng = random.Random(7)
    state = tmp_path / "state"
    inbox = state / "inbox.db"
    outbox = state / "outbox.db"
    cycles = 8
    # Where the kill found the cycle's own command: "not received" (not in the inbox: the broker
    # still has it), "received" (stored, not run: killed at receipt, before or around its ack),
    # "ran" (row done). Separately, every kill that found any command "in doubt" (its answer
    # committed, its row not yet marked done: the one window where a command runs again after
    # a restart, see terminal_gw/uplink/inbox.py).
    landed: dict[str, str] = {}
    in_doubt: Counter[str] = Counter()
    async with setup(tmp_path, broker) as (daemon, _sim, got, ops):
        daemon.start()
        await first_contact(got, ops)
        for i in range(cycles):
            cid = f"k-{i}"
            before = len(_inbox_rows(inbox))
            await ping(ops, cid)
            if i % 2 == 0:
                # At receipt: the moment the command's row is on disk (before or around its ack).
                async with asyncio.timeout(15):
                    while len(_inbox_rows(inbox)) == before:
                        await asyncio.sleep(0.001)
            else:
                await asyncio.sleep(rng.uniform(0.0, 0.02))
            daemon.kill_now()
            await asyncio.to_thread(daemon.wait)
            rows = _inbox_rows(inbox)
            if len(rows) == before:
                landed[cid] = "not received"
            else:
                landed[cid] = "ran" if rows[before][1] is not None else "received"
            for _seq, done, payload in rows:
                if done is None and payload:
                    pending = json.loads(payload)["id"]
                    if answered(got)[pending] > 0 or _answer_stored(outbox, pending):
                        in_doubt[pending] += 1
            daemon.start()
        await ping(ops, "last")
        await until_answered(got, "last")
        assert daemon.signal(signal.SIGTERM) == 0
    counts = answered(got)
    print(
        "kill at receipt:",
        {c: (landed[c], counts[c]) for c in landed},
        "in doubt:",
        dict(in_doubt),
    )
    for cid, how in landed.items():
        # Never lost, and one answer: a command run again after a kill in the window after
        # its run (its row not yet marked done) answers with the same id as the first run.
        assert counts[cid] == 1, (cid, how, counts[cid], in_doubt[cid])
    received = [c for c, how in landed.items() if how == "received"]
    assert received, landed  # the case that matters happened: killed after receipt, before the run


async def test_a_daemon_restart_takes_over_the_broker_session(
    tmp_path: Path, broker: Broker
) -> None:
    """The broker sees one client id: each restart resumes the session (no clean start)."""
    async with setup(tmp_path, broker) as (daemon, _sim, got, ops):
        daemon.start()
        await first_contact(got, ops)
        daemon.signal(signal.SIGTERM)
        daemon.start()
        await ping(ops, "b")
        await until_answered(got, "b")
        daemon.signal(signal.SIGTERM)
    log = broker.log_path.read_text()
    assert log.count(f"as terminal-gw-{DEVICE} (p5, c0,") == 2, log

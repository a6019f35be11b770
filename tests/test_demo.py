"""The README's first command: the demo runs, and records reach a subscriber."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.broker import Broker


def test_demo_runs_20s_and_records_reach_a_subscriber(broker: Broker, tmp_path: Path) -> None:
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.port),
            "-t",
            "tgw/demo-vessel/#",
            "-v",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.3)
        demo = subprocess.run(
            [
                sys.executable,
                "-m",
                "terminal_gw",
                "demo",
                "--duration",
                "20",
                "--broker",
                f"127.0.0.1:{broker.port}",
                "--state-dir",
                str(tmp_path / "demo"),
                "--bds-every",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        time.sleep(0.3)
        sub.terminate()
        out, _ = sub.communicate(timeout=5)
    assert demo.returncode == 0, demo.stderr
    assert f"mosquitto_sub -h 127.0.0.1 -p {broker.port}" in demo.stdout
    assert "link connected" in demo.stdout
    assert f"mosquitto_pub -h 127.0.0.1 -p {broker.port} -t 'tgw/demo-vessel/cmd/bds/send'" in (
        demo.stdout
    )
    lines = [line.split(" ", 1) for line in out.splitlines() if " " in line]
    fixes = [json.loads(p) for t, p in lines if t == "tgw/demo-vessel/gnss/fix"]
    assert len(fixes) >= 5
    assert all(f["class"] == "TPV" and f["mode"] == 3 for f in fixes)
    bds = [json.loads(p) for t, p in lines if t == "tgw/demo-vessel/bds/rx"]
    assert bds
    assert all(m["class"] == "BDS_RX" for m in bds)
    statuses = [json.loads(p) for t, p in lines if t == "tgw/demo-vessel/status"]
    assert statuses[0]["state"] == "online"
    assert statuses[-1]["state"] == "offline"
    # Nothing lost: every record stored was delivered or still waits (stored at shutdown).
    stopped = next(ln for ln in demo.stdout.splitlines() if ln.startswith("stopped:"))
    summary = stopped.split()
    stored, delivered, waiting = int(summary[1]), int(summary[4]), int(summary[6])
    assert stored == delivered + waiting
    assert delivered >= len(fixes)


def test_demo_without_broker_piles_up_in_outbox(tmp_path: Path) -> None:
    demo = subprocess.run(
        [
            sys.executable,
            "-m",
            "terminal_gw",
            "demo",
            "--duration",
            "4",
            "--broker",
            "none",
            "--state-dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert demo.returncode == 0, demo.stderr
    assert "no broker (--broker none)" in demo.stdout
    summary = next(ln for ln in demo.stdout.splitlines() if ln.startswith("stopped:"))
    assert " 0 delivered" in summary
    waiting = int(summary.split(" delivered, ")[1].split()[0])
    assert waiting > 0

"""SIGKILL at random points while ingesting: after each restart every record accepted with
sync=True, and every record committed before death, is there, and the database is sound."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from terminal_gw.outbox import check_database, id_from_db

REPO = Path(__file__).resolve().parent.parent


def stored(path: Path) -> set[str]:
    conn = sqlite3.connect(str(path))
    try:
        if not conn.execute("SELECT name FROM sqlite_master WHERE name = 'outbox'").fetchall():
            return set()  # killed between creating the file and the schema
        return {id_from_db(r[0]) for r in conn.execute("SELECT id FROM outbox")}
    finally:
        conn.close()


def one_cycle(path: Path, cycle: int, rng: random.Random) -> tuple[set[str], set[str]]:
    """Start the ingesting child, kill it at a random point; return (sync, committed) ids."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.outbox_child", str(path), str(cycle * 1_000_000)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: list[bytes] = []
    first = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            first.set()

    reader = threading.Thread(target=read, name="child-stdout")
    reader.start()
    try:
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 0.4))  # sometimes while it opens the database
        else:
            assert first.wait(20), "the child never accepted a record"
            time.sleep(rng.uniform(0.0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)
        reader.join(timeout=20)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"the child died on its own: {err}"
    sync: set[str] = set()
    committed: set[str] = set()
    for line in lines:
        if not line.endswith(b"\n"):
            continue  # cut by the kill
        mode, rid = line.decode().split()
        (sync if mode == "S" else committed).add(rid)
    return sync, committed


def kill_cycles(tmp_path: Path, cycles: int, seed: int) -> None:
    path = tmp_path / "outbox.db"
    rng = random.Random(seed)
    all_sync: set[str] = set()
    all_committed: set[str] = set()
    for cycle in range(cycles):
        sync, committed = one_cycle(path, cycle, rng)
        all_sync |= sync
        all_committed |= committed
        if not path.exists():
            assert not all_sync
            continue
        where = f"seed {seed} cycle {cycle}"
        assert check_database(path) is None, f"{where}: damaged database"
        ids = stored(path)
        missing_sync = all_sync - ids
        missing_committed = all_committed - ids
        assert not missing_sync, f"{where}: {len(missing_sync)} sync records lost"
        assert not missing_committed, f"{where}: {len(missing_committed)} committed records lost"
    # Never salvaged: a kill must not leave a database that looks damaged.
    assert [p.name for p in tmp_path.iterdir() if "corrupt" in p.name] == []
    assert len(all_sync) > 0
    assert len(all_committed) > 0


def test_kill_while_ingesting_short(tmp_path: Path) -> None:
    kill_cycles(tmp_path, cycles=4, seed=1)


@pytest.mark.slow
def test_kill_while_ingesting_many_cycles(tmp_path: Path) -> None:
    kill_cycles(tmp_path, cycles=60, seed=int(time.time()))

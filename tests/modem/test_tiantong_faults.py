"""Fault injection: messages keep arriving while the simulated modem hangs, resets, spews noise
and ERRORs, loses registration and is unplugged. Every message delivered must be stored, and a
message stored twice (a repeat after a fault) must carry the same id.

The default run is short; the long one is marked slow (`pytest -m slow`).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from terminal_gw.modem.tiantong import ModemState
from tests.modem.test_tiantong_rig import Rig, running, wait_until

FAULTY = {
    "command_timeout_s": 0.3,
    "ping_timeout_s": 0.2,
    "reset_wait_s": 0.3,
    "recovery_backoff_s": 0.3,
    "sweep_interval_s": 1.0,
    "max_resets_per_hour": 60,
}

TEXTS = (
    "short {n}",
    "天通卫星测试消息 {n}",
    "long message {n} " + "with a weather bulletin in several parts " * 6,
)


async def _inject(rig: Rig, rng: random.Random, seconds: float) -> list[str]:
    """Deliver messages and faults in random turns for `seconds`; the texts delivered."""
    sim = rig.sim
    delivered: list[str] = []
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        action = rng.randrange(10)
        if action < 4:
            n += 1
            text = rng.choice(TEXTS).format(n=n)
            if sim.device.is_up and sim.deliver("+86139" + f"{n:08d}", text):
                delivered.append(text)
        elif action == 4:
            sim.hang(seconds=rng.uniform(0.2, 0.8))
        elif action == 5:
            sim.hang(until_reset=True)
        elif action == 6:
            sim.garbage(True)
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            sim.garbage(False)
        elif action == 7:
            sim.error_storm(True)
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            sim.error_storm(False)
        elif action == 8 and sim.device.is_up:
            sim.unplug(rng.uniform(0.1, 0.5))
        else:
            sim.set_registration(2)
            await asyncio.sleep(0.2)
            sim.set_registration(1)
        await asyncio.sleep(rng.uniform(0.05, 0.3))
    return delivered


async def _fault_run(tmp_path: Path, seconds: float, seed: int) -> None:
    rng = random.Random(seed)
    async with running(tmp_path, **FAULTY) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        delivered = await _inject(rig, rng, seconds)
        rig.sim.unhang()
        # Faults over: everything delivered reaches the store and leaves the SIM.
        await wait_until(
            lambda: {s.text for s in rig.sink.sms()} >= set(delivered) and not rig.sim.storage,
            within=15,
        )
    assert delivered
    assert rig.sim.rejected == 0
    by_text: dict[str, set[str]] = {}
    for sms in rig.sink.sms():
        by_text.setdefault(sms.text or "", set()).add(sms.id)
        assert sms.complete
    assert set(by_text) == set(delivered)
    assert all(len(ids) == 1 for ids in by_text.values()), "a repeat got a new id"


async def test_messages_survive_faults_short(tmp_path: Path) -> None:
    await _fault_run(tmp_path, 4.0, seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_messages_survive_faults_long(tmp_path: Path, seed: int) -> None:
    await _fault_run(tmp_path, 60.0, seed=seed)

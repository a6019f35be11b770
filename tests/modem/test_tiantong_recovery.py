"""The recovery ladder against the simulator's faults: a hung modem comes back, the ladder stops
at its hourly cap, ERROR storms and line noise, a modem that restarts by itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from terminal_gw.modem import tiantong
from terminal_gw.modem.tiantong import ModemState
from tests.modem.test_tiantong_rig import running, wait_until

QUICK = {"command_timeout_s": 0.3, "ping_timeout_s": 0.2, "reset_wait_s": 0.3}


def resets_sent(commands: list[str]) -> int:
    return sum(c.upper().startswith("AT+CFUN=1") for c in commands)


async def test_hung_modem_brought_back_by_reset(tmp_path: Path) -> None:
    async with running(tmp_path, **QUICK) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.hang(until_reset=True)
        await wait_until(lambda: "recovered" in rig.steps())
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        assert rig.steps() == ["ping", "reinit", "reset", "recovered"]
        assert rig.sim.resets == 1
        # After the reset the init sequence ran again: echo off, PDU mode, +CMTI routing back.
        await wait_until(lambda: rig.sim.cnmi[:2] == (2, 1))
        assert not rig.sim.echo
        # And SMS in works again.
        rig.sim.deliver("+8613900000001", "after the reset")
        await wait_until(lambda: bool(rig.sink.sms()))
    states = [s.state for s in rig.sink.statuses()]
    assert "recovering" in states
    assert states[-1] == "ok"
    recovered = next(e for e in rig.events if e.data.get("step") == "recovered")
    assert recovered.data["by"] == "reset"


async def test_ladder_reopens_the_port_then_stops_at_the_cap(tmp_path: Path) -> None:
    async with running(tmp_path, max_resets_per_hour=2, recovery_backoff_s=0.3, **QUICK) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.hang()  # for good: nothing the ladder does helps
        await wait_until(lambda: rig.steps().count("capped") >= 2, within=20)
        steps = rig.steps()
        # ping, reinit, reset, reopen (2 of 2 used), then the bottom: only backoffs and caps.
        assert steps[:5] == ["ping", "reinit", "reset", "reopen", "backoff"]
        assert steps.count("reset") == 1
        assert steps.count("reopen") == 1
        assert resets_sent(rig.sim.commands) == 1
        assert rig.modem.status()["resets_last_hour"] == 2
        assert rig.modem.counters["port_opens"] == 2
        assert "recovered" not in steps
        capped = next(e for e in rig.events if e.data.get("step") == "capped")
        assert capped.severity == "error"
        # The modem answers again: the next round of the ladder finds it.
        rig.sim.unhang()
        await wait_until(lambda: rig.modem.state is ModemState.OK)
    assert rig.steps()[-1] == "recovered"


async def test_no_reset_at_all_with_a_cap_of_zero(tmp_path: Path) -> None:
    async with running(tmp_path, max_resets_per_hour=0, recovery_backoff_s=0.3, **QUICK) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.hang(seconds=1.2)
        await wait_until(lambda: "recovered" in rig.steps(), within=15)
        assert resets_sent(rig.sim.commands) == 0
        assert rig.modem.counters["port_opens"] == 1
        assert rig.steps()[:4] == ["ping", "reinit", "capped", "backoff"]
        await wait_until(lambda: rig.modem.state is ModemState.OK)


async def test_error_storm_starts_the_ladder_above_ping(tmp_path: Path) -> None:
    async with running(tmp_path, **QUICK) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.error_storm()  # every answer ERROR; a reset clears it
        await wait_until(lambda: "recovered" in rig.steps(), within=15)
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        assert rig.steps() == ["reinit", "reset", "recovered"]
        assert rig.modem.counters["poll_errors"] >= 5


async def test_line_noise_does_not_stop_polls_or_sms(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.garbage()
        polls = rig.modem.counters["polls"]
        rig.sim.deliver("+8613900000001", "through the noise")
        await wait_until(lambda: bool(rig.sink.sms()) and not rig.sim.storage)
        await wait_until(lambda: rig.modem.counters["polls"] >= polls + 4)
        assert rig.modem.state is ModemState.OK
        assert not rig.steps()
        assert rig.modem.status()["at"]["garbage"] > 0


async def test_unplugged_modem_reopened_and_initialised(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        n = len(rig.sim.commands)
        rig.sim.unplug(0.5)
        await wait_until(lambda: rig.modem.state is ModemState.DOWN)
        rig.sim.echo = True  # a new device powers up with echo on
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        assert "ATE0" in rig.sim.commands[n:]
        assert rig.modem.counters["port_opens"] >= 2
        rig.sim.deliver("+8613900000001", "after the unplug")
        await wait_until(lambda: bool(rig.sink.sms()))


async def test_modem_restarting_by_itself_is_initialised_again(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        n = len(rig.sim.commands)
        rig.sim.cnmi = (0, 0, 0, 0, 0)
        rig.sim.device.write(b"\r\nRDY\r\n")
        await wait_until(lambda: rig.sim.cnmi[:2] == (2, 1))
        assert "AT+CNMI=2,1,0,1,0" in rig.sim.commands[n:]
    assert any(e.kind == "modem_restart" for e in rig.events)


async def test_progress_reported_while_backing_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiantong, "PROGRESS_S", 0.1)
    async with running(tmp_path, max_resets_per_hour=0, recovery_backoff_s=1.0, **QUICK) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.hang()
        await wait_until(lambda: rig.modem.state is ModemState.BACKOFF)
        start = time.monotonic()
        await asyncio.sleep(0.8)
        during = [t for t in rig.progress if t >= start]
        assert rig.modem.state is ModemState.BACKOFF
    # A long backoff is not a stall: the watchdog hears from the stage all along.
    gaps = [b - a for a, b in zip([start, *during], during, strict=False)]
    assert len(during) >= 5
    assert max(gaps) < 0.3


async def test_off_on_reset_mode(tmp_path: Path) -> None:
    async with running(tmp_path, reset_mode="off_on", **QUICK) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        n = len(rig.sim.commands)
        rig.sim.hang(until_reset=True)
        await wait_until(lambda: "recovered" in rig.steps())
        sent = rig.sim.commands[n:]
        assert "AT+CFUN=1,1" not in sent
        assert sent.index("AT+CFUN=0") + 1 == sent.index("AT+CFUN=1")
        assert rig.sim.resets == 1

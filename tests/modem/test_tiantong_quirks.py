"""Tiantong driver against modem output that other projects' test data showed, through the
simulator over a real pty: odd status-report time zones, stored SMS-SUBMITs, URCs inside a
listing, the PDU on the +CMGR line, a +CREG URC right after OK, error results without "+",
silent and SIM data download messages, identical messages, +CMT parts across a restart."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from terminal_gw.errors import ModemError
from terminal_gw.modem.sms import encode_submit
from terminal_gw.modem.tiantong import ModemState
from terminal_gw.sim.modem import ModemSimulator, deliver_pdus, status_report_pdu
from tests.modem.test_tiantong_rig import running, wait_until

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 25, 18, 30, 5, tzinfo=CST)
T1 = T0 + timedelta(seconds=4)


def odd_report(mr: int) -> str:
    """A status report whose submit time carries zone octet 0xE1, as real SCs send."""
    return status_report_pdu("0702597711", mr, submitted=T0, discharged=T1, zone=0xE1)


@pytest.mark.parametrize("direct", [True, False], ids=["cds", "stored"])
async def test_status_report_with_odd_zone_published_as_status_report(
    tmp_path: Path, direct: bool
) -> None:
    async with running(tmp_path) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.status_report(odd_report(7), direct=direct)
        await wait_until(lambda: bool(rig.sink.sms()) and not rig.sim.storage)
        await asyncio.sleep(0.3)  # nothing else is published for it
    [report] = rig.sink.sms()
    data = report.to_json_dict()
    assert data["type"] == "status_report"
    assert (data["mr"], data["status"], data["delivered"], data["final"]) == (7, 0, True, True)
    assert data["from"] == "0702597711"
    assert data["odd_zone"] is True
    assert data["discharge"] == "2026-11-25T10:30:09.000Z"  # the discharge zone is +08:00
    assert "error" not in data
    assert "pdu" not in data
    assert rig.modem.counters["status_reports"] == 1
    assert rig.modem.counters["status_reports_bad"] == 0
    assert rig.modem.counters["sms_undecodable"] == 0


async def test_stored_submit_left_on_the_sim(tmp_path: Path) -> None:
    sent = encode_submit("+8613912345678", "my sent copy", max_parts=1, ref=0)[0].hex
    broken = "0011000B916407281553F80000AA0A"  # a SUBMIT cut short: does not decode
    slots: dict[str, int] = {}

    def preload(sim: ModemSimulator) -> None:
        sim.cnmi = (2, 1, 0, 0, 0)
        slots["sent"] = sim.store(sent, stat=3) or 0
        slots["unsent"] = sim.store(broken, stat=2) or 0
        slots["rx"] = sim.store(deliver_pdus("+8613900000009", "for us", timestamp=T0)[0]) or 0

    async with running(tmp_path, before=preload, sweep_interval_s=0.3) as rig:
        await wait_until(lambda: bool(rig.sink.sms()) and slots["rx"] not in rig.sim.storage)
        sweeps = rig.modem.counters["sweeps"]
        await wait_until(lambda: rig.modem.counters["sweeps"] >= sweeps + 2)
        # Announced with +CMTI too (a modem storing a copy of what it sent): still left there.
        rig.sim._urc(f'+CMTI: "SM",{slots["unsent"]}'.encode())
        await wait_until(lambda: f"AT+CMGR={slots['unsent']}" in rig.sim.commands)
        await wait_until(lambda: rig.modem.counters["sms_outgoing_stored"] >= 5)
    assert [s.text for s in rig.sink.sms()] == ["for us"]
    assert set(rig.sim.storage) == {slots["sent"], slots["unsent"]}
    deleted = {c for c in rig.sim.commands if c.startswith("AT+CMGD")}
    assert deleted == {f"AT+CMGD={slots['rx']}"}
    assert rig.modem.counters["sms_undecodable"] == 0


@pytest.mark.parametrize("quirk", ["listing_urcs", "inline_cmgr"])
async def test_pdu_found_around_urcs_and_on_the_header_line(tmp_path: Path, quirk: str) -> None:
    def preload(sim: ModemSimulator) -> None:
        sim.quirks.add(quirk)
        sim.cnmi = (2, 1, 0, 0, 0)
        sim.store(deliver_pdus("+8613900000010", "stored while down", timestamp=T0)[0])

    async with running(tmp_path, before=preload) as rig:
        # The sweep (+CMGL) at start, then a +CMTI read (+CMGR) of a new one.
        await wait_until(lambda: len(rig.sink.sms()) == 1 and not rig.sim.storage)
        rig.sim.cnmi = (2, 1, 0, 1, 0)
        rig.sim.deliver("+8613900000011", "announced", timestamp=T0)
        await wait_until(lambda: len(rig.sink.sms()) == 2 and not rig.sim.storage)
    assert [s.text for s in rig.sink.sms()] == ["stored while down", "announced"]
    assert rig.modem.counters["sms_undecodable"] == 0
    assert rig.modem.counters["sms_empty_slot"] == 0


async def test_creg_urc_right_after_ok_is_not_the_answer(tmp_path: Path) -> None:
    def preload(sim: ModemSimulator) -> None:
        sim.quirks.add("creg_urc_after_ok")

    async with running(tmp_path, before=preload) as rig:
        await wait_until(lambda: rig.sim.creg_urcs_sent == 1)
        polls = rig.sim.commands.count("AT+CREG?")
        await wait_until(lambda: rig.sim.commands.count("AT+CREG?") >= polls + 3)
    stats = [e.data["stat"] for e in rig.events if e.kind == "registration"]
    assert stats == [1]  # the URC's '2,"0005",...' never read as <n>,<stat> = roaming
    assert rig.modem.reg == 1


@pytest.mark.parametrize("style", ["bare", "modem"])
async def test_error_results_without_plus_end_the_command(tmp_path: Path, style: str) -> None:
    def preload(sim: ModemSimulator) -> None:
        sim.error_style = style

    pdus = encode_submit("+8613912345678", "hello", max_parts=1, ref=1)
    async with running(tmp_path, before=preload, send_timeout_s=20.0) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.reg = 2  # not registered: the terminal refuses the send
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(ModemError) as info:
            await rig.modem.send_sms(pdus)
        took = loop.time() - start
    assert took < 10.0  # a final result, not the 20 s timeout
    assert info.value.code == 331
    assert "timeout" not in str(info.value)


@pytest.mark.parametrize(("pid", "what"), [(0x40, "silent"), (0x7C, "R-DATA"), (0x7F, "SIM")])
@pytest.mark.parametrize("direct", [False, True], ids=["stored", "cmt"])
async def test_messages_not_for_the_user_counted_not_published(
    tmp_path: Path, pid: int, what: str, direct: bool
) -> None:
    async with running(tmp_path, ack_cmt=True) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        [pdu] = deliver_pdus("+1", "A", timestamp=T0, pid=pid)
        rig.sim.deliver_pdus([pdu], direct=direct)
        rig.sim.deliver("+8613900000012", "a real one", timestamp=T0, direct=direct)
        await wait_until(lambda: bool(rig.sink.sms()) and not rig.sim.storage)
    assert [s.text for s in rig.sink.sms()] == ["a real one"]
    assert rig.modem.counters["sms_not_for_user"] == 1
    [event] = [e for e in rig.events if e.kind == "sms_not_for_user"]
    assert event.data["pid"] == pid
    assert what in event.data["what"]


@pytest.mark.parametrize("direct", [False, True], ids=["stored", "cmt"])
async def test_identical_sms_in_the_same_second_get_two_ids(tmp_path: Path, direct: bool) -> None:
    async with running(tmp_path) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.deliver("+8613900000013", "OK", timestamp=T0, direct=direct)
        rig.sim.deliver("+8613900000013", "OK", timestamp=T0, direct=direct)
        await wait_until(lambda: len(rig.sink.sms()) == 2 and not rig.sim.storage)
    first, second = rig.sink.sms()
    assert first.text == second.text == "OK"
    assert first.time == second.time
    assert first.id != second.id


async def test_truncated_part_flagged_in_the_payload(tmp_path: Path) -> None:
    [pdu] = deliver_pdus("+8613900000014", "hellohello", timestamp=T0)
    short = pdu[:-2]  # the last octet lost: the user data stops a septet short
    async with running(tmp_path) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.deliver_pdus([short, pdu])
        await wait_until(lambda: len(rig.sink.sms()) == 2 and not rig.sim.storage)
    cut, whole = (s.to_json_dict() for s in rig.sink.sms())
    assert cut["truncated"] is True
    assert cut["text"] == "hellohell"
    assert "truncated" not in whole


def test_status_report_builder_reads_back() -> None:
    from terminal_gw.modem.sms import SmsStatusReport, decode_pdu

    report = decode_pdu(odd_report(9))
    assert isinstance(report, SmsStatusReport)
    assert report.odd_zone
    assert report.discharge_time == T1
    assert report.discharge_time.astimezone(UTC).hour == 10

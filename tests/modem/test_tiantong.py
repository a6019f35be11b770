"""Tiantong driver against the simulator over a real pty: init, identity, status, registration,
SMS in (single, multipart, UCS2, sweep, reassembly timeout, store failure), send, poll."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from terminal_gw.errors import ModemError
from terminal_gw.modem.sms import decode_pdu, encode_submit
from terminal_gw.modem.tiantong import ModemState, parse_cops, parse_creg, parse_csq
from terminal_gw.sim.modem import ModemSimulator
from tests.modem.test_tiantong_rig import BASE, Sink, ready, running, wait_until

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 25, 18, 30, 5, tzinfo=CST)


async def test_init_identity_and_retained_status(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        await wait_until(lambda: bool(rig.sink.statuses()))
        sim = rig.sim
        # The init sequence ran as configured, in order, and took effect in the modem.
        first = sim.commands[:4]
        assert first == ["ATE0", "AT+CMEE=2", "AT+CMGF=0", "AT+CNMI=2,1,0,1,0"]
        assert (sim.echo, sim.cmee, sim.cmgf, sim.cnmi[:2]) == (False, 2, 0, (2, 1))
        topic, status, retain = next(r for r in rig.sink.records if r[0].endswith("status"))
        assert topic == f"{BASE}/modem/status"
        assert retain
        data = status.to_json_dict()
        assert data["class"] == "MODEM"
        assert data["imei"] == sim.imei
        assert data["imsi"] == sim.imsi
        assert data["firmware"] == sim.firmware
        assert (data["rssi"], data["dbm"], data["ber"]) == (18, -77, 0)
        assert (data["reg"], data["registered"]) == (1, True)
        assert data["reg_text"] == "registered, home"
        assert data["operator"] == "CHINA TELECOM TIANTONG"
        assert data["state"] == "ok"


async def test_signal_change_publishes_status_and_unchanged_does_not(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        await wait_until(lambda: len(rig.sink.statuses()) >= 1)
        polls = rig.modem.counters["polls"]
        await wait_until(lambda: rig.modem.counters["polls"] >= polls + 6)
        assert len(rig.sink.statuses()) == 1  # polled again, nothing changed: nothing published
        rig.sim.set_signal(99, 99)
        await wait_until(lambda: len(rig.sink.statuses()) == 2)
        last = rig.sink.statuses()[-1].to_json_dict()
        assert "rssi" not in last  # unknown signal is absent, not 99
        assert "dbm" not in last


async def test_status_republished_at_least_every_interval(tmp_path: Path) -> None:
    async with running(tmp_path, status_interval_s=0.3) as rig:
        await wait_until(lambda: len(rig.sink.statuses()) >= 3)
    times = [s.time for s in rig.sink.statuses()]
    assert len(set(times)) == len(times)


async def test_registration_lost_and_back_raise_events(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        await wait_until(lambda: rig.modem.reg == 1)
        rig.sim.set_registration(2)
        await wait_until(lambda: rig.modem.reg == 2)
        rig.sim.set_registration(5)
        await wait_until(lambda: rig.modem.reg == 5)
        await wait_until(lambda: rig.sink.statuses()[-1].reg == 5)
    regs = [e for e in rig.events if e.kind == "registration"]
    assert [e.data["stat"] for e in regs] == [1, 2, 5]
    assert regs[1].severity == "warning"  # lost
    assert regs[1].data["registered"] is False
    assert regs[2].data["text"] == "registered, roaming"
    assert any(not s.registered for s in rig.sink.statuses())


async def test_single_sms_stored_then_deleted(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        await ready(rig)
        [idx] = rig.sim.deliver("+8613912345678", "Rendezvous 24.5N 118.1E at 0600", timestamp=T0)
        await wait_until(lambda: bool(rig.sink.sms()) and not rig.sim.storage)
        [sms] = rig.sink.sms()
        cmds = rig.sim.commands
        assert cmds.index(f"AT+CMGR={idx}") < cmds.index(f"AT+CMGD={idx}")
    data = sms.to_json_dict()
    assert data["class"] == "SMS"
    assert data["from"] == "+8613912345678"
    assert data["text"] == "Rendezvous 24.5N 118.1E at 0600"
    assert data["time"] == "2026-11-25T10:30:05.000Z"
    assert data["encoding"] == "gsm7"
    assert data["complete"] is True
    assert data["parts"] == 1
    topic = next(t for t, p, _ in rig.sink.records if p is sms)
    assert topic == f"{BASE}/sms/rx"


async def test_multipart_ucs2_joined_and_parts_deleted_only_after_store(tmp_path: Path) -> None:
    text = "天通卫星短信测试：船舶位置北纬二十四度，东经一百一十八度，一切正常。" * 4
    async with running(tmp_path) as rig:
        await ready(rig)
        indexes = rig.sim.deliver("+8613912345678", text, timestamp=T0)
        assert len(indexes) == 3
        await wait_until(lambda: bool(rig.sink.sms()) and not rig.sim.storage)
        cmds = rig.sim.commands
        reads = [cmds.index(f"AT+CMGR={i}") for i in indexes]
        deletes = [cmds.index(f"AT+CMGD={i}") for i in indexes]
        assert max(reads) < min(deletes)  # no part deleted before the joined message was stored
    [sms] = rig.sink.sms()
    assert sms.text == text
    assert (sms.parts, sms.encoding, sms.complete) == (3, "ucs2", True)


async def test_sweep_at_start_takes_messages_from_while_down(tmp_path: Path) -> None:
    def preload(sim: ModemSimulator) -> None:
        sim.cnmi = (2, 1, 0, 0, 0)  # stored silently: nobody was listening
        sim.deliver("+8613900000001", "first while down", timestamp=T0)
        sim.deliver("10659000", "x" * 300, timestamp=T0 + timedelta(seconds=1))
        sim.cnmi = (0, 0, 0, 0, 0)

    async with running(tmp_path, before=preload) as rig:
        await wait_until(lambda: len(rig.sink.sms()) == 2 and not rig.sim.storage)
        assert "AT+CMGL=4" in rig.sim.commands
        assert not any(c.startswith("AT+CMGR") for c in rig.sim.commands)
    texts = sorted(s.text or "" for s in rig.sink.sms())
    assert texts == ["first while down", "x" * 300]


async def test_same_message_read_twice_gets_the_same_id(tmp_path: Path) -> None:
    pdus: list[str] = []

    def preload(sim: ModemSimulator) -> None:
        from terminal_gw.sim.modem import deliver_pdus

        pdus.extend(deliver_pdus("+8613900000001", "again " * 40, timestamp=T0, ref=9))
        for p in pdus:
            sim.store(p)

    async with running(tmp_path, before=preload, sweep_interval_s=0.3) as rig:
        await wait_until(lambda: len(rig.sink.sms()) == 1 and not rig.sim.storage)
        for p in pdus:  # the same parts once more, unannounced: the periodic sweep finds them
            rig.sim.store(p)
        await wait_until(lambda: len(rig.sink.sms()) == 2)
    first, second = rig.sink.sms()
    assert first.id == second.id
    assert first.text == second.text == "again " * 40


async def test_incomplete_message_published_after_timeout(tmp_path: Path) -> None:
    from terminal_gw.sim.modem import deliver_pdus

    pdus = deliver_pdus("+8613900000002", "part " * 100, timestamp=T0, ref=3)
    assert len(pdus) == 4
    async with running(tmp_path, sms_reassembly_timeout_s=0.5) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.deliver_pdus([pdus[0], pdus[2]])
        await wait_until(lambda: bool(rig.sink.sms()) and not rig.sim.storage)
    [sms] = rig.sink.sms()
    assert not sms.complete
    assert sms.missing == [2, 4]
    assert sms.parts == 4
    assert sms.text is not None
    assert sms.text.startswith("part part")


async def test_store_failure_leaves_message_on_sim_until_stored(tmp_path: Path) -> None:
    sink = Sink(failing=True)
    async with running(tmp_path, sink=sink, sweep_interval_s=0.3) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.deliver("+8613900000003", "keep me", timestamp=T0)
        await wait_until(lambda: rig.modem.counters["sms_store_failed"] >= 2)
        assert len(rig.sim.storage) == 1
        assert not any(c.startswith("AT+CMGD") for c in rig.sim.commands)
        sink.failing = False
        await wait_until(lambda: bool(sink.sms()) and not rig.sim.storage)
    assert [s.text for s in sink.sms()] == ["keep me"]
    assert any(e.kind == "sms_store" for e in rig.events)


async def test_direct_delivery_cmt_acknowledged(tmp_path: Path) -> None:
    async with running(tmp_path, ack_cmt=True) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.deliver("+8613900000004", "no storage", timestamp=T0, direct=True)
        await wait_until(lambda: "AT+CNMA" in rig.sim.commands)
        [sms] = rig.sink.sms()
        assert sms.text == "no storage"


async def test_undecodable_pdu_published_raw_not_lost(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.deliver_pdus(["0004"])  # SMSC none, first octet, then nothing
        await wait_until(lambda: bool(rig.sink.sms()) and not rig.sim.storage)
    [sms] = rig.sink.sms()
    assert sms.pdu == "0004"
    assert sms.error
    assert not sms.complete


async def test_send_sms_returns_references_and_sim_recorded_pdus(tmp_path: Path) -> None:
    pdus = encode_submit("+8613912345678", "状态报告" * 30, max_parts=4, ref=77)
    async with running(tmp_path) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        refs = await rig.modem.send_sms(pdus)
        assert len(refs) == len(pdus) == 2
        assert refs == [s.mr for s in rig.sim.sent]
        assert [s.pdu for s in rig.sim.sent] == [p.hex for p in pdus]
        sent = decode_pdu(rig.sim.sent[0].pdu)
        assert sent.party.number == "+8613912345678"


async def test_send_sms_failure_carries_3gpp_reason(tmp_path: Path) -> None:
    pdus = encode_submit("+8613912345678", "hello", max_parts=1, ref=1)
    async with running(tmp_path) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.reg = 2  # not registered: the terminal refuses the send
        with pytest.raises(ModemError) as info:
            await rig.modem.send_sms(pdus)
    assert info.value.code == 331
    assert info.value.reason == "no network service"
    assert not rig.sim.sent


async def test_send_refused_while_port_down(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.unplug(1.0)
        await wait_until(lambda: rig.modem.state is ModemState.DOWN)
        with pytest.raises(ModemError, match="not ready"):
            await rig.modem.send_sms(encode_submit("+861234", "x", max_parts=1, ref=1))
        await wait_until(lambda: rig.modem.state is ModemState.OK)
    kinds = [(e.kind, e.severity) for e in rig.events if e.kind == "modem_port"]
    assert kinds == [("modem_port", "warning"), ("modem_port", "info")]


async def test_poll_now_reads_fresh_values(tmp_path: Path) -> None:
    async with running(tmp_path, poll_signal_s=60, poll_registration_s=60) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        rig.sim.set_signal(7, 3)
        await rig.modem.poll_now()
        assert (rig.modem.rssi, rig.modem.ber) == (7, 3)
        assert rig.sink.statuses()[-1].rssi == 7
        assert rig.modem.status()["dbm"] == -99


def test_answer_parsers() -> None:
    assert parse_csq("17,99") == (17, None)
    assert parse_csq("99,99") == (None, None)
    assert parse_csq("garbage") == (None, None)
    assert parse_creg('2,5,"1A2B","00C3"', answer=True) == 5
    assert parse_creg("1", answer=False) == 1
    assert parse_creg("", answer=True) is None
    assert parse_cops('0,0,"CHINA TELECOM",7') == "CHINA TELECOM"
    assert parse_cops("0") is None


async def test_refusing_outbox_does_not_spin_the_loop(tmp_path: Path) -> None:
    sink = Sink(failing=True)
    async with running(tmp_path, sink=sink, status_interval_s=0.5) as rig:
        await wait_until(lambda: rig.modem.state is ModemState.OK)
        before = (sink.puts, rig.modem.counters["polls"])
        await asyncio.sleep(1.0)
        puts = sink.puts - before[0]
        polls = rig.modem.counters["polls"] - before[1]
    # The status is offered again with the polls (every 0.2 s), not on every loop turn.
    assert 1 <= puts <= polls + 2


async def test_missing_sim_reported_in_status_and_event(tmp_path: Path) -> None:
    def no_sim(sim: ModemSimulator) -> None:
        sim.pin = "NOT INSERTED"

    async with running(tmp_path, before=no_sim) as rig:
        await wait_until(lambda: bool(rig.sink.statuses()))
    assert rig.sink.statuses()[-1].sim == "SIM not inserted"
    [event] = [e for e in rig.events if e.kind == "modem_sim"]
    assert event.severity == "error"


async def test_sim_ready_in_status(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        await wait_until(lambda: bool(rig.sink.statuses()))
    assert rig.sink.statuses()[-1].sim == "READY"
    assert not [e for e in rig.events if e.kind == "modem_sim"]


async def test_registration_urc_read_at_once(tmp_path: Path) -> None:
    init = ["ATE0", "AT+CMEE=2", "AT+CMGF=0", "AT+CNMI=2,1,0,1,0", "AT+CREG=1"]
    async with running(tmp_path, init=init, poll_registration_s=60.0) as rig:
        await wait_until(lambda: rig.modem.reg == 1)
        rig.sim.set_registration(3)
        await wait_until(lambda: rig.modem.reg == 3, within=10)
    assert [e.data["text"] for e in rig.events if e.kind == "registration"][-1] == (
        "registration denied"
    )

"""The RDSS driver against the simulated terminal on a real pty: dialects, card, beams,
messages in (every mode, duplicates, fragments, garbage), paced sends, feedback and faults."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from terminal_gw.config import RdssConfig
from terminal_gw.errors import CommandError, StoreError
from terminal_gw.gnss.framer import Framer
from terminal_gw.rdss.driver import DIALECT_FILE, RdssDriver
from terminal_gw.rdss.store import RdssStore
from terminal_gw.sim.rdss import RdssSimulator, sim_sentence
from terminal_gw.topics import Topics
from terminal_gw.transport.pty import PtyDevice
from tests.rdss.rig import FAST, Sink, rig
from tests.waiting import wait_until

DIALECTS = ["2.1", "bds3"]
_fields = st.text(alphabet="0123456789ABCDEFNYE.", max_size=12)
_sentences = st.builds(
    lambda address, values: sim_sentence(",".join([address, *values])),
    st.sampled_from(["BDTXR", "BDTCI", "BDFKI", "BDICI", "BDICP", "BDBSI", "BDPWI", "CCTXA"]),
    st.lists(_fields, max_size=24),
)
#: What a host sentence may look like on the wire: nothing but the address, digits, hex,
#: commas between fields and the checksum.
SAFE_LINE = re.compile(rb"\$CC[A-Z]{3}(,[0-9A-Z.]*)*\*[0-9A-F]{2}")


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_auto_detects_the_dialect_and_remembers_it(tmp_path: Path, dialect: str) -> None:
    async with rig(tmp_path, dialect=dialect) as r:
        await wait_until(lambda: r.driver.state == "ok", what="card read")
        assert r.driver.dialect == dialect
        assert r.driver.card is not None
        assert r.driver.card.user_id == "0242286"
        assert r.driver.interval_s() == 60.0
    saved = json.loads((tmp_path / DIALECT_FILE).read_text())
    assert saved["dialect"] == dialect
    assert any(e.kind == "rdss_dialect" for e in r.events)
    # Next start: only the remembered dialect's query is sent.
    async with rig(tmp_path, dialect=dialect) as r2:
        await wait_until(lambda: r2.driver.state == "ok", what="card read again")
        queries = {c[:6] for c in r2.sim.commands if c.startswith((b"$CCICA", b"$CCICR"))}
        assert queries == ({b"$CCICA"} if dialect == "2.1" else {b"$CCICR"})


async def test_a_remembered_dialect_that_does_not_answer_is_detected_again(tmp_path: Path) -> None:
    (tmp_path / DIALECT_FILE).write_text(json.dumps({"dialect": "2.1"}))
    async with rig(tmp_path, dialect="bds3") as r:
        await wait_until(lambda: r.driver.state == "ok", what="redetected")
        assert r.driver.dialect == "bds3"
        assert r.driver.counters["dialect_redetect"] >= 1
    assert json.loads((tmp_path / DIALECT_FILE).read_text())["dialect"] == "bds3"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_messages_in_every_mode_with_duplicates_fragments_and_garbage(
    tmp_path: Path, dialect: str
) -> None:
    async with rig(tmp_path, dialect=dialect) as r:
        await wait_until(lambda: r.driver.state == "ok")
        for fault in ("duplicates", "fragments", "garbage"):
            r.sim.set_fault(fault)
        r.sim.deliver("0166166", text="渔船平安，明日返港。", mode="chinese")
        r.sim.deliver("166166", data=bytes.fromhex("0123456789"), mode="code")
        r.sim.deliver("0179773", text="Position 24.45N 你好", mode="mixed")
        await r.sink.wait_for(lambda: len(r.sink.of("/bds/rx")) == 3)
        await wait_until(lambda: r.driver.counters["rx_duplicates"] == 3, what="3 repeats")
    rx = r.sink.of("/bds/rx")
    assert [m["mode"] for m in rx] == ["chinese", "code", "mixed"]
    assert rx[0]["text"] == "渔船平安，明日返港。"
    assert rx[1]["data"] == "0123456789"
    assert "text" not in rx[1]
    assert rx[2]["text"] == "Position 24.45N 你好"
    assert {m["from"] for m in rx} == {"0166166", "0179773"}
    assert all(m["class"] == "BDS_RX" and m["dialect"] == dialect for m in rx)
    assert all(m["raw"].startswith("$BDTXR" if dialect == "2.1" else "$BDTCI") for m in rx)
    assert len({m["id"] for m in rx}) == 3
    assert r.driver.framer.counters["garbage_bytes"] > 0


async def test_content_that_does_not_decode_is_published_as_data_with_a_reason(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        await wait_until(lambda: r.driver.state == "ok")
        r.sim.deliver("0166166", data=b"\xff\xfe\x80", mode="chinese")
        r.sim.deliver("0166166", data=b"hello", mode="mixed")  # no A4 lead byte
        await r.sink.wait_for(lambda: len(r.sink.of("/bds/rx")) == 2)
    bad, no_lead = r.sink.of("/bds/rx")
    assert bad["data"] == "FFFE80"
    assert "GB2312" in bad["reason"]
    assert no_lead["data"] == "68656C6C6F"
    assert "A4" in no_lead["reason"]
    assert r.driver.counters["rx_undecodable"] == 2


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_two_sends_the_second_waits_for_the_service_interval(
    tmp_path: Path, dialect: str
) -> None:
    async with rig(tmp_path, dialect=dialect, sim_kwargs={"interval_s": 2.0}) as r:
        await wait_until(lambda: r.driver.state == "ok")
        assert r.driver.interval_s() == 2.0  # from the card, not the config (60)
        await r.driver.enqueue("m1", "0166166", text="第一条")
        await r.driver.enqueue("m2", "0166166", text="second, with * and $ inside\r\n")
        await r.sink.wait_for(lambda: r.sink.states("m2")[-1:] == ["sent"])
    first, second = r.sim.sent
    assert second.at - first.at >= 2.0 - 0.05
    assert r.sim.refusals == []  # the terminal never had to refuse a send
    assert r.sink.states("m1") == ["queued", "sending", "sent"]
    assert r.sink.states("m2") == ["queued", "waiting_interval", "sending", "sent"]
    waiting = r.sink.of("/bds/tx/m2")[1]
    assert waiting["may_send_at"]
    assert bytes.fromhex(second.content)[1:].decode("gb2312") == "second, with * and $ inside\r\n"
    for line in r.sim.commands:
        assert SAFE_LINE.fullmatch(line), line
    assert r.driver.sends_today == 2


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_feedback_to_other_commands_is_not_taken_for_a_send(
    tmp_path: Path, dialect: str
) -> None:
    kwargs = {"interval_s": 60, "feedback_all": True, "answer_delay_s": 1.5}
    async with rig(tmp_path, dialect=dialect, sim_kwargs=kwargs, card_query_interval_s=0.5) as r:
        await wait_until(lambda: r.driver.state == "ok")
        r.sim.refuse_next_send(60)
        await r.driver.enqueue("f1", "0166166", data="0102")
        await r.sink.wait_for(lambda: "waiting_interval" in r.sink.states("f1"))
        await wait_until(lambda: r.driver.counters["feedback_other"] >= 4, what="more ICA feedback")
    # The send's own BDFKI N (wait 60) decided, not a BDFKI Y to a card query.
    assert r.sink.states("f1") == ["queued", "sending", "waiting_interval"]
    assert r.sim.sent == []


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_feedback_wait_is_waited_then_retried(tmp_path: Path, dialect: str) -> None:
    async with rig(tmp_path, dialect=dialect, sim_kwargs={"interval_s": 1}) as r:
        await wait_until(lambda: r.driver.state == "ok")
        r.sim.refuse_next_send(2)
        await r.driver.enqueue("w1", "0166166", data="0102")
        await r.sink.wait_for(lambda: r.sink.states("w1")[-1:] == ["sent"])
    progress = r.sink.of("/bds/tx/w1")
    assert [p["state"] for p in progress] == [
        "queued",
        "sending",
        "waiting_interval",
        "sending",
        "sent",
    ]
    refusal = progress[2]
    assert refusal["code"] == "interval"
    if dialect == "bds3":
        assert (refusal["reason_code"], refusal["reason_name"]) == (1, "interval")
    refused_at = next(c for c in r.sim.commands if c.startswith((b"$CCTXA", b"$CCTCQ")))
    assert len([c for c in r.sim.commands if c == refused_at]) == 2
    # The retry went no earlier than the wait the terminal asked for.
    sent = r.sim.sent[0]
    assert progress[-1]["attempts"] == 2
    assert sent.at > 0
    times = [p["time"] for p in progress]
    assert times[3] >= refusal["may_send_at"]


async def test_too_many_refusals_fail_with_the_reason(tmp_path: Path) -> None:
    async with rig(tmp_path, dialect="bds3", max_tries=2) as r:
        await wait_until(lambda: r.driver.state == "ok")
        r.sim.set_fault("suppressed")
        await r.driver.enqueue("s1", "0166166", text="测试")
        await r.sink.wait_for(lambda: r.sink.states("s1")[-1:] == ["failed"])
    states = r.sink.states("s1")
    assert states == ["queued", "sending", "waiting_signal", "sending", "failed"]
    failed = r.sink.of("/bds/tx/s1")[-1]
    assert (failed["code"], failed["reason_code"], failed["reason_name"]) == (
        "suppressed",
        2,
        "suppressed",
    )
    assert "gave up after 2 tries" in failed["reason"]
    assert r.sim.sent == []
    assert r.driver.sends_today == 0  # refused sends cost nothing


async def test_radio_silence_waits_and_reports_then_sends(tmp_path: Path) -> None:
    async with rig(tmp_path, sim_kwargs={"interval_s": 1}) as r:
        await wait_until(lambda: r.driver.state == "ok")
        r.sim.set_fault("silence")
        await r.driver.enqueue("r1", "0166166", text="测试")
        await r.sink.wait_for(lambda: "waiting_signal" in r.sink.states("r1"))
        r.sim.set_fault("silence", on=False)
        await r.sink.wait_for(lambda: r.sink.states("r1")[-1:] == ["sent"])
    waiting = next(p for p in r.sink.of("/bds/tx/r1") if p["state"] == "waiting_signal")
    assert waiting["code"] == "radio_silence"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_no_card_is_a_state_an_event_and_fails_sends(tmp_path: Path, dialect: str) -> None:
    async with rig(tmp_path, dialect=dialect, sim_kwargs={"card": False}) as r:
        await wait_until(lambda: r.driver.state == "no_card", what="no card seen")
        await r.driver.enqueue("n1", "0166166", text="测试")
        await r.sink.wait_for(lambda: r.sink.states("n1")[-1:] == ["failed"])
        await r.sink.wait_for(
            lambda: any(s["state"] == "no_card" for s in r.sink.of("rdss/status"))
        )
    assert r.sink.of("/bds/tx/n1")[-1]["code"] == "no_card"
    assert [e.kind for e in r.events].count("rdss_no_card") == 1
    assert r.sim.sent == []
    assert not any(c.startswith((b"$CCTXA", b"$CCTCQ")) for c in r.sim.commands)


async def test_a_card_pulled_after_it_was_read_fails_on_the_feedback(tmp_path: Path) -> None:
    async with rig(tmp_path, dialect="bds3") as r:
        await wait_until(lambda: r.driver.state == "ok")
        r.sim.set_fault("nocard")
        await r.driver.enqueue("p1", "0166166", text="测试")
        await r.sink.wait_for(lambda: r.sink.states("p1")[-1:] == ["failed"])
    failed = r.sink.of("/bds/tx/p1")[-1]
    assert (failed["code"], failed["reason_code"], failed["reason_name"]) == (
        "no_card",
        5,
        "no_card",
    )


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_no_beams_waits_for_signal(tmp_path: Path, dialect: str) -> None:
    async with rig(tmp_path, dialect=dialect) as r:
        r.sim.set_fault("nobeams")
        await wait_until(lambda: r.driver.beams_ok() is False, what="low beams seen")
        await r.driver.enqueue("b1", "0166166", text="测试")
        await r.sink.wait_for(lambda: "waiting_signal" in r.sink.states("b1"))
        assert r.sim.sent == []
        r.sim.set_fault("nobeams", on=False)
        await r.sink.wait_for(lambda: r.sink.states("b1")[-1:] == ["sent"])
    waiting = next(p for p in r.sink.of("/bds/tx/b1") if p["state"] == "waiting_signal")
    assert waiting["code"] == "no_signal"


async def test_missing_beam_information_never_blocks(tmp_path: Path) -> None:
    async with rig(tmp_path, beams_max_age_s=0.01) as r:
        r.sim.set_fault("nobeams")
        await wait_until(lambda: r.driver.state == "ok")
        await r.driver.enqueue("b2", "0166166", text="测试")
        await r.sink.wait_for(lambda: r.sink.states("b2")[-1:] == ["sent"])


async def test_unplug_and_back(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await wait_until(lambda: r.driver.state == "ok")
        opens = r.driver._port.opens  # type: ignore[union-attr]
        r.sim.unplug(1.0)
        await wait_until(lambda: r.driver.state == "down", what="port lost")
        await wait_until(lambda: r.driver.state == "ok", timeout=20, what="back")
        assert r.driver._port.opens == opens + 1  # type: ignore[union-attr]
        r.sim.deliver("0166166", text="回来了", mode="chinese")
        await r.sink.wait_for(lambda: len(r.sink.of("/bds/rx")) == 1)
    assert r.sink.of("/bds/rx")[0]["text"] == "回来了"
    assert {"port_closed", "port_open"} <= {e.kind for e in r.events}


@pytest.mark.parametrize(
    ("to", "text", "data", "code"),
    [
        ("0166166,1", "x", None, "invalid_number"),
        ("016616*", "x", None, "invalid_number"),
        ("$0166166", "x", None, "invalid_number"),
        ("0166166\r\n$CCTXA", "x", None, "invalid_number"),
        ("123456789", "x", None, "invalid_number"),
        ("0000000", "x", None, "invalid_number"),
        ("0166166", None, "31,2", "invalid"),
        ("0166166", "中" * 50, None, "too_long"),
        ("0166166", "\U0001f600", None, "not_encodable"),
    ],
)
async def test_refused_before_queueing(
    tmp_path: Path, to: str, text: str | None, data: str | None, code: str
) -> None:
    async with rig(tmp_path) as r:
        await wait_until(lambda: r.driver.state == "ok")
        with pytest.raises(CommandError) as info:
            await r.driver.enqueue("x1", to, text=text, data=data)
        assert info.value.code == code
        if code == "too_long":
            assert "at most 628 bits" in str(info.value)  # level 3, unencrypted
            assert "700 bits" in str(info.value)
        assert await r.driver.store.get("x1") is None


async def test_capacity_follows_the_card_level_and_express(tmp_path: Path) -> None:
    async with rig(tmp_path, sim_kwargs={"level": 1, "encrypted": True}) as r:
        await wait_until(lambda: r.driver.state == "ok")
        await r.driver.enqueue("c1", "0166166", text="中" * 10)  # 140 bits: fits exactly
        with pytest.raises(CommandError, match="at most 140 bits"):
            await r.driver.enqueue("c2", "0166166", text="中" * 11)
        with pytest.raises(CommandError, match="at most 188 bits"):
            await r.driver.enqueue("c3", "0166166", text="中" * 14, cls="express")


async def test_cost_guard_has_its_own_budget(tmp_path: Path) -> None:
    async with rig(tmp_path, max_sends_per_hour=1, sim_kwargs={"interval_s": 1}) as r:
        await wait_until(lambda: r.driver.state == "ok")
        await r.driver.enqueue("g1", "0166166", text="一")
        await r.driver.enqueue("g2", "0166166", text="二")
        await r.sink.wait_for(lambda: r.sink.states("g2")[-1:] == ["failed"])
    assert r.sink.states("g1")[-1] == "sent"
    assert r.sink.of("/bds/tx/g2")[-1]["code"] == "rate_limited"
    assert len(r.sim.sent) == 1


async def test_the_same_id_is_queued_once(tmp_path: Path) -> None:
    async with rig(tmp_path, sim_kwargs={"interval_s": 1}) as r:
        await wait_until(lambda: r.driver.state == "ok")
        _, created = await r.driver.enqueue("i1", "0166166", text="一")
        _, again = await r.driver.enqueue("i1", "0166166", text="一")
        assert (created, again) == (True, False)
        await r.sink.wait_for(lambda: r.sink.states("i1")[-1:] == ["sent"])
    assert len(r.sim.sent) == 1
    assert r.driver.counters["tx_duplicates"] == 1


async def test_a_send_handed_over_before_a_restart_is_not_sent_again(tmp_path: Path) -> None:
    store = RdssStore(tmp_path / "rdss.db")
    await store.open()
    await store.add("k1", "0166166", text="一", data=None, mode="auto", cls="normal", now=1.0)
    await store.handing_over("k1", 2.0)
    await store.close()
    async with rig(tmp_path) as r:
        await r.sink.wait_for(lambda: r.sink.states("k1") == ["failed"])
        await wait_until(lambda: r.driver.state == "ok")
    assert r.sink.of("/bds/tx/k1")[0]["code"] == "interrupted"
    assert r.sim.sent == []


def test_sim_output_frames_with_the_gnss_framer_split_at_every_byte() -> None:
    from terminal_gw.rdss.sentences import parse
    from terminal_gw.sim.rdss import sim_sentence

    line = sim_sentence("BDTXR,1,0166166,2,,A468656C6C6F") * 2
    framer = Framer(max_sentence_len=4096)
    out = []
    for i in range(len(line)):
        out += framer.feed(b"\x00\xff" + line[i : i + 1] if i == 0 else line[i : i + 1])
    assert [parse(s) for s in out] == [parse(out[0])] * 2


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=60), _sentences), max_size=12))
def test_the_driver_takes_any_bytes_and_any_well_framed_values(
    tmp_path_factory: pytest.TempPathFactory, pieces: list[bytes]
) -> None:
    tmp = tmp_path_factory.mktemp("feed")
    sink = Sink()
    driver = RdssDriver(
        RdssConfig(port="/dev/null"),
        sink,
        RdssStore(tmp / "rdss.db"),
        topics=Topics("tgw", "d"),
        state_dir=tmp,
    )
    driver.replaying = True

    async def feed() -> None:
        for piece in pieces:
            await driver.feed(piece)

    asyncio.run(feed())
    for _, payload, _ in sink.items:
        payload.to_json()  # every record it stored is a valid payload
    assert driver.status_payload().to_json()


async def test_a_send_without_feedback_fails_unconfirmed_and_still_counts(
    tmp_path: Path,
) -> None:
    kwargs = {"interval_s": 2, "answer_sends": False}
    async with rig(tmp_path, sim_kwargs=kwargs, feedback_timeout_s=0.5) as r:
        await wait_until(lambda: r.driver.state == "ok")
        await r.driver.enqueue("u1", "0166166", text="一")
        await r.driver.enqueue("u2", "0166166", text="二")
        await r.sink.wait_for(lambda: r.sink.states("u2")[-1:] == ["failed"])
    first = r.sink.of("/bds/tx/u1")[-1]
    assert first["code"] == "unconfirmed"
    # It may have gone out (it did): not sent again, and the next one still kept the interval.
    assert len(r.sim.sent) == 2
    assert r.sim.sent[1].at - r.sim.sent[0].at >= 2.0 - 0.05
    assert r.sim.refusals == []
    assert r.driver.sends_today == 2


class _FlakySink(Sink):
    """An outbox that refuses the first `fail` short messages (a full disk, say)."""

    def __init__(self, fail: int) -> None:
        super().__init__()
        self.fail = fail

    async def put(
        self, topic: str, payload: Any, *, retain: bool = False, sync: bool | None = None
    ) -> None:
        if topic.endswith("/bds/rx") and self.fail:
            self.fail -= 1
            raise StoreError("disk full", reason="disk full")
        await super().put(topic, payload, retain=retain, sync=sync)


async def test_a_message_the_store_refuses_is_kept_and_stored_later(tmp_path: Path) -> None:
    device = PtyDevice(tmp_path / "rdss0")
    sim = RdssSimulator(device)
    sink = _FlakySink(fail=2)
    driver = RdssDriver(
        RdssConfig(port=device.path, **FAST),
        sink,
        RdssStore(tmp_path / "rdss.db"),
        topics=Topics("tgw", "d"),
        state_dir=tmp_path,
    )
    await driver.open()
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(sim.run()), tg.create_task(driver.run())]
            try:
                await wait_until(lambda: driver.state == "ok")
                sim.deliver("0166166", text="重要", mode="chinese")
                await sink.wait_for(lambda: len(sink.of("/bds/rx")) == 1)
            finally:
                for task in tasks:
                    task.cancel()
    finally:
        await driver.close()
        device.close()
    assert sink.of("/bds/rx")[0]["text"] == "重要"
    assert driver.counters["rx_store_failed"] == 2
    assert driver.counters["rx"] == 1

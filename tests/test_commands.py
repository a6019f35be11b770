"""Downlink commands end to end: a real mosquitto, Uplink + Outbox, the command runner and a
scripted modem on a real pty. Answers, progress, duplicates, errors, retries, the cost guard,
restarts, and exactly which bytes reach the modem's port."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from terminal_gw.modem.sms import SmsSubmit, decode_pdu, encode_submit
from tests.broker import Broker
from tests.commands_support import BASE, gateway

SMS = {"id": "m-1", "to": "+8613800138000", "text": "position report 1"}


async def test_sms_send_answer_progress_and_the_pdu_on_the_port(
    tmp_path: Path, broker: Broker
) -> None:
    async with gateway(tmp_path, broker.port) as gw:
        await gw.requester.send("sms/send", SMS, correlation=b"\x00req-1\xff")
        reply = await gw.requester.reply(b"\x00req-1\xff")
        sent = await gw.wait_state("m-1", "sent")
        # The durable copy of the answer is stored after the handler returns, so the sender
        # may report "sent" before it: wait for it too.
        await gw.wait(lambda: bool(gw.results("sms/send")))
        modem = gw.modem

    # The answer on the response topic, with the request's correlation data.
    assert reply.payload["class"] == "CMD_RESULT"
    assert reply.payload["ok"] is True
    assert reply.payload["command"] == "sms/send"
    assert reply.payload["command_id"] == "m-1"
    assert reply.payload["result"]["state"] == "queued"
    assert reply.payload["correlation"] == b"\x00req-1\xff".hex()
    # The same answer, durable, on the status topic.
    assert [r["id"] for r in gw.results("sms/send")] == [reply.payload["id"]]
    # Progress on sms/tx/{id}.
    assert gw.states("m-1") == ["queued", "sending", "sent"]
    assert sent["mr"] == [41]
    assert sent["class"] == "SMS_TX"
    assert sent["sms_id"] == "m-1"
    assert sent["to"] == "+8613800138000"
    # Exactly one send reached the port, and it is the PDU of this text.
    (expected,) = encode_submit(SMS["to"], SMS["text"], max_parts=1, ref=1)
    assert bytes(modem.peer.received) == (
        f"AT+CMGS={expected.tpdu_length}\r{expected.hex}\x1a".encode()
    )
    assert gw.runner.counters["sms_sent"] == 1
    assert gw.runner.counters["responses_sent"] == 1


async def test_the_same_id_twice_is_not_sent_twice(tmp_path: Path, broker: Broker) -> None:
    async with gateway(tmp_path, broker.port) as gw:
        await gw.requester.send("sms/send", SMS, correlation=b"a")
        await gw.wait_state("m-1", "sent")
        await gw.requester.send("sms/send", SMS, correlation=b"b")
        again = await gw.requester.reply(b"b")
        other = {**SMS, "text": "something else"}
        await gw.requester.send("sms/send", other, correlation=b"c")
        conflict = await gw.requester.reply(b"c")
        await gw.wait(lambda: gw.states("m-1").count("sent") == 3)
        await asyncio.sleep(0.2)  # room for a wrong second send to show up
        sends = gw.modem.sends()
    assert sends == 1
    assert again.payload["ok"] is True
    assert again.payload["result"] == {
        "sms_id": "m-1",
        "state": "sent",
        "parts": 1,
        "mr": [41],
        "duplicate": True,
    }
    assert conflict.payload["ok"] is False
    assert conflict.payload["code"] == "id_conflict"
    assert conflict.payload["result"]["state"] == "sent"
    # Each repeat also re-reported the current state on sms/tx/{id}.
    assert gw.states("m-1") == ["queued", "sending", "sent", "sent", "sent"]


@pytest.mark.parametrize(
    ("name", "body", "code", "reason_part"),
    [
        ("sms/send", b"{not json", "invalid_json", "not JSON"),
        ("sms/send", b"[1, 2]", "invalid", "JSON object"),
        ("sms/send", b'{"id": "x", "to": "+86138", "text": "hi", "prio": 1}', "invalid", "prio"),
        ("sms/send", b'{"id": "x", "to": "+86138"}', "invalid", "text"),
        ("sms/send", b'{"id": "a/b", "to": "+86138", "text": "hi"}', "invalid", "id"),
        ("sms/send", b'{"id": "x", "to": 8613800, "text": "hi"}', "invalid", "to"),
        ("sms/send", b'{"id": "x", "to": "12", "text": "hi"}', "invalid_number", "3-20 digits"),
        ("sms/send", b'{"id": "x", "to": "+86 138", "text": "hi"}', "invalid_number", "digits"),
        ("sms/send", b'{"id": "x", "to": "+86138", "text": "' + b"x" * 800 + b'"}', "too_long",
         "parts"),
        ("sms/send", b"[" * 3000, "invalid_json", "not JSON"),
        ("reboot", b"{}", "unknown_command", "unknown command 'reboot'"),
        ("ping", b'{"id": "p", "extra": true}', "invalid", "extra"),
        # Lone surrogates are valid JSON escapes but not Unicode text: answered, not a crash.
        ("ping", b'{"id": "p", "\\ud800": true}', "invalid", "unicode string"),
        ("sms/send", b'{"id": "x", "to": "+86138", "text": "a\\udc00"}', "invalid",
         "unicode string"),
        ("ping", b'{"id": "p", "x": NaN}', "invalid_json", "NaN is not a JSON number"),
    ],
)  # fmt: skip
async def test_invalid_and_unknown_commands_get_error_answers(  # noqa: PLR0917 - pytest parameters
    tmp_path: Path, broker: Broker, name: str, body: bytes, code: str, reason_part: str
) -> None:
    async with gateway(tmp_path, broker.port) as gw:
        await gw.requester.send(name, body, correlation=b"bad")
        reply = await gw.requester.reply(b"bad")
        await gw.wait(lambda: len(gw.results(name)) == 1)
        sends = gw.modem.sends()
    assert reply.payload["ok"] is False
    assert reply.payload["code"] == code
    assert reason_part in reply.payload["reason"]
    assert gw.results(name)[0]["code"] == code
    assert sends == 0


async def test_errors_reach_the_status_topic_without_a_response_topic(
    tmp_path: Path, broker: Broker
) -> None:
    async with gateway(tmp_path, broker.port) as gw:
        await gw.requester.send("no/such/thing", b"{}", respond=False)
        await gw.requester.send(
            "sms/send", b'{"id": "q1", "to": "1;2", "text": "x"}', respond=False
        )
        await gw.wait(lambda: gw.results("no/such/thing") and gw.results("sms/send"))
    (unknown,) = gw.results("no/such/thing")
    assert (unknown["ok"], unknown["code"]) == (False, "unknown_command")
    (bad,) = gw.results("sms/send")
    assert (bad["ok"], bad["code"], bad["command_id"]) == (False, "invalid_number", "q1")
    assert gw.requester.replies == []
    # The answers are not under cmd/#: the daemon did not hear (and answer) its own answers.
    assert gw.uplink.counters.commands == 2


async def test_a_response_topic_under_cmd_is_refused_and_the_command_not_run(
    tmp_path: Path, broker: Broker
) -> None:
    async with gateway(tmp_path, broker.port) as gw:
        # Answering there would come back as a command, and so on forever.
        await gw.requester.send("ping", {"id": "loop"}, response_topic=f"{BASE}/cmd/ping")
        await gw.wait(lambda: len(gw.results("ping")) == 1)
        # A second ping answered on the requester's topic: had the first been answered on
        # cmd/ping, the daemon would have heard it before this one.
        await gw.requester.send("ping", {"id": "after"}, correlation=b"after")
        await gw.requester.reply(b"after")
        commands = gw.uplink.counters.commands
        counters = dict(gw.runner.counters)
    assert commands == 2
    assert (counters["responses_sent"], counters["response_topics_refused"]) == (1, 1)
    refused = gw.results("ping")[0]
    assert (refused["ok"], refused["code"], refused["command_id"]) == (
        False,
        "response_topic_refused",
        "loop",
    )
    assert "command topic" in refused["reason"]
    assert refused["result"] == {}


async def test_ping_and_modem_status(tmp_path: Path, broker: Broker) -> None:
    async with gateway(tmp_path, broker.port) as gw:
        await gw.requester.send("ping", {"id": "p1"}, correlation=b"p")
        pong = await gw.requester.reply(b"p")
        await gw.requester.send("modem/status", {}, correlation=b"s")
        polled = await gw.requester.reply(b"s")
        polls = gw.modem.driver.polls
    assert pong.payload["ok"] is True
    assert pong.payload["command_id"] == "p1"
    assert pong.payload["result"]["pong"] is True
    assert pong.payload["result"]["sms_waiting"] == 0
    assert polled.payload["ok"] is True
    assert polled.payload["result"] == {"polled": True}
    assert polls == 1


# Every character that could end, escape or chain an AT command if it reached the port raw.
NASTY = 'a\x1ab\x1bc\rd\ne"f\'g;h+++i AT+CFUN=0\r\n"'
NASTY_NUMBERS = [
    '+86138";+CFUN=0',
    "+8613800\x1a",
    "+8613800\x1b",
    "+8613800\r",
    "+8613800\nAT",
    "+86;13800",
    "+++",
    "+86'1380",
    "８６１３８００",  # full-width digits: digits to Unicode, not to the modem
]


async def test_injection_only_digits_and_pdu_hex_reach_the_port(
    tmp_path: Path, broker: Broker
) -> None:
    async with gateway(tmp_path, broker.port) as gw:
        for i, number in enumerate(NASTY_NUMBERS):
            await gw.requester.send(
                "sms/send", {"id": f"n{i}", "to": number, "text": "hi"}, correlation=b"n%d" % i
            )
            reply = await gw.requester.reply(b"n%d" % i)
            assert reply.payload["code"] == "invalid_number", number
        assert gw.modem.peer.received == b""
        for i, text in enumerate([NASTY, NASTY * 6, "报告" + NASTY]):
            await gw.requester.send(
                "sms/send", {"id": f"t{i}", "to": "+8613800138000", "text": text}
            )
            await gw.wait_state(f"t{i}", "sent")
        wire = bytes(gw.modem.peer.received)
        pdus = gw.modem.pdus()

    # Nothing but AT+CMGS=<digits> CR, then upper-case hex and Ctrl-Z, repeated.
    assert re.fullmatch(rb"(AT\+CMGS=\d{1,3}\r[0-9A-F]+\x1a)+", wire)
    decoded = [decode_pdu(p) for p in pdus]
    assert all(isinstance(d, SmsSubmit) for d in decoded)
    # Messages go out in order, their parts one after another: join them back.
    texts: list[str] = []
    current = ""
    for d in decoded:
        assert isinstance(d, SmsSubmit)
        assert str(d.recipient) == "+8613800138000"
        current += d.text or ""
        if d.concat is None or d.concat.seq == d.concat.total:
            texts.append(current)
            current = ""
    assert texts == [NASTY, NASTY * 6, "报告" + NASTY]


async def test_long_text_is_sent_in_parts_with_one_reference_each(
    tmp_path: Path, broker: Broker
) -> None:
    text = "".join(f"{i:04d} " for i in range(60))  # 300 GSM characters: 2 parts
    async with gateway(tmp_path, broker.port) as gw:
        await gw.requester.send("sms/send", {"id": "long", "to": "+8613800138000", "text": text})
        sent = await gw.wait_state("long", "sent")
        pdus = gw.modem.pdus()
    assert sent["parts"] == 2
    assert sent["mr"] == [41, 42]
    parts = [decode_pdu(p) for p in pdus]
    assert all(isinstance(p, SmsSubmit) and p.concat is not None for p in parts)
    assert "".join(p.text or "" for p in parts) == text  # type: ignore[union-attr]


async def test_transient_error_is_retried_and_permanent_fails_with_the_3gpp_reason(
    tmp_path: Path, broker: Broker
) -> None:
    async with gateway(tmp_path, broker.port, resend_unconfirmed=True) as gw:
        # 332 network timeout, then a silent modem (send timeout: with resend_unconfirmed it is
        # retried), then success.
        gw.modem.replies = [b"\r\n+CMS ERROR: 332\r\n", None]
        await gw.requester.send("sms/send", {**SMS, "id": "tr"})
        sent = await gw.wait_state("tr", "sent")
        assert gw.modem.sends() == 3
        # 21: short message transfer rejected. Permanent: no retry.
        gw.modem.replies = [b"\r\n+CMS ERROR: 21\r\n"]
        await gw.requester.send("sms/send", {**SMS, "id": "perm"})
        failed = await gw.wait_state("perm", "failed")
        await asyncio.sleep(0.3)  # a wrong retry would come after 0.05 s
        sends = gw.modem.sends()
        counters = dict(gw.runner.counters)
        retrying = [p for p in gw.progress("tr") if p["state"] == "queued" and p.get("code")]

    assert gw.states("tr") == [
        "queued",
        "sending",
        "queued",
        "sending",
        "queued",
        "sending",
        "sent",
    ]
    assert [(p["code"], p.get("error_code")) for p in retrying] == [
        ("cms_error", 332),
        ("timeout", None),
    ]
    assert retrying[0]["reason"] == "network timeout"
    assert all("retry_at" in p for p in retrying)
    assert sent["mr"] == [41]
    assert sent["attempts"] == 3
    assert failed["code"] == "cms_error"
    assert failed["error_code"] == 21
    assert failed["reason"] == "short message transfer rejected"
    assert gw.states("perm") == ["queued", "sending", "failed"]
    assert sends == 4
    assert counters["sms_retries"] == 2


async def test_a_part_with_no_answer_after_the_pdu_is_not_sent_again_by_default(
    tmp_path: Path, broker: Broker
) -> None:
    async with gateway(tmp_path, broker.port) as gw:
        # The prompt comes and the PDU is written, then nothing: it may have gone out.
        gw.modem.replies = [None]
        await gw.requester.send("sms/send", {**SMS, "id": "silent"})
        failed = await gw.wait_state("silent", "failed")
        await asyncio.sleep(0.5)  # a wrong retry would come after 0.05 s
        sends = gw.modem.sends()
        pdus = gw.modem.pdus()
        counters = dict(gw.runner.counters)
        # The next message goes out as usual: the modem is not left blocked.
        await gw.requester.send("sms/send", {**SMS, "id": "after"})
        await gw.wait_state("after", "sent")

    assert gw.states("silent") == ["queued", "sending", "failed"]
    assert sends == 1
    assert len(pdus) == 1
    assert failed["code"] == "unconfirmed"
    assert "part 1 of 1 may have been sent" in failed["reason"]
    assert failed["mr"] == []
    assert counters["sms_unconfirmed"] == 1
    assert counters["sms_retries"] == 0


async def test_transient_errors_give_up_after_retry_count(tmp_path: Path, broker: Broker) -> None:
    async with gateway(tmp_path, broker.port, retry_count=2) as gw:
        gw.modem.replies = [b"\r\n+CMS ERROR: 331\r\n"] * 5
        await gw.requester.send("sms/send", {**SMS, "id": "gone"})
        failed = await gw.wait_state("gone", "failed")
        sends = gw.modem.sends()
    assert sends == 3
    assert failed["error_code"] == 331
    assert failed["reason"] == "no network service (gave up after 3 attempts)"


async def test_cost_guard_refuses_the_n_plus_first_and_survives_a_restart(
    tmp_path: Path, broker: Broker
) -> None:
    async with gateway(tmp_path, broker.port, max_sms_per_hour=2) as gw:
        for i in range(3):
            await gw.requester.send("sms/send", {**SMS, "id": f"c{i}"})
        await gw.wait_state("c0", "sent")
        await gw.wait_state("c1", "sent")
        refused = await gw.wait_state("c2", "failed")
        assert gw.modem.sends() == 2
    assert refused["code"] == "rate_limited"
    assert "2 of 2 sent in the last hour" in refused["reason"]
    assert gw.states("c2") == ["queued", "failed"]

    # The count is on disk: a restarted daemon does not get a fresh allowance.
    async with gateway(tmp_path, broker.port, max_sms_per_hour=2) as gw:
        await gw.requester.send("sms/send", {**SMS, "id": "c3"})
        refused = await gw.wait_state("c3", "failed")
        sends = gw.modem.sends()
    assert refused["code"] == "rate_limited"
    assert sends == 0


async def test_cost_guard_counts_parts_per_day(tmp_path: Path, broker: Broker) -> None:
    text = "x" * 200  # 2 parts
    async with gateway(tmp_path, broker.port, max_sms_per_hour=100, max_sms_per_day=3) as gw:
        await gw.requester.send("sms/send", {"id": "d0", "to": "+8613800138000", "text": text})
        await gw.wait_state("d0", "sent")
        await gw.requester.send("sms/send", {"id": "d1", "to": "+8613800138000", "text": text})
        refused = await gw.wait_state("d1", "failed")
        await gw.requester.send("sms/send", {"id": "d2", "to": "+8613800138000", "text": "y"})
        await gw.wait_state("d2", "sent")
        sends = gw.modem.sends()
    assert "2 part(s) to send" in refused["reason"]
    assert "2 of 3 in the last day" in refused["reason"]
    assert sends == 3


async def test_a_queued_command_survives_a_restart(tmp_path: Path, broker: Broker) -> None:
    # The daemon takes the command, then stops before sending it.
    async with gateway(tmp_path, broker.port, run_runner=False) as gw:
        await gw.requester.send("sms/send", SMS, correlation=b"q")
        reply = await gw.requester.reply(b"q")
        await gw.wait(lambda: gw.states("m-1") == ["queued"])
        assert gw.modem.sends() == 0
    assert reply.payload["result"]["state"] == "queued"

    # Store and runner closed and opened again: it is sent, once.
    async with gateway(tmp_path, broker.port) as gw:
        sent = await gw.wait_state("m-1", "sent")
        await gw.requester.send("sms/send", SMS, correlation=b"again")
        again = await gw.requester.reply(b"again")
        sends = gw.modem.sends()
    assert sent["mr"] == [41]
    assert again.payload["result"]["state"] == "sent"
    assert sends == 1


async def test_progress_waits_in_the_outbox_while_the_link_is_down(
    tmp_path: Path, broker: Broker
) -> None:
    async with gateway(tmp_path, broker.port, resend_unconfirmed=True) as gw:
        gw.modem.replies = [None]  # the first send times out; the retry succeeds
        await gw.requester.send("sms/send", SMS)
        await gw.wait_state("m-1", "sending")
        broker.kill()
        await gw.wait(lambda: gw.runner.counters["sms_sent"] == 1)
        waiting = (await gw.outbox.stats())["command"].count
        assert "sent" not in gw.states("m-1")
        broker.start()
        await gw.wait(lambda: gw.outbox.depth == 0, within=15)
    # queued (retry), sending, sent: stored while the broker was away, delivered after.
    assert waiting >= 3

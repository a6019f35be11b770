"""What a command may cost: its size, its keys, where its answer may go, and what a refused
send reports. A real mosquitto, Uplink + Outbox, the runner and a scripted modem on a pty;
every assertion is on what a subscriber actually received."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from terminal_gw.commands.runner import topic_matches
from terminal_gw.config import load_config_data
from terminal_gw.errors import ConfigError
from terminal_gw.uplink import CommandMeta
from tests.broker import Broker
from tests.commands_support import BASE, Gateway, gateway
from tests.uplink_support import Received, subscriber

SMS = {"id": "m-1", "to": "+8613800138000", "text": "position report 1"}


def answers_on(seen: Received, topic: str) -> list[dict[str, Any]]:
    """The command answers (CMD_RESULT) a subscriber received on exactly `topic`."""
    return [
        json.loads(p)
        for t, p, _ in seen.messages
        if t == topic and p and json.loads(p).get("class") == "CMD_RESULT"
    ]


async def barrier(gw: Gateway, tag: bytes) -> None:
    """A ping answered on the requester's own topic: the daemon handles commands and publishes
    answers in order, so a wrong publish for an earlier command would have come before it."""
    await gw.requester.send("ping", {"id": "barrier"}, correlation=tag)
    await gw.requester.reply(tag)


# ---------------------------------------------------------------------------
# Duplicate keys.


async def test_duplicate_keys_are_refused_naming_the_key(tmp_path: Path, broker: Broker) -> None:
    twice_to = b'{"id": "d-1", "to": "+8613800138000", "to": "+8613900139000", "text": "hi"}'
    twice_id = b'{"id": "a", "id": "b"}'
    async with gateway(tmp_path, broker.port) as gw:
        await gw.requester.send("sms/send", twice_to, correlation=b"dup-to")
        to = await gw.requester.reply(b"dup-to")
        await gw.requester.send("ping", twice_id, correlation=b"dup-id")
        ident = await gw.requester.reply(b"dup-id")
        await gw.wait(lambda: bool(gw.results("sms/send")) and bool(gw.results("ping")))
        await gw.wait(lambda: bool(gw.progress("d-1")))
        sends = gw.modem.sends()

    assert (to.payload["ok"], to.payload["code"]) == (False, "duplicate_key")
    assert "key 'to' given twice" in to.payload["reason"]
    assert to.payload["command_id"] == "d-1"
    assert [r["code"] for r in gw.results("sms/send")] == ["duplicate_key"]
    # Neither number was used: nothing reached the modem, and the dashboard sees it failed.
    assert sends == 0
    (failed,) = gw.progress("d-1")
    assert (failed["state"], failed["code"]) == ("failed", "duplicate_key")
    assert "'to'" in failed["reason"]
    # Which id the command meant is a guess too: the answer names none.
    assert ident.payload["code"] == "duplicate_key"
    assert "command_id" not in ident.payload
    assert "key 'id' given twice" in ident.payload["reason"]
    assert "pong" not in ident.payload["result"]


# ---------------------------------------------------------------------------
# Size.


async def test_a_command_over_the_limit_on_mqtt_311_is_answered_unread(
    tmp_path: Path, broker: Broker
) -> None:
    # MQTT 3.1.1 has no maximum packet size to advertise: the broker delivers the command, and
    # the runner refuses it by its length.
    limit = 4096
    ping = b'{"id": "p-1"}'
    at_limit = ping + b" " * (limit - len(ping))
    over = b'{"id": "big-1", "to": "+8613800138000", "text": "' + b"x" * limit + b'"}'
    not_json = b"[" * (limit + 1)
    huge = b'{"id": "huge-1", "to": "+8613800138000", "text": "' + b"x" * (16 << 20) + b'"}'
    mqtt = {"protocol": "3.1.1", "max_command_bytes": limit}
    async with (
        gateway(tmp_path, broker.port, mqtt=mqtt) as gw,
        aiomqtt.Client("127.0.0.1", broker.port, timeout=5) as client,
    ):
        await client.publish(f"{BASE}/cmd/ping", at_limit, qos=1)
        await client.publish(f"{BASE}/cmd/sms/send", over, qos=1)
        await client.publish(f"{BASE}/cmd/ping", not_json, qos=1)
        await client.publish(f"{BASE}/cmd/sms/send", huge, qos=1)
        await gw.wait(
            lambda: len(gw.results("ping")) == 2 and len(gw.results("sms/send")) == 2, within=20
        )
        counters = dict(gw.runner.counters)
        sends = gw.modem.sends()

    accepted, unread = gw.results("ping")
    assert (accepted["ok"], accepted["command_id"]) == (True, "p-1")
    assert accepted["result"]["pong"] is True
    big, huge_answer = gw.results("sms/send")
    assert (huge_answer["code"], huge_answer.get("command_id")) == ("too_large", None)
    assert f"command of {len(huge)} bytes" in huge_answer["reason"]
    assert gw.progress("huge-1") == []
    assert (big["ok"], big["code"]) == (False, "too_large")
    assert f"{len(over)} bytes is over the limit of {limit}" in big["reason"]
    assert "mqtt.max_command_bytes" in big["reason"]
    # Not read: its id is not in the answer, no progress for it, nothing sent.
    assert "command_id" not in big
    assert gw.progress("big-1") == []
    assert sends == 0
    # Not decoded either: a payload that is not JSON is "too large", not "not JSON".
    assert unread["code"] == "too_large"
    assert "command_id" not in unread
    assert counters["too_large"] == 3


def test_the_size_limit_is_one_setting() -> None:
    base: dict[str, Any] = {"device": {"id": "d"}}
    default = load_config_data(base, environ={})
    assert default.mqtt.max_command_bytes == 64 * 1024
    assert not hasattr(default.commands, "max_payload_bytes")
    sized = load_config_data({**base, "mqtt": {"max_command_bytes": "16 KiB"}}, environ={})
    assert sized.mqtt.max_command_bytes == 16 * 1024
    # An older config's commands.max_payload_bytes still works, as the one limit.
    old = load_config_data({**base, "commands": {"max_payload_bytes": 8192}}, environ={})
    assert old.mqtt.max_command_bytes == 8192
    with pytest.raises(ConfigError) as both:
        load_config_data(
            {**base, "commands": {"max_payload_bytes": 1}, "mqtt": {"max_command_bytes": 2048}},
            environ={},
        )
    assert "set only that" in str(both.value.problems)
    with pytest.raises(ConfigError) as tiny:
        load_config_data({**base, "mqtt": {"max_command_bytes": 10}}, environ={})
    assert tiny.value.problems[0][0] == "mqtt.max_command_bytes"


# ---------------------------------------------------------------------------
# Response topics.


REFUSED = [
    ("tgw/other/cmd/sms/send", "inside this system's topics"),
    (f"{BASE}/gnss/fix", "inside this system's topics"),
    (f"{BASE}/status", "inside this system's topics"),
    (f"{BASE}/cmd/ping", "this device's command topic"),
    ("ops/+/replies", "wildcard"),
    ("ops/#", "wildcard"),
    ("$SYS/x", "starts with $"),
    ("", "is empty"),
]


@pytest.mark.parametrize(("topic", "why"), REFUSED)
async def test_a_response_topic_the_device_must_not_publish_on_is_refused(
    tmp_path: Path, broker: Broker, topic: str, why: str
) -> None:
    async with (
        gateway(tmp_path, broker.port) as gw,
        subscriber(broker.port, "#", qos=0) as everything,
        subscriber(broker.port, "$SYS/x", qos=0) as sys_x,  # "#" does not match $ topics
    ):
        await gw.requester.send("ping", {"id": "p-1"}, correlation=b"c1", response_topic=topic)
        await gw.wait(lambda: len(gw.results("ping")) == 1)
        await barrier(gw, b"after")
        await everything.wait_for(lambda s: bool(answers_on(s, gw.requester.reply_topic)))
        counters = dict(gw.runner.counters)
        commands = gw.uplink.counters.commands

    # Nothing published there: no answer on the topic (status has the daemon's own birth
    # message), no message at all on another device's command topic. Mosquitto drops client
    # publishes to $SYS, so there the counter is the witness too.
    assert answers_on(everything, topic) == []
    assert sys_x.messages == []
    assert not [t for t, _, _ in everything.messages if t.startswith("tgw/other/")]
    assert counters["responses_sent"] == 1  # the barrier's, only
    assert counters["response_topics_refused"] == 1
    assert commands == 2  # the daemon did not hear an answer as a command
    # The requester gets a clear refusal on cmd-result, and the ping did not run.
    refused = gw.results("ping")[0]
    assert (refused["ok"], refused["code"]) == (False, "response_topic_refused")
    assert refused["command_id"] == "p-1"
    assert refused["correlation"] == b"c1".hex()
    assert why in refused["reason"]
    assert repr(topic) in refused["reason"]
    assert "not run" in refused["reason"]
    assert refused["result"] == {}


async def test_an_allow_listed_topic_inside_the_namespace_is_answered_on(
    tmp_path: Path, broker: Broker
) -> None:
    replies = f"{BASE}/replies/ops-1"
    async with (
        gateway(tmp_path, broker.port, response_topics=[f"{BASE}/replies/#"]) as gw,
        subscriber(broker.port, replies, qos=0) as seen,
    ):
        await gw.requester.send("ping", {"id": "in"}, correlation=b"in", response_topic=replies)
        await seen.wait_for(lambda s: bool(answers_on(s, replies)))
        # With the list set, only what it matches: the requester's usual topic is refused.
        await gw.requester.send("ping", {"id": "out"}, correlation=b"out")
        await gw.wait(lambda: len(gw.results("ping")) == 2)
        counters = dict(gw.runner.counters)

    (answer,) = answers_on(seen, replies)
    assert (answer["ok"], answer["command_id"]) == (True, "in")
    assert answer["result"]["pong"] is True
    assert answer["correlation"] == b"in".hex()
    assert gw.requester.replies == []
    out = next(r for r in gw.results("ping") if r["command_id"] == "out")
    assert out["code"] == "response_topic_refused"
    assert f"matches none of commands.response_topics ({BASE}/replies/#)" in out["reason"]
    assert (counters["responses_sent"], counters["response_topics_refused"]) == (1, 1)


async def test_the_allow_list_cannot_open_the_devices_own_commands(
    tmp_path: Path, broker: Broker
) -> None:
    async with gateway(tmp_path, broker.port, response_topics=["tgw/#", "ops/#"]) as gw:
        await gw.requester.send("ping", {"id": "loop"}, response_topic=f"{BASE}/cmd/x")
        await gw.wait(lambda: len(gw.results("ping")) == 1)
        await barrier(gw, b"b")
        commands = gw.uplink.counters.commands
    assert commands == 2
    (refused,) = [r for r in gw.results("ping") if r["command_id"] == "loop"]
    assert refused["code"] == "response_topic_refused"
    assert "command topic" in refused["reason"]


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("ops/a\x00b", "NUL"),
        ("ops/\x1b[2J", "control character"),
        ("ops/\ud800", "not UTF-8"),
        ("ops/" + "x" * 1100, "over the limit of 1024"),
    ],
)
async def test_topics_no_broker_would_carry_are_refused_too(
    tmp_path: Path, broker: Broker, topic: str, why: str
) -> None:
    # Mosquitto disconnects a client that sends these, so they are handed to the runner the
    # way the uplink hands a command over, with the real uplink to publish the answer.
    async with gateway(tmp_path, broker.port) as gw, subscriber(broker.port, "#", qos=0) as seen:
        meta = CommandMeta(
            topic=f"{BASE}/cmd/ping", qos=1, response_topic=topic, correlation_data=b"z"
        )
        await gw.runner.handle(f"{BASE}/cmd/ping", b'{"id": "odd"}', meta)
        await gw.wait(lambda: len(gw.results("ping")) == 1)
        await seen.wait_for(lambda s: bool(answers_on(s, f"{BASE}/cmd-result/ping")))
        counters = dict(gw.runner.counters)
    (refused,) = gw.results("ping")
    assert refused["code"] == "response_topic_refused"
    assert why in refused["reason"]
    # Shown escaped and cut: the reason itself is valid UTF-8 JSON of bounded size.
    assert len(refused["reason"]) < 400
    assert [t for t, _, _ in seen.messages if not t.startswith(f"{BASE}/")] == []
    assert counters["responses_sent"] == 0


def test_topic_filter_matching() -> None:
    assert topic_matches("replies/#", "replies")
    assert topic_matches("replies/#", "replies/a/b")
    assert topic_matches("replies/+/x", "replies/a/x")
    assert topic_matches("+", "a")
    assert topic_matches("a/+", "a/")
    assert topic_matches("#", "anything/at/all")
    assert not topic_matches("replies/+/x", "replies/a/b/x")
    assert not topic_matches("replies/+", "replies")
    assert not topic_matches("replies", "replies/a")
    assert not topic_matches("Replies/#", "replies/a")


def test_allow_list_filters_are_checked_at_load() -> None:
    good = load_config_data(
        {"device": {"id": "d"}, "commands": {"response_topics": ["replies/#", "tgw/+/r"]}},
        environ={},
    )
    assert good.commands.response_topics == ["replies/#", "tgw/+/r"]
    with pytest.raises(ConfigError) as bad:
        load_config_data(
            {
                "device": {"id": "d"},
                "commands": {"response_topics": ["a/#/b", "$SYS/#", "", "x+", "ok/\x00"]},
            },
            environ={},
        )
    problems = dict(bad.value.problems)
    assert set(problems) == {f"commands.response_topics.{i}" for i in range(5)}
    assert "'#' must be a whole level" in problems["commands.response_topics.0"]
    assert "belong to the broker" in problems["commands.response_topics.1"]
    assert "'+' must be a whole level" in problems["commands.response_topics.3"]
    assert "NUL" in problems["commands.response_topics.4"]


# ---------------------------------------------------------------------------
# A refused send on sms/tx/{id}.


@pytest.mark.parametrize(
    ("body", "code", "reason_part"),
    [
        ({**SMS, "to": "+86 138"}, "invalid_number", "3-20 digits"),
        ({**SMS, "to": '+86138";+CFUN=0'}, "invalid_number", "3-20 digits"),
        ({**SMS, "text": "x" * 800}, "too_long", "more than the limit of 4"),
        ({**SMS, "prio": 1}, "invalid", "prio"),
    ],
)
async def test_a_send_refused_at_validation_is_failed_on_sms_tx(
    tmp_path: Path, broker: Broker, body: dict[str, Any], code: str, reason_part: str
) -> None:
    async with gateway(tmp_path, broker.port) as gw:
        await gw.requester.send("sms/send", body, correlation=b"r")
        reply = await gw.requester.reply(b"r")
        await gw.wait(lambda: bool(gw.results("sms/send")) and bool(gw.progress("m-1")))
        # The corrected command may use the id: a refusal does not take it.
        await gw.requester.send("sms/send", SMS)
        await gw.wait_state("m-1", "sent")
        sends = gw.modem.sends()
        counters = dict(gw.runner.counters)

    assert (reply.payload["ok"], reply.payload["code"]) == (False, code)
    assert gw.results("sms/send")[0]["code"] == code
    assert gw.results("sms/send")[0]["command_id"] == "m-1"
    failed = gw.progress("m-1")[0]
    assert failed["class"] == "SMS_TX"
    assert (failed["state"], failed["code"], failed["sms_id"]) == ("failed", code, "m-1")
    assert reason_part in failed["reason"]
    assert failed["reason"] == reply.payload["reason"]
    assert (failed["parts"], failed["mr"], failed["attempts"]) == (0, [], 0)
    assert gw.states("m-1") == ["failed", "queued", "sending", "sent"]
    assert sends == 1
    assert counters["sms_refused"] == 1


async def test_a_refused_repeat_of_a_sent_id_does_not_mark_it_failed(
    tmp_path: Path, broker: Broker
) -> None:
    async with gateway(tmp_path, broker.port) as gw:
        await gw.requester.send("sms/send", SMS)
        await gw.wait_state("m-1", "sent")
        await gw.requester.send("sms/send", {**SMS, "to": "12"}, correlation=b"bad")
        bad = await gw.requester.reply(b"bad")
        await barrier(gw, b"after")
        await gw.wait(lambda: len(gw.results("sms/send")) == 2)
    assert bad.payload["code"] == "invalid_number"
    # The message m-1 went out; a bad repeat of its id does not say otherwise on sms/tx.
    assert gw.states("m-1") == ["queued", "sending", "sent"]


async def test_a_send_with_a_refused_response_topic_is_not_sent(
    tmp_path: Path, broker: Broker
) -> None:
    async with gateway(tmp_path, broker.port) as gw:
        await gw.requester.send("sms/send", SMS, response_topic="tgw/other/cmd/sms/send")
        await gw.wait(lambda: bool(gw.results("sms/send")) and bool(gw.progress("m-1")))
        await barrier(gw, b"after")
        sends = gw.modem.sends()
    assert gw.results("sms/send")[0]["code"] == "response_topic_refused"
    assert gw.states("m-1") == ["failed"]
    assert gw.progress("m-1")[0]["code"] == "response_topic_refused"
    assert sends == 0

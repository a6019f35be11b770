"""The command store and runner without a broker: restarts in the middle of a send, the cost
ledger, the failure table, and the documented config."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from terminal_gw.commands import CommandRunner, CommandStore, classify
from terminal_gw.config import CommandsConfig, Config
from terminal_gw.errors import ModemError, TransportError
from terminal_gw.modem.at import Final, FinalResult, ModemResultError, ModemTimeoutError
from terminal_gw.modem.sms import SmsSubmit, decode_pdu, encode_submit
from terminal_gw.outbox import Outbox
from terminal_gw.uplink import CommandMeta
from tests.commands_support import BASE, Modem, make_config, modem_on_pty
from tests.uplink_support import wait_until

REPO = Path(__file__).resolve().parent.parent
TEXT_2_PARTS = "".join(f"{i:04d} " for i in range(60))


@dataclass
class Local:
    config: Config
    outbox: Outbox
    store: CommandStore
    runner: CommandRunner
    modem: Modem

    async def published(self) -> list[tuple[str, dict[str, Any]]]:
        """Every record waiting in the outbox: (topic, payload)."""
        return [(r.topic, json.loads(r.payload)) for r in await self.outbox.next_batch(1000)]

    async def states(self, sms_id: str) -> list[str]:
        """States reported on sms/tx/{sms_id}, in order."""
        topic = f"{BASE}/sms/tx/{sms_id}"
        return [p["state"] for t, p in await self.published() if t == topic]

    async def send(self, body: dict[str, Any]) -> None:
        """Hand a sms/send command to the runner as the uplink would."""
        meta = CommandMeta(topic=f"{BASE}/cmd/sms/send", qos=1)
        await self.runner.handle("sms/send", json.dumps(body).encode(), meta)


@contextlib.asynccontextmanager
async def local(tmp_path: Path, *, run: bool = True, **commands: Any) -> AsyncIterator[Local]:
    """Outbox, store, runner and a modem on a pty; the runner running unless `run` is off."""
    config = make_config(tmp_path, **commands)
    async with (
        Outbox(config.outbox) as outbox,
        CommandStore(config.commands.path) as store,
        modem_on_pty() as modem,
    ):
        runner = CommandRunner(config, store, outbox, modem.driver)
        rig = Local(config, outbox, store, runner, modem)
        if not run:
            yield rig
            return
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(runner.run(), name="command-runner")
            try:
                yield rig
            finally:
                task.cancel()


async def test_stop_in_the_middle_of_a_send_is_not_resent_after_a_restart(
    tmp_path: Path,
) -> None:
    async with local(tmp_path) as rig:
        rig.modem.replies = [None]  # the modem takes the PDU and stays silent
        await rig.send({"id": "s1", "to": "+8613800138000", "text": "hello"})
        await wait_until(lambda: rig.modem.pdus() != [])
        # The daemon stops here (the runner is cancelled with the part in the modem's hands).

    async with local(tmp_path) as rig:
        await wait_until(lambda: rig.runner.counters["sms_interrupted"] == 1)
        await asyncio.sleep(0.2)  # a wrong resend would be quick
        job = await rig.store.get("s1")
        states = await rig.states("s1")
        sends = rig.modem.sends()
        hour, _ = await rig.store.usage(rig.runner._clock())
    assert sends == 0
    assert job is not None
    assert job.state == "failed"
    assert job.code == "interrupted"
    assert job.reason is not None
    assert job.reason.startswith("unknown: interrupted while sending")
    assert states[-1] == "failed"
    assert hour == 1  # it may have been sent: the cost guard counts it


async def test_stop_between_parts_resumes_with_the_missing_part_only(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with CommandStore(config.commands.path) as store:
        # As a daemon leaves it when stopped right after part 1 of 2 was confirmed.
        job, _ = await store.add_sms("r1", "+8613800138000", TEXT_2_PARTS, parts=2, now=1.0)
        await store.begin_attempt("r1", 2.0)
        await store.begin_part("r1", 1, 2.0)
        await store.part_sent("r1", 77, 3.0)
    async with local(tmp_path) as rig:
        await wait_until(lambda: rig.runner.counters["sms_sent"] == 1)
        states = await rig.states("r1")
        pdus = rig.modem.pdus()
        done = await rig.store.get("r1")
    assert states == ["queued", "sending", "sent"]
    assert done is not None
    assert done.mrs == (77, 41)
    (pdu,) = pdus
    expected = encode_submit("+8613800138000", TEXT_2_PARTS, max_parts=2, ref=job.ref)
    assert pdu == expected[1].hex
    decoded = decode_pdu(pdu)
    assert isinstance(decoded, SmsSubmit)
    assert decoded.concat is not None
    assert (decoded.concat.ref, decoded.concat.seq) == (job.ref, 2)


async def test_refused_parts_cost_nothing_and_unanswered_ones_count(tmp_path: Path) -> None:
    async with local(tmp_path, retry_count=0) as rig:
        rig.modem.replies = [b"\r\n+CMS ERROR: 1\r\n", None]
        await rig.send({"id": "u1", "to": "+8613800138000", "text": "a"})
        await rig.send({"id": "u2", "to": "+8613800138000", "text": "b"})
        await rig.send({"id": "u3", "to": "+8613800138000", "text": "c"})
        await wait_until(lambda: rig.runner.counters["sms_sent"] == 1, within=5)
        hour, day = await rig.store.usage(rig.runner._clock())
        jobs = [await rig.store.get(i) for i in ("u1", "u2", "u3")]
    assert [j.state if j else None for j in jobs] == ["failed", "failed", "sent"]
    assert jobs[0] is not None
    assert jobs[0].reason == "unassigned (unallocated) number"
    assert (hour, day) == (2, 2)  # u2 (no answer: may have gone out) and u3


async def test_commands_arriving_before_the_runner_runs_are_kept(tmp_path: Path) -> None:
    async with local(tmp_path, run=False) as rig:
        for i in range(3):
            await rig.send({"id": f"k{i}", "to": "+8613800138000", "text": f"m{i}"})
        assert await rig.store.waiting() == 3
    async with local(tmp_path) as rig:
        await wait_until(lambda: rig.runner.counters["sms_sent"] == 3)
        texts = [decode_pdu(p).text for p in rig.modem.pdus()]  # type: ignore[union-attr]
    assert texts == ["m0", "m1", "m2"]


async def test_a_command_from_another_device_topic_is_refused(tmp_path: Path) -> None:
    async with local(tmp_path) as rig:
        meta = CommandMeta(topic="tgw/other-device/cmd/sms/send", qos=1)
        body = b'{"id": "f1", "to": "+8613800138000", "text": "x"}'
        await rig.runner.handle("sms/send", body, meta)
        published = await rig.published()
        job = await rig.store.get("f1")
    assert job is None
    ((topic, result),) = published
    assert topic == f"{BASE}/cmd-result/sms/send"
    assert (result["ok"], result["code"], result["command_id"]) == (False, "foreign_topic", "f1")


async def test_a_store_that_fails_gets_an_error_answer(tmp_path: Path) -> None:
    async with local(tmp_path, run=False) as rig:
        await rig.store.close()
        await rig.runner.handle("ping", b"{}", CommandMeta(topic=f"{BASE}/cmd/ping", qos=1))
        await rig.send({"id": "s", "to": "+8613800138000", "text": "x"})
        published = await rig.published()
    assert [(p["command"], p["ok"], p["code"]) for _, p in published] == [
        ("ping", False, "store"),
        ("sms/send", False, "store"),
    ]


async def test_finished_sends_are_forgotten_after_history_days(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with CommandStore(config.commands.path) as store:
        await store.add_sms("old", "+8613800138000", "x", parts=1, now=1000.0)
        await store.finish("old", "sent", now=1000.0)
        await store.add_sms("new", "+8613800138000", "x", parts=1, now=1000.0)
        assert await store.prune(1000.0 + 86400.0, keep_s=3600.0) == 1
        assert await store.get("old") is None
        assert await store.get("new") is not None  # still queued: never pruned


def _result_error(kind: Final, code: int | None, reason: str | None) -> ModemResultError:
    return ModemResultError("AT+CMGS=20", FinalResult(kind, "x", code, reason))


@pytest.mark.parametrize(
    ("exc", "code", "transient", "maybe_sent"),
    [
        (_result_error(Final.CMS_ERROR, 332, "network timeout"), "cms_error", True, False),
        (_result_error(Final.CMS_ERROR, 331, "no network service"), "cms_error", True, False),
        (_result_error(Final.CMS_ERROR, 42, "congestion"), "cms_error", True, False),
        (_result_error(Final.CMS_ERROR, 1, "unassigned"), "cms_error", False, False),
        (_result_error(Final.CMS_ERROR, 304, "invalid PDU mode"), "cms_error", False, False),
        (_result_error(Final.CMS_ERROR, 330, "SMSC address unknown"), "cms_error", False, False),
        (_result_error(Final.CME_ERROR, 30, "no network service"), "cme_error", True, False),
        (_result_error(Final.CME_ERROR, 10, "SIM not inserted"), "cme_error", False, False),
        (_result_error(Final.ERROR, None, None), "error", True, False),
        (ModemTimeoutError("t", reason="no prompt"), "timeout", True, False),
        (ModemTimeoutError("t", reason="timeout"), "timeout", True, True),
        (ModemError("t", reason="timeout"), "timeout", True, True),
        (ModemError("t", code=332, reason="network timeout"), "cms_error", True, False),
        (ModemError("t", code=21, reason="rejected"), "cms_error", False, False),
        (ModemError("t", reason="no message reference"), "modem", True, True),
        (ModemError("t", reason="not running"), "modem", True, False),
        (
            ModemError("modem not ready: recovering", reason="modem recovering"),
            "modem",
            True,
            False,
        ),
        (TransportError("gone", reason="hangup"), "modem", True, True),
        (TimeoutError(), "timeout", True, True),
    ],
)
def test_failure_table(exc: BaseException, code: str, transient: bool, maybe_sent: bool) -> None:
    failure = classify(exc)
    assert (failure.code, failure.transient, failure.maybe_sent) == (code, transient, maybe_sent)


def test_every_commands_option_is_documented_in_the_example_config() -> None:
    text = (REPO / "config" / "terminal-gw.toml").read_text()
    example = tomllib.loads(text)["commands"]
    assert set(example) == set(CommandsConfig.model_fields)
    assert CommandsConfig.model_validate(example) == CommandsConfig()

"""From a message to its rows or its rejection (pure: no broker, no database)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from terminal_gw import wire
from terminal_gw.ingest.config import IngestFile, load_ingest_config
from terminal_gw.ingest.records import COLUMNS, Rejection, parse_message, rejected_digest
from terminal_gw.models import BdsReceived, BdsSendProgress, FixBatch, new_id
from tests.ingest_support import event_payload, fix_payload, sky_payload, status_payload

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_a_fix_becomes_one_row_in_column_order() -> None:
    fix = fix_payload(3)
    parsed = parse_message("tgw", "tgw/vessel-1/gnss/fix", fix.to_json().encode(), NOW)
    (row,) = parsed.rows["fixes"]
    values = dict(zip(COLUMNS["fixes"], row, strict=True))
    assert values["id"] == fix.id
    assert values["device"] == "vessel-1"
    assert values["time"] == fix.time
    assert values["received"] == NOW
    assert (values["lat"], values["lon"], values["alt_msl"]) == (fix.lat, fix.lon, fix.altMSL)
    assert json.loads(values["used"]) == {"gps": 5, "bds": 7}
    assert values["source"] == "fix"
    assert parsed.fix_times == [1_760_000_003.0]


def test_a_prefix_of_several_levels() -> None:
    parsed = parse_message(
        "fleet/cn", "fleet/cn/vessel-1/gnss/sky", sky_payload().to_json().encode(), NOW
    )
    assert parsed.rows["sky_summary"][0][1] == "vessel-1"


def test_a_json_batch_is_one_row_per_fix() -> None:
    fixes = [fix_payload(i) for i in range(3)]
    batch = FixBatch(count=3, fixes=fixes)
    parsed = parse_message("tgw", "tgw/d/gnss/fix/batch", batch.to_json().encode(), NOW)
    assert [r[0] for r in parsed.rows["fixes"]] == [f.id for f in fixes]
    assert {r[-1] for r in parsed.rows["fixes"]} == {"fix_batch"}


def test_status_and_events_go_to_their_tables() -> None:
    status = parse_message(
        "tgw", "tgw/d/status", status_payload("online", 1e9).to_json().encode(), NOW
    )
    assert status.rows["device_status"][0][:2] == ("d", "status")
    event = parse_message("tgw", "tgw/d/event", event_payload().to_json().encode(), NOW)
    assert event.rows["events"][0][4:7] == ("antenna", "warning", "antenna open")


def test_commands_and_cleared_retained_topics_are_read_past() -> None:
    assert parse_message("tgw", "tgw/d/cmd/sms/send", b"{}", NOW).skipped
    assert parse_message("tgw", "tgw/d/status", b"", NOW).skipped


def test_bds_messages_both_directions() -> None:
    rx = BdsReceived(
        id=new_id(),
        received="2026-12-02T11:00:00.000Z",
        sender="0123456",
        mode="chinese",
        text="你好",
        dialect="2.1",
        raw="$BDTXR,...",
    )
    parsed = parse_message("tgw", "tgw/d/bds/rx", rx.to_json().encode(), NOW)
    row = dict(zip(COLUMNS["messages"], parsed.rows["messages"][0], strict=True))
    assert (row["channel"], row["direction"], row["peer"], row["text"]) == (
        "bds",
        "rx",
        "0123456",
        "你好",
    )
    assert json.loads(row["payload"]) == rx.to_json_dict()
    tx = BdsSendProgress(
        id=new_id(), time="2026-12-02T11:00:01.000Z", bds_id="b-1", state="sent", to="0123456"
    )
    parsed = parse_message("tgw", "tgw/d/bds/tx/b-1", tx.to_json().encode(), NOW)
    row = dict(zip(COLUMNS["messages"], parsed.rows["messages"][0], strict=True))
    assert (row["direction"], row["message_id"], row["state"]) == ("tx", "b-1", "sent")


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("tgw/d/gnss/fix", b"{not json", "not valid JSON"),
        ("tgw/d/gnss/fix", b"[1, 2]", "the payload is not a JSON object"),
        ("tgw/d/gnss/fix", b'{"class": "SKY", "id": "x", "v": 1}', "unknown class 'SKY'"),
        ("tgw/d/gnss/fix", b'{"class": "TPV", "id": "x", "v": 1}', "id 'x' is not a UUID"),
        ("tgw/d/gnss/fix", b'{"class": "TPV", "v": 1, "lat": "north"}', "fails the schema"),
        ("tgw/d/weather", b"{}", "unknown topic 'weather'"),
        ("other/d/gnss/fix", b"{}", "topic is not tgw/{device}/..."),
        ("tgw//gnss/fix", b"{}", "topic has an empty device level"),
    ],
)
def test_bad_input_is_rejected_with_its_reason(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(Rejection) as exc:
        parse_message("tgw", topic, payload, NOW)
    assert str(exc.value).startswith(reason) or reason in str(exc.value)


def test_the_same_bad_message_has_the_same_digest() -> None:
    assert rejected_digest("t/a", b"x") == rejected_digest("t/a", b"x")
    assert rejected_digest("t/a", b"x") != rejected_digest("t/b", b"x")


def test_config_defaults_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "ingest.toml"
    path.write_text('[ingest]\nprefix = "fleet"\nbatch_max_rows = 500\n')
    cfg = load_ingest_config(path, environ={"TGW_INGEST__DB_PASSWORD": "s3cret"}).ingest
    assert cfg.topic_filters() == ["fleet/+/#"]
    assert cfg.effective_receive_maximum() == 1000
    assert cfg.database_password() == "s3cret"
    assert IngestFile().ingest.group == "tgw-ingest"


def _compact(tweak: Callable[[int, dict[str, Any]], None] | None = None, n: int = 40) -> bytes:
    """A compact batch of `n` fixes (ids derived) and a sky summary every tenth, `tweak`ed."""
    records: list[dict[str, Any]] = []
    for i in range(n):
        fix = json.loads(fix_payload(i).to_json())
        fix["id"] = wire.fix_id("d", (1_760_000_000 + i) * 1000)  # derived: no id bytes
        if tweak is not None:
            tweak(i, fix)
        records.append(fix)
        if i % 10 == 0:
            records.append(wire.sky_summary(json.loads(sky_payload(1_760_000_000.0 + i).to_json())))
    return wire.encode_batch(records, "d", compress=True)


def _both(data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    """parse_message's answer for a compact batch, and the record path's (one dict a record)."""

    def parse() -> object:
        try:
            parsed = parse_message("tgw", "tgw/d/gnss/batch", data, NOW)
        except Rejection as exc:
            return str(exc)
        return parsed.rows, parsed.fix_times

    fast = parse()
    with monkeypatch.context() as m:
        m.setattr(wire, "decode_columns", lambda data, **_: None)
        slow = parse()
    return fast, slow


@pytest.mark.parametrize(
    "tweak",
    [
        None,
        lambda i, f: f.pop("mode") if i % 3 == 0 else None,
        lambda i, f: f.pop("used") if i % 2 else f.update(used={}),
        lambda i, f: f.update(clock="system") if i % 2 else None,
        lambda i, f: [f.pop(k) for k in ("lat", "lon", "altHAE")] if i % 4 == 0 else None,
        lambda i, f: f.update(id=new_id()) if i % 5 == 0 else None,
        lambda i, f: f.update(source_protocol="ubx") if i == 3 else None,
    ],
    ids=["plain", "mode-absent", "used-absent", "clock", "sparse", "random-ids", "extra-field"],
)
def test_compact_rows_are_the_record_paths_rows(
    tweak: Callable[[int, dict[str, Any]], None] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _compact(tweak)
    fast, slow = _both(data, monkeypatch)
    assert fast == slow
    if tweak is None:
        assert wire.decode_columns(data) is not None  # the column path was the one taken
    rows, times = fast  # type: ignore[misc]
    assert len(rows["fixes"]) == 40
    assert len(rows["sky_summary"]) == 4
    assert len(times) == 40


@pytest.mark.parametrize(
    ("tweak", "reason"),
    [
        (lambda i, f: f.update(mode=7) if i == 5 else None, "item 6 of the batch fails its schema"),
        (lambda i, f: f.update(seen={"gps": 1}) if i == 2 else None, "Extra inputs"),
        (lambda i, f: f.update(id="not-a-uuid") if i == 1 else None, "is not a UUID"),
    ],
)
def test_a_compact_batch_is_rejected_as_the_record_path_rejects_it(
    tweak: Callable[[int, dict[str, Any]], None], reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, slow = _both(_compact(tweak), monkeypatch)
    assert fast == slow
    assert isinstance(fast, str)
    assert reason in fast

"""Leases, the drain's contract: each record is leased once until it is acked or released,
under an opaque key that stays the same when the record is committed while leased; acks end
leases at once; released records come back in their place; release_all hands out again what
was not acked (a link that went down)."""

from __future__ import annotations

from pathlib import Path

from terminal_gw.outbox import Outbox
from tests.outbox_child import Sms
from tests.test_outbox import config, fix, stored_ids


async def test_a_leased_record_is_not_leased_again_until_acked(tmp_path: Path) -> None:
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10_000, live_window_s=0)
    async with Outbox(cfg) as outbox:
        fixes = [fix(lat=i) for i in range(5)]
        for f in fixes[:3]:
            await outbox.put("fix", f)
        await outbox.flush()
        for f in fixes[3:]:
            await outbox.put("fix", f)  # these two are still in the batch
        first = await outbox.lease(2)
        rest = await outbox.lease(10)
        assert [r.id for r in first + rest] == [f.id for f in fixes]
        keys = [r.seq for r in first + rest]
        # Opaque keys: positive for rows and batch records alike, each its own.
        assert all(k > 0 for k in keys)
        assert len(set(keys)) == 5
        assert await outbox.lease(10) == []
        assert outbox.leased == 5
        await outbox.ack(first)  # as records
        await outbox.ack([r.seq for r in rest])  # as keys
        assert outbox.depth == 0
        assert outbox.leased == 0
        assert await outbox.lease(10) == []
        await outbox.flush()
        assert outbox.delivered_unwritten == 2  # the batch's two were never written
    assert stored_ids(cfg.path) == []


async def test_a_lease_follows_its_record_into_the_database(tmp_path: Path) -> None:
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10_000, live_window_s=0)
    async with Outbox(cfg) as outbox:
        sent = [fix(lat=i) for i in range(3)]
        for f in sent:
            await outbox.put("fix", f)
        leased = await outbox.lease(10)
        await outbox.flush()  # the batch timer fires while they are in flight
        assert stored_ids(cfg.path) == [f.id for f in sent]
        assert await outbox.lease(10) == []  # their rows stay leased
        await outbox.ack(leased[:1])
        assert stored_ids(cfg.path) == [f.id for f in sent[1:]]
        # The link goes down: what was not acked is handed out again, from its rows, under
        # new keys; the old keys are gone.
        outbox.release_all()
        again = await outbox.lease(10)
        assert [r.id for r in again] == [f.id for f in sent[1:]]
        assert not {r.seq for r in again} & {r.seq for r in leased}
        await outbox.ack(leased[1:])  # late acks of ended leases change nothing
        assert stored_ids(cfg.path) == [f.id for f in sent[1:]]
        await outbox.ack(again)
        assert stored_ids(cfg.path) == []
        assert outbox.depth == 0


async def test_released_records_come_back_in_their_place(tmp_path: Path) -> None:
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10_000, live_window_s=0)
    async with Outbox(cfg) as outbox:
        fixes = [fix(lat=i) for i in range(4)]
        for f in fixes:
            await outbox.put("fix", f)
        await outbox.flush()
        head = await outbox.lease(4)
        outbox.release(head[2:])  # a held-back tail, not sent
        sms = Sms(text="more important")
        await outbox.put("sms", sms)
        again = await outbox.lease(10)
        assert [r.id for r in again] == [sms.id, fixes[2].id, fixes[3].id]


async def test_an_ack_ends_the_lease_before_it_is_awaited(tmp_path: Path) -> None:
    # The uplink hands its acks to a shielded task and may end the session (release_all)
    # before that task runs: the acked records must not be handed out again meanwhile.
    cfg = config(tmp_path, commit_interval_s=60, commit_records=10_000, live_window_s=0)
    async with Outbox(cfg) as outbox:
        f = fix()
        await outbox.put("fix", f)
        await outbox.flush()
        (got,) = await outbox.lease(1)
        pending = outbox.ack([got])
        outbox.release_all()
        assert await outbox.lease(10) == []
        await pending
        assert outbox.depth == 0
        assert stored_ids(cfg.path) == []

"""Helpers for the outbox tests: message payloads, and a child process that ingests records
and reports each accepted one on a pipe (stdout), to be killed with SIGKILL at random points.

Run as: python -m tests.outbox_child DB_PATH START_INDEX
Each line written is "<mode> <id>": "S" for a record accepted with sync=True (committed
before put returned), "C" for a record whose batch was committed (flush returned).
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path
from typing import ClassVar

from terminal_gw.config import OutboxConfig
from terminal_gw.models import Fix, Payload, new_id
from terminal_gw.outbox import Outbox


class Sms(Payload):
    """A received SMS, as the modem stage will publish it (enough for the outbox)."""

    record_class: ClassVar[str] = "sms"
    topic_suffix: ClassVar[str] = "sms/rx"

    text: str = ""


class Bds(Payload):
    """A received BeiDou short message."""

    record_class: ClassVar[str] = "bds"
    topic_suffix: ClassVar[str] = "bds/rx"

    text: str = ""


class CommandResult(Payload):
    """A command's result."""

    record_class: ClassVar[str] = "command"
    topic_suffix: ClassVar[str] = "cmd/result"

    result: str = "ok"


async def _ingest(path: Path, start: int) -> None:
    rng = random.Random(start)
    config = OutboxConfig(path=path, commit_interval_s=0.05, commit_records=50)
    out = sys.stdout
    async with Outbox(config) as outbox:
        i = start
        unflushed: list[str] = []
        while True:
            i += 1
            if rng.random() < 0.2:
                sms = Sms(id=new_id(), text=f"message {i} " + "x" * rng.randrange(0, 200))
                await outbox.put("tgw/t/sms/rx", sms)
                # Everything queued before a sync record is committed with it.
                for rid in unflushed:
                    out.write(f"C {rid}\n")
                unflushed.clear()
                out.write(f"S {sms.id}\n")
            else:
                fix = Fix(id=new_id(), lat=rng.uniform(-80, 80), lon=rng.uniform(-180, 180))
                await outbox.put("tgw/t/gnss/fix", fix)
                unflushed.append(fix.id)
                if len(unflushed) >= 20 or rng.random() < 0.05:
                    await outbox.flush()
                    for rid in unflushed:
                        out.write(f"C {rid}\n")
                    unflushed.clear()
            out.flush()


def main() -> None:
    """Ingest until killed."""
    asyncio.run(_ingest(Path(sys.argv[1]), int(sys.argv[2])))


if __name__ == "__main__":
    main()

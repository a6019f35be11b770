"""A process running outbox + uplink, for tests that kill it (SIGKILL) while it drains.

Run as: python -m tests.uplink_child CONFIG_JSON [PRODUCE_PER_S]
CONFIG_JSON holds a full config (`Config.model_dump(mode="json")`). With PRODUCE_PER_S > 0 it
also puts new records while draining (fixes, and an SMS every tenth, which is synchronous).
Prints "connected" once the uplink is connected. SIGTERM stops it cleanly.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from terminal_gw.config import Config, load_config_data
from terminal_gw.logs import configure_logging
from terminal_gw.outbox import Outbox
from terminal_gw.uplink import LinkState, Uplink
from tests.uplink_support import Sms, fix, topic_of


async def _produce(config: Config, outbox: Outbox, per_s: float) -> None:
    n = 0
    while True:
        n += 1
        p = Sms(n=n) if n % 10 == 0 else fix(n)
        await outbox.put(topic_of(config, p), p)
        await asyncio.sleep(1.0 / per_s)


async def _report(uplink: Uplink) -> None:
    while uplink.state is not LinkState.CONNECTED:
        await asyncio.sleep(0.01)
    print("connected", flush=True)


async def main(config: Config, produce_per_s: float) -> None:
    """Drain until SIGTERM (clean stop) or SIGKILL."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Outbox(config.outbox) as outbox:
        uplink = Uplink(config, outbox, events=lambda e: None)
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(outbox.run(), name="outbox"),
                tg.create_task(_report(uplink), name="report"),
            ]
            if produce_per_s > 0:
                tasks.append(tg.create_task(_produce(config, outbox, produce_per_s)))
            run = tg.create_task(uplink.run(), name="uplink")
            await stop.wait()
            await uplink.stop(3.0)
            run.cancel()
            for t in tasks:
                t.cancel()


if __name__ == "__main__":
    configure_logging("warning", "console", stream=sys.stderr)  # stdout is for the parent
    asyncio.run(
        main(
            load_config_data(json.loads(Path(sys.argv[1]).read_text()), environ={}),
            float(sys.argv[2]) if len(sys.argv) > 2 else 0.0,
        )
    )

"""MQTT uplink: birth and last will, reconnect with backoff, drain the outbox, downlink commands.

The uplink splits by job: `uplink.link` is the link state machine (sessions, birth, last will
and offline, reconnect and backoff, downlink commands, link profile and route), `uplink.drain`
the drain (window, token buckets, batches, PUBACKs and acks to the outbox), `uplink.mqtt` the
one module that uses the MQTT library. `Uplink` puts them together for the daemon; the names
others import are re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

from terminal_gw.config import Config
from terminal_gw.models import EventSink
from terminal_gw.topics import Topics
from terminal_gw.uplink import links
from terminal_gw.uplink.drain import (
    PERMANENT_REFUSALS,
    Drain,
    DrainSource,
    OutboxRecord,
    Outgoing,
    TokenBucket,
    UplinkCounters,
    batch_payload,
    plan_messages,
)
from terminal_gw.uplink.link import (
    LONG_BACKOFF,
    CommandHandler,
    CommandMeta,
    Link,
    LinkState,
    inbox_path,
    ledger_path,
    tls_context,
)
from terminal_gw.uplink.mqtt import Failure

__all__ = [
    "LONG_BACKOFF",
    "PERMANENT_REFUSALS",
    "CommandHandler",
    "CommandMeta",
    "DrainSource",
    "Failure",
    "LinkState",
    "OutboxRecord",
    "Outgoing",
    "TokenBucket",
    "Uplink",
    "UplinkCounters",
    "batch_payload",
    "inbox_path",
    "plan_messages",
    "tls_context",
]


class Uplink(Link):
    """The MQTT session: connect, announce, drain the outbox, take commands, reconnect.

    The link state machine (`Link`) over one `Drain` of `outbox`, sharing the counters and
    the link profiles' ledger.
    """

    def __init__(
        self,
        config: Config,
        outbox: DrainSource,
        *,
        events: EventSink,
        health: Callable[[], dict[str, Any]] = dict,
        on_command: CommandHandler | None = None,
        log: FilteringBoundLogger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        logger: FilteringBoundLogger = log or structlog.get_logger("terminal_gw.uplink")
        counters = UplinkCounters()
        ledger = links.LinkLedger(ledger_path(config), clock=clock)
        topics = Topics.of_config(config)
        drain = Drain(
            config.mqtt,
            outbox,
            counters=counters,
            ledger=ledger,
            events=events,
            log=logger,
            clock=clock,
            device=config.device.id,
            batch_topic=topics.batch,
            status_topic=topics.status,
            profile=config.links[-1],
        )
        super().__init__(
            config,
            drain,
            counters=counters,
            ledger=ledger,
            events=events,
            health=health,
            on_command=on_command,
            log=logger,
            clock=clock,
        )

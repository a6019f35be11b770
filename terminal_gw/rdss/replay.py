"""`terminal-gw replay --port rdss`: a recorded RDSS session played as the terminal.

What the terminal sent (the `<` chunks of the `rdss` port, from one or several own-format
captures, or a raw capture) goes through the driver of `run`, chunk by chunk, with the
recorded times as the clock: each received message becomes the `bds/rx` record `run` would
have stored (duplicates within the window dropped as `run` drops them), the card and beams
set the state, and the last state is printed as the `rdss/status` record. What the host
wrote (`>` chunks) is counted, and its sentences checked against the tables.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from terminal_gw.config import RdssConfig
from terminal_gw.gnss.framer import Framer
from terminal_gw.models import Payload
from terminal_gw.rdss.driver import RdssDriver
from terminal_gw.rdss.sentences import MAX_SENTENCE_LEN, SentenceError, parse
from terminal_gw.rdss.store import RdssStore
from terminal_gw.transport.capture import CaptureReader, Chunk

__all__ = ["RDSS_PORT", "RdssReplay"]

RDSS_PORT = "rdss"


class RdssReplay:
    """Feeds recorded RDSS chunks to a driver and prints (or counts) what it stores."""

    def __init__(
        self,
        config: RdssConfig,
        *,
        out: TextIO,
        jsonl: bool,
        base: str,
        state_dir: Path,
    ) -> None:
        self.out = out
        self.jsonl = jsonl
        self.base = base
        self.records: Counter[str] = Counter()
        self.host = Framer(max_sentence_len=MAX_SENTENCE_LEN)
        self.host_counts: Counter[str] = Counter()
        self._now = time.time()
        self.driver = RdssDriver(
            config,
            self,
            RdssStore(state_dir / "rdss-replay.db"),
            topic_base=base,
            state_dir=state_dir,
            clock=lambda: self._now,
        )
        self.driver.replaying = True

    async def put(
        self, topic: str, payload: Payload, *, retain: bool = False, sync: bool | None = None
    ) -> None:
        """The driver's outbox: print or count the record."""
        self.records[payload.record_class] += 1
        if self.jsonl:
            self.out.write(
                f'{{"topic":{json.dumps(topic, ensure_ascii=False)},'
                f'"payload":{payload.to_json()}}}\n'
            )

    def play(self, chunks: Iterable[Chunk]) -> int:
        """Play the chunks; how many came from the terminal."""
        return asyncio.run(self._play(chunks))

    async def _play(self, chunks: Iterable[Chunk]) -> int:
        played = 0
        for chunk in chunks:
            if chunk.ts is not None:
                self._now = chunk.ts
            if chunk.direction == "<":
                played += 1
                await self.driver.feed(chunk.data)
            else:
                for sentence in self.host.feed(chunk.data):
                    try:
                        self.host_counts[parse(sentence).ADDRESS] += 1
                    except SentenceError:
                        self.host_counts["bad"] += 1
        for sentence in self.driver.framer.flush():
            self.driver.counters["unterminated_at_end"] += 1
            del sentence
        await self.put(f"{self.base}/rdss/status", self.driver.status_payload(), retain=True)
        return played

    def summary_lines(self) -> list[str]:
        """The RDSS part of the summary printed without --jsonl."""
        d = self.driver
        card = d.card
        lines = [
            f"rdss dialect: {d.dialect or 'unknown'}",
            "rdss card: "
            + ("none seen" if card is None else json.dumps(card.as_dict(), ensure_ascii=False)),
            (
                f"rdss records: {self.records.total()}"
                f" ({', '.join(f'{k} {v}' for k, v in sorted(self.records.items()))})"
            ),
            "rdss host sentences: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.host_counts.items())) or "none"),
        ]
        counters = {
            **{k: v for k, v in d.counters.items() if v},
            **{f"framer_{k}": v for k, v in d.framer.counters.items() if v},
        }
        if counters:
            lines.append("rdss counters:")
            width = max(len(k) for k in counters)
            lines.extend(f"  {k:<{width}}  {v:>9}" for k, v in sorted(counters.items()))
        return lines


def replay_rdss(
    readers: Iterable[CaptureReader],
    config: RdssConfig,
    *,
    base: str,
    jsonl: bool,
    out: TextIO,
    err: TextIO,
) -> int:
    """`replay --port rdss`: play the rdss chunks of the captures; an exit code."""
    chunks: list[Chunk] = []
    files = 0
    for reader in readers:
        files += 1
        chunks.extend(c for c in reader if reader.kind == "raw" or c.port == RDSS_PORT)
    if not chunks:
        print(
            f"error: no {RDSS_PORT!r} chunks: nothing to play (the daemon records them with"
            " [rdss] record = true)",
            file=err,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="tgw-rdss-replay-") as tmp:
        replay = RdssReplay(config, out=out, jsonl=jsonl, base=base, state_dir=Path(tmp))
        played = replay.play(chunks)
    if not jsonl:
        print("\n".join(replay.summary_lines()), file=out)
    out.flush()
    total = replay.records.total()
    print(
        f"replay: {files} capture(s), {played} rdss chunks from the terminal, {total} records",
        file=err,
    )
    return 0

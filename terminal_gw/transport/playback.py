"""Modem capture playback: a port that plays a recorded modem, and a port that records one.

`PlaybackPort` has the `Port` shape of `terminal_gw.transport.port` (read, write, close). It
reads a capture (the project's format, one port of it) as steps: what the daemon wrote (`>`
chunks; consecutive ones joined unless the first ends a command with CR, Ctrl-Z or ESC: a
command the modem never answered is a step of its own) and what the modem sent after it (`<`
chunks up to the next `>`). Each write is matched against the next step; when the written bytes
make up the step's command, its recorded reply becomes readable. What the modem sent before the
first command is readable from the start.

On a mismatch (the daemon wrote something else than was recorded next):

* resync: the next `resync_window` steps are searched for the same command; when found, the
  steps before it are skipped (counted) and its reply is played. A `playback_mismatch` event
  says what was expected and what came.
* otherwise `on_mismatch` decides: "fail" (default) raises `TransportError(reason="mismatch")`
  from this write and every read after, as an unplugged device would; "error_reply" answers
  `ERROR`, so a driver goes on (its command fails) and the playback stays where it was.

Writing after the last step is a mismatch too (reason "capture ended"). Replies are played at
once, not at their recorded pace: only the order of the exchange matters to a driver.

`RecordingPort` wraps any port and writes both directions to a `CaptureWriter`, so a session
against a real modem or the simulator becomes a capture for playback.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog
from structlog.typing import FilteringBoundLogger

from terminal_gw.errors import TransportError
from terminal_gw.models import EventSink, make_event
from terminal_gw.transport.capture import (
    FROM_DEVICE,
    TO_DEVICE,
    CaptureReader,
    CaptureWriter,
    Chunk,
)
from terminal_gw.transport.port import Port

__all__ = ["PlaybackPort", "RecordingPort", "Step", "steps_from_chunks"]

OnMismatch = Literal["fail", "error_reply"]
_ERROR_REPLY = b"\r\nERROR\r\n"
#: How a complete write ends (a command, a PDU, an abort): a write after one is the next step,
#: even when the modem never answered the first.
_ENDS = (b"\r", b"\x1a", b"\x1b")


@dataclass
class Step:
    """One recorded exchange: the bytes written and the chunks the modem sent after them."""

    written: bytes
    replies: list[bytes] = field(default_factory=list)
    #: Unix time of the step's last recorded chunk (None when the chunks carry no time).
    at: float | None = None


def steps_from_chunks(chunks: Iterable[Chunk], port: str) -> tuple[list[bytes], list[Step]]:
    """The chunks of `port` as (what came before the first write, the steps)."""
    preamble: list[bytes] = []
    steps: list[Step] = []
    for chunk in chunks:
        if chunk.port != port or not chunk.data:
            continue
        if chunk.direction == TO_DEVICE:
            last = steps[-1] if steps else None
            if last is not None and not last.replies and not last.written.endswith(_ENDS):
                last.written += chunk.data  # one write recorded in pieces
            else:
                steps.append(Step(chunk.data))
        elif steps:
            steps[-1].replies.append(chunk.data)
        else:
            preamble.append(chunk.data)
        if steps and chunk.ts is not None:
            steps[-1].at = chunk.ts
    return preamble, steps


class PlaybackPort:
    """Plays a recorded modem (see the module docstring)."""

    def __init__(
        self,
        chunks: Iterable[Chunk],
        *,
        port: str = "modem",
        resync_window: int = 20,
        on_mismatch: OnMismatch = "fail",
        events: EventSink | None = None,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        preamble, self._steps = steps_from_chunks(chunks, port)
        self.port = port
        self.resync_window = resync_window
        self.on_mismatch = on_mismatch
        self._events = events
        self._log: FilteringBoundLogger = log or structlog.get_logger("terminal_gw.playback")
        self._next = 0
        self._written = b""
        self._readable: deque[bytes] = deque(preamble)
        self._wake = asyncio.Event()
        self._failed: TransportError | None = None
        self._closed = False
        self.counters: Counter[str] = Counter()
        #: Recorded time of the step played last (None before the first): a replay's clock.
        self.recorded_time: float | None = None

    @classmethod
    def from_capture(
        cls,
        path: Path | str,
        *,
        port: str = "modem",
        resync_window: int = 20,
        on_mismatch: OnMismatch = "fail",
        events: EventSink | None = None,
    ) -> PlaybackPort:
        """A playback of one port of a capture file."""
        return cls(
            CaptureReader(path),
            port=port,
            resync_window=resync_window,
            on_mismatch=on_mismatch,
            events=events,
        )

    @property
    def remaining(self) -> int:
        """Recorded steps not played yet."""
        return len(self._steps) - self._next

    @property
    def steps(self) -> int:
        """Recorded steps in all."""
        return len(self._steps)

    @property
    def unread(self) -> int:
        """Chunks due (played) that no read has taken yet."""
        return len(self._readable)

    def upcoming(self, count: int = 1) -> list[bytes]:
        """What was written in the next `count` recorded steps (fewer near the end)."""
        return [step.written for step in self._steps[self._next : self._next + count]]

    async def read(self) -> bytes:
        """The next recorded chunk due; waits (like a silent modem) until a write makes one due."""
        while True:
            if self._readable:
                return self._readable.popleft()
            if self._failed is not None:
                raise self._failed
            if self._closed:
                raise TransportError(f"playback of {self.port} closed", reason="closed")
            self._wake.clear()
            await self._wake.wait()

    async def write(self, data: bytes) -> None:
        """Match `data` (with what was written before it) to the next recorded step."""
        if self._failed is not None:
            raise self._failed
        if self._closed:
            raise TransportError(f"playback of {self.port} closed", reason="closed")
        self._written += data
        if self._next < len(self._steps):
            expected = self._steps[self._next].written
            if self._written == expected:
                self._play(self._next)
                return
            if expected.startswith(self._written):
                return  # part of the recorded write: wait for the rest
        self._mismatch()

    async def close(self) -> None:
        """Stop playing; a waiting read raises TransportError."""
        self._closed = True
        self._wake.set()

    # -- internals --------------------------------------------------------------------

    def _play(self, index: int) -> None:
        step = self._steps[index]
        self._next = index + 1
        self._written = b""
        self.counters["matched"] += 1
        if step.at is not None:
            self.recorded_time = step.at
        self._readable.extend(step.replies)
        self._wake.set()

    def _mismatch(self) -> None:
        written, self._written = self._written, b""
        self.counters["mismatched"] += 1
        expected = self._steps[self._next].written if self._next < len(self._steps) else None
        end = min(len(self._steps), self._next + 1 + self.resync_window)
        found = next((i for i in range(self._next, end) if self._steps[i].written == written), None)
        reason = "capture ended" if expected is None else "mismatch"
        if found is not None:
            self.counters["resynced"] += 1
            self.counters["skipped"] += found - self._next
        self._report(
            written, expected, reason, skipped=None if found is None else found - self._next
        )
        if found is not None:
            self._play(found)
            return
        if self.on_mismatch == "error_reply":
            self.counters["error_replies"] += 1
            self._readable.append(_ERROR_REPLY)
            self._wake.set()
            return
        self._failed = TransportError(
            f"playback of {self.port}: wrote {written[:40]!r}, recorded next "
            f"{'nothing (capture ended)' if expected is None else repr(expected[:40])}",
            port=self.port,
            reason=reason,
        )
        self._wake.set()
        raise self._failed

    def _report(
        self, written: bytes, expected: bytes | None, reason: str, *, skipped: int | None
    ) -> None:
        got = written.decode("ascii", "replace")[:60]
        want = None if expected is None else expected.decode("ascii", "replace")[:60]
        self._log.warning(
            "playback mismatch", port=self.port, wrote=got, expected=want, skipped=skipped
        )
        if self._events is not None:
            action = (
                f"resynchronised, {skipped} recorded steps skipped"
                if skipped is not None
                else ("answered ERROR" if self.on_mismatch == "error_reply" else "playback failed")
            )
            self._events(
                make_event(
                    "playback_mismatch",
                    f"playback of {self.port}: wrote {got!r}, recorded {want!r}: {action}",
                    now=time.time(),
                    severity="warning",
                    port=self.port,
                    wrote=got,
                    expected=want,
                    reason=reason,
                    skipped=skipped,
                )
            )


class RecordingPort:
    """A port that writes what crosses it to a capture (`<` read, `>` written)."""

    def __init__(self, port: Port, writer: CaptureWriter, *, name: str = "modem") -> None:
        self._port = port
        self._writer = writer
        self.name = name

    async def read(self) -> bytes:
        """The next chunk from the device, recorded."""
        data = await self._port.read()
        if data:
            self._writer.write(self.name, FROM_DEVICE, data)
        return data

    async def write(self, data: bytes) -> None:
        """Send bytes to the device, recorded."""
        self._writer.write(self.name, TO_DEVICE, data)
        await self._port.write(data)

    async def close(self) -> None:
        """Close the device (the capture stays open for its owner to close)."""
        await self._port.close()

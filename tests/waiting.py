"""Waiting in tests: on a condition, never for a fixed time, with the slack a loaded machine
needs; and a fake monotonic clock for code that measures time.

A timeout here is an upper bound, not a pace: a condition met early ends the wait at once, so a
generous bound costs nothing on a fast machine and spares a false failure on a slow, busy one
(a 2-core Pi running other work can leave a process unscheduled for a second or more).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

#: The default bound of a wait: seconds. Long enough for a loaded 2-core machine.
TIMEOUT_S = 10.0

_POLL_S = 0.01


class WaitTimeoutError(AssertionError):
    """A condition a test waited on was not met in time."""


async def wait_until(
    predicate: Callable[[], object], timeout: float = TIMEOUT_S, what: str = "condition"
) -> float:
    """Return as soon as `predicate()` is true; the seconds that took. Fails the test with
    `what` after `timeout` seconds. Polls cheaply (the predicate must not block)."""
    start = time.monotonic()
    deadline = start + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(_POLL_S)
    return time.monotonic() - start


def wait_until_sync(
    predicate: Callable[[], object], timeout: float = TIMEOUT_S, what: str = "condition"
) -> float:
    """`wait_until` for tests without an event loop (subprocesses driven from plain code)."""
    start = time.monotonic()
    deadline = start + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(_POLL_S)
    return time.monotonic() - start


class FakeClock:
    """A monotonic clock that moves only when the test says: `clock()` reads it,
    `clock.advance(s)` moves it on."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass."""
        self.now += seconds

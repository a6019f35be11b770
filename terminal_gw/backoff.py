"""Capped exponential backoff with jitter: one policy for every retry loop (stage restarts,
serial reopens, the MQTT link, SMS retries).

The wait before retry number `attempt` (0-based) is `min_s` doubled `attempt` times, capped at
`max_s`, less a random share of up to `jitter` of it: never above the cap, so a cap is the
longest wait there is, and spread so that devices that lost the same broker do not all come
back in the same second.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff", "Retry"]

#: Doublings past this are the cap anyway; bounding them keeps 2**attempt a small float.
_MAX_DOUBLINGS = 30


@dataclass(frozen=True)
class Backoff:
    """The policy: min_s, doubling up to max_s, minus up to `jitter` (0-1) of it."""

    min_s: float
    max_s: float
    jitter: float = 0.5

    def __post_init__(self) -> None:
        # min_s above max_s is allowed: every wait is then max_s (the cap wins).
        if self.min_s <= 0 or self.max_s <= 0:
            raise ValueError(f"backoff waits must be positive, got {self.min_s}, {self.max_s}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"backoff jitter is 0 to 1, got {self.jitter}")

    def base(self, attempt: int) -> float:
        """The wait before retry `attempt` (0-based) without jitter."""
        return min(self.max_s, self.min_s * 2.0 ** min(max(attempt, 0), _MAX_DOUBLINGS))

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """The wait before retry `attempt` (0-based); `rng` returns a float in [0, 1)."""
        return self.base(attempt) * (1.0 - self.jitter * rng())


class Retry:
    """A backoff's progress: the attempts since the last success. A run that lasted more
    than `healthy_s` (by `clock`) before it failed starts again from the shortest wait."""

    def __init__(
        self,
        policy: Backoff,
        *,
        healthy_s: float | None = None,
        rng: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.healthy_s = healthy_s
        self.attempt = 0
        # Jitter, not security: a private generator unless a test injects one.
        self._rng = rng or random.Random().random  # noqa: S311 - jitter, not security
        self._clock = clock
        self._started: float | None = None

    def started(self) -> None:
        """A run (a stage, a connection) begins now: how long it lasts decides the reset."""
        self._started = self._clock()

    def next_delay(self) -> float:
        """The wait before the next attempt; counts the attempt."""
        if (
            self.healthy_s is not None
            and self._started is not None
            and self._clock() - self._started > self.healthy_s
        ):
            self.attempt = 0
        self._started = None
        delay = self.policy.delay(self.attempt, self._rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """It worked: the next failure waits the shortest time again."""
        self.attempt = 0
        self._started = None

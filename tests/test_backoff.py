"""The one backoff policy: doubling from min_s, capped at max_s, jitter only ever shortening a
wait, by at most its share; a retry's attempts reset on success or after a healthy run."""

from __future__ import annotations

import random

import pytest

from terminal_gw.backoff import Backoff, Retry
from terminal_gw.commands.failures import backoff_s
from tests.waiting import FakeClock


def test_waits_double_from_min_up_to_the_cap() -> None:
    policy = Backoff(0.5, 4.0, jitter=0.0)
    assert [policy.delay(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    # Far attempts stay at the cap (no overflow), a negative one is the first.
    assert policy.delay(10_000) == 4.0
    assert policy.delay(-3) == 0.5


def test_jitter_takes_off_at_most_its_share_and_never_adds() -> None:
    policy = Backoff(1.0, 8.0, jitter=0.5)
    rng = random.Random(3)
    for attempt in range(12):
        base = policy.base(attempt)
        waits = [policy.delay(attempt, rng.random) for _ in range(200)]
        assert all(base * 0.5 <= w <= base for w in waits), (attempt, min(waits), max(waits))
        # Spread, not a constant: the waits cover most of the range.
        assert max(waits) - min(waits) > base * 0.4
    # The ends of the range: the random draw 0 gives the full wait, one near 1 half of it.
    assert policy.delay(3, lambda: 0.0) == 8.0
    assert policy.delay(3, lambda: 0.999999) == pytest.approx(4.0, rel=1e-5)


def test_a_cap_below_the_minimum_is_the_wait() -> None:
    assert Backoff(1000.0, 900.0, jitter=0.0).delay(0) == 900.0


@pytest.mark.parametrize(("min_s", "max_s", "jitter"), [(0, 1, 0.5), (1, -1, 0.5), (1, 2, 1.5)])
def test_a_bad_policy_is_refused(min_s: float, max_s: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(min_s, max_s, jitter)


def test_retry_counts_attempts_and_resets() -> None:
    retry = Retry(Backoff(1.0, 4.0, jitter=0.0))
    assert [retry.next_delay() for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert retry.attempt == 4
    retry.reset()
    assert retry.next_delay() == 1.0


def test_retry_uses_the_injected_random() -> None:
    draws = iter([0.0, 0.5, 1.0 - 1e-9])
    retry = Retry(Backoff(2.0, 2.0, jitter=0.5), rng=lambda: next(draws))
    assert retry.next_delay() == 2.0
    assert retry.next_delay() == 1.5
    assert retry.next_delay() == pytest.approx(1.0)


def test_a_healthy_run_starts_over_by_the_injected_clock() -> None:
    clock = FakeClock()
    retry = Retry(Backoff(1.0, 8.0, jitter=0.0), healthy_s=40.0, clock=clock)
    for expected in (1.0, 2.0, 4.0):
        retry.started()
        clock.advance(1.0)  # failed at once
        assert retry.next_delay() == expected
    retry.started()
    clock.advance(40.0)  # exactly healthy_s is not more than it: still growing
    assert retry.next_delay() == 8.0
    retry.started()
    clock.advance(40.5)  # ran a good while before failing
    assert retry.next_delay() == 1.0


def test_sms_retries_keep_their_schedule() -> None:
    """commands' retry waits: 1-based attempts, no jitter (the time is stored and reported)."""
    assert [backoff_s(n, 30.0, 900.0) for n in range(1, 8)] == [30, 60, 120, 240, 480, 900, 900]

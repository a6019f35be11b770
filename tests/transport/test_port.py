"""The one reopen loop: failures are reported with the wait that follows, the waits follow the
backoff, and a stop ends the loop."""

from __future__ import annotations

import pytest

from terminal_gw.backoff import Backoff, Retry
from terminal_gw.errors import TransportError
from terminal_gw.transport.port import open_with_retry


async def test_reports_each_failure_and_waits_the_backoff_then_opens() -> None:
    outcomes: list[Exception | str] = [
        TransportError("gone", reason="absent"),
        OSError(13, "denied"),
        TimeoutError(),
        "port",
    ]
    failures: list[tuple[str, float]] = []
    waits: list[float] = []

    async def open_once() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def wait(delay: float) -> None:
        waits.append(delay)

    retry = Retry(Backoff(0.5, 1.0, jitter=0.0))
    port = await open_with_retry(
        open_once, retry, failed=lambda exc, d: failures.append((type(exc).__name__, d)), wait=wait
    )
    assert port == "port"
    assert failures == [("TransportError", 0.5), ("PermissionError", 1.0), ("TimeoutError", 1.0)]
    assert waits == [0.5, 1.0, 1.0]
    assert retry.attempt == 3  # the caller resets once the port proves good


async def test_a_stop_ends_the_loop_and_other_errors_pass_through() -> None:
    stop = False

    async def never() -> str:
        raise TransportError("gone", reason="absent")

    async def wait(delay: float) -> None:
        nonlocal stop
        stop = True

    retry = Retry(Backoff(0.1, 0.1))
    got = await open_with_retry(
        never, retry, failed=lambda e, d: None, wait=wait, stopped=lambda: stop
    )
    assert got is None

    async def broken() -> str:
        raise ValueError("a bug, not a missing device")

    with pytest.raises(ValueError, match="a bug"):
        await open_with_retry(broken, retry, failed=lambda e, d: None, wait=wait)

"""Logging: a flood of identical errors becomes a few lines and a summary; JSON off a terminal."""

from __future__ import annotations

import io
import json

import structlog

from terminal_gw.logs import RateLimiter, configure_logging, get_logger


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run_limiter(limiter: RateLimiter, event: str) -> dict[str, object] | None:
    try:
        return dict(limiter(None, "warning", {"event": event}))
    except structlog.DropEvent:
        return None


def test_flood_is_summarised() -> None:
    clock = FakeClock()
    limiter = RateLimiter(burst=3, window_s=10.0, clock=clock)
    passed = [run_limiter(limiter, "bad checksum") for _ in range(10_000)]
    shown = [p for p in passed if p is not None]
    assert len(shown) == 3
    assert "rate_limited" in shown[-1]
    # Other messages are not held back by the flood.
    assert run_limiter(limiter, "port reopened") is not None
    clock.t = 11.0
    summary = run_limiter(limiter, "bad checksum")
    assert summary is not None
    assert summary["suppressed"] == 10_000 - 3


def test_json_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    configure_logging("info", "auto", stream=out)
    try:
        get_logger("gnss").info("port opened", port="/dev/ttyUSB0")
        get_logger("gnss").debug("not shown")
    finally:
        structlog.reset_defaults()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "port opened"
    assert record["stage"] == "gnss"
    assert record["level"] == "info"

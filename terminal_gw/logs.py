"""structlog set-up (called only by the CLI) and the flood limiter for repeated messages."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger


class RateLimiter:
    """A structlog processor: the same (level, event) logs at most `burst` times per `window_s`;
    the rest are counted and summarised once the window ends, so a flood of bad sentences logs
    a summary, not 10,000 lines."""

    def __init__(
        self,
        burst: int = 5,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        # key -> [window start, seen in window]
        self._windows: dict[tuple[str, str], list[float]] = {}

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        """Pass, drop (raise DropEvent) or annotate with the count suppressed before it."""
        key = (method_name, str(event_dict.get("event", "")))
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.window_s:
            suppressed = 0 if window is None else int(window[1]) - self.burst
            self._windows[key] = [now, 1.0]
            if len(self._windows) > 1000:
                self._prune(now)
            if suppressed > 0:
                event_dict["suppressed"] = suppressed
                event_dict["suppressed_window_s"] = self.window_s
            return event_dict
        window[1] += 1
        if window[1] > self.burst:
            raise structlog.DropEvent
        if window[1] == self.burst:
            event_dict["rate_limited"] = f"further repeats summarised after {self.window_s:g}s"
        return event_dict

    def _prune(self, now: float) -> None:
        for key in [k for k, w in self._windows.items() if now - w[0] >= self.window_s]:
            del self._windows[key]


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """JSON lines when not on a terminal (journald), readable console output on one."""
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            RateLimiter(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str, **bound: Any) -> FilteringBoundLogger:
    """A logger bound to a component name."""
    logger: FilteringBoundLogger = structlog.get_logger(name).bind(stage=name, **bound)
    return logger

"""Named long-lived stages in one TaskGroup: restart with backoff, watchdog, signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from structlog.typing import FilteringBoundLogger

from terminal_gw.backoff import Backoff, Retry
from terminal_gw.logs import get_logger
from terminal_gw.models import EventSink, make_event
from terminal_gw.sdnotify import Notifier
from terminal_gw.status import StatusBoard

StageFn = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Stage:
    """A named stage; `restart` False means its end (or failure) is final."""

    name: str
    run: StageFn
    restart: bool = True
    #: Input stages are stopped first on shutdown (stop reading, then commit the rest).
    input: bool = False


class Supervisor:
    """Runs stages in one TaskGroup. A failing stage is restarted with capped backoff and
    reported; it does not take the others down. Watchdog pings go out only while no stage is
    stalled."""

    def __init__(
        self,
        board: StatusBoard,
        *,
        events: EventSink,
        notifier: Notifier | None = None,
        backoff_min_s: float = 1.0,
        backoff_max_s: float = 60.0,
        log: FilteringBoundLogger | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] | None = None,
    ) -> None:
        self.board = board
        self.events = events
        self.notifier = notifier or Notifier()
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.log = log or get_logger("supervisor")
        #: Monotonic seconds: how long a stage ran before it failed (tests pass a fake clock).
        self.clock = clock
        # Restart waits stay close to the doubling (a fifth of jitter): an operator reading
        # "restart in 8.0s" sees the schedule; one device's stages do not stampede anything.
        self._backoff = Backoff(backoff_min_s, backoff_max_s, jitter=0.2)
        self._rng = rng
        self.stop_requested = asyncio.Event()
        self.force_requested = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._signals = 0

    async def _supervise(self, stage: Stage) -> None:
        # A stage that ran a good while before failing starts again from the short backoff.
        retry = Retry(
            self._backoff, healthy_s=5 * self.backoff_max_s, rng=self._rng, clock=self.clock
        )
        info = self.board.stage(stage.name)
        while True:
            info.state = "running"
            self.board.progress(stage.name)
            retry.started()
            error: str | None = None
            try:
                await stage.run()
            except asyncio.CancelledError:
                info.state = "stopped"
                raise
            except Exception as exc:
                info.last_error = f"{type(exc).__name__}: {exc}"
                self.log.exception("stage failed", failed_stage=stage.name)
                error = info.last_error
            else:
                if not stage.restart or self.stop_requested.is_set():
                    info.state = "stopped"
                    return
                self.log.warning("stage ended", ended_stage=stage.name)
            if self.stop_requested.is_set():
                info.state = "stopped"  # ended as part of the shutdown: nothing to restart
                return
            if not stage.restart:
                info.state = "failed"
                return
            delay = retry.next_delay()
            info.state = "backing_off"
            info.restarts += 1
            self.events(
                make_event(
                    "stage_restart",
                    f"stage {stage.name} {'failed' if error else 'ended'}; restart in {delay:.1f}s",
                    now=time.time(),
                    severity="error" if error else "warning",
                    stage=stage.name,
                    error=error,
                    restarts=info.restarts,
                )
            )
            await asyncio.sleep(delay)

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        period = max(0.05, interval / 3)
        while True:
            stalled = self.board.stalled()
            if stalled:
                self.log.error("stage stalled: watchdog pings stopped", stalled=stalled)
                self.notifier.notify(f"STATUS=stalled: {', '.join(stalled)}", wait=False)
            else:
                self.notifier.notify("WATCHDOG=1", wait=False)
            await asyncio.sleep(period)

    def handle_signal(self, signum: int) -> None:
        """SIGTERM/SIGINT: stop gracefully; a second one forces. SIGHUP: reload."""
        if signum == signal.SIGHUP:
            self.reload_requested.set()
            return
        self._signals += 1
        if self._signals == 1:
            self.log.info("stopping", signal=signal.Signals(signum).name)
            self.stop_requested.set()
        else:
            self.log.warning("forced stop", signal=signal.Signals(signum).name)
            self.force_requested.set()

    @contextlib.contextmanager
    def _signal_handlers(self) -> Any:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            try:
                loop.add_signal_handler(sig, self.handle_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread: signals stay with whoever owns them
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def run(
        self,
        stages: list[Stage],
        *,
        on_reload: Callable[[], Awaitable[None]] | None = None,
        on_stopping: Callable[[], Awaitable[None]] | None = None,
        shutdown_timeout_s: float = 4.0,
        handle_signals: bool = True,
    ) -> None:
        """Run every stage until a stop is requested; then stop inputs, run `on_stopping`
        (commit, publish offline) within the timeout, and cancel the rest."""
        ctx = self._signal_handlers() if handle_signals else contextlib.nullcontext()
        with ctx:
            async with asyncio.TaskGroup() as tg:
                for stage in stages:
                    self._tasks[stage.name] = tg.create_task(
                        self._supervise(stage), name=f"stage:{stage.name}"
                    )
                watchdog = tg.create_task(self._watchdog(), name="watchdog")
                self.notifier.notify("READY=1")
                self.notifier.notify("STATUS=running")
                while not self.stop_requested.is_set():
                    await _first(self.reload_requested.wait(), self.stop_requested.wait())
                    if self.reload_requested.is_set():
                        self.reload_requested.clear()
                        if on_reload is not None:
                            await on_reload()
                self.notifier.notify("STOPPING=1")
                await self._shutdown(stages, on_stopping, shutdown_timeout_s)
                watchdog.cancel()

    async def _shutdown(
        self,
        stages: list[Stage],
        on_stopping: Callable[[], Awaitable[None]] | None,
        timeout_s: float,
    ) -> None:
        inputs = [self._tasks[s.name] for s in stages if s.input]
        for task in inputs:
            task.cancel()
        await asyncio.gather(*inputs, return_exceptions=True)
        if on_stopping is not None:
            finished = await _first(on_stopping(), self.force_requested.wait(), timeout_s=timeout_s)
            if finished != 0:
                self.log.warning("shutdown did not finish in time; cancelling", timeout_s=timeout_s)
        rest = [t for t in self._tasks.values() if not t.done()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)


async def _first(*aws: Awaitable[Any], timeout_s: float | None = None) -> int | None:
    """Run `aws` side by side until the first ends (or `timeout_s` passes); cancel and await
    the others, also when cancelled itself, so that no task outlives the call. The index of
    the one that ended first, None on timeout. An exception of the first one is logged by
    its owner, not raised here."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout_s, return_when="FIRST_COMPLETED")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return next((i for i, t in enumerate(tasks) if t in done), None)

"""Health snapshot, the local status file and its verdict (`terminal-gw status` reads it), and
Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terminal_gw import __version__
from terminal_gw.exit_codes import (
    EXIT_FAILURE,
    EXIT_NOT_RUNNING,
    EXIT_OK,
)

#: A stage is unhealthy when it has made no progress for this long (seconds).
DEFAULT_STALL_S = 60.0


@dataclass
class StageInfo:
    """What the supervisor knows of one stage."""

    state: str = "starting"  # starting, running, backing_off, stopped, failed
    restarts: int = 0
    last_error: str | None = None
    last_progress: float = field(default_factory=time.monotonic)


class StatusBoard:
    """Collects stage states, counters and gauges into one health snapshot."""

    def __init__(
        self,
        device_id: str,
        stall_s: float = DEFAULT_STALL_S,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device_id = device_id
        self.stall_s = stall_s
        #: Monotonic seconds for progress and stall times (tests pass a fake clock).
        self.clock = clock
        self.started = time.time()
        self.stages: dict[str, StageInfo] = {}
        self._counters: dict[str, Callable[[], Mapping[str, int]]] = {}
        self._gauges: dict[str, Callable[[], Any]] = {}
        self._checks: dict[str, Callable[[], str | None]] = {}

    def stage(self, name: str) -> StageInfo:
        """The info of a stage, created on first use."""
        info = self.stages.get(name)
        if info is None:
            info = self.stages[name] = StageInfo(last_progress=self.clock())
        return info

    def progress(self, name: str) -> None:
        """A stage says it is alive and doing its work."""
        info = self.stage(name)
        info.last_progress = self.clock()
        if info.state in ("starting", "backing_off"):
            info.state = "running"

    def add_counters(self, name: str, source: Callable[[], Mapping[str, int]]) -> None:
        """Counters of a component, read at each snapshot."""
        self._counters[name] = source

    def add_gauge(self, name: str, source: Callable[[], Any]) -> None:
        """A single value (depth, age, state), read at each snapshot."""
        self._gauges[name] = source

    def add_check(self, name: str, source: Callable[[], str | None]) -> None:
        """A health check of a component: None while fine, else the cause in a few words
        ("disk full"); any cause makes the daemon unhealthy and is named in the status."""
        self._checks[name] = source

    def problems(self) -> dict[str, str]:
        """The causes the checks report now, by component."""
        found: dict[str, str] = {}
        for name, source in self._checks.items():
            try:
                cause = source()
            except Exception as exc:  # noqa: BLE001 - a broken check must not break status
                cause = f"check failed: {exc}"
            if cause:
                found[name] = cause
        return found

    def stalled(self, now_mono: float | None = None) -> list[str]:
        """Stages that are running but have not reported progress within `stall_s`."""
        now_mono = self.clock() if now_mono is None else now_mono
        return [
            name
            for name, info in self.stages.items()
            if info.state == "running" and now_mono - info.last_progress > self.stall_s
        ]

    def healthy(self, problems: Mapping[str, str] | None = None) -> bool:
        """Every stage running and making progress, and no check reporting a problem."""
        if not self.stages:
            return False
        if problems is None:
            problems = self.problems()
        if problems:
            return False
        return not self.stalled() and all(i.state == "running" for i in self.stages.values())

    def snapshot(self) -> dict[str, Any]:
        """The health summary: stages, counters, gauges, versions."""
        now_mono = self.clock()
        counters: dict[str, dict[str, int]] = {}
        for name, source in self._counters.items():
            try:
                counters[name] = dict(source())
            except Exception as exc:  # noqa: BLE001 - a broken source must not break status
                counters[name] = {"error": 1}
                counters[name]["error_" + type(exc).__name__] = 1
        gauges: dict[str, Any] = {}
        for name, gsource in self._gauges.items():
            try:
                gauges[name] = gsource()
            except Exception as exc:  # noqa: BLE001 - a broken source must not break status
                gauges[name] = f"error: {exc}"
        problems = self.problems()
        return {
            "device": self.device_id,
            "pid": os.getpid(),
            "healthy": self.healthy(problems),
            "problems": problems,
            "updated": time.time(),
            "uptime_s": round(time.time() - self.started, 1),
            "stages": {
                name: {
                    "state": info.state,
                    "restarts": info.restarts,
                    "last_error": info.last_error,
                    "idle_s": round(now_mono - info.last_progress, 1),
                }
                for name, info in sorted(self.stages.items())
            },
            "counters": counters,
            "gauges": gauges,
            "versions": dict(_versions()),
        }


@functools.cache
def _versions() -> dict[str, str]:
    # Read once: package metadata is files on disk, and the snapshot is taken every few seconds.
    from importlib.metadata import PackageNotFoundError, version

    out = {"terminal-gw": __version__, "python": sys.version.split()[0]}
    for dist in ("paho-mqtt", "pynmeagps", "pyserial"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


#: The status file is padded (JSON allows trailing spaces) to a multiple of this, plus as much
#: again, so that on a full disk it can be rewritten in place, in the blocks it already has.
STATUS_BLOCK = 4096


def write_status_file(path: Path, snapshot: Mapping[str, Any]) -> None:
    """Write the snapshot atomically (readers never see half a file). When the disk is full
    (no block for a new file), rewrite the existing file in place instead: it was padded so
    that a snapshot of about the same size fits the blocks it holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(snapshot, indent=1, default=str).encode()
    padded = data + b" " * (STATUS_BLOCK - len(data) % STATUS_BLOCK + STATUS_BLOCK - 1) + b"\n"
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(padded)
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        _rewrite_in_place(path, data, exc)


def _rewrite_in_place(path: Path, data: bytes, cause: OSError) -> None:
    """Overwrite `path` within its current size (no new blocks); raise `cause` when the
    snapshot does not fit or there is no file to rewrite."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        raise cause from None
    try:
        size = os.fstat(fd).st_size
        if len(data) + 1 > size:
            raise cause
        os.pwrite(fd, data + b" " * (size - len(data) - 1) + b"\n", 0)
    finally:
        os.close(fd)


class StatusFile:
    """The daemon's status file, written from a worker thread while it runs and once at stop.

    Each snapshot takes a number when it is taken; a write holding an older number than the
    one already on disk is dropped. A periodic write still in its thread when the daemon
    stops therefore cannot overwrite the final snapshot with an older one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._taken = 0
        self._written = 0

    def take(self) -> int:
        """The number for a snapshot taken now (call from the event loop's thread)."""
        self._taken += 1
        return self._taken

    def write(self, snapshot: Mapping[str, Any], number: int) -> bool:
        """Write `snapshot` unless a newer one is already on disk; True when written."""
        with self._lock:
            if number < self._written:
                return False
            write_status_file(self.path, snapshot)
            self._written = number
            return True


# --- Prometheus ----------------------------------------------------------------------------

_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _metric(name: str) -> str:
    return _METRIC_NAME.sub("_", name)


def prometheus_text(snapshot: Mapping[str, Any]) -> str:
    """The snapshot in Prometheus text exposition format."""
    lines = [
        "# TYPE tgw_up gauge",
        "tgw_up 1",
        "# TYPE tgw_healthy gauge",
        f"tgw_healthy {1 if snapshot.get('healthy') else 0}",
        "# TYPE tgw_uptime_seconds gauge",
        f"tgw_uptime_seconds {snapshot.get('uptime_s', 0)}",
        "# TYPE tgw_stage_restarts_total counter",
    ]
    for name, stage in snapshot.get("stages", {}).items():
        lines.append(f'tgw_stage_restarts_total{{stage="{name}"}} {stage["restarts"]}')
        running = 1 if stage["state"] == "running" else 0
        lines.append(f'tgw_stage_running{{stage="{name}"}} {running}')
    for comp, values in snapshot.get("counters", {}).items():
        metric = f"tgw_{_metric(comp)}_total"
        lines.append(f"# TYPE {metric} counter")
        lines.extend(f'{metric}{{outcome="{k}"}} {v}' for k, v in sorted(values.items()))
    for name, value in snapshot.get("gauges", {}).items():
        if isinstance(value, int | float):  # bools count as 0/1
            metric = f"tgw_{_metric(name)}"
            lines += [
                f"# TYPE {metric} gauge",
                f"{metric} {int(value) if isinstance(value, bool) else value}",
            ]
    return "\n".join(lines) + "\n"


class MetricsServer:
    """A tiny HTTP server for GET /metrics on a localhost port (off by default)."""

    def __init__(self, board: StatusBoard, host: str, port: int) -> None:
        self.board = board
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def run(self) -> None:
        """Serve until cancelled."""
        server = await asyncio.start_server(self._handle, self.host, self.port)
        self._server = server
        sock = server.sockets[0].getsockname()
        self.port = int(sock[1])
        async with server:
            await server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readline()
                while (await reader.readline()).strip():
                    pass
            parts = request.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1] in ("/metrics", "/"):
                body = prometheus_text(self.board.snapshot()).encode()
                head = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            else:
                body = b"not found\n"
                head = b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
            writer.write(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


# --- `terminal-gw status` ------------------------------------------------------------------

# The codes are defined once, in exit_codes; these names say what they mean here.
EXIT_HEALTHY = EXIT_OK
EXIT_UNHEALTHY = EXIT_FAILURE


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render_table(snapshot: Mapping[str, Any], verdict: str) -> str:
    """The snapshot as a human table."""
    version = snapshot.get("versions", {}).get("terminal-gw", "?")
    head = f"terminal-gw {version}  device {snapshot.get('device')}  pid {snapshot.get('pid')}"
    out = [
        f"{head}  {verdict}",
        f"uptime {_fmt_age(snapshot.get('uptime_s'))}",
        "",
        f"{'STAGE':<10} {'STATE':<12} {'RESTARTS':>8} {'IDLE':>6}  LAST ERROR",
    ]
    for name, st in snapshot.get("stages", {}).items():
        out.append(
            f"{name:<10} {st['state']:<12} {st['restarts']:>8} {_fmt_age(st['idle_s']):>6}  "
            f"{st.get('last_error') or ''}"
        )
    gauges = snapshot.get("gauges", {})
    if gauges:
        out += ["", f"{'GAUGE':<24} VALUE"]
        out += [f"{k:<24} {v}" for k, v in gauges.items()]
    counters = snapshot.get("counters", {})
    for comp, values in counters.items():
        if values:
            shown = "  ".join(f"{k}={v}" for k, v in sorted(values.items()))
            out += ["", f"{comp}: {shown}"]
    return "\n".join(out)


def disk_trouble(path: Path) -> str | None:
    """ "disk full" or "read-only" when the filesystem holding `path` is, else None."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return "read-only"
    if st.f_bavail == 0:
        return "disk full"
    return None


def evaluate(
    snapshot: Mapping[str, Any], now: float, interval_s: float, path: Path | None = None
) -> tuple[int, str]:
    """(exit code, verdict) for a status snapshot read at `now` (from the file at `path`)."""
    pid = int(snapshot.get("pid", 0))
    if pid <= 0 or not _pid_alive(pid):
        return EXIT_NOT_RUNNING, "NOT RUNNING (stale status file)"
    age = now - float(snapshot.get("updated", 0))
    if age > 3 * interval_s + 5:
        trouble = None if path is None else disk_trouble(path)
        disk = f"; {trouble} on {path.parent}" if trouble and path is not None else ""
        return EXIT_UNHEALTHY, f"UNHEALTHY (status not updated for {age:.0f}s{disk})"
    if not snapshot.get("healthy"):
        problems = snapshot.get("problems") or {}
        if problems:
            named = ", ".join(f"{k}: {v}" for k, v in sorted(problems.items()))
            return EXIT_UNHEALTHY, f"UNHEALTHY ({named})"
        return EXIT_UNHEALTHY, "UNHEALTHY"
    return EXIT_HEALTHY, "healthy"


def read_status_file(path: Path, attempts: int = 5) -> Any:
    """The snapshot in `path`; tried again a few times when it does not parse (an in-place
    rewrite on a full disk is not atomic)."""
    for attempt in range(attempts):
        text = path.read_text(encoding="utf-8")
        try:
            return json.loads(text)
        except ValueError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")

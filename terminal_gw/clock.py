"""GNSS time as the authority: system clock offset, skew events, chrony SOCK refclock feed."""

from __future__ import annotations

import contextlib
import math
import socket
import struct
from datetime import datetime
from pathlib import Path

from terminal_gw.models import Event, Fix, make_event

#: chrony's refclock SOCK sample: struct timeval, double offset, int pulse, int leap,
#: int padding, int magic (refclock_sock.c). Native layout: time_t and suseconds_t are longs.
_SOCK_SAMPLE = struct.Struct("@lldiiii")
SOCK_MAGIC = 0x534F434B


def parse_iso_utc(text: str) -> float:
    """Unix seconds from an ISO 8601 UTC time like 2020-07-11T22:37:45.000Z."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def chrony_sample(system_time: float, offset: float) -> bytes:
    """One SOCK refclock sample: at `system_time` the true time was `system_time + offset`."""
    frac, whole = math.modf(system_time)
    return _SOCK_SAMPLE.pack(int(whole), int(frac * 1e6), offset, 0, 0, 0, SOCK_MAGIC)


class ClockWatch:
    """Measures the system clock against GNSS fixes; raises an event when the skew crosses the
    threshold (and when it comes back), and can correct system timestamps."""

    def __init__(self, threshold_s: float, chrony_socket: Path | None = None) -> None:
        self.threshold_s = threshold_s
        self.offset_s: float | None = None  # system minus GNSS, seconds
        self.skewed = False
        self.chrony_socket = chrony_socket
        self._sock: socket.socket | None = None
        self.chrony_errors = 0
        self.chrony_samples = 0

    def observe(self, fix: Fix, system_now: float) -> Event | None:
        """Update the offset from a fix stamped with GNSS time; an event on a threshold crossing.

        `system_now` must be taken when the fix's last sentence arrived: serial latency adds a
        few tens of ms, far below any threshold that matters here."""
        if fix.time is None or fix.mode < 2:
            return None
        try:
            gnss = parse_iso_utc(fix.time)
        except ValueError:
            return None
        self.offset_s = system_now - gnss
        self._feed_chrony(system_now, -self.offset_s)
        skewed = abs(self.offset_s) > self.threshold_s
        if skewed == self.skewed:
            return None
        self.skewed = skewed
        now = self.corrected(system_now)
        if skewed:
            return make_event(
                "clock_skew",
                f"system clock is {self.offset_s:+.3f} s off GNSS time",
                now=now,
                severity="warning",
                clock="gnss",
                offset_s=round(self.offset_s, 3),
                threshold_s=self.threshold_s,
            )
        return make_event(
            "clock_ok",
            f"system clock within {self.threshold_s:g} s of GNSS time again",
            now=now,
            clock="gnss",
            offset_s=round(self.offset_s, 3),
        )

    def corrected(self, system_now: float) -> float:
        """System time corrected by the last GNSS offset (unchanged before the first fix)."""
        return system_now if self.offset_s is None else system_now - self.offset_s

    @property
    def source(self) -> str:
        """Where corrected times come from: "gnss" once a fix was seen, else "system"."""
        return "system" if self.offset_s is None else "gnss"

    def _feed_chrony(self, system_now: float, offset: float) -> None:
        if self.chrony_socket is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(chrony_sample(system_now, offset), str(self.chrony_socket))
            self.chrony_samples += 1
        except OSError:
            # chrony not running (yet) or the socket is gone: count it, try again next fix.
            self.chrony_errors += 1

    def close(self) -> None:
        """Close the chrony socket."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

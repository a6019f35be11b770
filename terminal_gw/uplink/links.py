"""Link profiles: which network carries the broker's traffic, what may use it, and how much a day.

- The interface is found from the kernel's routing table (`/proc/net/route`, `/proc/net/ipv6_route`:
  a file read, no process spawned), longest prefix first, for the broker's address; the first
  `[[links]]` profile whose `interface` glob matches wins, else the last one (the default). A
  command can force a profile for a link the kernel cannot tell apart.
- Bytes are counted on the wire: the kernel's own counters of the connection's TCP socket
  (`TCP_INFO`: payload bytes acknowledged and received, and segments both ways, so MQTT and
  TLS framing are in), plus `SEGMENT_OVERHEAD` bytes of IP and TCP headers a segment. Per
  profile and UTC day, persisted in the state directory so a restart keeps counting.
"""

from __future__ import annotations

import contextlib
import fnmatch
import ipaddress
import json
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from terminal_gw.config import LinkProfileConfig

#: IPv4 + TCP headers with the usual timestamp option, per segment.
SEGMENT_OVERHEAD = 52
# struct tcp_info (linux/tcp.h): u64 tcpi_bytes_acked at 120, tcpi_bytes_received at 128,
# u32 tcpi_segs_out at 136, tcpi_segs_in at 140 (Linux 4.2+).
_TCP_INFO_LEN = 144
_TCP_INFO = struct.Struct("=QQII")
_TCP_INFO_AT = 120


@dataclass(frozen=True, slots=True)
class WireCount:
    """What one TCP connection has carried so far, as the kernel counts it."""

    sent: int  # payload bytes acknowledged by the peer
    received: int
    segments: int  # both ways

    @property
    def total(self) -> int:
        """Bytes on the wire both ways, headers included."""
        return self.sent + self.received + self.segments * SEGMENT_OVERHEAD


def wire_count(sock: Any) -> WireCount | None:
    """The kernel's counters of a TCP socket (an SSLSocket too); None when not available."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except (OSError, AttributeError, ValueError):
        return None
    if len(raw) < _TCP_INFO_AT + _TCP_INFO.size:
        return None
    acked, received, segs_out, segs_in = _TCP_INFO.unpack_from(raw, _TCP_INFO_AT)
    # bytes_acked counts the SYN's sequence number too.
    return WireCount(max(0, acked - 1), received, segs_out + segs_in)


# --- routes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    interface: str
    metric: int


def parse_routes(ipv4: str = "", ipv6: str = "") -> list[Route]:
    """The kernel's routes from the text of /proc/net/route and /proc/net/ipv6_route."""
    routes: list[Route] = []
    for line in ipv4.splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        try:
            dest = socket.inet_ntoa(struct.pack("<I", int(f[1], 16)))
            mask = socket.inet_ntoa(struct.pack("<I", int(f[7], 16)))
            flags = int(f[3], 16)
            metric = int(f[6])
            net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        except (ValueError, struct.error, OSError):
            continue
        if flags & 0x1:  # RTF_UP
            routes.append(Route(net, f[0], metric))
    for line in ipv6.splitlines():
        f = line.split()
        if len(f) < 10:
            continue
        try:
            dest6 = ipaddress.IPv6Address(bytes.fromhex(f[0]))
            net6 = ipaddress.IPv6Network(f"{dest6}/{int(f[1], 16)}", strict=False)
            metric = int(f[5], 16)
            flags = int(f[8], 16)
        except ValueError:
            continue
        if flags & 0x1:  # RTF_UP
            routes.append(Route(net6, f[9], metric))
    return routes


def read_routes(root: Path = Path("/proc/net")) -> list[Route]:
    """The routing table as the kernel has it now (empty when it cannot be read)."""
    texts: list[str] = []
    for name in ("route", "ipv6_route"):
        try:
            texts.append((root / name).read_text())
        except OSError:
            texts.append("")
    return parse_routes(*texts)


def interface_for(address: str, routes: Sequence[Route]) -> str | None:
    """The interface the kernel would send to `address` through (longest prefix, then metric).

    The loopback addresses go through "lo" (the kernel's local table, not in these files)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.is_loopback:
        return "lo"
    best: Route | None = None
    for route in routes:
        if route.network.version != ip.version or ip not in route.network:
            continue
        if (
            best is None
            or route.network.prefixlen > best.network.prefixlen
            or (route.network.prefixlen == best.network.prefixlen and route.metric < best.metric)
        ):
            best = route
    return best.interface if best is not None else None


def resolve(host: str) -> list[str]:
    """The addresses of a broker host (an address stays itself)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [host]
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [str(info[4][0]) for info in infos]


def choose_profile(
    profiles: Sequence[LinkProfileConfig], interface: str | None
) -> LinkProfileConfig:
    """The first profile whose interface glob matches; the last one when none does."""
    if interface is not None:
        for profile in profiles:
            if fnmatch.fnmatchcase(interface, profile.interface):
                return profile
    return profiles[-1]


# --- the daily ledger ---------------------------------------------------------------------


def utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def _day_bounds(now: float) -> tuple[float, float]:
    """The unix times the UTC day of `now` starts and ends at."""
    start = float(int(now // 86400) * 86400)
    return start, start + 86400.0


@dataclass
class LinkUsage:
    """One profile's use on one UTC day."""

    bytes: int = 0
    messages: int = 0


@dataclass
class LinkLedger:
    """Bytes and messages per profile for the current UTC day, kept in a JSON file."""

    path: Path | None
    clock: Callable[[], float] = time.time
    day: str = ""
    usage: dict[str, LinkUsage] = field(default_factory=dict)
    save_errors: int = 0
    _dirty: bool = False
    # The current day's bounds (unix times): a message counted is then one clock read and
    # two comparisons, no date formatting.
    _day_start: float = field(default=0.0, init=False, repr=False)
    _day_end: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        now = self.clock()
        self.day = utc_day(now)
        self._day_start, self._day_end = _day_bounds(now)
        if self.path is None:
            return
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            data = json.loads(self.path.read_text())
            if data.get("day") == self.day:
                for name, u in dict(data.get("links", {})).items():
                    self.usage[str(name)] = LinkUsage(int(u["bytes"]), int(u["messages"]))

    def _roll(self) -> None:
        now = self.clock()
        if self._day_start <= now < self._day_end:
            return
        self._day_start, self._day_end = _day_bounds(now)
        today = utc_day(now)
        if today != self.day:
            self.day = today
            self.usage.clear()
            self._dirty = True

    def of(self, name: str) -> LinkUsage:
        """Today's use of a profile."""
        self._roll()
        return self.usage.setdefault(name, LinkUsage())

    def add(self, name: str, *, nbytes: int = 0, messages: int = 0) -> None:
        use = self.of(name)
        use.bytes += max(0, nbytes)
        use.messages += max(0, messages)
        self._dirty = True

    def over_budget(self, profile: LinkProfileConfig) -> bool:
        """True once today's bytes or messages reached the profile's budget."""
        use = self.of(profile.name)
        return (
            profile.budget_bytes_per_day is not None and use.bytes >= profile.budget_bytes_per_day
        ) or (
            profile.budget_messages_per_day is not None
            and use.messages >= profile.budget_messages_per_day
        )

    def save(self) -> None:
        """Write the ledger (atomically) when it changed; a failing disk is counted, not fatal."""
        if self.path is None or not self._dirty:
            return
        data = {
            "day": self.day,
            "links": {n: {"bytes": u.bytes, "messages": u.messages} for n, u in self.usage.items()},
        }
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError:
            self.save_errors += 1
            return
        self._dirty = False

    def summary(self, profile: LinkProfileConfig) -> dict[str, Any]:
        """Used and left today, for the status."""
        use = self.of(profile.name)
        out: dict[str, Any] = {"day": self.day, "bytes": use.bytes, "messages": use.messages}
        if profile.budget_bytes_per_day is not None:
            out["bytes_left"] = max(0, profile.budget_bytes_per_day - use.bytes)
        if profile.budget_messages_per_day is not None:
            out["messages_left"] = max(0, profile.budget_messages_per_day - use.messages)
        return out


def allowed_classes(
    profile: LinkProfileConfig, *, over_budget: bool, all_classes: Iterable[str]
) -> frozenset[str] | None:
    """The outbox classes that may use the link now; None when every class may."""
    allowed = set(all_classes) if profile.classes is None else set(profile.classes)
    if over_budget:
        allowed &= set(profile.over_budget_classes)
    if profile.classes is None and not over_budget:
        return None
    return frozenset(allowed)

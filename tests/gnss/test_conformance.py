"""Conformance with gpsd: every capture of the corpus against gpsd's own output (`.log.chk`).

For each epoch (UTC time of day) gpsd's last TPV of that epoch and its last SKY with a
satellite list are compared with our Fix and Sky: time, mode, lat/lon (1e-6 deg),
altHAE/altMSL (1 cm), speed (0.01 m/s), track, and the set of satellites (gnssid, svid)
with their `used` flags. Where we deliberately differ from gpsd, KNOWN_DIFFERENCES names
the case and the reason; anything else fails. Run with `-s` to see the agreement table.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from terminal_gw.gnss.pipeline import GnssPipeline
from terminal_gw.models import Fix, Sky
from tests.conftest import GNSS_CORPUS

CAPTURES = sorted(p.name for p in GNSS_CORPUS.glob("*.log"))

#: field -> tolerance (absolute) for the TPV comparison.
TPV_FIELDS: dict[str, float] = {
    "mode": 0,
    "lat": 1e-6,
    "lon": 1e-6,
    "altHAE": 0.01,
    "altMSL": 0.01,
    "speed": 0.01,
    "track": 0.01,
}

# Sentence types that carry a time of day, and the field index of that time.
_TIMED = {"GGA": 1, "RMC": 1, "GNS": 1, "ZDA": 1, "GST": 1, "GLL": 5}
_TOD_RE = re.compile(r"(\d\d)(\d\d)(\d\d(?:\.\d+)?)")


@dataclass(frozen=True)
class Known:
    """A deliberate difference from gpsd: where it applies and why."""

    name: str
    reason: str
    applies: Callable[[str, dict[str, Any], dict[str, Any]], bool]
    """(field, gpsd's TPV, our Fix as dict) -> True when this difference explains it."""


KNOWN_DIFFERENCES: tuple[Known, ...] = (
    Known(
        "geoid-model",
        "GGA left the geoid separation empty: gpsd fills it from its built-in geoid model "
        "to compute altHAE; we report only what the receiver sent (altMSL) and leave "
        "altHAE and geoidSep absent",
        lambda f, g, ours: f == "altHAE" and f in g and ours.get("geoidSep") is None,
    ),
    Known(
        "untimed-no-rmc",
        "in the first fix epoch gpsd had no trusted date and printed no TPV after the "
        "epoch's RMC, so its report lacks the RMC's speed and track; we report them",
        lambda f, g, ours: f in ("speed", "track") and "time" not in g and f not in g,
    ),
)

#: Epochs we time-stamp and gpsd does not, with the reason (checked per epoch).
KNOWN_EXTRA_EPOCHS: dict[str, str] = {
    "gpsd-untimed": "gpsd printed this epoch's TPVs without a time: it trusts no date until "
    "a valid RMC/ZDA after start; we take the date from the first RMC/ZDA sent (fields "
    "other than time are still compared with gpsd's untimed TPV)",
    "flushed": "the capture ends inside this epoch: flush() reports what was received, "
    "gpsd waits for a cycle end that never comes",
}


def _tod_key(text: str) -> str | None:
    """'hhmmss.sss' -> 'hh:mm:ss.sss' (the time-of-day part of an ISO time)."""
    m = _TOD_RE.fullmatch(text)
    if m is None:
        return None
    return f"{m.group(1)}:{m.group(2)}:{float(m.group(3)):06.3f}"


def _sentence_tod(line: str) -> str | None:
    fields = line.split("*", maxsplit=1)[0].split(",")
    address = fields[0][1:]
    index = _TIMED.get(address[2:]) if len(address) == 5 else None
    if index is None or len(fields) <= index:
        return None
    return _tod_key(fields[index])


@dataclass
class GpsdEpochs:
    """gpsd's reports per epoch, keyed by time of day 'hh:mm:ss.sss'."""

    tpv: dict[str, dict[str, Any]] = field(default_factory=dict)
    sky: dict[str, dict[str, Any]] = field(default_factory=dict)
    untimed: dict[str, dict[str, Any]] = field(default_factory=dict)
    """TPVs gpsd printed without a time (it had no date it trusted), by the epoch read."""


def read_chk(path: Path) -> GpsdEpochs:
    """gpsd's last TPV and last SKY-with-satellites of each epoch in a `.chk` file."""
    out = GpsdEpochs()
    current: str | None = None  # epoch of the last echoed sentence with a time
    for raw in path.read_text(encoding="ascii", errors="replace").splitlines():
        line = raw.strip()
        if line.startswith("$"):
            current = _sentence_tod(line) or current
        elif line.startswith("{"):
            report = json.loads(line)
            if report["class"] == "TPV":
                if "time" not in report:
                    if current is not None:
                        out.untimed[current] = report
                    continue
                tod = report["time"][11:23]
                # gpsd re-sends the previous epoch's TPV when a new epoch starts without a
                # fix (RMC status V): that report belongs to the new epoch, not to `tod`.
                if current is None or tod == current:
                    out.tpv[tod] = report
            elif report["class"] == "SKY" and "satellites" in report and current is not None:
                out.sky[current] = report
    return out


def run_pipeline(name: str) -> list[Any]:
    """Our records for a capture (comment lines skipped), fed in 4 KiB chunks."""
    lines = (GNSS_CORPUS / name).read_bytes().splitlines(keepends=True)
    data = b"".join(line for line in lines if not line.startswith(b"#"))
    p = GnssPipeline()
    out: list[Any] = []
    for i in range(0, len(data), 4096):
        out.extend(p.feed(data[i : i + 4096], now=1_700_000_000.0 + i))
    out.extend(p.flush(now=1_700_000_000.0 + len(data)))
    return out


@dataclass
class Agreement:
    """Per-file comparison figures."""

    epochs_gpsd: int = 0
    epochs_ours: int = 0
    skies_gpsd: int = 0
    skies_ours: int = 0
    compared: Counter[str] = field(default_factory=Counter)
    agree: Counter[str] = field(default_factory=Counter)
    known: Counter[str] = field(default_factory=Counter)
    extra: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def table(self, name: str) -> str:
        """One line per compared field: compared / agree / known difference."""
        rows = [
            (
                f"{name}: epochs gpsd {self.epochs_gpsd}, ours {self.epochs_ours};"
                f" sky epochs gpsd {self.skies_gpsd}, ours {self.skies_ours}"
            )
        ]
        rows.extend(
            f"  {key:12s} compared {self.compared[key]:4d}  agree {self.agree[key]:4d}"
            f"  known-diff {self.known[key]:4d}"
            for key in self.compared
        )
        rows.extend(f"  extra epoch ({k}): {v}" for k, v in self.extra.items())
        rows.extend(f"  known difference used: {k}" for k in sorted(self.known) if "/" in k)
        return "\n".join(rows)


def _close(a: Any, b: Any, tol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(abs(float(a) - float(b)) <= tol + 1e-9)


def compare(name: str) -> Agreement:
    """Compare our records for capture `name` with gpsd's `.chk`."""
    gpsd = read_chk(GNSS_CORPUS / f"{name}.chk")
    records = run_pipeline(name)
    fixes = [r for r in records if isinstance(r, Fix) and r.clock == "gnss"]
    skies = {r.time[11:23]: r for r in records if isinstance(r, Sky) and r.time}
    ours = {f.time[11:23]: f for f in fixes if f.time}
    last = fixes[-1].time[11:23] if fixes and fixes[-1].time else None
    ag = Agreement(
        epochs_gpsd=len(gpsd.tpv),
        epochs_ours=len(ours),
        skies_gpsd=len(gpsd.sky),
        skies_ours=len(skies),
    )

    untimed = {tod: g for tod, g in gpsd.untimed.items() if tod not in gpsd.tpv}
    for tod, g in [*gpsd.tpv.items(), *untimed.items()]:
        fix = ours.get(tod)
        if tod in gpsd.tpv:
            ag.compared["time"] += 1
            if fix is None or fix.time != g["time"]:
                ag.problems.append(f"{name} {g['time']}: epoch missing or time differs")
                continue
            ag.agree["time"] += 1
        elif fix is None:
            ag.problems.append(f"{name} {tod}: epoch missing")
            continue
        else:
            ag.extra["gpsd-untimed"] += 1
        o = fix.model_dump(by_alias=True)
        for fname, tol in TPV_FIELDS.items():
            ag.compared[fname] += 1
            if _close(g.get(fname), o.get(fname), tol):
                ag.agree[fname] += 1
                continue
            known = next((k for k in KNOWN_DIFFERENCES if k.applies(fname, g, o)), None)
            if known is None:
                ag.problems.append(
                    f"{name} {tod} {fname}: gpsd {g.get(fname)!r}, ours {o.get(fname)!r}"
                )
            else:
                ag.known[fname] += 1
                ag.known[f"{fname}/{known.name}"] += 1

    for tod in ours.keys() - gpsd.tpv.keys() - untimed.keys():
        if tod == last:
            ag.extra["flushed"] += 1
        else:
            ag.problems.append(f"{name} {ours[tod].time}: epoch gpsd did not report")

    for tod, g in gpsd.sky.items():
        ag.compared["satellites"] += 1
        sky = skies.get(tod)
        if sky is None:
            ag.problems.append(f"{name} {tod}: no Sky for an epoch gpsd has satellites for")
            continue
        g_used: dict[tuple[int, int], bool] = {}
        for s in g["satellites"]:
            key = (s["gnssid"], s["svid"])
            # gpsd lists a satellite once per signal; used if any of its signals is.
            g_used[key] = g_used.get(key, False) or s["used"]
        o_used = {(s.gnssid, s.svid): s.used for s in sky.satellites}
        if g_used.keys() != o_used.keys():
            ag.problems.append(
                f"{name} {tod}: satellites only gpsd {sorted(g_used.keys() - o_used.keys())}"
                f" only ours {sorted(o_used.keys() - g_used.keys())}"
            )
            continue
        ag.agree["satellites"] += 1
        ag.compared["used"] += 1
        bad = sorted(k for k in g_used if g_used[k] != o_used[k])
        if bad:
            ag.problems.append(f"{name} {tod}: used flags differ for {bad}")
        else:
            ag.agree["used"] += 1
    return ag


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_agrees_with_gpsd(name: str, record_property: Callable[[str, Any], None]) -> None:
    ag = compare(name)
    table = ag.table(name)
    print(table)  # the agreement figures are this test's report
    record_property("agreement", table)
    assert ag.compared["mode"] > 0
    assert not ag.problems, "\n".join(ag.problems[:20])


def test_every_capture_has_its_gpsd_reference() -> None:
    assert CAPTURES, f"no captures in {GNSS_CORPUS}"
    for name in CAPTURES:
        assert (GNSS_CORPUS / f"{name}.chk").is_file()


def test_known_differences_are_each_needed() -> None:
    """A known difference that never applies is stale: remove it rather than keep excuses."""
    used = Counter[str]()
    for name in CAPTURES:
        ag = compare(name)
        for key, n in ag.known.items():
            if "/" in key:
                used[key.split("/", 1)[1]] += n
    assert {k.name for k in KNOWN_DIFFERENCES} == set(used)

"""Replay of gpsd's binary receiver captures agrees with gpsd, by its comparator's rules.

`terminal-gw replay --jsonl` runs on each capture whose fixes come in UBX or CASIC, and
`gpsd_compare.py` (../shared/tools) scores the output against gpsd's own `.log.chk`. The
floors are the figures reached; a regression below any of them fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.conftest import CORPUS, REPO, SHARED

GPSD_CORPUS = CORPUS / "gnss-gpsd"
COMPARE = SHARED / "tools" / "gpsd_compare.py"


class Floor(NamedTuple):
    """Least agreement accepted: fix epochs matched of gpsd's, sky epochs exact of gpsd's."""

    fixes: int
    fix_match: int
    skies: int
    sky_exact: int


FLOORS: dict[str, Floor] = {
    # CASIC only (Quectel L76K): NAV-PV, NAV-DOP, NAV-TIMEUTC, NAV-GPS/BDS/GLNINFO.
    "quectel-l76k-binary": Floor(129, 129, 129, 129),
    # UBX only, u-blox 8 timing receiver: NAV-PVT, NAV-SAT, NAV-DOP (fix type "time only").
    "ublox-lea-m8f": Floor(18, 18, 23, 23),
    # UBX only, u-blox ADR: HNR-PVT at 10 Hz between the 1 Hz NAV-PVT/NAV-SAT/NAV-EOE.
    "ublox-neo-m8l": Floor(189, 189, 19, 19),
    # NMEA and UBX together (NAV-PVT, NAV-SOL, NAV-SAT, NAV-SVINFO). The epoch left: gpsd's
    # TPVs there are NMEA's altHAE (GGA's 0.1 m) and NAV-SOL's altMSL from its geoid model;
    # ours is NAV-PVT's (altHAE 2 cm off GGA's rounding).
    "ublox8-uniqid-monhw": Floor(8, 7, 8, 7),
}


def _compare(name: str, tmp_path: Path) -> dict[str, object]:
    capture = GPSD_CORPUS / f"{name}.log"
    ours = tmp_path / f"{name}.jsonl"
    with ours.open("wb") as out:
        subprocess.run(
            [sys.executable, "-m", "terminal_gw", "replay", "--jsonl", str(capture)],
            check=True,
            stdout=out,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
            timeout=120,
        )
    res = subprocess.run(
        [sys.executable, str(COMPARE), f"{capture}.chk", str(ours), str(capture)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    figures: dict[str, object] = json.loads(res.stdout)
    return figures


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_binary_capture_replay_agrees_with_gpsd(name: str, tmp_path: Path) -> None:
    floor = FLOORS[name]
    d = _compare(name, tmp_path)
    assert d["fixes"] == floor.fixes
    assert d["sky_epochs"] == floor.skies
    assert d["false_fixes"] == 0, d["examples"]
    assert isinstance(d["fix_match_any"], int)
    assert isinstance(d["sky_exact"], int)
    assert d["fix_match_any"] >= floor.fix_match, d["examples"]
    assert d["sky_exact"] >= floor.sky_exact, d["examples"]

"""Agreement with gpsd on every capture of both corpus directories, by the comparator's rules.

Each capture is replayed in-process exactly as `terminal-gw replay --jsonl` does (the same
Replayer and pipeline), and the output is judged by `../shared/tools/gpsd_compare.py` against
gpsd's own output beside the capture (`NAME.log.chk`). Per capture the figures must not fall
below the floors in `gpsd_floors.py` (fix epochs matched, sky epochs exact; false fixes must not
rise); the totals over the NMEA captures must stay at the goals. A capture without a floor
fails too: a new receiver's figures are recorded, not ignored. Run with `-s` to print the
per-capture table (and `FLOORS` lines to paste when the figures improve).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from terminal_gw.gnss.pipeline import GnssPipeline
from terminal_gw.replay import Replayer
from terminal_gw.transport.capture import CaptureReader
from tests.conftest import CORPUS, GNSS_CORPUS
from tests.gnss.gpsd_floors import (
    BINARY_ONLY,
    FLOORS,
    GOAL_FIX_RATE_WITHOUT_GPSD_WRONG,
    GOALS,
    GPSD_WRONG,
)

GPSD_CORPUS = CORPUS / "gnss-gpsd"
COMPARATOR = CORPUS.parent / "tools" / "gpsd_compare.py"


def _captures() -> list[Path]:
    """Every capture with a non-empty gpsd reference, in both directories."""
    out = []
    for directory in (GNSS_CORPUS, GPSD_CORPUS):
        for log in sorted(directory.glob("*.log")):
            chk = log.with_name(log.name + ".chk")
            if chk.is_file() and chk.stat().st_size > 0:
                out.append(log)
    return out


CAPTURES = _captures()
NAMES = [p.name[: -len(".log")] for p in CAPTURES]


@functools.cache
def _comparator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpsd_compare", COMPARATOR)
    assert spec is not None, f"no comparator at {COMPARATOR}"
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def figures(name: str) -> dict[str, Any]:
    """The comparator's figures for one capture (replayed once per test session)."""
    log = CAPTURES[NAMES.index(name)]
    out = io.StringIO()
    Replayer(GnssPipeline, out=out, jsonl=True, speed=None).replay([CaptureReader(log)])
    with tempfile.TemporaryDirectory() as tmp:
        ours = Path(tmp) / f"{name}.jsonl"
        ours.write_text(out.getvalue(), encoding="utf-8")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            _comparator().main([f"{log}.chk", str(ours), str(log)])
    result: dict[str, Any] = json.loads(printed.getvalue())
    return result


def test_both_corpus_directories_are_there() -> None:
    assert COMPARATOR.is_file(), f"no comparator at {COMPARATOR}"
    assert len([n for n in NAMES if (GNSS_CORPUS / f"{n}.log").is_file()]) >= 7
    assert len(CAPTURES) >= 100, f"captures with a gpsd reference: {len(CAPTURES)}"
    assert set(FLOORS) <= set(NAMES), f"floors for missing captures: {set(FLOORS) - set(NAMES)}"


@pytest.mark.parametrize("name", NAMES)
def test_capture_keeps_its_agreement_with_gpsd(
    name: str, record_property: Callable[[str, Any], None]
) -> None:
    f = figures(name)
    row = (f["fix_match_any"], f["false_fixes"], f["sky_exact"])
    line = f"    {name!r}: {row},  # of {f['fixes']} fixes, {f['sky_epochs']} sky epochs"
    print(line)
    record_property("figures", line)
    assert name in FLOORS, f"no floor recorded for {name}; its figures:\n{line}"
    fixes, false_fixes, sky = FLOORS[name]
    problems = []
    if f["fix_match_any"] < fixes:
        problems.append(f"fix epochs matched {f['fix_match_any']} < floor {fixes}")
    if f["false_fixes"] > false_fixes:
        problems.append(f"false fixes {f['false_fixes']} > {false_fixes}")
    if f["sky_exact"] < sky:
        problems.append(f"sky epochs exact {f['sky_exact']} < floor {sky}")
    assert not problems, f"{name}: " + "; ".join(problems) + f"\n{json.dumps(f['examples'])}"


def test_totals_over_the_nmea_captures_stay_at_the_goals() -> None:
    nmea = [n for n in NAMES if n not in BINARY_ONLY]
    tot = {k: sum(figures(n)[k] for n in nmea) for k in ("fixes", "fix_match_any", "false_fixes")}
    sky = {k: sum(figures(n)[k] for n in nmea) for k in ("sky_epochs", "sky_exact")}
    fix_rate = tot["fix_match_any"] / tot["fixes"]
    sky_rate = sky["sky_exact"] / sky["sky_epochs"]
    print(
        f"NMEA captures {len(nmea)}: fixes {tot['fix_match_any']}/{tot['fixes']} "
        f"({fix_rate:.1%}), false fixes {tot['false_fixes']}, sky exact "
        f"{sky['sky_exact']}/{sky['sky_epochs']} ({sky_rate:.1%})"
    )
    assert tot["false_fixes"] <= GOALS["false_fixes"]
    assert fix_rate >= GOALS["fix_rate"]
    assert sky_rate >= GOALS["sky_rate"]
    excused = sum(n for n, _why in GPSD_WRONG.values())
    assert tot["fix_match_any"] / (tot["fixes"] - excused) >= GOAL_FIX_RATE_WITHOUT_GPSD_WRONG


@pytest.mark.parametrize("name", sorted(GPSD_WRONG))
def test_each_gpsd_wrong_case_is_still_the_only_difference(name: str) -> None:
    """The excused epochs are exactly the capture's mismatches: nothing else hides there."""
    f = figures(name)
    assert f["fixes"] - f["fix_match_any"] == GPSD_WRONG[name][0]

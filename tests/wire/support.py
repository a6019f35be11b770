"""Fixes for the wire tests: the corpus replayed in-process, and the format's units."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from terminal_gw.gnss.pipeline import GnssPipeline
from terminal_gw.replay import Replayer
from terminal_gw.transport.capture import CaptureReader
from tests.conftest import CORPUS

#: Decimal places each float field keeps (the spec's units).
PLACES = {"lat": 7, "lon": 7} | dict.fromkeys(
    (
        "altHAE",
        "altMSL",
        "geoidSep",
        "speed",
        "track",
        "climb",
        "magvar",
        "eph",
        "epv",
        "hdop",
        "vdop",
        "pdop",
    ),
    2,
)


def at_units(fix: dict[str, Any]) -> dict[str, Any]:
    """A payload as the format carries it: each float rounded to its unit."""
    return {
        k: round(v * 10 ** PLACES[k]) / 10 ** PLACES[k] if k in PLACES else v
        for k, v in fix.items()
    }


def corpus_records(*globs: str) -> list[dict[str, Any]]:
    """Every payload `replay --jsonl` prints for the corpus captures, in order."""
    logs = sorted(p for g in globs for p in CORPUS.glob(g))
    out = io.StringIO()
    Replayer(GnssPipeline, out=out, jsonl=True, speed=None).replay([CaptureReader(p) for p in logs])
    return [json.loads(line)["payload"] for line in out.getvalue().splitlines()]


def corpus_logs() -> list[Path]:
    """The GNSS capture logs of the corpus."""
    return sorted(CORPUS.glob("gnss*/*.log"))

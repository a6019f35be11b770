"""A sky's satellites that are as in the sky before are reused: each sky still says exactly
what a sky built on its own would say."""

from __future__ import annotations

import json

from terminal_gw.gnss.pipeline import GnssPipeline
from terminal_gw.models import Payload, Sky
from tests.gnss.test_assembler import nmea


def _epoch(second: int, gsa: str, gsv: str) -> tuple[str, ...]:
    t = f"2237{second:02d}.00"
    return (
        f"GPRMC,{t},A,3806.62964,N,12237.61382,W,0.040,77.5,110720,,,A",
        f"GPGGA,{t},3806.62964,N,12237.61382,W,1,08,0.54,83.1,M,-29.5,M,,",
        gsa,
        gsv,
    )


def _satellites(records: list[Payload]) -> list[list[dict[str, object]]]:
    return [json.loads(r.to_json())["satellites"] for r in records if isinstance(r, Sky)]


def _alone(epoch: tuple[str, ...]) -> list[dict[str, object]]:
    p = GnssPipeline()
    (sats,) = _satellites(p.feed(nmea(*epoch), 0.0) + p.flush(0.0))
    return sats


GSV = "GPGSV,1,1,03,29,46,133,43,20,63,235,37,18,0,358,39"
EPOCHS = [
    _epoch(45, "GPGSA,A,3,29,20,18,,,,,,,,,,0.99,0.54,0.83", GSV),
    _epoch(46, "GPGSA,A,3,29,20,18,,,,,,,,,,0.99,0.54,0.83", GSV),  # the same view
    _epoch(47, "GPGSA,A,3,29,,,,,,,,,,,,0.99,0.54,0.83", GSV),  # 20 and 18 no longer used
    _epoch(48, "GPGSA,A,3,29,,,,,,,,,,,,0.99,0.54,0.83", GSV.replace(",18,0,", ",18,-0,")),
    _epoch(49, "GPGSA,A,3,29,,,,,,,,,,,,0.99,0.54,0.83", GSV.replace(",43,", ",44,")),
]


def test_each_sky_says_what_a_sky_built_on_its_own_says() -> None:
    p = GnssPipeline()
    records: list[Payload] = []
    for epoch in EPOCHS:
        records += p.feed(nmea(*epoch), 0.0)
    records += p.flush(0.0)
    skies = _satellites(records)
    assert skies == [_alone(epoch) for epoch in EPOCHS]
    assert [[s["used"] for s in sky] for sky in skies[1:3]] == [
        [True, True, True],
        [True, False, False],
    ]
    assert skies[3][2]["el"] == -0.0
    assert json.dumps(skies[3][2]["el"]) == "-0.0"  # not the 0.0 of the sky before
    assert skies[4][0]["ss"] == 44.0

"""A Sky's JSON written from its satellites' remembered text is pydantic's text, byte for byte;
anything the fast path does not write the way pydantic does goes to pydantic."""

from __future__ import annotations

import itertools
import math

import pytest

from terminal_gw import models
from terminal_gw.gnss.pipeline import GnssPipeline
from terminal_gw.models import (
    Payload,
    Satellite,
    Sky,
    _sky_json,
    remember_satellites_json,
    satellite_json,
)
from terminal_gw.transport.capture import CaptureReader
from tests.conftest import CORPUS
from tests.gnss.test_assembler import nmea

ODD = [None, 0.0, -0.0, 1e-5, 0.0001, 45.0, 359.9, 1e16, 9.99e15, math.nan, math.inf, -3.5]


def _pydantic(p: Payload) -> str:
    return p.model_dump_json(by_alias=True, exclude_none=True)


def test_satellite_json_is_pydantics_or_none() -> None:
    written = 0
    for az, el, ss in itertools.product(ODD, repeat=3):
        for sigid, used in itertools.product((None, 7), (True, False)):
            sat = Satellite(PRN=5, gnssid=0, svid=5, sigid=sigid, az=az, el=el, ss=ss, used=used)
            text = satellite_json(sat)
            if text is not None:
                written += 1
                assert text == sat.model_dump_json(exclude_none=True)
    assert written > 1000  # the fast path is taken for most


@pytest.mark.parametrize("corpus", ["gnss", "gnss-gpsd"])
def test_every_corpus_sky_is_pydantics_text(corpus: str) -> None:
    nmea = fast = 0
    for log in sorted((CORPUS / corpus).glob("*.log")):
        pipeline = GnssPipeline()
        for chunk in CaptureReader(log):
            for record in pipeline.feed(chunk.data, 1.7e9):
                if isinstance(record, Sky):
                    assert record.to_json() == _pydantic(record), log.name
                    if record.source_protocol is None:
                        nmea += 1
                        fast += _sky_json(record) is not None
    assert nmea > 100
    assert fast == nmea  # each NMEA sky written from its satellites' text


def test_odd_values_in_a_view_are_written_as_pydantic_writes_them() -> None:
    # -0 az, an SNR of 1e-5, NaN elevation (float("nan") from the sentence), a signal id.
    gsv = "GPGSV,1,1,04,29,46,-0,43,20,63,235,0.00001,18,nan,358,39,12,5,100,,1"
    pipeline = GnssPipeline()
    epoch = (
        "GPRMC,223745.00,A,3806.62964,N,12237.61382,W,0.040,77.5,110720,,,A",
        "GPGGA,223745.00,3806.62964,N,12237.61382,W,1,08,0.54,83.1,M,-29.5,M,,",
        "GPGSA,A,3,29,20,18,,,,,,,,,,0.99,0.54,0.83",
        gsv,
    )
    skies = [
        r for r in pipeline.feed(nmea(*epoch), 0.0) + pipeline.flush(0.0) if isinstance(r, Sky)
    ]
    assert len(skies) == 1
    assert skies[0].to_json() == _pydantic(skies[0])
    assert '"az":-0.0' in skies[0].to_json()


def test_a_sky_built_elsewhere_or_changed_goes_to_pydantic() -> None:
    sats = [Satellite(PRN=i, gnssid=0, svid=i, az=1.0 * i, el=10.0, ss=40.0) for i in (1, 2)]
    sky = Sky(time="2020-07-11T22:37:45.000Z", satellites=sats, nSat=2, hdop=0.9)
    assert sky.to_json() == _pydantic(sky)  # nothing remembered
    rows = [t for t in (satellite_json(s) for s in sky.satellites) if t is not None]
    remember_satellites_json(sky.satellites, rows)
    assert sky.to_json() == _pydantic(sky)
    # The list changed in place after its text was noted: written anew, not from the note.
    sky.satellites[1] = Satellite(PRN=9, gnssid=0, svid=9, ss=1e-5)
    assert sky.to_json() == _pydantic(sky)
    assert '"PRN":9' in sky.to_json()
    # Values only pydantic writes: an escaped time, a NaN DOP.
    for odd in (
        sky.model_copy(update={"time": 'a"b\\c\u00e9\n'}),
        sky.model_copy(update={"hdop": math.nan, "pdop": 1e-7}),
    ):
        remember_satellites_json(odd.satellites, rows)
        assert odd.to_json() == _pydantic(odd)


def test_a_reused_satellite_keeps_the_sign_of_a_zero() -> None:
    def epoch(second: int, gsv: str) -> bytes:
        t = f"2237{second:02d}.00"
        return nmea(
            f"GPRMC,{t},A,3806.62964,N,12237.61382,W,0.040,77.5,110720,,,A",
            f"GPGGA,{t},3806.62964,N,12237.61382,W,1,08,0.54,83.1,M,-29.5,M,,",
            "GPGSA,A,3,29,20,18,,,,,,,,,,0.99,0.54,0.83",
            gsv,
        )

    views = [
        "GPGSV,1,1,03,29,0,0,43,20,63,235,37,18,00,000,",
        "GPGSV,1,1,03,29,-0,0,43,20,63,235,37,18,00,-000,",  # the same values, signs apart
        "GPGSV,1,1,03,29,0,0,43,20,63,235,37,18,00,000,",
        "GPGSV,1,1,03,29,0,0,43,20,63,235,37,18,00,000,",  # the same: reused
    ]

    def text(sky: Sky) -> str:
        return sky.to_json().split(',"time"', 1)[1]  # the id left out

    def skies(pipeline: GnssPipeline, data: bytes) -> list[Sky]:
        return [r for r in pipeline.feed(data, 0.0) if isinstance(r, Sky)]

    together = GnssPipeline()
    got: list[str] = []
    for i, v in enumerate(views):
        got += [text(s) for s in skies(together, epoch(40 + i, v))]
    got += [text(s) for s in together.flush(0.0) if isinstance(s, Sky)]
    alone = []
    for i, v in enumerate(views):
        p = GnssPipeline()
        alone += [text(s) for s in skies(p, epoch(40 + i, v)) + p.flush(0.0) if isinstance(s, Sky)]
    assert got == alone
    assert '"el":-0.0' in got[1]
    assert '"az":-0.0' in got[1]
    assert "-0.0" not in got[2]


def test_the_fast_path_writes_every_field_of_the_models() -> None:
    # A field added to Sky or Satellite turns the fast path off (every sky goes to pydantic,
    # several times slower) until the fast path writes it too: this fails first.
    assert models._SKY_FIELDS_WRITTEN
    sky = Sky(
        time="2026-01-01T00:00:00.000Z",
        satellites=[Satellite(PRN=1, gnssid=0, svid=1, az=1.0, el=2.0, ss=3.0, used=True)],
        hdop=1.0,
    )
    remember_satellites_json(sky.satellites, [satellite_json(s) or "" for s in sky.satellites])
    assert _sky_json(sky) == _pydantic(sky)

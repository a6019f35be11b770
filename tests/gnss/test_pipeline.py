"""GnssPipeline end to end: receiver bytes in, Fix/Sky/Event records out."""

from __future__ import annotations

from terminal_gw.gnss.pipeline import GnssPipeline
from terminal_gw.models import Event, Fix, Sky
from tests.conftest import GNSS_CORPUS


def _capture(name: str) -> bytes:
    lines = (GNSS_CORPUS / name).read_bytes().splitlines(keepends=True)
    return b"".join(line for line in lines if not line.startswith(b"#"))


def test_corpus_capture_gives_one_fix_and_one_sky_per_epoch() -> None:
    p = GnssPipeline()
    out = p.feed(_capture("ublox-neo-m9n-nmea.log"), now=1000.0) + p.flush(now=1001.0)
    fixes = [r for r in out if isinstance(r, Fix)]
    skies = [r for r in out if isinstance(r, Sky)]
    assert len(fixes) == len(skies) == p.counters["epochs"] == 61
    assert fixes[0].time == "2020-07-11T22:37:45.000Z"
    assert fixes[-1].mode == 3
    assert fixes[-1].used is not None
    assert fixes[-1].used["bds"] == 5
    assert p.counters["bad_checksum"] == 0
    assert p.counters["unknown_type"] == 61  # GBS: not used
    assert p.last_valid_sentence == 1000.0


def test_record_ids_and_times_come_from_inputs_not_the_clock() -> None:
    p = GnssPipeline()
    out = p.feed(_capture("beidou-gb.log"), now=86400.0) + p.flush(now=86400.0)
    assert out
    for r in out:
        # UUIDv7 carries the millisecond `now` passed in: 86400000 = 0x5265c00.
        assert r.id.replace("-", "").startswith("000005265c00")
        assert not isinstance(r, Event)

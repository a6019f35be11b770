"""GnssPipeline end to end: receiver bytes in, Fix/Sky/Event records out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terminal_gw.gnss.framer import nmea_checksum
from terminal_gw.gnss.pipeline import GnssPipeline
from terminal_gw.models import Event, Fix, Payload, Sky
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


def _without_ids(records: list[Payload]) -> list[dict[str, object]]:
    return [{k: v for k, v in r.to_json_dict().items() if k != "id"} for r in records]


def test_records_do_not_depend_on_chunking_or_the_clock() -> None:
    data = _capture("quectel-l76k-nmea.log")[:20_000]
    whole = GnssPipeline()
    a = whole.feed(data, now=500.0) + whole.flush(now=500.0)
    small = GnssPipeline()
    b: list[Payload] = []
    for i in range(0, len(data), 7):
        b += small.feed(data[i : i + 7], now=500.0)
    b += small.flush(now=500.0)
    assert _without_ids(a) == _without_ids(b)
    assert whole.counters == small.counters
    assert any(isinstance(r, Event) for r in a) is False  # antenna OK from the start: no event


def test_epoch_reported_when_its_last_sentence_arrives_once_the_cycle_is_learned() -> None:
    lines = _capture("ublox-neo-m9n-nmea.log").splitlines(keepends=True)
    ends = [i for i, line in enumerate(lines) if line.startswith(b"$GNGBS")]
    p = GnssPipeline()
    out = p.feed(b"".join(lines[: ends[3] + 1]), now=1.0)
    # Epochs 1-2 close when the next one starts; from the third on GBS ends each cycle.
    assert [r.time for r in out if isinstance(r, Fix)] == [
        "2020-07-11T22:37:45.000Z",
        "2020-07-11T22:37:46.000Z",
        "2020-07-11T22:37:47.000Z",
        "2020-07-11T22:37:48.000Z",
    ]
    assert p.flush(now=2.0) == []


_field = st.one_of(
    st.just(""),
    st.from_regex(r"-?[0-9]{1,9}(\.[0-9]{1,7})?", fullmatch=True),
    st.sampled_from(["A", "V", "N", "S", "E", "W", "M", "K", "T", "ANTENNA OPEN", "1.2", "B"]),
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="$*,"),
        max_size=6,
    ),
)
_address = st.builds(
    str.__add__,
    st.sampled_from(["GP", "GL", "GA", "GB", "BD", "GQ", "QZ", "GI", "GN", "PQ", "GY"]),
    st.sampled_from(["GGA", "RMC", "GSA", "GSV", "VTG", "GLL", "ZDA", "GNS", "GST", "TXT"]),
)


_nonsense = st.lists(st.tuples(_address, st.lists(_field, max_size=24)), min_size=1, max_size=12)


def _check_nonsense(sentences: list[tuple[str, list[str]]]) -> None:
    data = b""
    for address, fields in sentences:
        body = ",".join([address, *fields]).encode()
        data += b"$%s*%02X\r\n" % (body, nmea_checksum(body))
    p = GnssPipeline()
    out = p.feed(data, now=1.0) + p.flush(now=2.0)
    for r in out:
        r.to_json()
    c = p.counters
    assert c["good"] == len(sentences)
    assert c["decoded"] + c["decode_error"] + c["unknown_talker"] + c["proprietary"] == c["good"]


@settings(max_examples=150, deadline=None)
@given(_nonsense)
def test_pipeline_never_raises_on_checksum_valid_nonsense(
    sentences: list[tuple[str, list[str]]],
) -> None:
    _check_nonsense(sentences)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None)
@given(_nonsense)
def test_pipeline_never_raises_on_checksum_valid_nonsense_long_run(
    sentences: list[tuple[str, list[str]]],
) -> None:
    _check_nonsense(sentences)

"""Framer: bytes in any chunking -> checked sentences, garbage skipped and counted."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terminal_gw.gnss.framer import FRAMER_COUNTERS, Frame, Framer, Sentence, nmea_checksum

GGA = b"$GNGGA,223745.00,3806.62964,N,12237.61382,W,2,12,0.54,83.1,M,-29.5,M,,0000*44"
RMC = b"$GNRMC,223745.00,A,3806.62964,N,12237.61382,W,0.040,,110720,,,D,V*0E"
GSV = b"$GBGSV,2,1,07,04,01,262,,07,03,328,,27,78,059,44,28,29,115,34,1*79"
UBX_NAV_PVT = bytes.fromhex("b5620107") + bytes(range(92)) + b"\x00\x00"
RTCM3 = bytes.fromhex("d300133ed7d30202980edeef34b4bd62ac0941986f33") + b"\x01\x02\x03"
CASIC = bytes.fromhex("bace1000060100") + b"\x24\x00\xff\x10" + bytes(20)  # holds a stray `$`


class Fed(NamedTuple):
    """A framer after a run, and the sentences it gave."""

    framer: Framer
    out: list[Sentence]

    @property
    def counters(self) -> Mapping[str, int]:
        return self.framer.counters


def frame_all(data: bytes, *, chunks: list[int] | None = None, max_sentence_len: int = 200) -> Fed:
    """A framer fed `data` split at `chunks` boundaries (or whole), then flushed."""
    f = Framer(max_sentence_len=max_sentence_len)
    out: list[Sentence] = []
    bounds = [0, *sorted(set(chunks or [])), len(data)]
    for a, b in itertools.pairwise(bounds):
        out.extend(f.feed(data[a:b]))
    out.extend(f.flush())
    return Fed(f, out)


def raws(fed: Fed) -> list[bytes]:
    return [s.raw for s in fed.out]


def with_checksum(body: bytes, *, lower: bool = False) -> bytes:
    hh = b"%02X" % nmea_checksum(body)
    return b"$" + body + b"*" + (hh.lower() if lower else hh)


def test_fields_and_address_of_a_sentence() -> None:
    (s,) = Framer().feed(GGA + b"\r\n")
    assert s == Sentence(
        address="GNGGA",
        fields=tuple(GGA[7:-3].decode().split(",")),
        raw=GGA,
        checked=True,
    )
    assert s.fields[12] == ""  # empty field kept as empty, never "0"


def test_a_sentence_split_at_every_byte_boundary_frames_the_same() -> None:
    data = b"\r\n".join([GGA, RMC, GSV]) + b"\r\n"
    whole = frame_all(data)
    assert raws(whole) == [GGA, RMC, GSV]
    for cut in range(1, len(data)):
        f = frame_all(data, chunks=[cut])
        assert raws(f) == [GGA, RMC, GSV], cut
        assert f.counters == whole.counters, cut


def test_byte_by_byte_feed() -> None:
    data = GGA + b"\r\n" + RMC + b"\r\n"
    f = Framer()
    out = [s for i in range(len(data)) for s in f.feed(data[i : i + 1])]
    assert [s.raw for s in out] == [GGA, RMC]


@pytest.mark.parametrize(
    "ending", [b"\r\n", b"\n", b"\r", b"\n\r"], ids=["CRLF", "LF", "CR", "LFCR"]
)
def test_every_line_ending_style(ending: bytes) -> None:
    f = Framer()
    out = f.feed(GGA + ending + RMC + ending + GSV + ending)
    assert [s.raw for s in out] == [GGA, RMC, GSV]
    assert f.counters["garbage_bytes"] == 0
    assert f.counters["good"] == 3


@pytest.mark.parametrize(
    "junk",
    [b"\x00\xff\x13garbage", UBX_NAV_PVT, RTCM3, CASIC],
    ids=["noise", "UBX", "RTCM3", "CASIC"],
)
def test_resynchronises_on_next_dollar_after_binary(junk: bytes) -> None:
    data = GGA + b"\r\n" + junk + RMC + b"\r\n" + junk + junk + GSV + b"\r\n"
    f = frame_all(data)
    assert raws(f) == [GGA, RMC, GSV]
    assert f.counters["good"] == 3
    assert f.counters["garbage_bytes"] > 0
    for cut in range(1, len(data), 7):
        assert raws(frame_all(data, chunks=[cut, cut + 3])) == [GGA, RMC, GSV]


def test_sentence_cut_short_by_a_new_one_is_dropped_and_counted() -> None:
    f = Framer()
    out = f.feed(GGA[:30] + RMC + b"\r\n")
    assert [s.raw for s in out] == [RMC]
    assert f.counters["truncated"] == 1


def test_lowercase_checksum_is_accepted() -> None:
    zda = with_checksum(b"GNZDA,223745.00,11,07,2020,00,00", lower=True)
    assert zda.endswith(b"*7a")
    f = Framer()
    assert [x.raw for x in f.feed(zda + b"\r\n")] == [zda]
    assert f.counters["good"] == 1


def test_bad_checksum_is_counted_and_dropped() -> None:
    f = Framer()
    bad = GGA[:-2] + b"45"
    assert f.feed(bad + b"\r\n" + b"$GPGGA,1*Z1\r\n" + RMC + b"\r\n")[0].raw == RMC
    assert f.counters["bad_checksum"] == 2
    assert f.counters["good"] == 1


def test_no_checksum_rejected_by_default_accepted_when_allowed() -> None:
    line = b"$GPGGA,223745.00,3806.62964,N,12237.61382,W,1,08,1.0,83.1,M,-29.5,M,,"
    strict = Framer()
    assert strict.feed(line + b"\r\n") == []
    assert strict.counters["no_checksum"] == 1
    lax = Framer(allow_no_checksum=True)
    (s,) = lax.feed(line + b"\r\n")
    assert s.checked is False
    assert s.address == "GPGGA"
    assert lax.counters["no_checksum"] == 1
    assert lax.counters["good"] == 0


def test_overlong_line_is_dropped_and_the_next_sentence_kept() -> None:
    long_body = b"GPTXT," + b"A" * 250
    long_line = with_checksum(long_body)
    f = frame_all(long_line + b"\r\n" + GGA + b"\r\n")
    assert raws(f) == [GGA]
    assert f.counters["overlong"] == 1
    assert f.counters["garbage_bytes"] == 0
    # The limit is configurable; a line of exactly max_sentence_len is kept.
    assert raws(frame_all(GGA + b"\r\n", max_sentence_len=len(GGA))) == [GGA]
    assert raws(frame_all(GGA + b"\r\n", max_sentence_len=len(GGA) - 1)) == []


def test_every_counter_is_present_from_the_start() -> None:
    assert set(Framer().counters) == set(FRAMER_COUNTERS)


def test_non_ascii_inside_a_line_is_malformed() -> None:
    body = "GPTXT,01,01,02,é".encode()
    f = Framer()
    assert f.feed(with_checksum(body) + b"\r\n") == []
    assert f.counters["malformed"] == 1


def test_last_line_without_line_end_is_framed_on_flush() -> None:
    f = Framer()
    assert f.feed(GGA) == []
    assert [s.raw for s in f.flush()] == [GGA]


def test_buffer_stays_bounded_without_line_ends() -> None:
    f = Framer(max_sentence_len=120)
    f.feed(b"$GPGGA,")
    for _ in range(2000):
        f.feed(b"1234567890" * 10)
        assert f.buffered <= 120
    assert f.counters["overlong"] == 1
    assert f.counters["garbage_bytes"] == 0  # the rest of an overlong line is not garbage
    assert [s.raw for s in f.feed(b"\r\n" + GGA + b"\r\n")] == [GGA]
    # Sentence starts without ends: each cut short by the next, never piling up.
    for _ in range(200):
        f.feed(b"$GPGGA,1234567890" * 10)
        assert f.buffered <= 120
    assert f.counters["truncated"] > 0


# --- properties -------------------------------------------------------------------------

_stream_parts = st.lists(
    st.one_of(
        st.sampled_from([GGA, RMC, GSV, b"\r\n", b"\n", b"\r", b"$", b"*", UBX_NAV_PVT, RTCM3]),
        st.binary(max_size=40),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    f = frame_all(data, chunks=[len(data) // 3])
    assert f.framer.buffered == 0
    for s in f.out:
        assert s.raw.startswith(b"$")


@settings(max_examples=300, deadline=None)
@given(_stream_parts, st.lists(st.integers(min_value=0, max_value=3000), max_size=20))
def test_output_does_not_depend_on_chunking(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    whole = frame_all(data, max_sentence_len=100)
    split = frame_all(data, chunks=[c for c in cuts if 0 < c < len(data)], max_sentence_len=100)
    assert split.out == whole.out
    assert split.counters == whole.counters


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=300).filter(lambda b: b"\r" not in b and b"\n" not in b))
def test_buffer_bounded_on_a_stream_with_no_line_ends(block: bytes) -> None:
    f = Framer(max_sentence_len=80)
    for _ in range(50):
        f.feed(block)
        assert f.buffered <= 80


class _ByteScanFramer(Framer):
    """The framer without its whole-line shortcut: every byte through the byte scan."""

    def _lines(self, data: bytes, out: list[Frame]) -> int:
        return 0


_LONG = with_checksum(b"GPTXT,01,01,02," + b"A" * 81)  # max_sentence_len (100) bytes
assert len(_LONG) == 100
_line_parts = st.lists(
    st.one_of(
        st.sampled_from(
            [
                GGA + b"\r\n",
                RMC + b"\n",
                GSV + b"\r\r\n",
                GGA[:30] + b"$" + RMC[1:] + b"\r\n",  # cut short by a `$`
                GGA[:30] + b"\r" + GGA[30:] + b"\n",  # a CR inside
                _LONG + b"\r\n",  # exactly max_sentence_len
                _LONG[:-3] + b"A" + _LONG[-3:] + b"\r\n",  # one byte over
                with_checksum("GPTXT,é".encode()) + b"\r\n",
                with_checksum(b"GPTXT,01") + b"x\r\n",  # bad checksum field
                b"$GPGGA,no,checksum\r\n",
                b"garbage\r\n",
                b"\r\n",
                b"\n",
                UBX_NAV_PVT,
                CASIC,
                RTCM3,
            ]
        ),
        st.binary(max_size=20),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(_line_parts, st.lists(st.integers(min_value=0, max_value=3000), max_size=10))
def test_whole_lines_frame_as_the_byte_scan_frames_them(
    parts: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(parts)
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    results = []
    for framer in (Framer(max_sentence_len=100), _ByteScanFramer(max_sentence_len=100)):
        out: list[Frame] = []
        for a, b in itertools.pairwise(bounds):
            out.extend(framer.feed(data[a:b]))
        out.extend(framer.flush())
        results.append((out, dict(framer.counters), framer.buffered))
    assert results[0] == results[1]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_checksum_is_the_xor_of_every_byte(body: bytes) -> None:
    xor = 0
    for byte in body:
        xor ^= byte
    assert nmea_checksum(body) == xor


# -- whole lines framed together (feed_lines): as if each line were fed alone ----------------

_LINE_PARTS = [
    GGA,
    RMC,
    GSV,
    b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47",
    b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48",  # bad checksum
    b"$GPGSV,1,1,01,05,10,100,40",  # no checksum
    b"$GP*ZZ",
    b"$,*2C",
    b"",
    b"\r",
    b"$GPRMC,1*",
    b"$GP$GPTXT,1*00",
    b"\xb5\x62\x01\x07",
    b"garbage",
    b"$" + b"A" * 250,
    b"$GPTXT,01,01,02,ANTENNA OK*35",
    b"\xff$",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(_LINE_PARTS), st.sampled_from([b"\n", b"\r\n"])), max_size=30
    ),
    st.booleans(),
)
def test_feed_lines_frames_each_line_as_feeding_it_alone(
    parts: list[tuple[bytes, bytes]], allow_no_checksum: bool
) -> None:
    lines = [body + end for body, end in parts]
    alone = Framer(allow_no_checksum=allow_no_checksum)
    expected = [alone.feed(line) for line in lines]
    together = Framer(allow_no_checksum=allow_no_checksum)
    data = b"".join(lines)
    got: list[list[Frame]] = []
    pos = 0
    while pos < len(data):
        entries, end = together.feed_lines(data, pos)
        got += [[] if e is None else [e] for e in entries]
        assert end == pos + sum(len(line) for line in lines[len(got) - len(entries) : len(got)])
        if end < len(data):  # the line the byte scan must see: fed alone
            pos = data.index(b"\n", end) + 1
            got.append(together.feed(data[end:pos]))
        else:
            pos = end
    assert got == expected
    assert together.counters == alone.counters
    assert together.buffered == alone.buffered


def test_feed_lines_takes_nothing_while_bytes_are_buffered() -> None:
    framer = Framer()
    framer.feed(b"$GPGGA,1")
    assert framer.feed_lines(b"$GPTXT,01,01,02,ANTENNA OK*35\n") == ([], 0)

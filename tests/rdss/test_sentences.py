"""RDSS sentences: every sentence of both dialects parsed and built, from the reference
sentences and from records built off the field tables; property tests on both directions."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terminal_gw.errors import TerminalGwError
from terminal_gw.gnss.framer import Framer
from terminal_gw.rdss.content import decode_content
from terminal_gw.rdss.sentences import (
    ADDRESSES,
    Beam,
    BeamPower,
    BeamStatus,
    CardInfo,
    CardInfo3,
    CardQuery,
    CardQuery3,
    Feedback,
    Feedback3,
    OutputControl,
    Received,
    Received3,
    SendRequest,
    SendRequest3,
    SentenceError,
    build,
    parse,
    parse_line,
)
from tests.conftest import CORPUS

REFERENCE = CORPUS / "rdss" / "reference-sentences.txt"


def reference_lines() -> list[bytes]:
    return [
        line.strip() for line in Path(REFERENCE).read_bytes().splitlines() if line.startswith(b"$")
    ]


def test_every_reference_sentence_of_a_known_address_parses_and_rebuilds() -> None:
    seen: set[str] = set()
    for line in reference_lines():
        address = line[1:6].decode()
        if address not in ADDRESSES:
            with pytest.raises(SentenceError, match="not an RDSS sentence"):
                parse_line(line)
            continue
        record = parse_line(line)
        seen.add(type(record).__name__)
        assert parse_line(build(record)) == record
    # The reference file holds every 2.1 sentence and the BDS-3 queries and feedback.
    assert seen >= {
        "CardQuery",
        "CardInfo",
        "OutputControl",
        "BeamStatus",
        "SendRequest",
        "Feedback",
        "Received",
        "CardQuery3",
        "Feedback3",
    }


def test_reference_values() -> None:
    card = parse_line(b"$BDICI,0242286,00242286,0000011,6,60,3,N,0*38")
    assert card == CardInfo("0242286", "00242286", "0000011", 6, 60, 3, False, 0)
    assert card.present
    empty = parse_line(b"$BDICI,0000000,00000000,0000000,0,0,0,N,0*0B")
    assert isinstance(empty, CardInfo)
    assert not empty.present
    fki = parse_line(b"$BDFKI,TXA,Y,Y,0,0040*17")
    assert fki == Feedback("TXA", True, True, 0, 40)
    fki3 = parse_line(b"$BDFKI,000000,TCQ,Y,5,0*74")
    assert fki3 == Feedback3("000000", "TCQ", True, 5, 0)
    bsi = parse_line(b"$BDBSI,01,03,3,2,2,0,3,0,0,3,0,0*5F")
    assert bsi == BeamStatus(1, 3, (3, 2, 2, 0, 3, 0, 0, 3, 0, 0))
    txr = parse_line(b"$BDTXR,1,0179773,2,,A468656C6C6F*43")
    assert txr == Received(1, "0179773", 2, None, "A468656C6C6F")
    assert decode_content(txr.content, "mixed").text == "hello"
    txa = parse_line(b"$CCTXA,0242407,1,2,A4B9E3D6DDBAA3C1C4BFC6BCBCD3D0CFDEB9ABCBBE*0F")
    assert isinstance(txa, SendRequest)
    assert decode_content(txa.content, "mixed").text == "广州海聊科技有限公司"


def _with_checksum(body: str) -> bytes:
    from terminal_gw.gnss.framer import nmea_checksum

    return f"${body}*{nmea_checksum(body.encode()):02X}".encode()


def test_bds3_layouts_seen_in_device_output() -> None:
    # The PROTOCOLS.md examples (logged without a checksum: one is added here).
    icp = parse_line(_with_checksum("BDICP,4238473,0,0,3,0,N,2,N,1,0,0,3,1,60,2,0,0,0,0,21,0,0,0"))
    assert icp == CardInfo3("4238473", "0", "0", False, 60, 2)
    pwi = parse_line(
        _with_checksum("BDPWI,023628.00,00,04,2,51,44,0,4,50,43,0,11,48,41,0,16,51,44,0")
    )
    assert isinstance(pwi, BeamPower)
    assert (pwi.bds2_beams, pwi.bds3_beams) == (0, 4)
    assert pwi.beams[2] == Beam(11, 48, 41, 0)
    tci = parse_line(
        _with_checksum("BDTCI,04207733,4207733,2,023242,2,0,90000000000065BEF749B2E2CAD4")
    )
    assert tci == Received3(
        "04207733", "4207733", 2, "023242", 2, 0, "90000000000065BEF749B2E2CAD4"
    )
    # The code-comment BDTXR without checksum, Chinese text in mixed mode.
    body = "A4CDA8D0C5B2E2CAD420D2BBB6FEC8FDCBC4CEE5C1F9C6DFB0CBBEC5CAAE31323334353637383930"
    txr = parse_line(_with_checksum(f"BDTXR,3,0455998,2,,{body}"))
    assert isinstance(txr, Received)
    assert txr.info_class == 3
    assert decode_content(txr.content, "mixed").text == "通信测试 一二三四五六七八九十1234567890"


CONSTRUCTED = [
    SendRequest("0166166", 1, 0, "CDA8D0C5"),
    Received(4, "0166166", 0, "1201", "CDA8D0C5"),
    Feedback("TXA", False, True, 2, 60),
    Feedback3("101010", "TCQ", False, 1, 58),
    CardQuery(1, 3),
    CardQuery3(0, 0),
    CardInfo("0300001", "00300001", "0000011", 3, 1, 4, True, 2),
    CardInfo3("4238473", "1", "2", True, 30, 3),
    BeamStatus(2, 5, (4, 4, 3, 0, 0, 1, 2, 3, 4, 0)),
    BeamPower("000001.00", 1, 2, (Beam(1, 40, 38, 1), Beam(2, 44, 41, 0), Beam(3, 30, 31, 0))),
    OutputControl("PWI", 4, None),
    SendRequest3("4207733", 2, 1, 3, "A4313233", 0),
    Received3("04207733", "4207733", 2, None, 1, 0, "CDA8"),
]


@pytest.mark.parametrize("record", CONSTRUCTED, ids=lambda r: type(r).__name__)
def test_constructed_sentences_roundtrip(record: object) -> None:
    line = build(record)  # type: ignore[arg-type]
    assert line.endswith(b"\r\n")
    assert line.startswith(b"$")
    assert parse_line(line) == record


def test_every_address_is_covered_by_a_constructed_sentence() -> None:
    assert {type(r).ADDRESS for r in CONSTRUCTED} == set(ADDRESSES)


@pytest.mark.parametrize(
    "line",
    [
        b"$BDICI,0242286,00242286,0000011,6,60,3,X,0*2E",  # encryption neither E nor N
        b"$BDBSI,01,03,3,2,2,0,3,0,0,3,0*73",  # 9 beams
        b"$BDTXR,1,0179773,2,,A468656C6C6*73",  # odd hex
        b"$BDTXR,1,01797X3,2,,A468656C6C6F*0B",  # sender not digits
        b"$BDBSI,01,03,3,2,2,0,9,0,0,3,0,0*55",  # power 9
        b"$BDPWI,023628.00,00,01,2,51,44*1C",  # beam cut short
        b"$BDICP,4238473,0,0*5E",  # too few fields
        b"$BDTXR,1,0179773,2,,A468656C6C6F*44",  # bad checksum
        b"$GPGGA,1*2E",  # not RDSS
    ],
)
def test_bad_sentences_raise_the_projects_error(line: bytes) -> None:
    with pytest.raises(SentenceError):
        parse_line(line)


@pytest.mark.parametrize("bad", [",", "*", "$", "\r", "\n", "1,2", "ä"])
def test_build_refuses_unsafe_fields(bad: str) -> None:
    with pytest.raises(SentenceError):
        build(SendRequest("0166166" + bad, 1, 1, "31"))
    with pytest.raises(SentenceError):
        build(SendRequest("0166166", 1, 1, "31" + bad))
    with pytest.raises(SentenceError):
        build(OutputControl("BSI" + bad, 2, 1))


# ---------------------------------------------------------------------------
# Properties.

digits = st.text(alphabet="0123456789", min_size=1, max_size=8)
small = st.integers(min_value=0, max_value=9)
num = st.integers(min_value=0, max_value=99999)
hexs = st.binary(max_size=200).map(lambda b: b.hex().upper())
times = st.one_of(st.none(), st.from_regex(r"\A[0-9]{6}(\.[0-9]{2})?\Z"))

records = st.one_of(
    st.builds(SendRequest, digits, small, small, hexs),
    st.builds(Received, small, digits, small, times, hexs),
    st.builds(
        Feedback, st.sampled_from(["TXA", "ICA", "RMO"]), st.booleans(), st.booleans(), small, num
    ),
    st.builds(Feedback3, times, st.sampled_from(["TCQ", "ICR"]), st.booleans(), small, num),
    st.builds(CardQuery, small, st.integers(0, 99)),
    st.builds(CardQuery3, small, st.integers(0, 99)),
    st.builds(CardInfo, digits, digits, digits, small, num, small, st.booleans(), num),
    st.builds(CardInfo3, digits, digits, digits, st.booleans(), num, small),
    st.builds(
        BeamStatus, st.integers(0, 99), st.integers(0, 99), st.tuples(*[st.integers(0, 4)] * 10)
    ),
    st.builds(
        BeamPower,
        times,
        st.integers(0, 99),
        st.integers(0, 99),
        st.lists(st.builds(Beam, num, num, num, small), max_size=12).map(tuple),
    ),
    st.builds(
        OutputControl, st.sampled_from(["BSI", "PWI", "ZDA"]), small, st.one_of(st.none(), num)
    ),
    st.builds(SendRequest3, digits, small, small, small, hexs, small),
    st.builds(Received3, digits, digits, small, times, small, small, hexs),
)


@settings(max_examples=400, deadline=None)
@given(records)
def test_build_then_parse_gives_the_record_back(record: object) -> None:
    assert parse_line(build(record)) == record  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_raise_only_the_projects_errors(data: bytes) -> None:
    with contextlib.suppress(TerminalGwError):
        parse_line(data)


@settings(max_examples=300, deadline=None)
@given(records, st.binary(max_size=40))
def test_any_fields_behind_a_valid_checksum_raise_only_the_projects_errors(
    record: object, noise: bytes
) -> None:
    # A well-framed sentence with its fields mangled: the checksum passes, the table decides.
    line = build(record).rstrip(b"\r\n")  # type: ignore[arg-type]
    body = line[1 : line.rfind(b"*")] + noise.replace(b"*", b"").replace(b"$", b"")
    framer = Framer(max_sentence_len=4096)
    from terminal_gw.gnss.framer import nmea_checksum

    for s in framer.feed(b"$" + body + b"*%02X\r\n" % nmea_checksum(body)):
        with contextlib.suppress(TerminalGwError):
            parse(s)

"""The hot types decoded from their field tables give exactly what pynmeagps gives, on every
sentence of both corpora (and on edge cases a corpus may lack)."""

from __future__ import annotations

import contextlib

import pytest

from terminal_gw.gnss.decoder import _FAST_DECODERS, Decoder, _quick
from terminal_gw.gnss.framer import Framer, Sentence
from tests.conftest import CORPUS, GNSS_CORPUS

HOT = ("GGA", "RMC", "GNS", "GLL", "VTG", "ZDA", "GST", "TXT")


def _sentences() -> list[Sentence]:
    out: list[Sentence] = []
    for directory in (GNSS_CORPUS, CORPUS / "gnss-gpsd"):
        for path in sorted(directory.glob("*.log")):
            framer = Framer(allow_no_checksum=True)
            frames = framer.feed(path.read_bytes()) + framer.flush()
            out.extend(f for f in frames if isinstance(f, Sentence) and f.address[2:] in HOT)
    return out


def _both(sentence: Sentence) -> tuple[object, object, dict[str, int], dict[str, int]]:
    fast, slow = Decoder(), Decoder()
    slow.fast = False
    a, b = fast.decode(sentence), slow.decode(sentence)
    return a, b, dict(fast.counters), dict(slow.counters)


def test_every_corpus_sentence_of_a_hot_type_decodes_as_pynmeagps_decodes_it() -> None:
    sentences = _sentences()
    assert len(sentences) > 5_000
    kinds = {s.address[2:] for s in sentences}
    assert kinds == set(HOT)
    for sentence in sentences:
        a, b, ca, cb = _both(sentence)
        assert a == b, sentence.raw
        assert ca == cb, sentence.raw
    # And the field tables, not pynmeagps, decoded nearly all of them.
    quick = 0
    for sentence in sentences:
        with contextlib.suppress(ValueError, IndexError):
            talker, kind = sentence.address[:2], sentence.address[2:]
            quick += _quick(_FAST_DECODERS[kind], talker, sentence.fields) is not None
    assert quick >= 0.99 * len(sentences)


def _sentence(line: str) -> Sentence:
    framer = Framer(allow_no_checksum=True)
    (frame,) = framer.feed(line.encode() + b"\r\n") + framer.flush()
    assert isinstance(frame, Sentence)
    return frame


@pytest.mark.parametrize(
    "line",
    [
        "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
        "$GPGGA,123519.1234567,4807.038,S,01131.000,W,1,08,0.9,545.4,M,46.9,M,,",
        "$GPGGA,246000.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
        "$GPGGA,12a519.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
        "$GPGGA,123519.00,807.038,N,1131.000,E,1,08,99.9,,M,,M,,",
        "$GPGGA,123519.00,4807.038,N,01131.000,E,x,08,0.9,545.4,M,46.9,M,,",
        "$GPGGA,,,,,,0,00,99.99,,,,,,",
        "$GPGGA,123519.",
        "$GNRMC,235960.00,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W,A",
        "$GNRMC,123519.00,A,4807.038,N,01131.000,E,022.4,084.4,320394,003.1,W,A",
        "$GNRMC,123519.00,V,,,,,,,,,,N",
        "$GNRMC,123519.00,A,4807.038,N,01131.000,E,,,230369,,,D",
        "$GNGLL,4807.038,N,01131.000,E,123519.00,A,A",
        "$GNGLL,4807.038,N",
        "$GNGNS,123519.00,4807.038,N,01131.000,E,AAN,12,0.9,545.4,46.9,,",
        "$GNVTG,084.4,T,,M,022.4,N,041.5,K,A",
        "$GNZDA,123519.00,23,03,1994,00,00",
        "$GNZDA,123519.00,31,02,1994,00,00",
        "$GPGST,123519.00,1.0,2.0,3.0,45.0,1.5,2.5,3.5",
        "$GPTXT,01,01,02,ANTENNA OK",
        "$GNTXT,01,01,02,0,01,26600,00,01",
        "$GPTXT,01,01",
        "$GPTXT,,,,",
        "$GPTXT,x1,01,02,text",
        "$GPTXT,1.5,01,02,text",
    ],
)
def test_edge_cases_decode_as_pynmeagps_decodes_them(line: str) -> None:
    a, b, ca, cb = _both(_sentence(line))
    assert a == b
    assert ca == cb

"""GNSS pipeline: receiver bytes in, Fix / Sky / Event records out (framer, decoder, assembler).

Pure: no I/O, no clock reads; the caller passes `now` (system unix time) with each chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from terminal_gw.gnss.assembler import EpochAssembler
from terminal_gw.gnss.decoder import Decoder
from terminal_gw.gnss.framer import Framer, Sentence
from terminal_gw.models import Payload


class GnssPipeline:
    """Frame, decode and assemble a GNSS receiver's byte stream into payload records."""

    def __init__(self, *, max_sentence_len: int = 200, allow_no_checksum: bool = False) -> None:
        self.framer = Framer(max_sentence_len=max_sentence_len, allow_no_checksum=allow_no_checksum)
        self.decoder = Decoder()
        self.assembler = EpochAssembler()
        self.last_valid_sentence: float | None = None
        #: Called with every framed sentence, before it is decoded (the local NMEA and gpsd
        #: servers); must not block. Empty unless a server is on.
        self.sentence_observers: list[Callable[[Sentence], None]] = []

    def feed(self, data: bytes, now: float) -> list[Payload]:
        """Fix, Sky and Event records completed by these bytes, in order."""
        return self._run(self.framer.feed(data), now)

    def flush(self, now: float) -> list[Payload]:
        """End of stream: records of the epoch still open."""
        out = self._run(self.framer.flush(), now)
        out.extend(self.assembler.flush(now))
        return out

    def _run(self, sentences: list[Sentence], now: float) -> list[Payload]:
        out: list[Payload] = []
        for sentence in sentences:
            if sentence.checked:
                self.last_valid_sentence = now
            for observe in self.sentence_observers:
                observe(sentence)
            msg = self.decoder.decode(sentence)
            if msg is not None:
                out.extend(self.assembler.add(msg, now))
            out.extend(self.assembler.sentence_done(sentence.address))
        return out

    @property
    def counters(self) -> Mapping[str, int]:
        """Every outcome counted: framer, decoder and assembler counters in one mapping."""
        merged: dict[str, int] = dict(self.framer.counters)
        merged.update(self.decoder.counters)
        a = self.assembler
        merged.update(
            epochs=a.epochs,
            fixes=a.fixes,
            skies=a.skies,
            events=a.events,
            epochs_oversized=a.oversized,
        )
        return merged

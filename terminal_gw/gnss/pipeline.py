"""GNSS pipeline: receiver bytes in, Fix / Sky / Event records out (framer, decoder, assembler).

NMEA sentences go through the NMEA decoder and epoch assembler; UBX and CASIC frames through
their decoders and the binary assembler. When a receiver sends both, a SourceSelector keeps
one fix and one sky per epoch (`[gnss] prefer`).

Pure: no I/O, no clock reads; the caller passes `now` (system unix time) with each chunk.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Mapping

from terminal_gw.gnss.assembler import EpochAssembler
from terminal_gw.gnss.binary import BinaryAssembler, NavMessage, Prefer, SourceSelector
from terminal_gw.gnss.casic import decode_casic
from terminal_gw.gnss.decoder import Decoder
from terminal_gw.gnss.framer import BinaryFrame, Frame, Framer, Sentence
from terminal_gw.gnss.ubx import decode_ubx
from terminal_gw.models import Payload

#: Binary decoding outcomes (keys of `GnssPipeline.counters`, always present).
BINARY_COUNTERS = ("binary_decoded", "binary_unused", "binary_decode_error")
_BINARY_ERRORS = (ValueError, struct.error, OverflowError, KeyError, TypeError)


class GnssPipeline:
    """Frame, decode and assemble a GNSS receiver's byte stream into payload records."""

    def __init__(
        self,
        *,
        max_sentence_len: int = 200,
        allow_no_checksum: bool = False,
        prefer: Prefer = "auto",
    ) -> None:
        self.framer = Framer(max_sentence_len=max_sentence_len, allow_no_checksum=allow_no_checksum)
        self.decoder = Decoder()
        self.assembler = EpochAssembler()
        self.binary = BinaryAssembler()
        self.selector = SourceSelector(prefer)
        self._binary_counters: Counter[str] = Counter(dict.fromkeys(BINARY_COUNTERS, 0))
        # Set once a binary frame has been decoded: from then on both sides go through the
        # selector (an NMEA-only receiver never pays for it).
        self._mixed = False
        self.last_valid_sentence: float | None = None
        #: Called with every framed sentence, before it is decoded (the local NMEA and gpsd
        #: servers); must not block. Empty unless a server is on.
        self.sentence_observers: list[Callable[[Sentence], None]] = []
        #: The same for every checked binary (UBX, CASIC) frame (gpsd's raw watchers).
        self.binary_observers: list[Callable[[BinaryFrame], None]] = []

    def feed(self, data: bytes, now: float) -> list[Payload]:
        """Fix, Sky and Event records completed by these bytes, in order."""
        return self._run(self.framer.feed(data), now)

    def frame_lines(self, data: bytes, start: int = 0) -> tuple[list[Sentence | None], int]:
        """The framer's `feed_lines`: the sentences of whole lines of `data` from `start`, one
        entry a line, for `feed_sentence` (a replay paces its clock sentence by sentence)."""
        return self.framer.feed_lines(data, start)

    def feed_sentence(self, sentence: Sentence, now: float) -> list[Payload]:
        """Records completed by one framed sentence: what `feed` does with each it frames."""
        if sentence.checked:
            self.last_valid_sentence = now
        for observe in self.sentence_observers:
            observe(sentence)
        msg = self.decoder.decode(sentence)
        assembler = self.assembler
        if self._mixed:
            out: list[Payload] = []
            if msg is not None:
                self._nmea_records(assembler.add(msg, now), now, out)
            self._nmea_records(assembler.sentence_done(sentence.address), now, out)
            return out
        if msg is None:
            return assembler.sentence_done(sentence.address)
        # Both give a new list.
        records = assembler.add(msg, now)
        done = assembler.sentence_done(sentence.address)
        if done:
            records += done
        return records

    def flush(self, now: float) -> list[Payload]:
        """End of stream: records of the epoch still open."""
        out = self._run(self.framer.flush(), now)
        self._nmea_records(self.assembler.flush(now), now, out)
        self._binary_records(self.binary.flush(), now, out)
        return out

    def _run(self, frames: list[Frame], now: float) -> list[Payload]:
        out: list[Payload] = []
        decode = self.decoder.decode
        add = self.assembler.add
        done = self.assembler.sentence_done
        observers = self.sentence_observers
        for sentence in frames:
            if isinstance(sentence, BinaryFrame):
                self.last_valid_sentence = now
                for see in self.binary_observers:
                    see(sentence)
                self._binary_frame(sentence, now, out)
                continue
            if sentence.checked:
                self.last_valid_sentence = now
            if observers:
                for observe in observers:
                    observe(sentence)
            msg = decode(sentence)
            if self._mixed:
                if msg is not None:
                    self._nmea_records(add(msg, now), now, out)
                self._nmea_records(done(sentence.address), now, out)
                continue
            if msg is not None and (records := add(msg, now)):
                out += records
            if records := done(sentence.address):
                out += records
        return out

    def _binary_frame(self, frame: BinaryFrame, now: float, out: list[Payload]) -> None:
        msg: NavMessage | None
        try:
            msg = decode_ubx(frame) if frame.protocol == "ubx" else decode_casic(frame)
        except _BINARY_ERRORS:
            self._binary_counters["binary_decode_error"] += 1
            return
        if msg is None:
            self._binary_counters["binary_unused"] += 1
            return
        self._binary_counters["binary_decoded"] += 1
        self._mixed = True
        self._binary_records(self.binary.add(msg, now), now, out)

    def _nmea_records(self, records: list[Payload], now: float, out: list[Payload]) -> None:
        if not self._mixed:
            out.extend(records)
            return
        admit = self.selector.admit
        out.extend(r for r in records if admit(r, binary=False, now=now))

    def _binary_records(self, records: list[Payload], now: float, out: list[Payload]) -> None:
        admit = self.selector.admit
        out.extend(r for r in records if admit(r, binary=True, now=now))

    @property
    def counters(self) -> Mapping[str, int]:
        """Every outcome counted: framer, decoder and assembler counters in one mapping."""
        merged: dict[str, int] = dict(self.framer.counters)
        merged.update(self.decoder.counters)
        merged.update(self._binary_counters)
        a = self.assembler
        b = self.binary
        merged.update(
            epochs=a.epochs,
            fixes=a.fixes,
            skies=a.skies,
            events=a.events,
            epochs_oversized=a.oversized,
            binary_epochs=b.epochs,
            binary_fixes=b.fixes,
            binary_skies=b.skies,
            source_dropped=self.selector.dropped,
        )
        return merged

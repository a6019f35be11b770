"""Capture files: round trip, readability, rotation, raw captures, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from terminal_gw.errors import TransportError
from terminal_gw.transport.capture import (
    MAGIC,
    CaptureReader,
    CaptureWriter,
    Chunk,
    escape,
    read_capture,
    rotated_files,
    unescape,
)
from tests.conftest import GNSS_CORPUS

ports = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1).filter(
    lambda p: not p.startswith("#")
)
chunks = st.lists(
    st.tuples(ports, st.sampled_from(["<", ">"]), st.binary(max_size=300)), max_size=30
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=chunks, start=st.floats(min_value=0, max_value=4e9))
def test_any_bytes_ports_and_directions_round_trip(
    tmp_path: Path, items: list[tuple[str, str, bytes]], start: float
) -> None:
    path = tmp_path / "cap.tgw"
    with CaptureWriter(path, start=start) as w:
        for i, (port, direction, data) in enumerate(items):
            w.write(port, direction, data, ts=w.start + i * 0.25)  # type: ignore[arg-type]
    got = list(read_capture(path))
    assert [(c.port, c.direction, c.data) for c in got] == items
    for i, c in enumerate(got):
        assert c.ts is not None
        assert c.ts == pytest.approx(start + i * 0.25, abs=2e-6)


@given(data=st.binary(max_size=500))
def test_escaped_bytes_are_one_printable_ascii_line(data: bytes) -> None:
    text = escape(data)
    assert all(0x20 <= ord(ch) <= 0x7E for ch in text)
    assert unescape(text) == data


def test_nmea_is_readable_as_is_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cap.tgw"
    sentence = b"$GNGGA,074150.799,,,,,0,00,,,M,0.0,M,,0000,*64\r\n"
    with CaptureWriter(path) as w:
        w.write("gnss", "<", sentence)
        w.write("modem", ">", b"AT+CSQ\r")
        w.write("gnss", "<", b"\xb5\x62\x01\x07\\")
    lines = path.read_text(encoding="ascii").splitlines()
    assert lines[0].startswith(MAGIC + "1 start=")
    body = [ln for ln in lines if not ln.startswith("#")]
    assert body[0].split(" ", 3)[1:] == [
        "gnss",
        "<",
        "$GNGGA,074150.799,,,,,0,00,,,M,0.0,M,,0000,*64\\r\\n",
    ]
    assert body[1].endswith(" modem > AT+CSQ\\r")
    assert body[2].endswith(" gnss < \\xb5b\\x01\\x07\\\\")


def test_writer_timestamps_never_run_backwards(tmp_path: Path) -> None:
    path = tmp_path / "cap.tgw"
    with CaptureWriter(path) as w:
        for i in range(50):
            w.write("gnss", "<", b"x%d" % i)
    stamps = [c.ts for c in read_capture(path)]
    assert all(t is not None for t in stamps)
    assert stamps == sorted(stamps)  # type: ignore[type-var]


def test_rotation_keeps_the_newest_files_within_the_size(tmp_path: Path) -> None:
    path = tmp_path / "gnss.tgw"
    payloads = [b"$GPGGA,%06d,,,,,0,00,,,M,,M,,*00\r\n" % i for i in range(400)]
    with CaptureWriter(path, max_bytes=4000, keep=2) as w:
        for p in payloads:
            w.write("gnss", "<", p)
    files = rotated_files(path)
    assert [f.name for f in files] == ["gnss.tgw.2", "gnss.tgw.1", "gnss.tgw"]
    assert not (tmp_path / "gnss.tgw.3").exists()
    for f in files:
        assert f.stat().st_size <= 4000
        assert f.read_text(encoding="ascii").startswith(MAGIC)
    kept = [c.data for f in files for c in read_capture(f)]
    # The newest chunks survive, in order, with nothing missing between files.
    assert kept == payloads[-len(kept) :]
    assert len(kept) > 150


def test_rotation_with_keep_zero_keeps_only_the_current_file(tmp_path: Path) -> None:
    path = tmp_path / "gnss.tgw"
    with CaptureWriter(path, max_bytes=1000, keep=0) as w:
        for i in range(100):
            w.write("gnss", "<", b"sentence %03d\r\n" % i)
    assert [f.name for f in rotated_files(path)] == ["gnss.tgw"]
    data = [c.data for c in read_capture(path)]
    assert data[-1] == b"sentence 099\r\n"
    assert len(data) < 100


def test_a_chunk_larger_than_max_bytes_is_still_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "big.tgw"
    big = bytes(range(256)) * 20
    with CaptureWriter(path, max_bytes=500, keep=1) as w:
        w.write("gnss", "<", b"small")
        w.write("gnss", "<", big)
    assert [c.data for c in read_capture(path)] == [big]
    assert [c.data for c in read_capture(tmp_path / "big.tgw.1")] == [b"small"]


def test_raw_corpus_capture_gives_every_byte_but_the_comments() -> None:
    path = GNSS_CORPUS / "beidou-bd.log"
    reader = CaptureReader(path)
    assert reader.kind == "raw"
    got = list(reader)
    expected = b"".join(
        ln for ln in path.read_bytes().splitlines(keepends=True) if not ln.startswith(b"#")
    )
    assert b"".join(c.data for c in got) == expected
    assert {(c.ts, c.port, c.direction) for c in got} == {(None, "gnss", "<")}
    assert reader.comment_lines == 14
    assert reader.bytes_read == path.stat().st_size


def test_raw_capture_keeps_binary_bytes(tmp_path: Path) -> None:
    path = tmp_path / "raw.log"
    blob = b"# a note\n\xb5\x62\x01\x07\x00\xff$GPGGA,1*00\r\n\xd3\x00\x13#x\n"
    path.write_bytes(blob)
    got = b"".join(c.data for c in read_capture(path))
    assert got == b"\xb5\x62\x01\x07\x00\xff$GPGGA,1*00\r\n\xd3\x00\x13#x\n"


def test_bad_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "cap.tgw"
    with CaptureWriter(path, start=1_700_000_000.0) as w:
        w.write("gnss", "<", b"one", ts=1_700_000_000.5)
        w.write("gnss", "<", b"two", ts=1_700_000_001.0)
    lines = path.read_text(encoding="ascii").splitlines(keepends=True)
    corrupt = [
        "0.7 gnss ? bad-direction\n",
        "notanumber gnss < x\n",
        "0.8 gnss < bad\\q escape\n",
        "0.9 gnss < raw\x01control\n",
        "0.95 gnss\n",
        "\n",
        "# a comment someone added\n",
    ]
    path.write_text("".join(lines[:3] + corrupt + lines[3:]), encoding="ascii", newline="")
    reader = CaptureReader(path)
    got = list(reader)
    assert [c.data for c in got] == [b"one", b"two"]
    assert got[0] == Chunk(pytest.approx(1_700_000_000.5), "gnss", "<", b"one")
    assert reader.bad_lines == 5


def test_empty_chunk_survives_an_editor_stripping_trailing_spaces(tmp_path: Path) -> None:
    path = tmp_path / "cap.tgw"
    with CaptureWriter(path) as w:
        w.write("modem", "<", b"")
        w.write("modem", "<", b"OK ")
    text = path.read_text(encoding="ascii")
    stripped = "\n".join(ln.rstrip(" ") if ln.endswith("< ") else ln for ln in text.split("\n"))
    path.write_text(stripped, encoding="ascii")
    assert [c.data for c in read_capture(path)] == [b"", b"OK "]


def test_crlf_converted_capture_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "cap.tgw"
    with CaptureWriter(path) as w:
        w.write("gnss", "<", b"$GPTXT*00\r\n")
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert [c.data for c in read_capture(path)] == [b"$GPTXT*00\r\n"]


def test_unsupported_version_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "future.tgw"
    path.write_text(MAGIC + "9 start=2030-01-01T00:00:00.000000Z\n0.0 gnss < x\n")
    with pytest.raises(TransportError, match="version '9' is not supported"):
        CaptureReader(path)


def test_missing_file_is_a_transport_error(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match=r"cannot read capture .*nope\.log"):
        CaptureReader(tmp_path / "nope.log")


@pytest.mark.parametrize(
    ("port", "direction"), [("two words", "<"), ("#gnss", "<"), ("", ">"), ("gnss", "=")]
)
def test_writer_refuses_names_the_reader_could_not_read(
    tmp_path: Path, port: str, direction: str
) -> None:
    with CaptureWriter(tmp_path / "c.tgw") as w, pytest.raises(ValueError, match=r"port|direction"):
        w.write(port, direction, b"x")  # type: ignore[arg-type]


def test_raw_capture_without_line_ends_is_read_in_bounded_pieces(tmp_path: Path) -> None:
    path = tmp_path / "binary.log"
    blob = bytes(range(256)).replace(b"\n", b"") * 2000  # 510 kB, no line end at all
    path.write_bytes(b"# comment\n" + blob + b"\n#tail comment " + b"x" * 200_000 + b"\nend\n")
    got = list(read_capture(path))
    assert max(len(c.data) for c in got) <= 64 * 1024
    assert b"".join(c.data for c in got) == blob + b"\nend\n"


def test_huge_chunk_is_split_into_lines_a_reader_can_take(tmp_path: Path) -> None:
    path = tmp_path / "cap.tgw"
    big = bytes(range(256)) * 1000  # 256 kB of binary: about 1 MB escaped
    with CaptureWriter(path) as w:
        w.write("gnss", "<", big)
        w.write("gnss", "<", b"after")
    got = list(read_capture(path))
    assert b"".join(c.data for c in got[:-1]) == big
    assert got[-1].data == b"after"
    assert max(len(line) for line in path.read_bytes().splitlines()) < 300_000


def test_overlong_line_is_a_bad_line_not_a_memory_spike(tmp_path: Path) -> None:
    path = tmp_path / "cap.tgw"
    with CaptureWriter(path, start=1_700_000_000.0) as w:
        w.write("gnss", "<", b"before", ts=w.start)
    with path.open("a", encoding="ascii") as f:
        f.write("0.5 gnss < " + "A" * 2_000_000 + "\n")
        f.write("1.000000 gnss < after\n")
    reader = CaptureReader(path)
    assert [c.data for c in reader] == [b"before", b"after"]
    assert reader.bad_lines == 1
    assert reader.bytes_read == path.stat().st_size

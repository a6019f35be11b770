"""`terminal-gw decode batch` as a real subprocess: a file, standard input, hex, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from terminal_gw.wire import encode_batch
from tests.conftest import REPO
from tests.wire.make_vectors import VECTORS


def decode(*args: str, stdin: bytes = b"") -> tuple[int, list[dict[str, Any]], str]:
    res = subprocess.run(
        [sys.executable, "-m", "terminal_gw", "decode", "batch", *args],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    lines = res.stdout.decode().splitlines()
    return res.returncode, [json.loads(ln) for ln in lines], res.stderr.decode()


def test_a_file_and_stdin_print_the_payloads(tmp_path: Path) -> None:
    doc = json.loads((VECTORS / "track-gap.json").read_text())
    data = bytes.fromhex(doc["hex"])
    path = tmp_path / "batch.bin"
    path.write_bytes(data)
    for args, stdin in (((str(path),), b""), (("-",), data), ((), data)):
        code, out, err = decode(*args, stdin=stdin)
        assert code == 0, err
        assert out == doc["records"]
    text = tmp_path / "batch.hex"
    text.write_text(doc["hex"] + "\n")
    assert decode(str(text))[1] == doc["records"]


def test_a_compressed_batch() -> None:
    fixes = [
        {"id": f"f{i}", "v": 1, "class": "TPV", "mode": 3, "lat": 1.5, "lon": -2.25}
        for i in range(300)
    ]
    data = encode_batch(fixes, "dev")
    assert data[3] == 1
    code, out, _ = decode(stdin=data)
    assert (code, out) == (0, fixes)


def test_bad_input_is_one_error_line_and_exit_1(tmp_path: Path) -> None:
    for stdin in (b"", b"TB\x01\x00\x05", b"not a batch at all"):
        code, out, err = decode("-", stdin=stdin)
        assert code == 1
        [line] = out
        assert line["error"]
        assert line["reason"] in {"bad_magic", "truncated"}
        assert "Traceback" not in err
    code, out, err = decode(str(tmp_path / "missing.bin"))
    assert (code, out) == (2, [])
    assert "cannot read" in err

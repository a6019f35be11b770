"""The test vectors of docs/wire-format.md: each hex decodes to its records, and the encoder
writes that hex again (uncompressed ones: zstd's output may change between its versions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from terminal_gw.wire import decode_batch, encode_batch, read_header
from tests.wire.make_vectors import VECTORS, vectors

FILES = sorted(VECTORS.glob("*.json"))


def test_every_vector_is_in_the_repository() -> None:
    assert {p.stem for p in FILES} == set(vectors())


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_vector(path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    data = bytes.fromhex(doc["hex"])
    assert decode_batch(data) == doc["records"]
    head = read_header(data)
    assert (head.device, head.count, head.compressed) == (
        doc["device"],
        len(doc["records"]),
        doc["compressed"],
    )
    if not doc["compressed"]:
        assert encode_batch(doc["records"], doc["device"], compress=False) == data
    assert len(vectors()[path.stem][1]) == len(doc["records"])

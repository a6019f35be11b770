"""Writes the format's test vectors to tests/vectors/wire/ (run once when the format changes:
`python -m tests.wire.make_vectors`); tests/wire/test_vectors.py checks them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from terminal_gw.wire import decode_batch, encode_batch, fix_id

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "wire"
DEVICE = "vessel-042"
T0 = 1_777_593_600_000  # 2026-05-01T00:00:00.000Z


def _iso(ms: int) -> str:
    from terminal_gw.models import iso_utc

    return iso_utc(ms / 1000)


def _fix(i: int, **fields: Any) -> dict[str, Any]:
    ms = T0 + 1000 * i
    return {"id": fix_id(DEVICE, ms), "v": 1, "class": "TPV", "time": _iso(ms), **fields}


def vectors() -> dict[str, tuple[str, list[dict[str, Any]], bool]]:
    """name -> (description, records, compressed)."""
    one = [
        _fix(
            0,
            mode=3,
            status=1,
            lat=24.45,
            lon=118.07,
            altHAE=21.6,
            altMSL=12.0,
            geoidSep=9.6,
            speed=4.12,
            track=135.0,
            hdop=1.41,
            nSat=20,
            uSat=18,
            used={"gps": 9, "bds": 9},
            clock="gnss",
        )
    ]
    track = []
    for i in range(5):
        fix = _fix(i, mode=3, lat=24.45 - i * 2.6e-5, lon=118.07 + i * 2.7e-5, speed=4.12)
        if i != 2:
            fix["track"] = 135.0 + i * 0.17
        fix["clock"] = "gnss"
        track.append(fix)
    track.insert(3, _fix(60, mode=1, clock="system"))  # a gap, no position
    ids = [
        {**_fix(0, mode=2, lat=-33.9, lon=-180.0), "id": "0196a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"},
        {**_fix(1, mode=2, lat=-33.9, lon=179.9999999), "id": "sms-7/1"},
        {"v": 1, "class": "TPV", "time": _iso(T0 + 2000), "mode": 2, "lat": 90.0, "lon": 0.0},
        {**_fix(3, mode=2), "time": "2026-05-01T00:00:03Z", "note": {"why": "not ms"}},
    ]
    sky = [
        {
            "id": fix_id(DEVICE, T0),
            "v": 1,
            "class": "SKY",
            "time": _iso(T0),
            "nSat": 20,
            "uSat": 18,
            "hdop": 1.41,
            "vdop": 2.11,
            "pdop": 2.54,
            "clock": "gnss",
            "seen": {"gps": 10, "bds": 10},
            "used": {"gps": 9, "bds": 9},
        }
    ]
    sky[0]["id"] = "019de0d5-db88-7206-a374-741583b789ed"
    long = [
        {
            **_fix(i, mode=3, lat=24.45 - i * 2.6e-5, lon=118.07 + i * 2.7e-5, clock="gnss"),
            "id": f"fix-{i:06d}",  # text ids: what zstd has something to gain on
        }
        for i in range(120)
    ]
    return {
        "one-fix": ("one fix, every common field, id derived from device and time", one, False),
        "track-gap": (
            "five fixes and a no-fix epoch a minute later; track absent once",
            track,
            False,
        ),
        "ids-and-extras": (
            (
                "a UUID id, a text id, no id, the antimeridian, a pole, a time not in ms form"
                " and an unknown key (both carried as extra JSON)"
            ),
            ids,
            False,
        ),
        "sky-summary": ("a SKY summary: counts per constellation, a UUIDv7 id", sky, False),
        "zstd-120": ("120 fixes at 1 Hz with text ids, zstd over the body", long, True),
    }


def main() -> None:
    """Write every vector file."""
    VECTORS.mkdir(parents=True, exist_ok=True)
    for name, (description, records, compress) in vectors().items():
        data = encode_batch(records, DEVICE, compress=compress)
        assert (data[3] & 1) == compress, name
        doc = {
            "description": description,
            "device": DEVICE,
            "compressed": compress,
            "hex": data.hex(),
            "records": decode_batch(data),  # at the format's units
        }
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
        (VECTORS / f"{name}.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

"""The compact binary batch format (docs/wire-format.md): many fixes in one MQTT message.

Importable without the daemon's dependencies: the standard library only, and zstandard for
compressed batches. `decode_batch` is what a fleet consumer calls.
"""

from __future__ import annotations

from terminal_gw.wire.codec import (
    CONTENT_TYPE,
    FORMAT_VERSION,
    TOPIC_SUFFIX,
    BatchHeader,
    Columns,
    WireError,
    decode_batch,
    decode_columns,
    derived_id,
    encode_batch,
    read_header,
    sky_summary,
)

__all__ = [
    "CONTENT_TYPE",
    "FORMAT_VERSION",
    "TOPIC_SUFFIX",
    "BatchHeader",
    "Columns",
    "WireError",
    "decode_batch",
    "decode_columns",
    "derived_id",
    "encode_batch",
    "fix_id",
    "read_header",
    "sky_summary",
]


def fix_id(device: str, time_ms: int) -> str:
    """The derived id of a fix of `device` at `time_ms`: a fix carrying it costs a batch no
    id bytes (the decoder derives it again)."""
    return derived_id(device, "TPV", time_ms)

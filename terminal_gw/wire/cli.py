"""`terminal-gw decode batch [FILE|-]`: the fixes of a compact batch as gpsd-style JSON lines.

A FILE holds one batch (the payload of one `gnss/batch` MQTT message, as
`mosquitto_sub -C 1 -t '.../gnss/batch' > batch.bin` saves it); `-` or no FILE reads standard
input. A FILE whose content is hex text (a batch pasted from a log) is read as hex. A batch
that does not decode gives one JSON line with `error` and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import string
import sys
from pathlib import Path

from terminal_gw.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from terminal_gw.wire.codec import WireError, decode_batch

__all__ = ["add_arguments", "cli"]

EXIT_BAD_BATCH = EXIT_FAILURE

_HEX = frozenset(string.hexdigits.encode() + string.whitespace.encode())


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `decode batch` sub-command, added to `decode`'s sub-parsers."""
    p = sub.add_parser("batch", help="decode a compact gnss/batch message to JSON lines")
    p.add_argument(
        "file", nargs="?", default="-", metavar="FILE", help="a batch file, or - (stdin)"
    )


def _read(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    return Path(name).read_bytes()


def cli(args: argparse.Namespace) -> int:
    """Print each record of the batch as one JSON line; exit 1 when it does not decode."""
    if args.file == "-" and sys.stdin.isatty():
        print("error: give a batch file, or the batch on standard input", file=sys.stderr)
        return EXIT_USAGE
    try:
        data = _read(args.file)
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    if data.strip() and set(data) <= _HEX:
        # Not hex after all (an odd digit count): decoded as bytes, and refused there if bad.
        with contextlib.suppress(ValueError):
            data = bytes.fromhex(data.decode("ascii"))
    try:
        records = decode_batch(data)
    except WireError as exc:
        print(json.dumps({"error": str(exc), "reason": exc.reason}), flush=True)
        return EXIT_BAD_BATCH
    out = sys.stdout
    for rec in records:
        out.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
    out.flush()
    return EXIT_OK

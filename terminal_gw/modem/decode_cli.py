"""`terminal-gw decode sms [PDU ...]`: decode SMS PDUs pasted from a modem log, one JSON line each.

With no PDU arguments the PDUs are read from standard input, one a line. `+CMGR:`/`+CMGL:`/
`+CMT:`/`+CDS:` header lines of a pasted log are passed over; anything else that does not
decode gives a JSON line with `error` (and exit status 1), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from terminal_gw.exit_codes import EXIT_FAILURE as EXIT_BAD_PDU
from terminal_gw.exit_codes import EXIT_OK, EXIT_USAGE
from terminal_gw.modem.sms import (
    PduError,
    Sms,
    SmsDeliver,
    SmsStatusReport,
    SmsSubmit,
    decode_pdu,
)

__all__ = ["add_arguments", "cli", "describe"]

_HEADERS = ("+CMGR:", "+CMGL:", "+CMT:", "+CDS:")
_TYPES = {SmsDeliver: "deliver", SmsSubmit: "submit", SmsStatusReport: "status_report"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `decode` sub-commands."""
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    p = sub.add_parser("sms", help="decode SMS PDUs (hex) to JSON lines")
    p.add_argument("pdus", nargs="*", metavar="PDU", help="PDU hex; none: read stdin, one a line")
    p.add_argument(
        "--no-smsc",
        action="store_true",
        help="the PDUs start at the TPDU (no service-centre address in front)",
    )
    from terminal_gw.wire import cli as batch_cli

    batch_cli.add_arguments(sub)


def _iso(t: datetime) -> str:
    return t.isoformat()


def describe(sms: Sms) -> dict[str, Any]:
    """A decoded PDU as JSON-ready data."""
    out: dict[str, Any] = {
        "type": _TYPES[type(sms)],
        "smsc": None if sms.smsc is None else sms.smsc.number,
    }
    if isinstance(sms, SmsStatusReport):
        out |= {
            "party": sms.recipient.number,
            "mr": sms.mr,
            "timestamp": _iso(sms.timestamp),
            "discharge": _iso(sms.discharge_time),
            "status": sms.status,
            "status_text": sms.reason,
            "delivered": sms.delivered,
        }
        if sms.odd_zone:
            out["odd_zone"] = True
        return out
    out["party"] = sms.party.number
    out["ton"] = sms.party.ton
    if isinstance(sms, SmsDeliver):
        out["timestamp"] = _iso(sms.timestamp)
        if sms.odd_zone:
            out["odd_zone"] = True
    else:
        out["mr"] = sms.mr
        v = sms.validity
        if isinstance(v, timedelta):
            out["validity_s"] = int(v.total_seconds())
        elif isinstance(v, datetime):
            out["validity"] = _iso(v)
        elif isinstance(v, bytes):
            out["validity_hex"] = v.hex().upper()
    if sms.text is not None:
        out["text"] = sms.text
    else:
        out["data"] = sms.data.hex().upper()
    c = sms.concat
    out["concat"] = (
        None if c is None else {"ref": c.ref, "total": c.total, "seq": c.seq, "bits": c.ref_bits}
    )
    out["dcs"] = sms.dcs.raw
    out["alphabet"] = sms.dcs.alphabet.value
    out["class"] = sms.dcs.message_class
    out["pid"] = sms.pid
    if sms.udh:
        out["udh"] = [{"iei": ie.iei, "data": ie.data.hex().upper()} for ie in sms.udh]
    if sms.truncated:
        out["truncated"] = True
    return out


def _inputs(args: argparse.Namespace) -> Iterator[str]:
    source: Iterable[str] = args.pdus if args.pdus else sys.stdin
    for raw in source:
        line = raw.strip().strip('"').strip()
        if not line or line.upper().startswith(_HEADERS):
            continue
        yield line


def cli(args: argparse.Namespace) -> int:
    """Decode each PDU; exit 1 when any did not decode."""
    if args.what == "batch":
        from terminal_gw.wire import cli as batch_cli

        return batch_cli.cli(args)
    if not args.pdus and sys.stdin.isatty():
        print("error: give PDUs as arguments or on standard input, one a line", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK
    for line in _inputs(args):
        try:
            record = describe(decode_pdu(line, smsc=not args.no_smsc))
        except PduError as exc:
            record = {"pdu": line[:400], "error": exc.reason}
            status = EXIT_BAD_PDU
        print(json.dumps(record, ensure_ascii=False), flush=True)
    return status

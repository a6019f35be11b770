"""`terminal-gw decode sms` as a real subprocess: PDUs as arguments, on stdin, bad ones."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from terminal_gw.modem.sms import encode_submit
from terminal_gw.sim.modem import deliver_pdus, status_report_pdu
from tests.conftest import REPO
from tests.modem.test_sms_vectors import VECTORS

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 25, 18, 30, 5, tzinfo=CST)


def decode(*args: str, stdin: str | None = None) -> tuple[int, list[dict[str, Any]], str]:
    res = subprocess.run(
        [sys.executable, "-m", "terminal_gw", "decode", "sms", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    return res.returncode, [json.loads(ln) for ln in res.stdout.splitlines()], res.stderr


def test_pdus_as_arguments() -> None:
    long = deliver_pdus("+8613912345678", "天通" * 50, timestamp=T0, ref=7)
    [submit] = encode_submit("+8613800138000", "ok", max_parts=1, ref=0)
    report = status_report_pdu("0702597711", 9, submitted=T0, discharged=T0, zone=0xE1)
    code, out, err = decode(long[1], submit.hex, report)
    assert code == 0, err
    first, second, third = out
    assert first["type"] == "deliver"
    assert first["party"] == "+8613912345678"
    assert first["smsc"] == "+8613800000000"
    assert first["timestamp"] == "2026-11-25T18:30:05+08:00"
    assert first["concat"] == {"ref": 7, "total": 2, "seq": 2, "bits": 8}
    assert (first["alphabet"], first["dcs"], first["pid"], first["class"]) == ("ucs2", 8, 0, None)
    assert set(first["text"]) == {"天", "通"}
    assert second["type"] == "submit"
    assert (second["party"], second["text"], second["smsc"]) == ("+8613800138000", "ok", None)
    assert third["type"] == "status_report"
    assert (third["mr"], third["status"], third["delivered"]) == (9, 0, True)
    assert third["odd_zone"] is True
    assert third["discharge"] == "2026-11-25T18:30:05+08:00"


def test_pdus_on_stdin_with_log_lines_and_a_bad_one() -> None:
    [pdu] = deliver_pdus("+8613900000001", "from the log", timestamp=T0)
    data = f'+CMGR: 1,,{len(pdu) // 2 - 9}\n"{pdu}"\n\n  \nnot-a-pdu\n0004\n'
    code, out, err = decode(stdin=data)
    assert code == 1  # some did not decode
    assert "Traceback" not in err
    ok, bad_hex, short = out
    assert ok["text"] == "from the log"
    assert bad_hex == {"pdu": "not-a-pdu", "error": "not an even number of hex digits"}
    assert short["pdu"] == "0004"
    assert "truncated" in short["error"]


def test_no_smsc_option_and_8bit_data() -> None:
    tpdu = "04039121F300041110102143650004DEADBEEF"
    code, out, err = decode("--no-smsc", tpdu)
    assert code == 0, err
    [rec] = out
    assert (rec["smsc"], rec["party"], rec["data"], rec["alphabet"]) == (
        None,
        "+123",
        "DEADBEEF",
        "8bit",
    )
    assert "text" not in rec


@pytest.mark.skipif(not VECTORS, reason="the shared vector set is not present")
def test_every_vector_through_the_cli() -> None:
    with_smsc = [v for v in VECTORS if v["has_smsc"]]
    code, out, err = decode(stdin="".join(v["pdu"] + "\n" for v in with_smsc))
    assert "Traceback" not in err
    assert code == 1  # the vectors that must be rejected are
    assert len(out) == len(with_smsc)
    rejected = {v["id"] for v, rec in zip(with_smsc, out, strict=True) if "error" in rec}
    expected = {v["id"] for v in with_smsc if v["expect"].get("error")}
    # mm_insufficient_data is decoded (flagged truncated); the 160-octet UDL is refused.
    assert rejected == (expected - {"mm_insufficient_data"}) | {"gm_submit_ucs2_badudl"}

"""Every PDU of the shared third-party vector set, compared with what its source's test expects.

`../shared/corpus/sms/vectors.json` holds 124 PDUs from the test suites of ModemManager, smslib,
python-gsmmodem, gecko, python-messaging, oFono and Android. Each vector must agree with its
source, except the cases in `STANDARD_WINS`, where 3GPP TS 23.040 / 23.038 contradicts the
source and the test asserts what the standard says instead.

`python -m tests.modem.test_sms_vectors` prints the agreement count and each disagreement.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from terminal_gw.modem.sms import (
    Alphabet,
    PduError,
    Reassembler,
    Sms,
    SmsDeliver,
    SmsStatusReport,
    SmsSubmit,
    decode_pdu,
)
from tests.conftest import CORPUS

VECTORS_FILE = CORPUS / "sms" / "vectors.json"


def _load() -> list[dict[str, Any]]:
    if not VECTORS_FILE.exists():
        return []
    data: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
    return data


VECTORS = _load()
BY_ID = {v["id"]: v for v in VECTORS}


def _decoded(v: dict[str, Any]) -> Sms:
    return decode_pdu(v["pdu"], smsc=v["has_smsc"])


def _assert_standard_zte(sms: Sms) -> None:
    # TS 23.040 9.1.2.3: semi-octet 0xB is "#"; the source prints it as "b".
    assert isinstance(sms, SmsStatusReport)
    assert sms.recipient.number == "+#08427829207025"


def _assert_standard_year(sms: Sms) -> None:
    # TS 23.040 9.2.3.11 gives two year digits; 98 is read as 1998 (window 1990-2089).
    assert isinstance(sms, SmsDeliver)
    assert sms.timestamp.year == 1998


def _assert_standard_udl(v: dict[str, Any]) -> None:
    # TS 23.040 9.2.3.16: an 8-bit/UCS2 TP-UDL is at most 140 octets; this one says 160.
    with pytest.raises(PduError, match="over 140"):
        _decoded(v)


def _assert_standard_short(sms: Sms) -> None:
    # The user data stops one septet before TP-UDL says: decoded as far as it goes, flagged.
    assert isinstance(sms, SmsDeliver)
    assert sms.truncated
    assert sms.text == "hellohello"


# The 4 vectors where the standard wins over the source (../shared/corpus/sms/SOURCES.md).
STANDARD_WINS: dict[str, Callable[[dict[str, Any]], None]] = {
    "gm_sr_zte": lambda v: _assert_standard_zte(_decoded(v)),
    "spd_readme": lambda v: _assert_standard_year(_decoded(v)),
    "gm_submit_ucs2_badudl": _assert_standard_udl,
    "mm_insufficient_data": lambda v: _assert_standard_short(_decoded(v)),
}


def _vp_to_timedelta(vp: int) -> timedelta:
    # TS 23.040 9.2.3.12.1, relative format.
    if vp <= 143:
        return timedelta(minutes=(vp + 1) * 5)
    if vp <= 167:
        return timedelta(hours=12, minutes=(vp - 143) * 30)
    if vp <= 196:
        return timedelta(days=vp - 166)
    return timedelta(weeks=vp - 192)


def _header_octets(sms: SmsDeliver | SmsSubmit) -> int:
    if not sms.udh:
        return 0
    return 1 + sum(2 + len(ie.data) for ie in sms.udh)


def _udl(sms: SmsDeliver | SmsSubmit) -> int:
    header = _header_octets(sms)
    if sms.dcs.alphabet is Alphabet.GSM7:
        return (header * 8 + 6) // 7 + len(sms.data)
    return header + len(sms.data)


def _port(sms: SmsDeliver | SmsSubmit, which: int) -> int | None:
    for ie in sms.udh:
        if ie.iei == 0x05 and len(ie.data) == 4:
            return int.from_bytes(ie.data[which * 2 : which * 2 + 2], "big")
        if ie.iei == 0x04 and len(ie.data) == 2:
            return ie.data[which]
    return None


def _epoch_ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def _group_text(v: dict[str, Any]) -> str | None:
    r = Reassembler()
    out = None
    for other in VECTORS:
        if other["group"] == v["group"]:
            sms = _decoded(other)
            assert isinstance(sms, SmsDeliver | SmsSubmit)
            msg = r.add(sms, 0.0)
            if msg is not None:
                out = msg.text
    return out


def mismatches(v: dict[str, Any]) -> list[str]:
    """What differs between the decoder and the source's expectation (empty: they agree)."""
    exp = v["expect"]
    if exp.get("error"):
        try:
            _decoded(v)
        except PduError:
            return []
        return ["decoded, source expects an error"]
    try:
        sms = _decoded(v)
    except PduError as e:
        return [f"rejected: {e.reason}"]
    out: list[str] = []

    def check(key: str, got: object) -> None:
        want = exp[key]
        if got != want:
            out.append(f"{key}: got {got!r}, source expects {want!r}")

    kind = {SmsDeliver: "deliver", SmsSubmit: "submit", SmsStatusReport: "status"}[type(sms)]
    if kind != v["kind"]:
        out.append(f"type: got {kind}, source expects {v['kind']}")
        return out
    for key in exp:
        if key == "note":
            continue
        if key == "smsc":
            check(key, None if sms.smsc is None else sms.smsc.number)
        elif key in ("sender", "recipient"):
            party = sms.recipient if isinstance(sms, SmsStatusReport) else sms.party
            check(key, party.number)
        elif key in ("mr", "status"):
            check(key, getattr(sms, key))
        elif key == "delivered":
            assert isinstance(sms, SmsStatusReport)
            check(key, sms.delivered)
        elif key == "status_class":
            assert isinstance(sms, SmsStatusReport)
            cls = (
                "delivered"
                if sms.status < 0x20
                else "temporary-error"
                if sms.status < 0x40
                else "permanent-error"
                if sms.status < 0x60
                else "temporary-error-final"
            )
            check(key, cls)
        elif key in ("timestamp", "discharge", "timestamp_utc", "timestamp_local"):
            ts = sms.discharge_time if key == "discharge" else sms.timestamp  # type: ignore[union-attr]
            if key == "timestamp_utc":
                check(key, ts.astimezone(UTC).replace(tzinfo=None).isoformat())
            elif key == "timestamp_local":
                check(key, ts.replace(tzinfo=None).isoformat())
            else:
                check(key, ts.isoformat())
        elif key == "discharge_local":
            assert isinstance(sms, SmsStatusReport)
            check(key, sms.discharge_time.replace(tzinfo=None).isoformat())
        elif key == "discharge_epoch_ms":
            assert isinstance(sms, SmsStatusReport)
            check(key, _epoch_ms(sms.discharge_time))
        elif key == "timestamp_epoch_ms":
            check(key, _epoch_ms(sms.timestamp))  # type: ignore[union-attr]
        elif isinstance(sms, SmsStatusReport):
            out.append(f"{key}: not a field of a status report")
        elif key == "text":
            check(key, sms.text)
        elif key == "text_contains":
            text = sms.text or ""
            out.extend(f"text {text!r} lacks {p!r}" for p in exp[key] if p not in text)
        elif key == "data_hex":
            check(key, sms.data.hex().upper())
        elif key == "concat":
            got = None
            if sms.concat is not None:
                got = {k: getattr(sms.concat, k) for k in (exp[key] or {"ref": 0, "total": 0})}
                if exp[key] is None:
                    got = {"ref": sms.concat.ref}
            check(key, got)
        elif key == "concat_present":
            check(key, sms.concat is not None)
        elif key == "group_text":
            check(key, _group_text(v))
        elif key == "dcs_class":
            check(key, sms.dcs.message_class)
        elif key == "dcs":
            check(key, sms.dcs.raw)
        elif key == "pid":
            check(key, sms.pid)
        elif key == "udl":
            check(key, _udl(sms))
        elif key == "udhl":
            check(key, _header_octets(sms) - 1)
        elif key == "tpdu_len":
            raw = bytes.fromhex(v["pdu"])
            check(key, len(raw) - (raw[0] + 1 if v["has_smsc"] else 0))
        elif key in ("port_dst", "port_src"):
            check(key, _port(sms, 0 if key == "port_dst" else 1))
        elif key in ("validity_s", "validity", "validity_vp"):
            assert isinstance(sms, SmsSubmit)
            val = sms.validity
            if key == "validity_s":
                check(key, int(val.total_seconds()) if isinstance(val, timedelta) else val)
            elif key == "validity":
                check(key, val.isoformat() if isinstance(val, datetime) else val)
            else:
                want = _vp_to_timedelta(exp[key])
                if val != want:
                    out.append(f"validity: got {val!r}, VP {exp[key]} is {want!r}")
        else:
            out.append(f"{key}: no comparison for this field")
    return out


def agreement() -> tuple[int, dict[str, list[str]]]:
    """(vectors agreeing with their source, the disagreements by id)."""
    bad: dict[str, list[str]] = {}
    for v in VECTORS:
        diff = mismatches(v)
        if diff:
            bad[v["id"]] = diff
    return len(VECTORS) - len(bad), bad


pytestmark = pytest.mark.skipif(not VECTORS, reason=f"vector set {VECTORS_FILE} is not present")


def test_vector_set_is_the_one_described() -> None:
    assert len(VECTORS) == 124
    assert set(STANDARD_WINS) <= set(BY_ID)
    by_source: dict[str, int] = defaultdict(int)
    for v in VECTORS:
        by_source[v["source"]["repo"]] += 1
    assert by_source["linux-mobile-broadband/ModemManager"] == 19


@pytest.mark.parametrize("vid", [v["id"] for v in VECTORS if v["id"] not in STANDARD_WINS])
def test_vector_agrees_with_its_source(vid: str) -> None:
    assert mismatches(BY_ID[vid]) == []


@pytest.mark.parametrize("vid", sorted(STANDARD_WINS))
def test_vector_where_the_standard_wins(vid: str) -> None:
    v = BY_ID[vid]
    assert mismatches(v), f"{vid} now agrees with its source: it is no longer a standard-wins case"
    STANDARD_WINS[vid](v)


def test_agreement_is_all_but_the_standard_cases() -> None:
    agree, bad = agreement()
    assert set(bad) == set(STANDARD_WINS)
    assert agree == len(VECTORS) - len(STANDARD_WINS)


def main() -> int:
    agree, bad = agreement()
    print(f"{agree} of {len(VECTORS)} vectors agree with their source")
    for vid, diff in bad.items():
        tag = " (standard wins)" if vid in STANDARD_WINS else ""
        print(f"  {vid}{tag}: {'; '.join(diff)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every +CMGR PDU of the corpus: real modems' dumps decode, known-broken ones fail clearly."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from terminal_gw.modem.sms import (
    Alphabet,
    Concat,
    PduError,
    SmsDeliver,
    SmsStatusReport,
    SmsSubmit,
    StoredPdu,
    decode_pdu,
    parse_stored,
)
from tests.conftest import AT_CORPUS

SMS_DIR = AT_CORPUS / "at-sms"
FAILING_DIR = AT_CORPUS / "at-sms-failing"


def stored(path: Path) -> StoredPdu:
    """The single PDU a `+CMGR` dump holds."""
    pdus = parse_stored(path.read_bytes().decode("latin-1").splitlines())
    assert len(pdus) == 1, path
    return pdus[0]


def tz(hours: float) -> timezone:
    return timezone(timedelta(hours=hours))


# dump -> (type, party, text prefix (None: 8-bit data), timestamp or None)
EXPECTED: dict[str, tuple[type, str, str | None, datetime | None]] = {
    "02": (SmsSubmit, "+639193770523", "May salary na ba?", None),
    "03": (SmsDeliver, "+919884280026", "Ok sir", datetime(2007, 5, 3, 7, 4, 40, tzinfo=tz(5.5))),
    "04": (SmsDeliver, "O2_", "O2: You now have your Text Anytime 300 UK texts & 1MB", None),
    "05": (SmsSubmit, "3200", "Pontos", None),
    "06": (SmsDeliver, "5036710", "For your ease to browse content after handset changed", None),
    "07": (SmsDeliver, "+358456709855", "Test", datetime(2006, 9, 6, 18, 46, 31, tzinfo=tz(2))),
    "08": (SmsDeliver, "+32478746863", "TEST -@@-", None),
    "09": (
        SmsDeliver,
        "27838890001",
        "hellohello",
        datetime(1999, 3, 29, 15, 16, 59, tzinfo=tz(2)),
    ),
    "10": (SmsDeliver, "+32478746863", "Tèätrc @ £.", None),
    "11": (SmsDeliver, "+32478746863", "T:Philipa@joshua.heron.net s:test mail.", None),
    "12": (
        SmsDeliver,
        "+622291320408",
        "aa cakep deh",
        datetime(2007, 10, 19, 12, 28, 35, tzinfo=tz(7)),
    ),
    # DCS 0xF9: group 1111 with bit 2 clear is the default alphabet (23.038 §4), although the
    # sender put UCS2 there; read by the standard, as Android and Gammu do.
    "14": (SmsSubmit, "+79168024812", "", None),
    "15": (SmsSubmit, "+79168024812", "Test", None),
    "16": (SmsSubmit, "1234", "123456", None),
    "19": (SmsSubmit, "066460353302", "Sample Gammu message", None),
    "20": (SmsSubmit, "366460353302", "", None),
    "21": (SmsDeliver, "+380972566788", "3", None),
    "22": (SmsDeliver, "+420724797276", "Ahoj pavle, tak me vcera nikdo neokradl", None),
    "23": (SmsDeliver, "+447970011182", "", None),
    "24": (SmsSubmit, "3381449402", "inserisci qui il messaggio....", None),
    "26": (SmsDeliver, "+351916165705", None, None),
    "27": (SmsDeliver, "+351965853713", "Espero que tenhas tido um Natal em grande", None),
    "28": (SmsSubmit, "+14168777438", "nu-i nimic. Numai incerc sa vad de primesc errori.", None),
    "29": (SmsSubmit, "0630561651", "mon texte d'essai", None),
    "30": (SmsStatusReport, "+666666666666", None, datetime(2009, 9, 7, 16, 48, 22, tzinfo=tz(2))),
    "31": (SmsSubmit, "", "15:41 22/08/08       szczesliwy.", None),
    "32": (SmsStatusReport, "604865888", None, None),
    "33": (SmsDeliver, "33707520030", None, None),
    "34": (SmsStatusReport, "+61439012244", None, datetime(2010, 9, 17, 10, 1, 0, tzinfo=tz(10))),
    "36": (SmsStatusReport, "+6285717373455", None, None),
    "37": (SmsDeliver, "+447732482432", "Helen's parents are down tomorrow.", None),
    "38": (SmsStatusReport, "602396602", None, None),
    "39": (SmsDeliver, "9494", "llamada perdida de: +34617653167 on 07/08", None),
    "40": (SmsDeliver, "+11476124010", None, None),
    "41": (SmsSubmit, "77777777777", "MBOXUPDATE?m=15;server=natashenka.party;port=993", None),
    "42": (SmsDeliver, "+94774705017", "1917812300     22:30   RATTHI", None),
}


def test_table_covers_every_dump() -> None:
    assert sorted(p.stem for p in SMS_DIR.glob("*.dump")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_dump_decodes(name: str) -> None:
    kind, party, text, when = EXPECTED[name]
    sms = stored(SMS_DIR / f"{name}.dump").decode()
    assert type(sms) is kind
    if isinstance(sms, SmsStatusReport):
        assert sms.recipient.number == party
        assert sms.timestamp.tzinfo is not None
    else:
        assert sms.party.number == party
        if text is None:
            assert sms.text is None
            assert sms.dcs.alphabet is Alphabet.DATA8
            assert sms.data or sms.udh  # 26: a picture message lives wholly in its header
        else:
            assert sms.text is not None
            assert sms.text.startswith(text)
    if when is not None:
        assert isinstance(sms, SmsDeliver | SmsStatusReport)
        assert sms.timestamp == when
        assert sms.timestamp.utcoffset() == when.utcoffset()


def test_concatenated_part_and_its_header() -> None:
    sms = stored(SMS_DIR / "22.dump").decode()
    assert isinstance(sms, SmsDeliver)
    assert sms.concat == Concat(ref=1, total=2, seq=1, ref_bits=8)
    assert sms.udh[0].iei == 0x00
    # 7-bit text after a 6-octet header starts on a septet boundary: no stray first char.
    assert sms.text is not None
    assert sms.text.startswith("Ahoj")


def test_status_report_fields() -> None:
    sms = stored(SMS_DIR / "30.dump").decode()
    assert isinstance(sms, SmsStatusReport)
    assert sms.mr == 0xE8
    assert sms.status == 0
    assert sms.delivered
    assert sms.final
    assert sms.reason == "received by the SME"
    assert sms.discharge_time == datetime(2009, 9, 7, 16, 48, 26, tzinfo=tz(2))


def test_application_port_header_kept() -> None:
    sms = stored(SMS_DIR / "40.dump").decode()
    assert isinstance(sms, SmsDeliver)
    assert sms.udh[0].iei == 0x05  # WAP push port addressing: kept, not interpreted
    assert sms.dcs.message_class == 1
    assert sms.concat is None


def test_truncated_dump_is_flagged() -> None:
    sms = stored(SMS_DIR / "41.dump").decode()
    assert isinstance(sms, SmsSubmit)
    assert sms.truncated
    full = stored(SMS_DIR / "22.dump").decode()
    assert isinstance(full, SmsDeliver)
    assert not full.truncated


def test_alphanumeric_sender() -> None:
    sms = stored(SMS_DIR / "04.dump").decode()
    assert isinstance(sms, SmsDeliver)
    assert sms.sender.alphanumeric
    assert sms.sender.ton == 5


# dump -> a phrase the reason must contain: why the dump is broken.
FAILING: dict[str, str] = {
    "01": "type-of-address",  # SUBMIT whose DA length octet is 0x81: fields shifted
    "13": "hex",  # `=`, `p` inside the hex
    "17": "hex",
    "18": "SMSC length 12",  # alphanumeric-looking junk where the SMSC goes
    # Message type 3 is read as a DELIVER (TS 23.040 9.2.3.1); these then fail on their address.
    "25": "originating address",
    "33": "originating address",  # an erased SIM record: all FF
    "35": "compressed",  # DCS 0x39 says compressed: refused, not misread
    "38": "SMSC length 196",  # the PDU starts mid-message
    "39": "SMSC length 145",
    "40": "SMSC: type-of-address",  # a WAP payload without its headers
}


def test_failing_table_covers_every_dump() -> None:
    assert sorted(p.stem for p in FAILING_DIR.glob("*.dump")) == sorted(FAILING)


@pytest.mark.parametrize("name", sorted(FAILING))
def test_broken_dump_fails_clearly(name: str) -> None:
    pdu = stored(FAILING_DIR / f"{name}.dump")
    with pytest.raises(PduError) as err:
        decode_pdu(pdu.pdu)
    assert FAILING[name] in err.value.reason
    assert str(err.value).startswith("bad SMS PDU: ")
    assert err.value.sentence  # the PDU travels with the error for the log


def test_stored_headers() -> None:
    lines = [
        "+CMGL: 1,0,,23",
        "0791534850020200040C9153486507895500006090608164138004D4F29C0E",
        '+CMGL: 4,1,"alpha",25',
        "0791198948004544040C9119894882006200007050307040042206CF35689E9603",
        "OK",
    ]
    pdus = parse_stored(lines)
    assert [(p.index, p.stat, p.length) for p in pdus] == [(1, 0, 23), (4, 1, 25)]
    assert [p.decode().party.number for p in pdus] == ["+358456709855", "+919884280026"]  # type: ignore[union-attr]

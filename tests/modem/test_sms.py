"""SMS PDU codec: encoding choices, splitting, timestamps, headers, reassembly, properties."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terminal_gw.errors import CommandError, ParseError
from terminal_gw.modem.sms import (
    Alphabet,
    PduError,
    Reassembler,
    SmsDeliver,
    SmsSubmit,
    decode_pdu,
    encode_submit,
)

NUMBER = "+8613800138000"


def deliver(
    ud: bytes,
    *,
    udl: int,
    dcs: int = 0x00,
    udhi: bool = False,
    sender: bytes = bytes.fromhex("0B916407281553F8"),
    ts: bytes = bytes.fromhex("42102030405000"),
) -> bytes:
    """An SMS-DELIVER with no SMSC (length octet 0), built by hand."""
    fo = 0x04 | (0x40 if udhi else 0)
    return bytes([0, fo]) + sender + bytes([0, dcs]) + ts + bytes([udl]) + ud


def decoded(parts_hex: list[str]) -> list[SmsSubmit]:
    out = []
    for h in parts_hex:
        sms = decode_pdu(h)
        assert isinstance(sms, SmsSubmit)
        out.append(sms)
    return out


# -- encoding --------------------------------------------------------------------------


def test_known_vector_gsm7() -> None:
    [pdu] = encode_submit(
        "+46708251358", "hellohello", max_parts=1, ref=0, validity=timedelta(days=4)
    )
    assert pdu.hex == "00" + "11000B916407281553F80000AA0AE8329BFD4697D9EC37"
    assert pdu.tpdu_length == len(pdu.hex) // 2 - 1
    assert (pdu.part, pdu.total, pdu.alphabet) == (1, 1, Alphabet.GSM7)


def test_no_validity_by_default_and_status_report_flag() -> None:
    [pdu] = encode_submit("12345", "hi", max_parts=1, ref=0, request_status_report=True)
    sms = decode_pdu(pdu.hex)
    assert isinstance(sms, SmsSubmit)
    assert sms.validity is None
    assert sms.status_report_request
    assert sms.recipient.number == "12345"
    assert sms.recipient.ton == 0


@pytest.mark.parametrize(
    ("text", "alphabet"),
    [
        ("Hello {world} €5 [ok] ~|^\\", Alphabet.GSM7),
        ("Zürich Ñandu ÆØÅ @£$¥", Alphabet.GSM7),
        ("Привет", Alphabet.UCS2),
        ("你好，天通卫星", Alphabet.UCS2),
        ("ça va", Alphabet.UCS2),  # lower-case ç is not in the GSM alphabet
        ("esc\x1bape", Alphabet.UCS2),  # a raw ESC must not become a GSM escape
        ("🛰️ ok", Alphabet.UCS2),
    ],
)
def test_alphabet_choice_and_roundtrip(text: str, alphabet: Alphabet) -> None:
    [pdu] = encode_submit(NUMBER, text, max_parts=1, ref=0)
    assert pdu.alphabet is alphabet
    [sms] = decoded([pdu.hex])
    assert sms.text == text
    assert sms.recipient.number == NUMBER
    assert sms.dcs.alphabet is alphabet


def test_gsm7_split_153() -> None:
    assert len(encode_submit(NUMBER, "x" * 160, max_parts=1, ref=0)) == 1
    parts = encode_submit(NUMBER, "x" * 161, max_parts=2, ref=42)
    smss = decoded([p.hex for p in parts])
    assert [len(s.text or "") for s in smss] == [153, 8]
    assert [(s.concat.ref, s.concat.total, s.concat.seq) for s in smss if s.concat] == [
        (42, 2, 1),
        (42, 2, 2),
    ]


def test_escape_pair_never_split() -> None:
    assert len(encode_submit(NUMBER, "€" * 80, max_parts=1, ref=0)) == 1  # 160 septets
    parts = encode_submit(NUMBER, "€" * 81, max_parts=3, ref=1)
    smss = decoded([p.hex for p in parts])
    assert [s.text for s in smss] == ["€" * 76, "€" * 5]


def test_ucs2_split_67_and_surrogate_pairs_kept_whole() -> None:
    assert len(encode_submit(NUMBER, "天" * 70, max_parts=1, ref=0)) == 1
    smss = decoded([p.hex for p in encode_submit(NUMBER, "天" * 71, max_parts=2, ref=0)])
    assert [len(s.text or "") for s in smss] == [67, 4]
    smss = decoded([p.hex for p in encode_submit(NUMBER, "a" + "😀" * 35, max_parts=2, ref=0)])
    assert [s.text for s in smss] == ["a" + "😀" * 33, "😀" * 2]


def test_sixteen_bit_reference() -> None:
    parts = encode_submit(NUMBER, "y" * 200, max_parts=2, ref=300)
    smss = decoded([p.hex for p in parts])
    assert smss[0].concat is not None
    assert (smss[0].concat.ref, smss[0].concat.ref_bits) == (300, 16)
    assert smss[0].udh[0].iei == 0x08
    assert [len(s.text or "") for s in smss] == [152, 48]  # 8 septets of header


def test_too_many_parts_is_refused() -> None:
    with pytest.raises(CommandError) as err:
        encode_submit(NUMBER, "z" * 400, max_parts=2, ref=0)
    assert err.value.code == "too_long"
    assert "3 SMS parts" in str(err.value)


@pytest.mark.parametrize(
    "number",
    [
        "12",
        "+123456789012345678901",
        '123";+CFUN=0',
        "123;",
        "123\r",
        "123\x1a",
        "+",
        "",
        "abc",
        "+12 34",
        "１２３",
        "123\x1b",
        "+++",
    ],
)
def test_bad_numbers_are_refused(number: str) -> None:
    with pytest.raises(CommandError) as err:
        encode_submit(number, "hi", max_parts=1, ref=0)
    assert err.value.code == "invalid_number"


def test_lone_surrogate_is_refused() -> None:
    with pytest.raises(CommandError):
        encode_submit(NUMBER, "a\ud800b", max_parts=1, ref=0)


# -- decoding --------------------------------------------------------------------------


def test_timestamp_negative_zone() -> None:
    # 2024-01-02 03:04:05, zone -20 quarters: tens 2 with the sign bit -> 0x0A, units 0.
    ts = bytes.fromhex("42102030405000")[:6] + bytes([0x0A])
    sms = decode_pdu(deliver(b"", udl=0, ts=ts))
    assert isinstance(sms, SmsDeliver)
    assert sms.timestamp == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5)))
    assert sms.timestamp.utcoffset() == timedelta(hours=-5)


def test_timestamp_quarter_hours() -> None:
    ts = bytes.fromhex("42102030405000")[:6] + bytes([0x32])  # +23 quarters = +5:45
    sms = decode_pdu(deliver(b"", udl=0, ts=ts))
    assert isinstance(sms, SmsDeliver)
    assert sms.timestamp.utcoffset() == timedelta(hours=5, minutes=45)


@pytest.mark.parametrize(
    ("ts", "reason"),
    [
        ("42F02030405000", "not two decimal digits"),
        ("42313030405000", "invalid date"),  # month 13
    ],
)
def test_timestamp_errors(ts: str, reason: str) -> None:
    pdu = deliver(b"", udl=0, ts=bytes.fromhex(ts))
    with pytest.raises(PduError) as err:
        decode_pdu(pdu)
    assert reason in err.value.reason


@pytest.mark.parametrize(("zone", "quarters"), [(0xA0, 10), (0xE1, 24), (0x21, 12)])
def test_odd_time_zone_is_decoded_and_flagged(zone: int, quarters: int) -> None:
    # Service centres send 0xE1 and 0xA0; the time is kept, the zone weighed and flagged.
    ts = bytes.fromhex("42102030405000")[:6] + bytes([zone])
    sms = decode_pdu(deliver(b"", udl=0, ts=ts))
    assert isinstance(sms, SmsDeliver)
    assert sms.timestamp.replace(tzinfo=UTC) == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert sms.timestamp.utcoffset() == timedelta(minutes=15 * quarters)
    assert sms.odd_zone is (zone != 0x21)


def test_reserved_message_type_reads_as_deliver() -> None:
    pdu = bytearray(deliver(b"\xe8\x32\x9b\xfd\x06", udl=5))
    pdu[1] |= 0x03  # TP-MTI 3: reserved, read as SMS-DELIVER (TS 23.040 9.2.3.1)
    sms = decode_pdu(bytes(pdu))
    assert isinstance(sms, SmsDeliver)
    assert sms.text == "hello"


def test_trailing_at_sign_kept_in_alphanumeric_sender() -> None:
    # "AB@" in 3 septets = 21 bits: 6 semi-octets; the "@" is septet 0, not padding.
    sender = bytes([6, 0xD0]) + bytes.fromhex("412100")
    sms = decode_pdu(deliver(b"", udl=0, sender=sender))
    assert sms.party.number == "AB@"


def _gsm7_with_header(header: bytes, septets: bytes) -> bytes:
    skip = (len(header) * 8 + 6) // 7
    n = int.from_bytes(header, "little")
    for i, s in enumerate(septets):
        n |= s << (7 * (skip + i))
    ud = n.to_bytes(((skip + len(septets)) * 7 + 7) // 8, "little")
    return deliver(ud, udl=skip + len(septets), udhi=True)


@pytest.mark.parametrize(
    ("header", "septets", "text"),
    [
        # Turkish single shift (IEI 0x24, language 1): ESC 0x69 is "ı", ESC 0x73 "ş".
        (bytes([3, 0x24, 1, 1]), bytes([0x61, 0x1B, 0x69, 0x1B, 0x73]), "aış"),
        # Turkish locking shift (IEI 0x25): 0x07 is "ı", 0x60 "ç", 0x40 "İ".
        (bytes([3, 0x25, 1, 1]), bytes([0x07, 0x60, 0x40]), "ıçİ"),
        # Spanish single shift: ESC 0x41 "Á", ESC 0x09 "ç"; the euro still at ESC 0x65.
        (bytes([3, 0x24, 1, 2]), bytes([0x1B, 0x41, 0x1B, 0x09, 0x1B, 0x65]), "Áç€"),
        # Portuguese locking and single shift together: 0x04 "ê", 0x16 "^", ESC 0x5B "Ã".
        (bytes([6, 0x25, 1, 3, 0x24, 1, 3]), bytes([0x04, 0x16, 0x1B, 0x5B]), "ê^Ã"),
        # Bengali locking shift (language 4): 0x00-0x03 are candrabindu, anusvara, visarga, A.
        (bytes([3, 0x25, 1, 4]), bytes([0x00, 0x01, 0x02, 0x03]), "\u0981\u0982\u0983\u0985"),
        # Hindi locking shift (6) with its single shift: danda at ESC 0x19, digit zero at ESC 0x1C;
        # the line feed stays at 0x0A in every table.
        (
            bytes([6, 0x25, 1, 6, 0x24, 1, 6]),
            bytes([0x00, 0x03, 0x0A, 0x1B, 0x19, 0x1B, 0x1C]),
            "\u0901\u0905\n\u0964\u0966",
        ),
        # Urdu locking shift (13): 0x00 alef, 0x01 alef with madda.
        (bytes([3, 0x25, 1, 13]), bytes([0x00, 0x01]), "\u0627\u0622"),
        # Tamil (11) leaves 0x00 reserved: shown as the replacement character, not dropped.
        (bytes([3, 0x25, 1, 11]), bytes([0x00, 0x0A]), "\ufffd\n"),
        # A language this codec has no table for reads as the default alphabet.
        (bytes([3, 0x25, 1, 0x7F]), bytes([0x07, 0x60]), "ì¿"),
    ],
)
def test_national_language_shift_tables(header: bytes, septets: bytes, text: str) -> None:
    sms = decode_pdu(_gsm7_with_header(header, septets))
    assert isinstance(sms, SmsDeliver)
    assert sms.text == text


def test_ucs2_chinese_and_class() -> None:
    ud = "北京欢迎你".encode("utf-16-be")
    sms = decode_pdu(deliver(ud, udl=len(ud), dcs=0x18))  # UCS2, class 0
    assert isinstance(sms, SmsDeliver)
    assert sms.text == "北京欢迎你"
    assert sms.dcs.message_class == 0
    assert sms.sender.number == "+46708251358"


def test_compressed_is_refused() -> None:
    with pytest.raises(PduError) as err:
        decode_pdu(deliver(b"\x00\x00", udl=2, dcs=0x22))
    assert "compressed" in err.value.reason
    assert isinstance(err.value, ParseError)


def test_unknown_header_element_kept_and_concat_found_after_it() -> None:
    # UDHL says 10; elements: 0x24 (national language) and 0x00 concat, 0x70 (empty).
    ud = bytes([10]) + bytes([0x24, 0x01, 0x05, 0x00, 0x03, 0x09, 0x02, 0x01, 0x70, 0x00])
    ud += "hi".encode("utf-16-be")
    sms = decode_pdu(deliver(ud, udl=len(ud), dcs=0x08, udhi=True))
    assert isinstance(sms, SmsDeliver)
    assert [ie.iei for ie in sms.udh] == [0x24, 0x00, 0x70]
    assert sms.concat is not None
    assert (sms.concat.ref, sms.concat.total, sms.concat.seq) == (9, 2, 1)
    assert sms.text == "hi"


def test_header_overrun_is_an_error() -> None:
    ud = bytes([5, 0x00, 0x09, 0x01, 0x02, 0x01])  # element claims 9 octets in a 5-octet UDH
    with pytest.raises(PduError) as err:
        decode_pdu(deliver(ud, udl=len(ud), dcs=0x04, udhi=True))
    assert "overruns" in err.value.reason


@pytest.mark.parametrize("bad", ["", "0", "zz", "00 11", "0011\x1a"])
def test_non_hex_is_a_parse_error(bad: str) -> None:
    with pytest.raises(PduError):
        decode_pdu(bad)


# -- reassembly ------------------------------------------------------------------------


def parts_of(text: str, *, ref: int = 5, sender: str = NUMBER) -> list[SmsDeliver]:
    """DELIVER parts carrying what encode_submit would send (its headers and user data)."""
    out = []
    for p in encode_submit(sender, text, max_parts=255, ref=ref):
        sub = decode_pdu(p.hex)
        assert isinstance(sub, SmsSubmit)
        out.append(
            SmsDeliver(
                smsc=None,
                sender=sub.recipient,
                timestamp=datetime(2026, 1, 1, tzinfo=UTC),
                pid=0,
                dcs=sub.dcs,
                text=sub.text,
                data=sub.data,
                udh=sub.udh,
                concat=sub.concat,
            )
        )
    return out


def test_reassembly_out_of_order_with_duplicates() -> None:
    text = "天通" * 100
    parts = parts_of(text)
    r = Reassembler(timeout=60)
    assert r.add(parts[2], 0) is None
    assert r.add(parts[0], 1) is None
    assert r.add(parts[0], 2) is None  # a repeated delivery
    msg = r.add(parts[1], 3)
    assert msg is not None
    assert msg.complete
    assert msg.text == text
    assert r.pending == 0


def test_reassembly_keeps_senders_apart() -> None:
    a = parts_of("a" * 200, ref=7, sender="+111111")
    b = parts_of("b" * 200, ref=7, sender="+222222")
    r = Reassembler()
    assert r.add(a[0], 0) is None
    assert r.add(b[0], 0) is None
    msg_b = r.add(b[1], 0)
    msg_a = r.add(a[1], 0)
    assert msg_a is not None
    assert msg_b is not None
    assert (msg_a.text, msg_b.text) == ("a" * 200, "b" * 200)


def test_expire_returns_incomplete_with_missing_parts() -> None:
    parts = parts_of("m" * 400)  # 3 parts
    r = Reassembler(timeout=100)
    r.add(parts[0], 10)
    r.add(parts[2], 50)
    assert r.expire(109) == []
    [msg] = r.expire(110)
    assert not msg.complete
    assert msg.missing == (2,)
    assert msg.text == "m" * 153 + "m" * (400 - 306)
    assert r.pending == 0


def test_single_part_passes_straight_through() -> None:
    [part] = parts_of("short")
    msg = Reassembler().add(part, 0)
    assert msg is not None
    assert msg.text == "short"
    assert msg.complete


def test_pending_is_bounded() -> None:
    r = Reassembler(max_pending=2)
    for ref in range(3):
        r.add(parts_of("q" * 200, ref=ref)[0], ref)
    assert r.pending == 2
    evicted = r.expire(3)
    assert [m.ref for m in evicted] == [0]
    assert evicted[0].missing == (2,)


def test_split_escape_and_surrogate_joined_across_parts() -> None:
    # Some senders split an escape pair or a surrogate pair at the part boundary.
    def part(seq: int, dcs: int, data: bytes, text: str | None) -> SmsDeliver:
        base = parts_of("x" * 200, ref=3)[0]
        assert base.concat is not None
        return replace(
            base,
            dcs=replace(base.dcs, raw=dcs, alphabet=Alphabet.GSM7 if dcs == 0 else Alphabet.UCS2),
            data=data,
            text=text,
            concat=replace(base.concat, total=2, seq=seq),
        )

    r = Reassembler()
    r.add(part(1, 0, b"a\x1b", "a"), 0)
    msg = r.add(part(2, 0, b"\x65b", "eb"), 0)
    assert msg is not None
    assert msg.text == "a€b"

    smile = "😀".encode("utf-16-be")
    r.add(part(1, 8, b"\x00a" + smile[:2], "a\ufffd"), 0)
    msg = r.add(part(2, 8, smile[2:], "\ufffd"), 0)
    assert msg is not None
    assert msg.text == "a😀"


# -- properties ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_decoder_raises_only_pdu_error_on_bytes(data: bytes, smsc: bool) -> None:
    with contextlib.suppress(PduError):
        decode_pdu(data, smsc=smsc)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_decoder_raises_only_pdu_error_on_text(text: str) -> None:
    with contextlib.suppress(PduError):
        decode_pdu(text)


VALID = [
    "07912374151616F6040B912374786468F300002010031220324036541D149D66A7E16180FA3D47D7C32E7459FE76BBDC653A68AEA397E774503B9C66BB46CAFA9C0E42BFE169F7D9E57201",
    "0791246020099990400C91247042972767000070107031107440A005000301020182E8B71A040FDBD9",
    "07912658050000F006010D91265817373754F501010161705382010101617083820000",
    "07919761989901F031000B919761084218F200F9FF12042204350441044200200054006500730074",
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_decoder_raises_only_pdu_error_on_mutations(pdu: str, data: st.DataObject) -> None:
    raw = bytearray(bytes.fromhex(pdu))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    with contextlib.suppress(PduError):
        decode_pdu(bytes(raw[:cut]))


EMOJI = st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF)
SEQUENCES = st.sampled_from(["👍🏽", "🇨🇳", "\U0001f9d1\u200d\U0001f680", "€", "\r\n"])
CHINESE = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
GSM = st.sampled_from(
    sorted(
        "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
        "ABCXYZÄÖÑÜ§¿abcxyzäöñüà^{}\\[~]|€"
    )
)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(max_size=500),
        st.text(GSM, max_size=500),
        st.lists(st.one_of(CHINESE, EMOJI, GSM, SEQUENCES), max_size=300).map("".join),
    ),
    st.integers(0, 0xFFFF),
)
def test_encode_then_decode_gives_the_text(text: str, ref: int) -> None:
    pdus = encode_submit(NUMBER, text, max_parts=255, ref=ref)
    assert [p.part for p in pdus] == list(range(1, len(pdus) + 1))
    smss = decoded([p.hex for p in pdus])
    for p in pdus:
        assert p.tpdu_length == len(p.hex) // 2 - 1
        assert p.tpdu_length <= 164
    # Parts never split a character, so each decodes alone and they join to the text.
    assert "".join(s.text or "" for s in smss) == text
    r = Reassembler()
    msgs = [m for s in smss if (m := r.add(s, 0)) is not None]
    assert len(msgs) == 1
    assert msgs[0].text == text

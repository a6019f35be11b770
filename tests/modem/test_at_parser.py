"""AT line parser: every corpus dump, result codes, URCs anywhere, prompt, garbage, chunking."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terminal_gw.modem.at import (
    Echo,
    Event,
    Final,
    FinalResult,
    Garbage,
    InfoLine,
    LineParser,
    Prompt,
    Urc,
    split_args,
)
from terminal_gw.modem.sms import decode_pdu, parse_stored
from tests.conftest import AT_CORPUS

DUMPS = sorted(AT_CORPUS.glob("*/*.dump"))


def parser_for(data: bytes) -> LineParser:
    """A parser set up for the command a dump answers (from its echo line)."""
    p = LineParser()
    first = data.split(b"\n", 1)[0].strip().decode()
    if first.upper().startswith("AT"):
        name = first[2:].split("=")[0].split("?")[0]
        p.set_command(first, expect=name if name.startswith("+") else None)
    elif first.startswith("+CSCS"):  # a dump without its echo
        p.set_command("AT+CSCS?", expect="+CSCS")
    return p


def feed_all(p: LineParser, data: bytes, sizes: list[int] | None = None) -> list[Event]:
    events: list[Event] = []
    if sizes is None:
        return p.feed(data)
    i = 0
    for n in sizes:
        events += p.feed(data[i : i + n])
        i += n
    events += p.feed(data[i:])
    return events


def test_corpus_is_there() -> None:
    assert len(DUMPS) >= 70


@pytest.mark.parametrize("path", DUMPS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_dump_parses_whole_and_byte_by_byte(path: Path) -> None:
    data = path.read_bytes()
    whole = parser_for(data).feed(data)
    p = parser_for(data)
    one_by_one = [e for b in data for e in p.feed(bytes([b]))]
    assert whole == one_by_one
    assert not [e for e in whole if isinstance(e, Garbage)]
    if path.parent.name == "at-ussd":
        assert [type(e) for e in whole] == [Urc]  # no command running: a URC
        assert whole[0].name == "+CUSD"  # type: ignore[union-attr]
        return
    assert isinstance(whole[-1], FinalResult)
    assert whole[-1].kind is Final.OK
    assert all(isinstance(e, Echo | InfoLine) for e in whole[:-1])


@pytest.mark.parametrize("path", sorted((AT_CORPUS / "at-sms").glob("*.dump")), ids=str)
def test_cmgr_answers_feed_the_decoder(path: Path) -> None:
    data = path.read_bytes()
    lines = [e.text for e in parser_for(data).feed(data) if isinstance(e, InfoLine)]
    [stored] = parse_stored(lines)
    decode_pdu(stored.pdu)


@pytest.mark.parametrize(
    ("line", "kind", "code", "reason"),
    [
        ("OK", Final.OK, None, None),
        ("ERROR", Final.ERROR, None, None),
        ("+CME ERROR: 10", Final.CME_ERROR, 10, "SIM not inserted"),
        ("+CME ERROR: SIM PIN required", Final.CME_ERROR, 11, "SIM PIN required"),
        ("+CME ERROR: 30", Final.CME_ERROR, 30, "no network service"),
        ("+CMS ERROR: 304", Final.CMS_ERROR, 304, "invalid PDU mode parameter"),
        ("+CMS ERROR: 500", Final.CMS_ERROR, 500, "unknown error"),
        ("+CMS ERROR: 42", Final.CMS_ERROR, 42, "congestion"),
        ("+CMS ERROR: SMSC address unknown", Final.CMS_ERROR, 330, "SMSC address unknown"),
        ("+CMS ERROR: 600", Final.CMS_ERROR, 600, "vendor specific error 600"),
        ("+CME ERROR: some vendor words", Final.CME_ERROR, None, "some vendor words"),
        ("NO CARRIER", Final.NO_CARRIER, None, None),
        ("BUSY", Final.BUSY, None, None),
        ("NO ANSWER", Final.NO_ANSWER, None, None),
        ("NO DIALTONE", Final.NO_DIALTONE, None, None),
        ("CONNECT 115200", Final.CONNECT, None, None),
        ("COMMAND NOT SUPPORT", Final.ERROR, None, None),
        # Without the "+": still final results, not lines of an answer left to time out.
        ("CME ERROR: 10", Final.CME_ERROR, 10, "SIM not inserted"),
        ("CMS ERROR: 42", Final.CMS_ERROR, 42, "congestion"),
        ("MODEM ERROR: 3", Final.ERROR, 3, "modem error 3"),
    ],
)
def test_final_result_codes(line: str, kind: Final, code: int | None, reason: str | None) -> None:
    p = LineParser()
    p.set_command("AT+CPIN?", expect="+CPIN")
    [event] = p.feed(b"\r\n" + line.encode() + b"\r\n")
    assert isinstance(event, FinalResult)
    assert (event.kind, event.code, event.reason) == (kind, code, reason)
    assert event.ok == (kind in (Final.OK, Final.CONNECT))


def test_urcs_in_the_middle_of_a_reply() -> None:
    p = LineParser()
    p.set_command("AT+CMGL=4", expect="+CMGL")
    data = (
        b"AT+CMGL=4\r\r\n+CMGL: 1,1,,23\r\n"
        b"0791534850020200040C9153486507895500006090608164138004D4F29C0E\r\n"
        b'+CMTI: "SM",5\r\n'
        b"RING\r\n"
        b"+CMT: ,25\r\n0791198948004544040C9119894882006200007050307040042206CF35689E9603\r\n"
        b"^MODE: 3,2\r\n"
        b"+CMGL: 2,1,,23\r\n0791534850020200040C9153486507895500006090608164138004D4F29C0E\r\n"
        b"\r\nOK\r\n"
    )
    events = p.feed(data)
    urcs = [e for e in events if isinstance(e, Urc)]
    info = [e.text for e in events if isinstance(e, InfoLine)]
    assert [u.name for u in urcs] == ["+CMTI", "RING", "+CMT", "^MODE"]
    assert urcs[0].fields == ["SM", "5"]
    assert urcs[2].body is not None
    assert decode_pdu(urcs[2].body).party.number == "+919884280026"  # type: ignore[union-attr]
    assert len(info) == 4
    assert [s.index for s in parse_stored(info)] == [1, 2]
    assert isinstance(events[-1], FinalResult)


def test_creg_is_an_answer_or_a_urc_depending_on_the_command() -> None:
    p = LineParser()
    p.set_command("AT+CREG?", expect="+CREG")
    assert p.feed(b'\r\n+CREG: 2,1,"5E25","605F"\r\n') == [InfoLine('+CREG: 2,1,"5E25","605F"')]
    p.set_command("AT+CSQ", expect="+CSQ")
    [urc] = p.feed(b"\r\n+CREG: 1\r\n")
    assert isinstance(urc, Urc)
    assert (urc.name, urc.args) == ("+CREG", "1")
    p.set_command(None)
    [urc] = p.feed(b'\r\n+CREG: 5,"00A1","0001",7\r\n')
    assert isinstance(urc, Urc)
    assert urc.fields == ["5", "00A1", "0001", "7"]


def test_lines_after_the_final_result_in_the_same_read_are_urcs() -> None:
    p = LineParser()
    p.set_command("AT+CREG?", expect="+CREG")
    events = p.feed(b"\r\n+CREG: 0,1\r\n\r\nOK\r\n\r\n+CREG: 2\r\n\r\nOK\r\n")
    assert events[0] == InfoLine("+CREG: 0,1")
    assert events[1] == FinalResult(Final.OK, "OK")
    assert isinstance(events[2], Urc)
    assert (events[2].name, events[2].args) == ("+CREG", "2")
    assert isinstance(events[3], Garbage)  # a second OK belongs to no command


def test_multiline_quoted_cusd() -> None:
    p = LineParser()
    [urc] = p.feed(b'\r\n+CUSD: 0,"Balance: 10.00\r\nValid to 2026-12-31\r\nThanks",15\r\n')
    assert isinstance(urc, Urc)
    assert urc.name == "+CUSD"
    assert urc.fields == ["0", "Balance: 10.00\nValid to 2026-12-31\nThanks", "15"]
    # As the answer to AT+CUSD, byte by byte, and an unclosed quote ended by the OK.
    p.set_command('AT+CUSD=1,"*100#",15', expect="+CUSD")
    data = b'\r\n+CUSD: 0,"line one\r\nline two",15\r\n\r\nOK\r\n'
    events = [e for i in range(len(data)) for e in p.feed(data[i : i + 1])]
    assert events == [InfoLine('+CUSD: 0,"line one\nline two",15'), FinalResult(Final.OK, "OK")]
    p.set_command('AT+CUSD=1,"*100#",15', expect="+CUSD")
    events = p.feed(b'\r\n+CUSD: 0,"never closed\r\nOK\r\n')
    assert events == [InfoLine('+CUSD: 0,"never closed'), FinalResult(Final.OK, "OK")]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        # The PDU on the header line, after the length.
        (["+CMGR: 1,,23 0791534850020200040C9153486507895500006090608164138004D4F29C0E"], 1),
        # Unlisted URCs between the header and its PDU.
        (
            [
                "+CMGR: 1,,23",
                '*PSUTTZ: 26,12,2,4,30,0,"+32",0',
                "DST: 0",
                "0791534850020200040C9153486507895500006090608164138004D4F29C0E",
            ],
            1,
        ),
    ],
)
def test_stored_pdu_shapes(lines: list[str], expected: int) -> None:
    [stored] = parse_stored(lines)
    assert (stored.stat, stored.length) == (expected, 23)
    assert decode_pdu(stored.pdu).party.number == "+358456709855"


def test_cds_pdu_mode_takes_the_next_line_text_mode_does_not() -> None:
    p = LineParser()
    pdu = b"07912658050000F006010D91265817373754F501010161705382010101617083820000"
    [urc] = p.feed(b"\r\n+CDS: 25\r\n" + pdu + b"\r\n")
    assert isinstance(urc, Urc)
    assert urc.body is not None
    assert decode_pdu(urc.body).mr == 1  # type: ignore[union-attr]
    [urc] = p.feed(b'\r\n+CDS: 6,1,"+123",145,"26/01/01,00:00:00+00","26/01/01,00:00:05+00",0\r\n')
    assert isinstance(urc, Urc)
    assert urc.body is None


def test_cmt_without_its_body_does_not_swallow_the_next_result() -> None:
    p = LineParser()
    p.set_command("AT", expect=None)
    events = p.feed(b"\r\n+CMT: ,25\r\nOK\r\n")
    assert events == [Urc("+CMT", ",25", "+CMT: ,25"), FinalResult(Final.OK, "OK")]


def test_prompt_has_no_line_ending_and_pdu_echo_is_tolerated() -> None:
    p = LineParser()
    hexpdu = "0001000B916407281553F80000" + "0AE8329BFD4697D9EC37"
    p.set_command("AT+CMGS=19", expect="+CMGS", echo=[hexpdu], prompt=True)
    events = p.feed(b"AT+CMGS=19\r\r\n> ")
    assert events == [Echo("AT+CMGS=19"), Prompt()]
    events = p.feed(hexpdu.encode() + b"\x1a\r\n+CMGS: 7\r\n\r\nOK\r\n")
    assert events == [Echo(hexpdu), InfoLine("+CMGS: 7"), FinalResult(Final.OK, "OK")]


def test_prompt_only_when_expected() -> None:
    p = LineParser()
    p.set_command("AT+CMGR=1", expect="+CMGR")
    assert p.feed(b"\r\n> quoted text\r\n") == [InfoLine("> quoted text")]


def test_echo_after_ate0_and_lowercase() -> None:
    p = LineParser()
    p.set_command("AT+CSQ", expect="+CSQ")
    assert p.feed(b"at+csq\r\r\n+CSQ: 20,99\r\n\r\nOK\r\n") == [
        Echo("at+csq"),
        InfoLine("+CSQ: 20,99"),
        FinalResult(Final.OK, "OK"),
    ]


def test_garbage_never_wedges_it() -> None:
    p = LineParser(max_line=64)
    p.set_command("AT+CSQ", expect="+CSQ")
    events = p.feed(b"\x00\xff\xff\x00" + b"A" * 500 + b"\r\n\x80\x81\xfe\r\n")
    assert [type(e) for e in events] == [Garbage, Garbage]
    assert "longer than 64" in events[0].reason  # type: ignore[union-attr]
    events = p.feed(b"\x00+CSQ: 1\xff5,99\r\nOK\r\n")
    assert events == [InfoLine("+CSQ: 15,99"), FinalResult(Final.OK, "OK")]


def test_late_answer_after_a_timeout_is_not_a_urc() -> None:
    p = LineParser()
    p.set_command("AT+CREG?", expect="+CREG")
    p.set_command(None, abandoned=True)
    events = p.feed(b"\r\n+CREG: 0,1\r\n\r\nOK\r\n")
    assert [type(e) for e in events] == [Garbage, Garbage]
    assert "late answer" in events[0].reason  # type: ignore[union-attr]
    p.set_command("AT+CSQ", expect="+CSQ")
    p.set_command(None)  # answered: a +CREG now is a URC again
    [urc] = p.feed(b"\r\n+CREG: 1\r\n")
    assert isinstance(urc, Urc)


def test_idle_lines_other_than_urcs_are_garbage() -> None:
    p = LineParser()
    events = p.feed(b'\r\nOK\r\nhello there\r\nRING\r\n+CMTI: "ME",1\r\n')
    assert [type(e) for e in events] == [Garbage, Garbage, Urc, Urc]


def test_split_args() -> None:
    assert split_args('1,"a,b", x ,""') == ["1", "a,b", "x", ""]
    assert split_args('2,1,"0B,"0100701",7') == ["2", "1", "0B,0100701,7"]
    assert split_args("") == [""]


COMMANDS = st.sampled_from([None, "AT+CSQ", "AT+CREG?", "AT+CMGL=4", "AT+CMGS=23"])
CHUNKS = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [b"\r\n", b"OK", b"+CMT: ,23", b"> ", b"+CREG: 1", b"+CME ERROR: 10", b"\x1a", b">"]
        ),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(COMMANDS, st.booleans(), CHUNKS, st.data())
def test_chunking_independence_and_no_exceptions(
    command: str | None, prompt: bool, chunks: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(chunks)
    a, b = LineParser(max_line=128), LineParser(max_line=128)
    for p in (a, b):
        p.set_command(command, expect="+CREG" if command else None, prompt=prompt)
    whole = a.feed(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    pieces = [stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    split = [e for piece in pieces for e in b.feed(piece)]
    assert whole == split

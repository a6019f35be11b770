"""Short-message content: modes, decoding, the capacity check by card level and mode."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from terminal_gw.config import load_config_data
from terminal_gw.errors import CommandError, ConfigError
from terminal_gw.rdss.content import (
    air_bits,
    capacity_bits,
    decode_content,
    encode_text,
    mode_of,
    plan,
)


def test_capacity_table_by_level_encryption_express_and_dialect() -> None:
    assert [capacity_bits("2.1", level=n) for n in (1, 2, 3, 4)] == [110, 408, 628, 848]
    assert [capacity_bits("2.1", level=n, encrypted=True) for n in (1, 2, 3, 4)] == [
        140,
        360,
        580,
        1680,
    ]
    assert capacity_bits("2.1", level=4, express=True) == 188
    assert capacity_bits("bds3", level=None) == 14000
    assert capacity_bits("bds3", level=None, scope="global") == 560


def test_air_bits_per_mode() -> None:
    assert air_bits("chinese", encode_text("通信测试", "chinese")) == 4 * 14
    assert air_bits("code", bytes.fromhex("3132333435")) == 10 * 4
    assert air_bits("mixed", encode_text("hello", "mixed")) == 5 * 8


def test_auto_takes_the_smaller_mode_and_the_limit_is_in_the_error() -> None:
    chinese = plan(text="通信测试", data=None, mode="auto", limit=628, card_note="x")
    assert (chinese.mode, chinese.bits, chinese.content) == ("chinese", 56, "CDA8D0C5B2E2CAD4")
    mixed = plan(text="ok 好", data=None, mode="auto", limit=628, card_note="x")
    assert (mixed.mode, mixed.content) == ("mixed", "A46F6B20BAC3")
    code = plan(text=None, data="0102", mode="auto", limit=628, card_note="x")
    assert (code.mode, code.bits) == ("code", 16)
    with pytest.raises(CommandError) as info:
        plan(text="中" * 8, data=None, mode="auto", limit=110, card_note="a card of level 1")
    assert info.value.code == "too_long"
    assert str(info.value) == (
        "the message takes 112 bits in chinese mode; a card of level 1 carries at most 110 bits"
    )


@pytest.mark.parametrize(
    ("text", "data", "mode", "code"),
    [
        ("abc", None, "chinese", "not_encodable"),  # single-byte in Chinese mode
        ("\u20ac", None, "auto", "not_encodable"),  # not in GB2312
        ("x", None, "code", "invalid"),  # code mode carries data
        (None, "ABC", "code", "invalid"),  # odd hex
        (None, "ZZ", "code", "invalid"),
        (None, "B0", "chinese", "invalid"),  # half a character
        ("x", "31", "auto", "invalid"),  # both
        ("", None, "auto", "invalid"),
    ],
)
def test_content_refused(text: str | None, data: str | None, mode: str, code: str) -> None:
    with pytest.raises(CommandError) as info:
        plan(text=text, data=data, mode=mode, limit=10000, card_note="x")  # type: ignore[arg-type]
    assert info.value.code == code


def test_modes_by_dialect() -> None:
    assert [mode_of("2.1", n) for n in (0, 1, 2, 3)] == ["chinese", "code", "mixed", None]
    assert [mode_of("bds3", n) for n in (1, 2, 3, 4, 5)] == [
        "chinese",
        "code",
        "mixed",
        "compressed_chinese",
        "compressed_code",
    ]
    compressed = decode_content("B0A1", "compressed_chinese")
    assert (compressed.text, compressed.data) == (None, "B0A1")
    assert compressed.reason is not None
    assert decode_content("B0A1", "chinese").text == "啊"


gb2312_chars = st.characters(min_codepoint=0x20, max_codepoint=0x9FFF).filter(
    lambda c: c.isprintable() and _in_gb2312(c)
)


def _in_gb2312(c: str) -> bool:
    try:
        c.encode("gb2312")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.text(gb2312_chars, min_size=1, max_size=60))
def test_any_gb2312_text_planned_then_decoded_gives_the_text_back(text: str) -> None:
    planned = plan(text=text, data=None, mode="auto", limit=14000, card_note="x")
    assert decode_content(planned.content, planned.mode).text == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.sampled_from(["chinese", "code", "mixed", None]))
def test_decoding_never_raises(hex_text: str, mode: str | None) -> None:
    decoded = decode_content(hex_text, mode)  # type: ignore[arg-type]
    assert (decoded.text is None) != (decoded.data is None)


def test_reason_codes_are_configurable_and_checked() -> None:
    config = load_config_data(
        {"device": {"id": "d"}, "rdss": {"reasons": {"7": "no_card"}}}, environ={}
    )
    assert config.rdss.reasons == {"7": "no_card"}
    with pytest.raises(ConfigError) as info:
        load_config_data({"device": {"id": "d"}, "rdss": {"reasons": {"x": "no_card"}}}, environ={})
    assert info.value.problems[0][0].startswith("rdss")
    with pytest.raises(ConfigError):
        load_config_data({"device": {"id": "d"}, "rdss": {"reasons": {"1": "bogus"}}}, environ={})

"""gpsd's JSON objects and request reading, as pure functions."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from terminal_gw.models import Fix
from terminal_gw.serve.gpsd_json import (
    RequestReader,
    WatchPolicy,
    apply_watch,
    tpv_line,
)


def test_tpv_leaves_out_what_the_receiver_did_not_send() -> None:
    line = tpv_line(Fix(time="2026-01-02T03:04:05.000Z", mode=2, lat=1.5, lon=float("nan")), "d")
    assert line.endswith(b"}\r\n")
    obj = json.loads(line)
    assert obj == {
        "class": "TPV",
        "device": "d",
        "mode": 2,
        "time": "2026-01-02T03:04:05.000Z",
        "lat": 1.5,
    }


def test_a_request_without_line_end_is_answered_at_once() -> None:
    reader = RequestReader()
    (req,) = reader.feed(b'?WATCH={"enable":true,"json":true}')
    assert (req.name, req.args) == ("WATCH", {"enable": True, "json": True})
    assert reader.feed(b"?POLL") == []  # no `;` or line end yet: waits
    (req,) = reader.feed(b";")
    assert req.name == "POLL"


@given(st.lists(st.integers(min_value=0, max_value=80), max_size=6))
def test_requests_read_the_same_however_split(cuts: list[int]) -> None:
    text = b'junk?VERSION;\n?WATCH={"enable":true,"raw":2};?DEVICES;\r\n?POLL;'
    reader = RequestReader()
    got = []
    last = 0
    for cut in sorted(set(cuts)):
        got += reader.feed(text[last:cut])
        last = max(last, cut)
    got += reader.feed(text[last:])
    assert [r.name for r in got] == ["VERSION", "WATCH", "DEVICES", "POLL"]
    assert got[1].args == {"enable": True, "raw": 2}
    assert all(r.error is None for r in got)


def test_watch_changes_only_what_it_names() -> None:
    p = apply_watch(WatchPolicy(), {"json": True})
    assert p.enable  # gpsd: a ?WATCH= enables unless it says otherwise
    assert p.wants_json
    assert not p.wants_sentences
    p = apply_watch(p, {"enable": False})
    assert p.json
    assert not p.wants_json
    p = apply_watch(p, {"raw": True, "future_key": 1})
    assert p.raw == 1
    assert p.wants_sentences
    with pytest.raises(ValueError, match="raw"):
        apply_watch(p, {"raw": 3})
    with pytest.raises(ValueError, match="enable"):
        apply_watch(p, {"enable": "yes"})

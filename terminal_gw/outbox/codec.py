"""How a payload is stored in the outbox: deflate with a preset dictionary per record class.

A stored payload is either the payload itself (JSON text, which starts with "{" or white
space: rows written before this format, and payloads that would not shrink) or one codec byte
(`FIX`, `SKY`, `OTHER`, all below 0x09) and a raw deflate stream made with that codec's
dictionary. At 10 fixes a second with the link down a fix's JSON (about 300 bytes) is stored in
about 110, a sky view's (about 1.3 KB) in about 260: the pages the WAL and the checkpoint write
shrink with it (bench/outbox.py).

A dictionary is never changed once released, since stored rows need it to be read again: a
better one gets a new codec byte. The dictionaries are synthetic payloads in the models' field
order (see `terminal_gw.models`), the fields most records share last (deflate codes a short
distance in fewer bits).
"""

from __future__ import annotations

import zlib
from typing import Any

FIX = 1
SKY = 2
OTHER = 3
#: Payloads longer than this are stored as they are (and a stored stream that inflates past it
#: is taken for damage, not inflated further).
MAX_DECODED = 1 << 20
#: Deflate's parameters: a 4 KiB window (dictionary and payload), a small hash table. Inflating
#: takes any window up to 32 KiB, so these may change without a new codec byte.
_LEVEL = 6
_WBITS = 12
_MEM_LEVEL = 4

_ID = b'{"id":"0190a000-0000-7000-8000-000000000000","v":1,'
_FIX_DICT = (
    _ID + b'"class":"TPV","time":"2026-01-01T00:00:00.000Z","mode":2,"status":2,"lat":-33.8688,'
    b'"lon":-151.2093,"altHAE":119.4,"altMSL":-5.0,"geoidSep":46.8,"speed":0.041,"track":225.7,'
    b'"climb":-0.1,"magvar":1.4,"eph":2.5,"epv":3.9,"hdop":1.2,"vdop":2.6,"pdop":2.9,"nSat":24,'
    b'"uSat":18,"used":{"gps":9,"glo":3,"gal":4,"qzss":1,"bds":10},"clock":"system",'
    b'"source_protocol":"casic"}'
    + _ID
    + b'"class":"TPV","time":"2026-01-01T00:00:00.000Z","mode":3,"status":1,"lat":31.2304,'
    b'"lon":121.4737,"altHAE":12.3,"altMSL":4.5,"geoidSep":7.8,"speed":0.0,"track":0.0,'
    b'"climb":0.0,"eph":1.5,"epv":2.1,"hdop":0.8,"vdop":1.1,"pdop":1.4,"nSat":12,"uSat":10,'
    b'"used":{"gps":8,"bds":12},"clock":"gnss","source_protocol":"ubx"}'
)
_SKY_DICT = (
    _ID + b'"class":"SKY","time":"2026-01-01T00:00:00.000Z","satellites":['
    b'{"PRN":301,"gnssid":2,"svid":1,"sigid":0,"az":152.0,"el":41.0,"ss":36.0,"used":true},'
    b'{"PRN":74,"gnssid":6,"svid":10,"az":100.0,"el":21.0,"ss":0.0,"used":false},'
    b'{"PRN":193,"gnssid":5,"svid":1,"az":332.0,"el":34.0,"ss":35.0,"used":false},'
    b'{"PRN":413,"gnssid":3,"svid":13,"az":60.0,"el":40.0,"ss":25.0,"used":true},'
    b'{"PRN":12,"gnssid":0,"svid":12,"az":273.0,"el":6.0,"ss":0.0,"used":false},'
    b'{"PRN":88,"gnssid":6,"svid":24,"az":233.0,"el":48.0,"used":false},'
    b'{"PRN":1,"gnssid":0,"svid":1,"az":44.0,"el":18.0,"ss":29.0,"used":true}],'
    b'"nSat":19,"uSat":12,"hdop":0.6,"vdop":0.9,"pdop":1.1,"clock":"gnss","source_protocol":"ubx"}'
)
_OTHER_DICT = (
    _ID + b'"class":"RDSS","time":"2026-01-01T00:00:00.000Z","state":"ok","dialect":"bds3",'
    b'"card":{"user_id":"0123456","serial":"","broadcast_id":"","level":3,"interval_s":60,'
    b'"encrypted":false}'
    + _ID
    + b'"class":"MODEM","time":"2026-01-01T00:00:00.000Z","state":"ok","rssi":18,"dbm":-77,'
    b'"ber":0,"reg":1,"reg_text":"registered, home","registered":true,"operator":"",'
    b'"imei":"860000000000000","imsi":"460000000000000","sim":"READY","clock":"system"}'
    + _ID
    + b'"class":"SMS","time":"2026-01-01T00:00:00.000Z","received":"2026-01-01T00:00:00.000Z",'
    b'"from":"+8613800000000","text":"","encoding":"gsm7","parts":1,"complete":true}'
    + _ID
    + b'"class":"BDS_RX","received":"2026-01-01T00:00:00.000Z","from":"0123456","mode":"mixed",'
    b'"text":"","info_class":"normal","dialect":"2.1","raw":"$BDTXR,1,0123456,2,,*00"}'
    + _ID
    + b'"class":"SMS_TX","time":"2026-01-01T00:00:00.000Z","sms_id":"","state":"sent",'
    b'"to":"+8613800000000","parts":1,"mr":[],"attempts":1,"code":"timeout","reason":""}'
    + _ID
    + b'"class":"BDS_TX","time":"2026-01-01T00:00:00.000Z","bds_id":"","state":"queued",'
    b'"to":"0123456","mode":"mixed","bits":0,"limit_bits":628,"attempts":0}'
    + _ID
    + b'"class":"CMD_RESULT","time":"2026-01-01T00:00:00.000Z","command":"sms/send",'
    b'"command_id":"","ok":true,"result":{},"clock":"system"}'
    + _ID
    + b'"class":"STATUS","time":"2026-01-01T00:00:00.000Z","state":"online","health":{'
    b'"problems":{},"uptime_s":0,"outbox_depth":0,"last_fix_mode":3,"last_fix_age_s":0.0},'
    b'"clock":"gnss"}'
    + _ID
    + b'"class":"EVENT","time":"2026-01-01T00:00:00.000Z","kind":"evicted","severity":"warning",'
    b'"message":"","data":{"counts":{"fix":{"thinned":1}},"total":1},"clock":"system"}'
)
_DICTS: dict[int, bytes] = {FIX: _FIX_DICT, SKY: _SKY_DICT, OTHER: _OTHER_DICT}
_MARKS = frozenset(bytes((c,)) for c in _DICTS)


def _primed(codec: int) -> tuple[bytes, Any]:
    """The codec byte and a compressor that has read the codec's dictionary (copied for
    each payload: cheaper than reading the dictionary again)."""
    z = zlib.compressobj(
        _LEVEL, zlib.DEFLATED, -_WBITS, _MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY, _DICTS[codec]
    )
    return bytes((codec,)), z


_PRIMED = {codec: _primed(codec) for codec in _DICTS}
_PRIMED_OF_CLASS = {"fix": _PRIMED[FIX], "sky": _PRIMED[SKY]}


def encode(cls: str, payload: bytes) -> bytes:
    """The payload of a record of class `cls` as it is stored."""
    # A payload that starts with a codec byte (not JSON) is always encoded: stored as it is,
    # it would pass for an encoded one.
    marked = payload[:1] in _MARKS
    if len(payload) > MAX_DECODED and not marked:
        return payload
    mark, primed = _PRIMED_OF_CLASS.get(cls) or _PRIMED[OTHER]
    z = primed.copy()
    stored: bytes = mark + z.compress(payload) + z.flush()
    return stored if marked or len(stored) < len(payload) else payload


def decode_or_none(stored: bytes) -> bytes | None:
    """The payload a stored value holds; None when it is an encoded value that does not
    inflate (damaged)."""
    dictionary = _DICTS.get(stored[0]) if stored else None
    if dictionary is None:
        return stored
    try:
        z = zlib.decompressobj(-15, zdict=dictionary)
        payload = z.decompress(memoryview(stored)[1:], MAX_DECODED + 1)
    except zlib.error:
        return None
    if not z.eof or z.unused_data or len(payload) > MAX_DECODED:
        return None
    return payload


def decode(stored: bytes) -> bytes:
    """The payload a stored value holds; a damaged encoded value is handed on as it is
    (as a damaged plain payload always was) rather than lost or stuck."""
    payload = decode_or_none(stored)
    return stored if payload is None else payload

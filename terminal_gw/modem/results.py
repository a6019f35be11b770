"""3GPP result tables: +CME ERROR (TS 27.007 §9.2), +CMS ERROR (TS 27.005 §3.2.5), TP-ST.

Pure data plus lookups. Modems answer with a number, or with text after `AT+CMEE=2`;
both forms map to one (code, reason) pair so errors read the same whatever the setting.
"""

from __future__ import annotations

import re

# TS 27.007 §9.2.1 (general) and §9.2.2 (GPRS/packet domain).
CME_ERRORS: dict[int, str] = {
    0: "phone failure",
    1: "no connection to phone",
    2: "phone-adaptor link reserved",
    3: "operation not allowed",
    4: "operation not supported",
    5: "PH-SIM PIN required",
    6: "PH-FSIM PIN required",
    7: "PH-FSIM PUK required",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    17: "SIM PIN2 required",
    18: "SIM PUK2 required",
    20: "memory full",
    21: "invalid index",
    22: "not found",
    23: "memory failure",
    24: "text string too long",
    25: "invalid characters in text string",
    26: "dial string too long",
    27: "invalid characters in dial string",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed - emergency calls only",
    40: "network personalization PIN required",
    41: "network personalization PUK required",
    42: "network subset personalization PIN required",
    43: "network subset personalization PUK required",
    44: "service provider personalization PIN required",
    45: "service provider personalization PUK required",
    46: "corporate personalization PIN required",
    47: "corporate personalization PUK required",
    48: "hidden key required",
    49: "EAP method not supported",
    50: "incorrect parameters",
    51: "command implemented but currently disabled",
    52: "command aborted by user",
    53: "not attached to network due to MT functionality restrictions",
    54: "modem not allowed - MT restricted to emergency calls only",
    55: "operation not allowed because of MT functionality restrictions",
    56: "fixed dial number only allowed",
    57: "temporarily out of service due to other MT usage",
    58: "language/alphabet not supported",
    59: "unexpected data value",
    60: "system failure",
    61: "data missing",
    62: "call barred",
    63: "message waiting indication subscription failure",
    100: "unknown",
    103: "illegal MS",
    106: "illegal ME",
    107: "GPRS services not allowed",
    111: "PLMN not allowed",
    112: "location area not allowed",
    113: "roaming not allowed in this location area",
    132: "service option not supported",
    133: "requested service option not subscribed",
    134: "service option temporarily out of order",
    148: "unspecified GPRS error",
    149: "PDP authentication failure",
    150: "invalid mobile class",
}

# TS 27.005 §3.2.5: 0-127 are RP causes (TS 24.011 Annex E-2), 128-255 TP-FCS values
# (TS 23.040 §9.2.3.22), 300-500 the ME/TA's own; 512 and up are vendor specific.
CMS_ERRORS: dict[int, str] = {
    1: "unassigned (unallocated) number",
    8: "operator determined barring",
    10: "call barred",
    17: "network failure",
    21: "short message transfer rejected",
    22: "memory capacity exceeded",
    27: "destination out of service",
    28: "unidentified subscriber",
    29: "facility rejected",
    30: "unknown subscriber",
    38: "network out of order",
    41: "temporary failure",
    42: "congestion",
    47: "resources unavailable, unspecified",
    50: "requested facility not subscribed",
    69: "requested facility not implemented",
    81: "invalid short message transfer reference value",
    95: "invalid message, unspecified",
    96: "invalid mandatory information",
    97: "message type non-existent or not implemented",
    98: "message not compatible with short message protocol state",
    99: "information element non-existent or not implemented",
    111: "protocol error, unspecified",
    127: "interworking, unspecified",
    128: "telematic interworking not supported",
    129: "short message type 0 not supported",
    130: "cannot replace short message",
    143: "unspecified TP-PID error",
    144: "data coding scheme (alphabet) not supported",
    145: "message class not supported",
    159: "unspecified TP-DCS error",
    160: "command cannot be actioned",
    161: "command unsupported",
    175: "unspecified TP-Command error",
    176: "TPDU not supported",
    192: "SC busy",
    193: "no SC subscription",
    194: "SC system failure",
    195: "invalid SME address",
    196: "destination SME barred",
    197: "SM rejected - duplicate SM",
    198: "TP-VPF not supported",
    199: "TP-VP not supported",
    208: "(U)SIM SMS storage full",
    209: "no SMS storage capability in (U)SIM",
    210: "error in MS",
    211: "memory capacity exceeded",
    212: "(U)SIM application toolkit busy",
    213: "(U)SIM data download error",
    255: "unspecified error cause",
    300: "ME failure",
    301: "SMS service of ME reserved",
    302: "operation not allowed",
    303: "operation not supported",
    304: "invalid PDU mode parameter",
    305: "invalid text mode parameter",
    310: "(U)SIM not inserted",
    311: "(U)SIM PIN required",
    312: "PH-(U)SIM PIN required",
    313: "(U)SIM failure",
    314: "(U)SIM busy",
    315: "(U)SIM wrong",
    316: "(U)SIM PUK required",
    317: "(U)SIM PIN2 required",
    318: "(U)SIM PUK2 required",
    320: "memory failure",
    321: "invalid memory index",
    322: "memory full",
    330: "SMSC address unknown",
    331: "no network service",
    332: "network timeout",
    340: "no +CNMA acknowledgement expected",
    500: "unknown error",
}

# TS 23.040 §9.2.3.15 TP-Status of an SMS-STATUS-REPORT.
TP_STATUS: dict[int, str] = {
    0x00: "received by the SME",
    0x01: "forwarded to the SME, delivery not confirmed",
    0x02: "replaced by the SC",
    0x20: "congestion, still trying",
    0x21: "SME busy, still trying",
    0x22: "no response from SME, still trying",
    0x23: "service rejected, still trying",
    0x24: "quality of service not available, still trying",
    0x25: "error in SME, still trying",
    0x40: "remote procedure error",
    0x41: "incompatible destination",
    0x42: "connection rejected by SME",
    0x43: "not obtainable",
    0x44: "quality of service not available",
    0x45: "no interworking available",
    0x46: "SM validity period expired",
    0x47: "SM deleted by originating SME",
    0x48: "SM deleted by SC administration",
    0x49: "SM does not exist",
    0x60: "congestion, SC gave up",
    0x61: "SME busy, SC gave up",
    0x62: "no response from SME, SC gave up",
    0x63: "service rejected, SC gave up",
    0x64: "quality of service not available, SC gave up",
    0x65: "error in SME, SC gave up",
}

_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def _norm(text: str) -> str:
    return _NON_ALNUM.sub(" ", text.lower()).strip()


_CME_BY_TEXT = {_norm(v): k for k, v in CME_ERRORS.items()}
_CMS_BY_TEXT = {_norm(v): k for k, v in CMS_ERRORS.items()}


def _lookup(
    value: str, table: dict[int, str], by_text: dict[str, int], vendor_from: int
) -> tuple[int | None, str]:
    value = value.strip().strip('"').strip()
    if value.isdigit():
        code = int(value)
        if code in table:
            return code, table[code]
        if code >= vendor_from:
            return code, f"vendor specific error {code}"
        return code, f"unknown error {code}"
    code_or_none = by_text.get(_norm(value))
    return code_or_none, value or "unknown error"


def cme_error(value: str) -> tuple[int | None, str]:
    """The (code, reason) of a `+CME ERROR:` argument, numeric or text form."""
    return _lookup(value, CME_ERRORS, _CME_BY_TEXT, 256)


def cms_error(value: str) -> tuple[int | None, str]:
    """The (code, reason) of a `+CMS ERROR:` argument, numeric or text form."""
    return _lookup(value, CMS_ERRORS, _CMS_BY_TEXT, 512)


def tp_status(status: int) -> str:
    """The meaning of a status report's TP-ST value, with the ranges of reserved codes."""
    if status in TP_STATUS:
        return TP_STATUS[status]
    if status < 0x20:
        return f"delivered (SC specific {status:#04x})"
    if status < 0x40:
        return f"temporary error, still trying ({status:#04x})"
    if status < 0x60:
        return f"permanent error ({status:#04x})"
    return f"temporary error, SC gave up ({status:#04x})"

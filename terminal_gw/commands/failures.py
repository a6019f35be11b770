"""Which send failures are worth a retry, and whether the part may have gone out anyway.

Tables, not branches: a +CMS ERROR number is transient when it is listed here, permanent
otherwise (a retry cannot fix a barred or unknown number, a bad PDU or a missing SIM).
"""

from __future__ import annotations

from dataclasses import dataclass

from terminal_gw.backoff import Backoff
from terminal_gw.errors import ModemError, TerminalGwError
from terminal_gw.modem.at import Final, ModemResultError, ModemTimeoutError
from terminal_gw.modem.results import CME_ERRORS, CMS_ERRORS

#: +CMS ERROR numbers (TS 27.005 §3.2.5, TS 24.011 E-2, TS 23.040 §9.2.3.22) that pass:
#: the network or the modem is busy, congested or out of reach for now.
TRANSIENT_CMS: dict[int, str] = {
    17: "network failure",
    38: "network out of order",
    41: "temporary failure",
    42: "congestion",
    47: "resources unavailable",
    192: "SC busy",
    212: "(U)SIM application toolkit busy",
    300: "ME failure (often a modem still starting)",
    301: "SMS service of ME reserved (another send in progress)",
    314: "(U)SIM busy",
    331: "no network service (satellite out of view, not registered yet)",
    332: "network timeout",
    500: "unknown error",
}

#: +CME ERROR numbers (TS 27.007 §9.2) that pass, for modems that answer a send with one.
TRANSIENT_CME: dict[int, str] = {
    14: "SIM busy",
    30: "no network service",
    31: "network timeout",
    100: "unknown",
}

#: A ModemError `reason` that says the part never reached the modem's radio: the prompt never
#: came (the PDU was not written), the write itself failed, the engine was not running, or
#: the driver was not ready to send (`TiantongModem` says "modem <state>").
NOT_SENT_REASONS = frozenset(
    {
        "no prompt",
        "write timeout",
        "not running",
        "stopped",
        "modem down",
        "modem starting",
        "modem recovering",
        "modem backoff",
    }
)


@dataclass(frozen=True, slots=True)
class SendFailure:
    """How one failed send is handled."""

    code: str  # cms_error, cme_error, error, timeout, modem: the kind, for consumers
    reason: str  # in words, the 3GPP meaning when there is one
    transient: bool  # worth a retry with backoff
    # The modem may have sent it: it counts against the cost guard, and is not sent again
    # unless commands.resend_unconfirmed says so.
    maybe_sent: bool
    error_code: int | None = None  # the +CMS/+CME ERROR number


def classify(exc: BaseException) -> SendFailure:
    """Decide what a failure of `send_sms` means for the message."""
    if isinstance(exc, TimeoutError):
        # Our own limit on the whole send ran out with the modem busy: it may have sent.
        return SendFailure("timeout", "no answer from the modem in time", True, True)
    if isinstance(exc, ModemResultError):
        final = exc.final
        code = final.code
        if final.kind is Final.CMS_ERROR:
            reason = final.reason or CMS_ERRORS.get(code or -1, "unknown")
            return SendFailure("cms_error", reason, code in TRANSIENT_CMS, False, code)
        if final.kind is Final.CME_ERROR:
            reason = final.reason or CME_ERRORS.get(code or -1, "unknown")
            return SendFailure("cme_error", reason, code in TRANSIENT_CME, False, code)
        # A bare ERROR says nothing of the cause (no AT+CMEE): try again, a bounded number of times.
        return SendFailure("error", final.reason or "error", True, False)
    if isinstance(exc, ModemError) and not isinstance(exc, ModemTimeoutError) and exc.code:
        # A driver that reports the +CMS ERROR number without the parsed result.
        text = CMS_ERRORS.get(exc.code, exc.reason or str(exc))
        return SendFailure("cms_error", text, exc.code in TRANSIENT_CMS, False, exc.code)
    if isinstance(exc, ModemTimeoutError) or (
        isinstance(exc, ModemError) and exc.reason and "timeout" in exc.reason
    ):
        reason = exc.reason or "timeout"
        return SendFailure("timeout", reason, True, reason not in NOT_SENT_REASONS)
    if isinstance(exc, ModemError):
        reason = exc.reason or str(exc)
        # "no message reference": OK came without +CMGS, so the message probably went out.
        return SendFailure("modem", reason, True, reason not in NOT_SENT_REASONS)
    if isinstance(exc, TerminalGwError):
        # The port went away mid-send (unplugged, reset): the part's fate is unknown.
        return SendFailure("modem", exc.reason or str(exc), True, True)
    return SendFailure("modem", f"{type(exc).__name__}: {exc}", True, True)


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """The wait after failed attempt number `attempt` (1, 2, ...): doubling from base, capped."""
    # Without jitter: the retry time is stored and reported to the sender (`retry_at`), and
    # one modem's queue has no crowd of clients to spread out.
    return Backoff(base_s, max_s, jitter=0.0).base(attempt - 1)

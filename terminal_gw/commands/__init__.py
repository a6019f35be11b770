"""Downlink commands: validation and dispatch, the durable SMS send queue, the cost guard."""

from terminal_gw.commands.failures import TRANSIENT_CME, TRANSIENT_CMS, SendFailure, classify
from terminal_gw.commands.runner import (
    NUMBER,
    Answer,
    CommandRunner,
    CommandSpec,
    ModemStatusCommand,
    PingCommand,
    Responder,
    SmsModem,
    SmsSendCommand,
)
from terminal_gw.commands.store import CommandStore, SmsJob

__all__ = [
    "NUMBER",
    "TRANSIENT_CME",
    "TRANSIENT_CMS",
    "Answer",
    "CommandRunner",
    "CommandSpec",
    "CommandStore",
    "ModemStatusCommand",
    "PingCommand",
    "Responder",
    "SendFailure",
    "SmsJob",
    "SmsModem",
    "SmsSendCommand",
    "classify",
]

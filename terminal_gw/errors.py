"""One root exception, subclasses by cause; each carries the fields that say what failed."""

from __future__ import annotations


class TerminalGwError(Exception):
    """Root of every error this package raises on purpose."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class ConfigError(TerminalGwError):
    """The configuration is invalid; `problems` lists (field path, message) pairs."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class TransportError(TerminalGwError):
    """A serial port or capture file could not be opened, read or written."""

    def __init__(self, message: str, *, port: str | None = None, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.port = port


class ParseError(TerminalGwError):
    """Input bytes did not form a valid sentence, capture line or PDU."""

    def __init__(
        self, message: str, *, sentence: bytes | str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.sentence = sentence


class ModemError(TerminalGwError):
    """A modem command failed, timed out or the modem did not answer."""

    def __init__(
        self,
        message: str,
        *,
        command: str | None = None,
        code: int | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.command = command
        self.code = code


class StoreError(TerminalGwError):
    """The outbox could not store or read records (disk full, read-only, corrupt)."""


class OutboxFullError(StoreError):
    """A record was refused because the outbox has no room for its class."""


class UplinkError(TerminalGwError):
    """The MQTT link failed: refused credentials, TLS, timeouts, lost connection."""


class CommandError(TerminalGwError):
    """A downlink command was malformed, refused or failed."""

    def __init__(self, message: str, *, code: str = "invalid", reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.code = code

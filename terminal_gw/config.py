"""Configuration: frozen pydantic models, TOML loading, environment overrides for secrets."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from terminal_gw.errors import ConfigError

ENV_PREFIX = "TGW_"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "KIB": 1024,
    "M": 1000**2,
    "MB": 1000**2,
    "MIB": 1024**2,
    "G": 1000**3,
    "GB": 1000**3,
    "GIB": 1024**3,
    "T": 1000**4,
    "TB": 1000**4,
    "TIB": 1024**4,
}


def parse_size(value: object) -> int:
    """Bytes from an int or a string like "256MiB", "10 MB", "4096"."""
    if isinstance(value, bool):
        raise TypeError("a size is a number of bytes or a string like '256MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = (m.group(2) or "").upper()
            if unit in _SIZE_UNITS:
                return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f"expected a size like '256MiB' or a number of bytes, got {value!r}")


Size = Annotated[int, BeforeValidator(parse_size)]


def parse_size_or_percent(value: object) -> int | str:
    """A size (see `parse_size`) or a share of the filesystem like "5%", kept as "5%"."""
    if isinstance(value, str) and value.strip().endswith("%"):
        number = value.strip()[:-1].strip()
        try:
            share = float(number)
        except ValueError:
            raise ValueError(f"expected a percentage like '5%', got {value!r}") from None
        if not 0 <= share < 100:
            raise ValueError(f"a percentage of the filesystem must be in [0, 100), got {value!r}")
        return f"{share:g}%"
    return parse_size(value)


def size_or_percent_bytes(value: int | str, total: int) -> int:
    """The bytes `value` (a size or "N%") stands for on a filesystem of `total` bytes."""
    if isinstance(value, str):
        return int(total * float(value.rstrip("%")) / 100)
    return value


SizeOrPercent = Annotated[int | str, BeforeValidator(parse_size_or_percent)]

BAUD_RATES = (4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


def parse_baud(value: object) -> int | Literal["auto"]:
    """A standard baud rate, or "auto"."""
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and value in BAUD_RATES:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) in BAUD_RATES:
        return int(value)
    rates = ", ".join(str(r) for r in BAUD_RATES)
    raise ValueError(f"expected one of {rates} or 'auto', got {value!r}")


def _parse_fixed_baud(value: object) -> int:
    baud = parse_baud(value)
    if baud == "auto":
        raise ValueError("'auto' is only for a GNSS receiver; give the modem's rate")
    return int(baud)


AutoBaud = Annotated[int | Literal["auto"], BeforeValidator(parse_baud)]
Baud = Annotated[int, BeforeValidator(_parse_fixed_baud)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DeviceConfig(_Section):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


PortPath = str  # a device path, or "none" to disable the stage


class ReportingConfig(_Section):
    """When `run` publishes a fix: a vessel at anchor rarely, a turning one often."""

    min_interval_s: float = Field(default=1.0, ge=0)
    max_interval_s: float = Field(default=60.0, gt=0)
    distance_m: float = Field(default=25.0, ge=0)
    heading_deg: float = Field(default=15.0, ge=0, le=180)
    min_speed_for_heading_mps: float = Field(default=0.5, ge=0)
    sky_interval_s: float = Field(default=300.0, ge=0)

    @model_validator(mode="after")
    def _order(self) -> ReportingConfig:
        if self.max_interval_s < self.min_interval_s:
            raise ValueError("max_interval_s must not be less than min_interval_s")
        return self


class GnssConfig(_Section):
    port: PortPath = "none"
    baud: AutoBaud = 9600
    allow_no_checksum: bool = False
    max_sentence_len: int = Field(default=200, ge=82, le=4096)
    stale_after_s: float = Field(default=10.0, gt=0)
    init: list[str] = Field(default_factory=list)
    record: bool = False
    # A receiver sending NMEA and binary (UBX, CASIC) at once: which one's fix and sky count.
    prefer: Literal["nmea", "binary", "auto"] = "auto"
    reporting: ReportingConfig = ReportingConfig()


_AT_COMMAND_RE = re.compile(r"AT[\x20-\x3A\x3C-\x7E]{0,250}", re.IGNORECASE)
DEFAULT_MODEM_INIT = ("ATE0", "AT+CMEE=2", "AT+CMGF=0", "AT+CNMI=2,1,0,1,0")


class ModemConfig(_Section):
    port: PortPath = "none"
    baud: Baud = 115200
    init: list[str] = Field(default_factory=lambda: list(DEFAULT_MODEM_INIT))
    command_timeout_s: float = Field(default=5.0, gt=0, le=300)
    send_timeout_s: float = Field(default=60.0, gt=0, le=600)
    ping_timeout_s: float = Field(default=3.0, gt=0, le=60)
    poll_signal_s: float = Field(default=60.0, gt=0)
    poll_registration_s: float = Field(default=60.0, gt=0)
    poll_operator_s: float = Field(default=300.0, gt=0)
    status_interval_s: float = Field(default=900.0, gt=0)
    sweep_interval_s: float = Field(default=600.0, gt=0)
    sms_reassembly_timeout_s: float = Field(default=3600.0, gt=0)
    ack_cmt: bool = False
    reset_mode: Literal["restart", "off_on"] = "restart"
    reset_wait_s: float = Field(default=20.0, ge=0, le=600)
    max_resets_per_hour: int = Field(default=3, ge=0, le=60)
    recovery_backoff_s: float = Field(default=600.0, gt=0)
    reopen_backoff_s: float = Field(default=5.0, gt=0)
    record: bool = False

    @model_validator(mode="after")
    def _init_commands(self) -> ModemConfig:
        for i, command in enumerate(self.init):
            if not _AT_COMMAND_RE.fullmatch(command) or command.count('"') % 2:
                raise ValueError(
                    f"init[{i}] {command!r}: one printable AT command, no ';' or quotes left open"
                )
        return self


#: BDS-3 BDFKI reason codes as one public implementation numbers them; vendors differ, so
#: `[rdss.reasons]` may renumber them.
RdssReason = Literal[
    "interval", "suppressed", "radio_silence", "power_not_locked", "no_card", "no_permission"
]
DEFAULT_RDSS_REASONS: dict[str, RdssReason] = {
    "1": "interval",
    "2": "suppressed",
    "3": "radio_silence",
    "4": "power_not_locked",
    "5": "no_card",
    "6": "no_permission",
}


class RdssConfig(_Section):
    """The BeiDou short-message (RDSS) terminal: dialect, pacing, beams, send queue."""

    port: PortPath = "none"
    baud: Baud = 115200
    dialect: Literal["2.1", "bds3", "auto"] = "auto"
    path: Path | None = None
    stale_after_s: float = Field(default=120.0, gt=0)
    answer_timeout_s: float = Field(default=5.0, gt=0, le=120)
    card_query_interval_s: float = Field(default=600.0, gt=0)
    beam_interval_s: int = Field(default=10, ge=1, le=255)
    min_beam_power: int = Field(default=1, ge=0, le=4)
    min_beam_cn0: int = Field(default=35, ge=0, le=99)
    beams_max_age_s: float = Field(default=60.0, gt=0)
    interval_s: float = Field(default=60.0, ge=0)
    level: int = Field(default=1, ge=1, le=4)
    bds3_scope: Literal["regional", "global"] = "regional"
    comm_class_normal: int = Field(default=1, ge=0, le=9)
    comm_class_express: int = Field(default=0, ge=0, le=9)
    frequency_point: int = Field(default=2, ge=1, le=5)
    inbound_ack: Literal[1, 2] = 1
    feedback_timeout_s: float = Field(default=15.0, gt=0, le=600)
    max_tries: int = Field(default=3, ge=1, le=100)
    suppression_retry_s: float = Field(default=60.0, gt=0)
    duplicate_window_s: float = Field(default=2.0, ge=0)
    max_sends_per_hour: int = Field(default=30, ge=0)
    max_sends_per_day: int = Field(default=200, ge=0)
    status_interval_s: float = Field(default=300.0, gt=0)
    history_days: float = Field(default=30.0, gt=0)
    reasons: dict[str, RdssReason] = Field(default_factory=lambda: dict(DEFAULT_RDSS_REASONS))
    record: bool = False

    @model_validator(mode="after")
    def _reason_codes(self) -> RdssConfig:
        for code in self.reasons:
            if not code.isdigit() or int(code) == 0:
                raise ValueError(f"reasons: {code!r} is not a reason code (1-9...)")
        return self


OutboxClass = Literal["sms", "bds", "command", "event", "status", "fix", "sky"]


def _message_classes() -> list[OutboxClass]:
    return ["sms", "bds", "command"]


class LinkProfileConfig(_Section):
    """One `[[links]]` profile: what may use a network link, and how much of it a day."""

    name: str = Field(default="default", min_length=1, max_length=64, pattern=r"^[\w.-]+$")
    interface: str = "*"  # glob on the network interface that carries the broker's traffic
    encoding: Literal["json", "compact"] = "json"
    classes: list[OutboxClass] | None = None  # None: every class
    position_interval_s: float = Field(default=0.0, ge=0)
    batch_max_records: int | None = Field(default=None, ge=1, le=10_000)
    batch_max_age_s: float | None = Field(default=None, ge=0)
    budget_bytes_per_day: Size | None = None
    budget_messages_per_day: int | None = Field(default=None, ge=0)
    over_budget_classes: list[OutboxClass] = Field(default_factory=_message_classes)
    keepalive_s: int | None = Field(default=None, ge=5, le=65535)


class FallbackConfig(_Section):
    """`[fallback]`: positions over short messages while MQTT is unreachable, and (shore
    side) the senders whose reports become fixes of their device."""

    channel: Literal["none", "bds", "sms"] = "none"
    to: str = ""  # the recipient: BeiDou user id (bds) or phone number (sms)
    after_s: float = Field(default=600.0, ge=0)
    interval_s: float = Field(default=600.0, ge=1)
    max_error_m: float = Field(default=10.0, gt=0, le=10000)
    max_per_day: int = Field(default=48, ge=0)
    senders: dict[str, str] = Field(default_factory=dict)  # sender id/number -> device id


class MqttConfig(_Section):
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    prefix: str = Field(default="tgw", pattern=r"^[^#+/\s][^#+\s]*$")
    protocol: Literal["3.1.1", "5"] = "5"
    client_id: str = ""
    keepalive_s: int = Field(default=60, ge=5, le=65535)
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    username: str = ""
    password: SecretStr = SecretStr("")
    password_file: Path | None = None
    publish_timeout_s: float = Field(default=60.0, gt=0)
    inflight: int = Field(default=16, ge=1, le=1000)
    rate_msgs_per_s: float = Field(default=200.0, gt=0)
    rate_bytes_per_s: Size = 1024 * 1024
    backoff_min_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=120.0, gt=0)
    auth_backoff_s: float = Field(default=600.0, gt=0)
    batch_backlog: bool = False
    batch_max: int = Field(default=50, ge=1, le=10000)
    batch_min_age_s: float = Field(default=60.0, ge=0)
    # Persistent session: the broker keeps the subscription and queues commands this long
    # while the daemon is away (MQTT 5 session expiry; on 3.1.1 clean_session=false and the
    # broker's own limit). 0 = a clean session each connection (commands sent while down are lost).
    session_expiry_s: int = Field(default=7 * 86400, ge=0, le=0xFFFFFFFF)
    # The one limit on a command's size: sent as the MQTT 5 Maximum Packet Size, so a larger
    # command never reaches the device; on 3.1.1 a larger one is refused unread (too_large).
    max_command_bytes: Size = Field(default=64 * 1024, ge=1024, le=268_435_455)
    # Where received commands are stored before they are acknowledged; default: inbox.db in
    # the directory of outbox.path.
    inbox_path: Path | None = None

    @model_validator(mode="after")
    def _tls_files(self) -> MqttConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def effective_password(self) -> str:
        """The password from `password_file` when set, else from `password`."""
        if self.password_file is not None:
            try:
                return self.password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"mqtt.password_file: cannot read {self.password_file}: {exc.strerror}",
                    [("mqtt.password_file", str(exc))],
                ) from exc
        return self.password.get_secret_value()


ClassName = Literal["sms", "bds", "command", "event", "status", "fix", "sky"]


_DEFAULT_MAX_AGE_S: dict[ClassName, float] = {"fix": 30 * 86400.0, "sky": 7 * 86400.0}


class OutboxConfig(_Section):
    path: Path = Path("/var/lib/terminal-gw/outbox.db")
    max_bytes: Size = 256 * 1024 * 1024
    #: A batch is committed when its oldest record is this old, or it holds `commit_bytes`
    #: or `commit_records`, whichever comes first: what a crash or power cut can lose at most.
    commit_interval_s: float = Field(default=30.0, gt=0, le=60)
    commit_bytes: Size = Field(default=128 * 1024, ge=1)
    commit_records: int = Field(default=500, ge=1)
    max_age_s: dict[ClassName, float] = Field(default_factory=lambda: dict(_DEFAULT_MAX_AGE_S))
    live_window_s: float = Field(default=300.0, ge=0)
    memory_buffer_bytes: Size = 1024 * 1024
    retry_interval_s: float = Field(default=5.0, gt=0)
    event_interval_s: float = Field(default=60.0, ge=0)
    #: Free space the outbox leaves on its filesystem: a size or a share of it ("5%").
    min_free: SizeOrPercent = "5%"


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class RecordConfig(_Section):
    dir: Path = Path("/var/lib/terminal-gw/captures")
    max_bytes: Size = 64 * 1024 * 1024
    keep: int = Field(default=3, ge=0, le=100)


class StatusConfig(_Section):
    path: Path = Path("/var/lib/terminal-gw/status.json")
    interval_s: float = Field(default=5.0, gt=0, le=300)
    publish_interval_s: float = Field(default=300.0, ge=10)
    stall_s: float = Field(default=60.0, gt=0)
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"


class ClockConfig(_Section):
    skew_threshold_s: float = Field(default=2.0, gt=0)
    chrony_socket: Path | None = None


class DaemonConfig(_Section):
    shutdown_timeout_s: float = Field(default=4.0, gt=0, le=60)
    restart_backoff_min_s: float = Field(default=1.0, gt=0)
    restart_backoff_max_s: float = Field(default=60.0, gt=0)


#: Longest topic accepted from a command (a response topic) or the config, in UTF-8 bytes.
MAX_TOPIC_BYTES = 1024


class GpsdServerConfig(_Section):
    """[gpsd_server]: the receiver served in gpsd's protocol to the tools on board."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=2947, ge=0, le=65535)
    device: str = ""
    max_clients: int = Field(default=16, ge=1, le=1024)
    max_queue_bytes: Size = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    send_buffer_bytes: Size = Field(default=64 * 1024, ge=0, le=16 * 1024 * 1024)


class NmeaOutConfig(_Section):
    """[nmea_out]: the receiver's sentences, as received, over TCP and UDP."""

    tcp_port: int = Field(default=0, ge=0, le=65535)
    tcp_host: str = "127.0.0.1"
    udp_host: str = ""
    udp_port: int = Field(default=10110, ge=1, le=65535)
    max_clients: int = Field(default=16, ge=1, le=1024)
    max_queue_bytes: Size = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    send_buffer_bytes: Size = Field(default=64 * 1024, ge=0, le=16 * 1024 * 1024)


def check_topic_filter(pattern: object) -> object:
    """`pattern` if it is an MQTT topic filter that may name answer topics; ValueError if not."""
    if not isinstance(pattern, str):
        return pattern  # the str type check says what is wrong
    if not pattern:
        raise ValueError("an empty topic filter matches nothing")
    if len(pattern.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise ValueError(f"longer than {MAX_TOPIC_BYTES} bytes")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000 for c in pattern):
        raise ValueError("a NUL, control character or surrogate is not allowed in a topic")
    if pattern.startswith("$"):
        raise ValueError("topics starting with $ ($SYS/...) belong to the broker")
    levels = pattern.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError("'#' must be a whole level, and the last one")
        if "+" in level and level != "+":
            raise ValueError("'+' must be a whole level")
    return pattern


TopicFilter = Annotated[str, BeforeValidator(check_topic_filter)]


class CommandsConfig(_Section):
    """Downlink commands: limits, answer topics, the SMS send queue and its cost guard."""

    path: Path = Path("/var/lib/terminal-gw/commands.db")
    # Empty: any response topic outside {prefix}/ (no wildcards, no $); else only these.
    response_topics: list[TopicFilter] = Field(default_factory=list, max_length=100)

    @model_validator(mode="before")
    @classmethod
    def _old_size_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_payload_bytes" in data:
            # Config._moved_keys moves it to [mqtt] unless mqtt.max_command_bytes is set too.
            raise ValueError(
                "max_payload_bytes is replaced by mqtt.max_command_bytes: set only that"
            )
        return data

    sms_max_parts: int = Field(default=4, ge=1, le=255)
    max_sms_per_hour: int = Field(default=10, ge=0)
    max_sms_per_day: int = Field(default=50, ge=0)
    retry_count: int = Field(default=5, ge=0, le=100)
    retry_backoff_s: float = Field(default=30.0, gt=0)
    retry_backoff_max_s: float = Field(default=900.0, gt=0)
    resend_unconfirmed: bool = False
    send_timeout_s: float = Field(default=300.0, gt=0)
    poll_timeout_s: float = Field(default=60.0, gt=0)
    history_days: float = Field(default=30.0, gt=0)


class Config(_Section):
    device: DeviceConfig
    gnss: GnssConfig = GnssConfig()
    modem: ModemConfig = ModemConfig()
    rdss: RdssConfig = RdssConfig()
    mqtt: MqttConfig = MqttConfig()
    outbox: OutboxConfig = OutboxConfig()
    log: LogConfig = LogConfig()
    status: StatusConfig = StatusConfig()
    record: RecordConfig = RecordConfig()
    clock: ClockConfig = ClockConfig()
    daemon: DaemonConfig = DaemonConfig()
    commands: CommandsConfig = CommandsConfig()
    gpsd_server: GpsdServerConfig = GpsdServerConfig()
    nmea_out: NmeaOutConfig = NmeaOutConfig()
    fallback: FallbackConfig = FallbackConfig()
    links: list[LinkProfileConfig] = Field(
        default_factory=lambda: [LinkProfileConfig()], min_length=1
    )

    @model_validator(mode="after")
    def _link_names(self) -> Config:
        names = [p.name for p in self.links]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"links: the profile name {name!r} is used twice")
        return self

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """Older configs' `commands.max_payload_bytes` is read as `mqtt.max_command_bytes`."""
        if not isinstance(data, dict) or not isinstance(data.get("commands"), dict):
            return data
        commands = dict(data["commands"])
        if "max_payload_bytes" not in commands:
            return data
        old = commands.pop("max_payload_bytes")
        mqtt = data.get("mqtt", {})
        if not isinstance(mqtt, dict):
            return data
        if "max_command_bytes" in mqtt:
            return data  # both set: [commands] refuses the old key
        return {**data, "commands": commands, "mqtt": {**mqtt, "max_command_bytes": old}}


def _apply_env(
    data: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Override keys from TGW_SECTION__KEY variables (secrets, mostly).

    Returns the new data (the caller's is left as it was) and, for each key set, the name of
    the variable that set it: an error in it is reported as the environment's, not the file's.
    """
    data = dict(data)
    origins: dict[tuple[str, ...], str] = {}
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
        node = data
        for part in path[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[path[-1]] = value
        origins[path] = name
    return data, origins


_TYPE_TAGS = {"int", "str", "float", "bool", "function-before", "function-after"}


def _field_path(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    # Union members add their type name to the path (gnss.baud.int); users want gnss.baud.
    return tuple(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS)))


def _format_loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(_field_path(loc))


def _known_keys(path: tuple[str, ...]) -> list[str]:
    """The keys the section holding the last part of `path` accepts."""
    model: type[BaseModel] = Config
    for part in path[:-1]:
        field = model.model_fields.get(part)
        annotation = None if field is None else field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problem(err: Mapping[str, Any], origins: Mapping[tuple[str, ...], str]) -> tuple[str, str]:
    """(field path, message) for one pydantic error, in the words of this project's config."""
    path = _field_path(tuple(err["loc"]))
    value = err.get("input")
    secret = bool(path) and path[-1] == "password"
    shown = None if secret or err["type"] == "missing" else _shown(value)
    if err["type"] == "extra_forbidden":
        msg = "unknown section" if len(path) == 1 else "unknown key"
        if shown is not None and not isinstance(value, dict):
            msg += f" (set to {shown})"
        close = difflib.get_close_matches(path[-1], _known_keys(path), n=1) if path else []
        if close:
            msg += f"; did you mean {close[0]!r}?"
    else:
        msg = str(err["msg"]).removeprefix("Value error, ")
        if shown is not None and not isinstance(value, dict) and shown not in msg:
            msg += f", got {shown}"
    variable = next((v for p, v in origins.items() if path[: len(p)] == p), None)
    if variable is None and err["type"] == "extra_forbidden":
        # A variable naming an unknown section creates it: the error is the section's.
        variable = next((v for p, v in origins.items() if p[: len(path)] == path), None)
    if variable is not None:
        msg = f"from the environment ({variable}): {msg}"
    return ".".join(path), msg


def load_config_data(
    data: dict[str, Any], environ: Mapping[str, str] | None = None, source: str = "config"
) -> Config:
    """Validate a config mapping (after env overrides); raise ConfigError with field paths."""
    data, origins = _apply_env(data, os.environ if environ is None else environ)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(err, origins) for err in exc.errors()]
        from_env = sum(1 for _, msg in problems if msg.startswith("from the environment ("))
        where = source
        if from_env == len(problems):
            where = f"the environment (TGW_ variables, applied over {source})"
        elif from_env:
            where = f"{source} and the environment (TGW_ variables)"
        raise ConfigError(f"{where}: {len(problems)} invalid setting(s)", problems) from exc


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and freeze the TOML config at `path`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        # The cause stays attached: a PermissionError gets its own exit code and advice.
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return load_config_data(data, environ, source=str(path))


def redacted(config: Config) -> dict[str, Any]:
    """The effective config as plain data with secrets replaced by '***'."""
    data = config.model_dump(mode="json")
    mqtt = data["mqtt"]
    if mqtt.get("password"):
        mqtt["password"] = "***"  # noqa: S105 - the redaction marker, not a password
    return data

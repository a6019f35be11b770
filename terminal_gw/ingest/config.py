"""The `[ingest]` section (with `[log]`) of the fleet side's config file: the broker, the
database, batching. Validated once, frozen, secrets from the environment or files like the
daemon's (`TGW_INGEST__PASSWORD`, `TGW_INGEST__DB_PASSWORD`)."""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from terminal_gw.config import LogConfig, TopicFilter, _apply_env, _problem
from terminal_gw.errors import ConfigError


def _read_secret(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"ingest.{key}: cannot read {path}: {exc.strerror}", [(f"ingest.{key}", str(exc))]
        ) from exc


class IngestConfig(BaseModel):
    """Where to read (the broker), where to write (PostgreSQL), and how much at a time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The broker: the same options as [mqtt]. MQTT 5 only: shared subscriptions need it.
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    prefix: str = Field(default="tgw", pattern=r"^[^#+/\s][^#+\s]*$")
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
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    session_expiry_s: int = Field(default=7 * 86400, ge=0, le=0xFFFFFFFF)
    group: str = Field(default="tgw-ingest", pattern=r"^[^#+/\s]+$")
    topics: list[TopicFilter] = Field(default_factory=list, max_length=100)
    receive_maximum: int = Field(default=0, ge=0, le=65535)
    max_packet_bytes: int = Field(default=1024 * 1024, ge=1024, le=268_435_455)
    # The database.
    dsn: str = "postgresql:///terminal_gw"
    db_password: SecretStr = SecretStr("")
    db_password_file: Path | None = None
    # Batches.
    batch_max_rows: int = Field(default=2000, ge=1, le=100_000)
    batch_max_age_ms: int = Field(default=200, ge=1, le=60_000)
    # Batches written at once, each on its own connection: one is parsed and copied while
    # the one before commits. Acknowledgements still go in the order messages came.
    db_connections: int = Field(default=2, ge=1, le=16)
    # Reconnecting (broker and database): capped exponential backoff with jitter.
    backoff_min_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    auth_backoff_s: float = Field(default=300.0, gt=0)
    # Status: a log line every status_interval_s; Prometheus text on metrics_port (0: off).
    status_interval_s: float = Field(default=60.0, gt=0)
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # --once: exit when nothing arrived for this long and everything received is stored.
    once_idle_ms: int = Field(default=1000, ge=10, le=600_000)

    @model_validator(mode="after")
    def _check(self) -> IngestConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.backoff_max_s < self.backoff_min_s:
            raise ValueError("backoff_max_s must not be less than backoff_min_s")
        return self

    def topic_filters(self) -> list[str]:
        """The filters subscribed (below `$share/{group}/`): `topics`, else every device's."""
        return list(self.topics) or [f"{self.prefix}/+/#"]

    def effective_client_id(self) -> str:
        """`client_id`, else one per host and group (several on one host need their own)."""
        return self.client_id or f"tgw-ingest-{socket.gethostname()}-{self.group}"[:128]

    def effective_receive_maximum(self) -> int:
        """Unacknowledged messages the broker may send: room for two batches by default."""
        return self.receive_maximum or min(65535, max(100, 2 * self.batch_max_rows))

    def broker_password(self) -> str:
        """The broker password, from `password_file` when set."""
        if self.password_file is not None:
            return _read_secret(self.password_file, "password_file")
        return self.password.get_secret_value()

    def database_password(self) -> str | None:
        """The database password, from `db_password_file` when set; None: libpq's own
        (the dsn, PGPASSWORD, ~/.pgpass)."""
        if self.db_password_file is not None:
            return _read_secret(self.db_password_file, "db_password_file")
        return self.db_password.get_secret_value() or None


class IngestFile(BaseModel):
    """The config file of `terminal-gw ingest`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ingest: IngestConfig = IngestConfig()
    log: LogConfig = LogConfig()


def load_ingest_config(path: Path, environ: Mapping[str, str] | None = None) -> IngestFile:
    """Read and validate the ingest config (TGW_INGEST__KEY variables override keys)."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    env = os.environ if environ is None else environ
    env = {k: v for k, v in env.items() if k.startswith(("TGW_INGEST__", "TGW_LOG__"))}
    data, origins = _apply_env(data, env)
    try:
        return IngestFile.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(err, origins) for err in exc.errors()]
        raise ConfigError(f"{path}: {len(problems)} invalid setting(s)", problems) from exc

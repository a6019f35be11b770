"""`terminal-gw ingest [--config PATH] [--migrate] [--once] [--client-id ID]`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from terminal_gw.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_PERMISSION, EXIT_USAGE

DEFAULT_INGEST_CONFIG = Path("/etc/terminal-gw/ingest.toml")
#: Logging is set up here, from the config's [log] section (and --log-level).
LOGS = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `terminal-gw ingest`."""
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_INGEST_CONFIG,
        help=f"config file with an [ingest] section (default: {DEFAULT_INGEST_CONFIG})",
    )
    parser.add_argument(
        "--migrate",
        action="store_true",
        help="create or update the database tables and exit",
    )
    parser.add_argument(
        "--once", action="store_true", help="store what is queued for this client, then exit"
    )
    parser.add_argument(
        "--client-id",
        default=None,
        help="MQTT client id (overrides ingest.client_id; each process needs its own)",
    )


def cli(args: argparse.Namespace) -> int:
    """Run `terminal-gw ingest`."""
    from terminal_gw.cli.common import print_config_error
    from terminal_gw.errors import ConfigError
    from terminal_gw.exit_codes import permission_denied
    from terminal_gw.ingest.config import load_ingest_config
    from terminal_gw.logs import configure_logging

    path: Path = args.config
    try:
        config = load_ingest_config(path)
        cfg = config.ingest
        password = cfg.database_password()
    except ConfigError as exc:
        if isinstance(exc.__cause__, PermissionError):
            print(f"error: {permission_denied(path, 'config file')}", file=sys.stderr)
            return EXIT_PERMISSION
        print_config_error(exc)
        return EXIT_USAGE
    level = args.log_level or config.log.level
    configure_logging(level, config.log.format)

    import structlog

    from terminal_gw.ingest.migrate import migrate
    from terminal_gw.ingest.service import Ingest
    from terminal_gw.ingest.store import DatabaseError

    log = structlog.get_logger("terminal_gw.ingest")
    if args.migrate:
        try:
            outcome = migrate(cfg.dsn, password)
        except DatabaseError as exc:
            log.error("ingest_migrate_failed", reason=str(exc))
            return EXIT_FAILURE
        log.info(
            "ingest_migrated",
            applied=outcome.applied,
            skipped=outcome.skipped,
            schema_version=outcome.current,
        )
        return EXIT_OK
    service = Ingest(cfg, log=log, once=args.once, client_id=args.client_id)
    asyncio.run(service.run())
    if service.failure is not None:
        return EXIT_FAILURE
    return EXIT_OK

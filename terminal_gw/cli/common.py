"""What every sub-command shares: the config path, the `--config` option, loading the config
(exit 2 with each problem's field path, 4 when this user may not read it)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from terminal_gw import DEFAULT_CONFIG_PATH
from terminal_gw.exit_codes import EXIT_PERMISSION, EXIT_USAGE, permission_denied

if TYPE_CHECKING:
    from terminal_gw.config import Config
    from terminal_gw.errors import ConfigError


def default_config_path() -> Path:
    """The config path from TGW_CONFIG, else /etc/terminal-gw/config.toml."""
    return Path(os.environ.get("TGW_CONFIG", str(DEFAULT_CONFIG_PATH)))


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """`--config PATH`, defaulting (in `main`) to $TGW_CONFIG or the system config."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"config file (default: $TGW_CONFIG or {DEFAULT_CONFIG_PATH})",
    )


def read_config_or_exit(path: Path) -> Config:
    """Load the config, or print each problem with its field path and exit 2 (4 when this
    user may not read it)."""
    from terminal_gw.config import load_config
    from terminal_gw.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        if isinstance(exc.__cause__, PermissionError):
            print(f"error: {permission_denied(path, 'config file')}", file=sys.stderr)
            raise SystemExit(EXIT_PERMISSION) from None
        print_config_error(exc)
        raise SystemExit(EXIT_USAGE) from None


def print_config_error(exc: ConfigError) -> None:
    """Each config problem on its own line: field path, then what was expected."""
    print(f"error: {exc}", file=sys.stderr)
    for loc, msg in exc.problems:
        print(f"  {loc}: {msg}", file=sys.stderr)

"""`terminal-gw status`: the running daemon's state, from its status file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from terminal_gw.cli.common import add_config_arg, read_config_or_exit
from terminal_gw.exit_codes import EXIT_NOT_RUNNING, EXIT_PERMISSION, permission_denied


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `terminal-gw status`."""
    add_config_arg(parser)
    parser.add_argument("--file", type=Path, default=None, help="status file (overrides config)")
    parser.add_argument("--json", action="store_true", help="print the raw snapshot as JSON")


def cli(args: argparse.Namespace) -> int:
    """Print the running daemon's status; exit 0 healthy, 1 unhealthy, 3 not running, 4 when
    this user may not read the status file."""
    import time

    from terminal_gw.status import evaluate, read_status_file, render_table

    interval = 5.0
    path: Path | None = args.file
    if path is None:
        config = read_config_or_exit(args.config)
        path = config.status.path
        interval = config.status.interval_s
    try:
        snapshot = read_status_file(path)
    except FileNotFoundError:
        print(f"terminal-gw is not running (no status file at {path})", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except PermissionError:
        print(f"error: {permission_denied(path, 'status file')}", file=sys.stderr)
        return EXIT_PERMISSION
    except (OSError, ValueError) as exc:
        print(f"cannot read status file {path}: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    code, verdict = evaluate(snapshot, time.time(), interval, path)
    if args.json:
        print(json.dumps({**snapshot, "verdict": verdict}, indent=2))
    else:
        print(render_table(snapshot, verdict))
    return code

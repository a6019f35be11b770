"""Command line: terminal-gw run | check-config | replay | record | simulate | demo | status |
outbox | schema."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from terminal_gw import __version__
from terminal_gw.config import DEFAULT_CONFIG_PATH, Config, load_config, redacted
from terminal_gw.errors import ConfigError
from terminal_gw.exit_codes import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PERMISSION,
    EXIT_USAGE,
    permission_denied,
)
from terminal_gw.logs import configure_logging

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_PERMISSION",
    "EXIT_USAGE",
    "main",
    "read_config_or_exit",
]

Handler = Callable[[argparse.Namespace], int]


def default_config_path() -> Path:
    """The config path from TGW_CONFIG, else /etc/terminal-gw/config.toml."""
    return Path(os.environ.get("TGW_CONFIG", str(DEFAULT_CONFIG_PATH)))


def read_config_or_exit(path: Path) -> Config:
    """Load the config, or print each problem with its field path and exit 2 (4 when this
    user may not read it)."""
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


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the config and print the effective one with secrets redacted."""
    config = read_config_or_exit(args.config)
    print(json.dumps(redacted(config), indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of every payload (or write one file each with --out)."""
    from terminal_gw.models import payload_schemas

    schemas = payload_schemas()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, schema in schemas.items():
            text = json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            (args.out / f"{name}.schema.json").write_text(text, encoding="utf-8")
        print(f"wrote {len(schemas)} schemas to {args.out}")
        return EXIT_OK
    if args.name:
        if args.name not in schemas:
            print(f"error: no payload named {args.name!r}; known: {', '.join(schemas)}")
            return EXIT_USAGE
        print(json.dumps(schemas[args.name], indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(json.dumps(schemas, indent=2, sort_keys=True, ensure_ascii=False))
    return EXIT_OK


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"config file (default: $TGW_CONFIG or {DEFAULT_CONFIG_PATH})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="terminal-gw",
        description="Edge daemon for BeiDou and Tiantong satellite terminals.",
    )
    parser.add_argument("--version", action="version", version=f"terminal-gw {__version__}")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check-config", help="validate the config and print it (secrets redacted)")
    _add_config_arg(p)
    p.set_defaults(handler=cmd_check_config)

    p = sub.add_parser("schema", help="print the JSON Schema of the payloads")
    p.add_argument("name", nargs="?", help="one payload (fix, sky, event, ...)")
    p.add_argument("--out", type=Path, default=None, help="write NAME.schema.json files here")
    p.set_defaults(handler=cmd_schema)

    from terminal_gw import cli_commands

    for name, help_text, setup, handler in cli_commands.COMMANDS:
        p = sub.add_parser(name, help=help_text)
        setup(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `terminal-gw` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", "absent") is None:
        args.config = default_config_path()
    configure_logging(args.log_level or "info")
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""The `terminal-gw` command line: one table of sub-commands, each a small module of this
package exposing `add_arguments(parser)` and `cli(args) -> int`.

Building the parser imports only the module of the sub-command named on the command line (and
none for `terminal-gw --help`); each module imports the domain code it runs inside its handler,
so a command starts without loading the daemon, the MQTT client or pydantic it does not use.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from terminal_gw import __version__
from terminal_gw.exit_codes import EXIT_INTERRUPTED, EXIT_OK

__all__ = ["COMMANDS", "build_parser", "load_command", "main"]

Handler = Callable[[argparse.Namespace], int]

#: name, help, module (exposing add_arguments(parser) and cli(args) -> int). One line each.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("run", "run the daemon", "terminal_gw.cli.run"),
    (
        "check-config",
        "validate the config and print it (secrets redacted)",
        "terminal_gw.cli.check_config",
    ),
    ("replay", "replay captures through the pipeline", "terminal_gw.cli.replay"),
    ("record", "record serial traffic to a capture file", "terminal_gw.cli.record"),
    ("simulate", "simulate a GNSS receiver, modem or RDSS terminal", "terminal_gw.cli.simulate"),
    (
        "demo",
        "simulators, daemon and broker together, with a live view",
        "terminal_gw.cli.demo",
    ),
    ("status", "show the running daemon's state", "terminal_gw.cli.status"),
    ("outbox", "inspect the outbox: stats, export", "terminal_gw.cli.outbox"),
    ("schema", "print the JSON Schema of the payloads", "terminal_gw.cli.schema"),
    ("decode", "decode SMS PDUs or a compact batch to JSON lines", "terminal_gw.cli.decode"),
    ("ingest", "fleet side: MQTT shared subscription into PostgreSQL", "terminal_gw.cli.ingest"),
)


def load_command(module_name: str) -> ModuleType:
    """A sub-command's module; an error (never a silently missing command) when it is absent
    or lacks `add_arguments` or `cli`."""
    module = importlib.import_module(module_name)
    for attr in ("add_arguments", "cli"):
        if not callable(getattr(module, attr, None)):
            raise TypeError(f"{module_name} has no {attr}(): not a terminal-gw sub-command")
    return module


def _named_command(argv: Sequence[str]) -> str | None:
    """The sub-command on the command line: the first word naming one (the values of the
    global options, log levels, name none)."""
    names = {name for name, _, _ in COMMANDS}
    return next((word for word in argv if word in names), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser: every sub-command listed, the arguments of the one in `argv` added (of
    every one when `argv` is None)."""
    parser = argparse.ArgumentParser(
        prog="terminal-gw",
        description="Edge daemon for BeiDou and Tiantong satellite terminals.",
    )
    parser.add_argument("--version", action="version", version=f"terminal-gw {__version__}")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = None if argv is None else _named_command(argv)
    for name, help_text, module_name in COMMANDS:
        p = sub.add_parser(name, help=help_text)
        if argv is None or name == chosen:
            module = load_command(module_name)
            module.add_arguments(p)
            p.set_defaults(handler=module.cli, logs=getattr(module, "LOGS", True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `terminal-gw` console script."""
    words = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(words).parse_args(words)
    if not hasattr(args, "handler"):  # a command word the scan did not see: add them all
        args = build_parser(None).parse_args(words)
    if getattr(args, "config", "absent") is None:
        from terminal_gw.cli.common import default_config_path

        args.config = default_config_path()
    if args.logs:
        from terminal_gw.logs import configure_logging

        configure_logging(args.log_level or "info")
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK

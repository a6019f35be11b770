"""`terminal-gw run`: the daemon, until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse

from terminal_gw.cli.common import add_config_arg, read_config_or_exit
from terminal_gw.exit_codes import EXIT_FAILURE, EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `terminal-gw run`."""
    add_config_arg(parser)


def cli(args: argparse.Namespace) -> int:
    """Run the daemon; exit 1 when it stops on an error."""
    import asyncio

    from terminal_gw.daemon import Daemon
    from terminal_gw.errors import TerminalGwError
    from terminal_gw.logs import configure_logging, get_logger

    config = read_config_or_exit(args.config)
    configure_logging(args.log_level or config.log.level, config.log.format)
    try:
        asyncio.run(Daemon(config, config_path=args.config).run())
    except TerminalGwError as exc:
        get_logger("daemon").error("terminal-gw failed", error=str(exc))
        return EXIT_FAILURE
    return EXIT_OK

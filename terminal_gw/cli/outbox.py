"""`terminal-gw outbox`: look into the outbox: stats, export.

Its arguments and handler are in `terminal_gw.outbox_cli`,
imported only when this command is named.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `terminal-gw outbox`."""
    from terminal_gw.outbox_cli import add_arguments as setup

    setup(parser)


def cli(args: argparse.Namespace) -> int:
    """Run `terminal-gw outbox`."""
    from terminal_gw.outbox_cli import cli as run

    return run(args)

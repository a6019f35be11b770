"""`terminal-gw replay`: captures through the GNSS pipeline and the modem driver.

Its arguments and handler are in `terminal_gw.replay`,
imported only when this command is named.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `terminal-gw replay`."""
    from terminal_gw.replay import add_arguments as setup

    setup(parser)


def cli(args: argparse.Namespace) -> int:
    """Run `terminal-gw replay`."""
    from terminal_gw.replay import cli as run

    return run(args)

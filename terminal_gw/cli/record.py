"""`terminal-gw record`: what crosses a serial port, to a capture file.

Its arguments and handler are in `terminal_gw.transport.record`,
imported only when this command is named.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `terminal-gw record`."""
    from terminal_gw.transport.record import add_arguments as setup

    setup(parser)


def cli(args: argparse.Namespace) -> int:
    """Run `terminal-gw record`."""
    from terminal_gw.transport.record import cli as run

    return run(args)

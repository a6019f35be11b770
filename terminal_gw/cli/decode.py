"""`terminal-gw decode`: engineers' decoders, one JSON line per item.

Its arguments and handler are in `terminal_gw.modem.decode_cli`,
imported only when this command is named.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `terminal-gw decode`."""
    from terminal_gw.modem.decode_cli import add_arguments as setup

    setup(parser)


def cli(args: argparse.Namespace) -> int:
    """Run `terminal-gw decode`."""
    from terminal_gw.modem.decode_cli import cli as run

    return run(args)

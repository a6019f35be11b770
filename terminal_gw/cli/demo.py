"""`terminal-gw demo`: simulators, daemon and broker together, with a live view.

Its arguments and handler are in `terminal_gw.demo`,
imported only when this command is named.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `terminal-gw demo`."""
    from terminal_gw.demo import add_arguments as setup

    setup(parser)


def cli(args: argparse.Namespace) -> int:
    """Run `terminal-gw demo`."""
    from terminal_gw.demo import cli as run

    return run(args)

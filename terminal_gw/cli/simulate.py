"""`terminal-gw simulate`: device simulators on ptys.

Its arguments and handler are in `terminal_gw.sim.cli`,
imported only when this command is named.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `terminal-gw simulate`."""
    from terminal_gw.sim.cli import add_arguments as setup

    setup(parser)


def cli(args: argparse.Namespace) -> int:
    """Run `terminal-gw simulate`."""
    from terminal_gw.sim.cli import cli as run

    return run(args)

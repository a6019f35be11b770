"""`terminal-gw check-config`: validate the config and print the effective one, secrets
redacted."""

from __future__ import annotations

import argparse
import json

from terminal_gw.cli.common import add_config_arg, read_config_or_exit
from terminal_gw.exit_codes import EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `terminal-gw check-config`."""
    add_config_arg(parser)


def cli(args: argparse.Namespace) -> int:
    """Exit 0 and print the config, or exit 2 with each problem's field path."""
    from terminal_gw.config import redacted

    config = read_config_or_exit(args.config)
    print(json.dumps(redacted(config), indent=2, ensure_ascii=False))
    return EXIT_OK

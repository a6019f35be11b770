"""Sub-commands implemented in their own modules, each exposing `add_arguments(parser)` and
`cli(args) -> int`. A command appears once its module exists."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from collections.abc import Callable

Setup = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], int]

#: name, help, module
_TABLE: list[tuple[str, str, str]] = [
    ("run", "run the daemon", "terminal_gw.daemon"),
    ("replay", "replay captures through the pipeline", "terminal_gw.replay"),
    ("record", "record serial traffic to a capture file", "terminal_gw.transport.record"),
    ("simulate", "simulate a GNSS receiver or a modem on a pty", "terminal_gw.sim.cli"),
    ("demo", "simulators, daemon and broker together, with a live view", "terminal_gw.demo"),
    ("status", "show the running daemon's state", "terminal_gw.status"),
    ("outbox", "inspect the outbox: stats, export", "terminal_gw.outbox_cli"),
    ("decode", "decode modem data: SMS PDUs to JSON lines", "terminal_gw.modem.decode_cli"),
    ("ingest", "fleet side: MQTT shared subscription into PostgreSQL", "terminal_gw.ingest.cli"),
]


def _load() -> list[tuple[str, str, Setup, Handler]]:
    commands: list[tuple[str, str, Setup, Handler]] = []
    for name, help_text, module_name in _TABLE:
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        commands.append((name, help_text, module.add_arguments, module.cli))
    return commands


COMMANDS = _load()

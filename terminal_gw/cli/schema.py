"""`terminal-gw schema [NAME] [--out DIR]`: the JSON Schema of every payload."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from terminal_gw.exit_codes import EXIT_OK, EXIT_USAGE

#: Prints only: main need not set up logging (structlog) for it.
LOGS = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `terminal-gw schema`."""
    parser.add_argument("name", nargs="?", help="one payload (fix, sky, event, ...)")
    parser.add_argument("--out", type=Path, default=None, help="write NAME.schema.json files here")


def cli(args: argparse.Namespace) -> int:
    """Print the JSON Schema of every payload (or of one, or write one file each with --out)."""
    from terminal_gw.models import payload_schemas

    schemas = payload_schemas()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, schema in schemas.items():
            text = json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            (args.out / f"{name}.schema.json").write_text(text, encoding="utf-8")
        print(f"wrote {len(schemas)} schemas to {args.out}")
        return EXIT_OK
    if args.name:
        if args.name not in schemas:
            print(f"error: no payload named {args.name!r}; known: {', '.join(schemas)}")
            return EXIT_USAGE
        print(json.dumps(schemas[args.name], indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(json.dumps(schemas, indent=2, sort_keys=True, ensure_ascii=False))
    return EXIT_OK

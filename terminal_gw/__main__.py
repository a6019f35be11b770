"""`python -m terminal_gw`: the command line (see `terminal_gw.cli`)."""

from __future__ import annotations

import sys

from terminal_gw.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())

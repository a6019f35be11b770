"""terminal-gw: edge daemon for BeiDou and Tiantong satellite terminals."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: Where the config is read from unless --config or $TGW_CONFIG says otherwise.
DEFAULT_CONFIG_PATH = Path("/etc/terminal-gw/config.toml")

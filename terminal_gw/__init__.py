"""terminal-gw: edge daemon for BeiDou and Tiantong satellite terminals."""

from __future__ import annotations

__version__ = "0.1.0"

"""What the `cloudbill` sub-command modules share with the CLI root.

cli.py imports every sub-command module to mount it; they take what they need from here, never from cli.py,
so the imports among cloudbill/ modules stay a tree (tests/unit/ops/test_cli_imports.py checks it).
"""

from __future__ import annotations

from shared import logging as cblog
from shared.settings import Settings, get_settings


def settings() -> Settings:
    """The effective settings, with the CLI's logging set up from them (every command logs the same way)."""
    s = get_settings()
    cblog.setup("cloudbill", s.log_format, s.log_level)
    return s

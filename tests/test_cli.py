"""The command line: help lists the commands (packaging: tests/test_installed.py)."""

from __future__ import annotations

import subprocess
import sys


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "qgcal", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("generate", "run", "train", "serve", "demo", "validate"):
        assert cmd in out.stdout

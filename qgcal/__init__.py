"""qgcal: quark/gluon jet-tagging calibration workflow engine."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]

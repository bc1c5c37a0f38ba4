"""qgcal: quark/gluon jet-tagging calibration workflow engine.

The library API (:mod:`qgcal.api`), importable from here::

    import qgcal

    cfg = qgcal.load_config("qgcal-demo/config.yaml")
    result = qgcal.run(cfg, "JES_up", workers=2)
    qgcal.sweep(cfg)
    qgcal.combine(cfg)

Imported on first use, so ``import qgcal`` (and ``import qgcal.config``) stay light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "combine", "generate", "load_config", "run", "status", "sweep", "train"]

_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from qgcal import api

        return getattr(api, name)
    raise AttributeError(f"module 'qgcal' has no attribute {name!r}")

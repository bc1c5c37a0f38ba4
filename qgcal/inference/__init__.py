"""Tagger inference: one interface, local CPU / local CUDA (torch) / remote Triton.

The predict pass only needs :func:`make_scorer` and the :class:`Scorer` protocol; model
files go through :mod:`.model_io` (skops + metadata sidecar, never pickle); serving and
repository export live in :mod:`.serve` (``qgcal.inference.serve.serve``) and :mod:`.export`.  Heavy optional packages
(torch, tritonclient, pytriton) are imported on first use only.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule; imported on first use, so that ``qgcal.inference.config`` (which the
# config schema needs) loads no backend, model file format or server code
_LAZY = {
    "InferenceConfig": "config",
    "TritonSettings": "config",
    "Scorer": "backends",
    "SklearnScorer": "backends",
    "available_backends": "backends",
    "make_local_scorer": "backends",
    "make_scorer": "backends",
    "InferenceError": "errors",
    "export_repo": "export",
    "LoadedModel": "model_io",
    "ModelMeta": "model_io",
    "load_model": "model_io",
    "meta_path": "model_io",
    "read_meta": "model_io",
    "save_model": "model_io",
    "TritonScorer": "triton_client",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "InferenceConfig",
    "InferenceError",
    "LoadedModel",
    "ModelMeta",
    "Scorer",
    "SklearnScorer",
    "TritonScorer",
    "TritonSettings",
    "available_backends",
    "export_repo",
    "load_model",
    "make_local_scorer",
    "make_scorer",
    "meta_path",
    "read_meta",
    "save_model",
]

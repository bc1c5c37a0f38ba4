"""Tagger inference: one interface, local CPU / local CUDA (torch) / remote Triton.

The predict pass only needs :func:`make_scorer` and the :class:`Scorer` protocol; model
files go through :mod:`.model_io` (skops + metadata sidecar, never pickle); serving and
repository export live in :mod:`.serve` and :mod:`.export`.  Heavy optional packages
(torch, tritonclient, pytriton) are imported on first use only.
"""

from __future__ import annotations

from .backends import Scorer, SklearnScorer, available_backends, make_local_scorer, make_scorer
from .config import InferenceConfig, TritonSettings
from .errors import InferenceError
from .export import export_repo
from .model_io import LoadedModel, ModelMeta, load_model, meta_path, read_meta, save_model
from .serve import serve
from .triton_client import TritonScorer

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
    "serve",
]

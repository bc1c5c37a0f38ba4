"""One scoring interface, several engines, chosen by name.

Why: the predict pass must not care whether jets are scored in-process by scikit-learn, on
a GPU by torch, or by a Triton server shared by many jobs.  Every engine is a
:class:`Scorer` (float32 ``[n, k]`` in, float32 ``[n]`` out, ``provenance()``,
``close()``, context manager) and :func:`make_scorer` picks one from the ``inference:``
config plus CLI overrides.  Heavy engines (torch, tritonclient) import on first use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
from pydantic import ValidationError

from .config import InferenceConfig
from .errors import InferenceError
from .model_io import LoadedModel, load_model

__all__ = [
    "BaseScorer",
    "Scorer",
    "SklearnScorer",
    "as_features",
    "available_backends",
    "make_local_scorer",
    "make_scorer",
]

log = logging.getLogger(__name__)


@runtime_checkable
class Scorer(Protocol):
    """What the predict pass relies on."""

    def predict(self, features: np.ndarray) -> np.ndarray: ...

    def provenance(self) -> dict[str, Any]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def as_features(features: np.ndarray, n_features: int | None, where: str) -> np.ndarray:
    """Validate and return float32 C-contiguous ``[n, k]`` (no copy when already so)."""
    array = np.ascontiguousarray(features, dtype=np.float32)
    if array.ndim != 2 or (n_features is not None and array.shape[1] != n_features):
        raise InferenceError(
            f"{where} expects features of shape [n, {n_features if n_features is not None else 'k'}] "
            f"but got {list(array.shape)}; check the tagger's feature list in the config"
        )
    return array


class BaseScorer:
    """Context-manager plumbing shared by all engines."""

    def predict(self, features: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release resources; idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def model_provenance(model: LoadedModel) -> dict[str, Any]:
    return {
        "path": str(model.path),
        "sha256": model.meta.model_sha256,
        "features": list(model.meta.features),
        "score": model.meta.score,
    }


class SklearnScorer(BaseScorer):
    """In-process CPU scoring with the estimator's own ``decision_function``."""

    def __init__(self, model: LoadedModel, *, requested_device: str = "cpu", note: str | None = None):
        self.model = model
        self._requested_device = requested_device
        self._note = note

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = as_features(features, len(self.model.meta.features), f"model {self.model.path}")
        if x.shape[0] == 0:  # scikit-learn rejects empty arrays
            return np.empty(0, dtype=np.float32)
        return np.asarray(self.model.estimator.decision_function(x), dtype=np.float32)

    def provenance(self) -> dict[str, Any]:
        import sklearn

        return {
            "backend": "local",
            "engine": "sklearn",
            "device": "cpu",
            "requested": {"backend": "local", "device": self._requested_device},
            "device_note": self._note,
            "model": model_provenance(self.model),
            "fallback": {"happened": False, "reason": None},
            "versions": {"scikit-learn": sklearn.__version__, "numpy": np.__version__},
        }


def _cuda_status() -> tuple[bool, str]:
    """(available, why-not) without importing torch when it is not installed."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed (pip install 'qgcal[gpu]')"
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none"
        return False, f"torch {torch.__version__} sees no CUDA device (CUDA build: {build})"
    return True, ""


def make_local_scorer(model: LoadedModel, device: str) -> BaseScorer:
    """cpu -> scikit-learn; cuda -> torch trees on the GPU; auto -> cuda if usable else cpu.

    ``auto`` falls back to scikit-learn (not torch-cpu): on CPU it is the reference
    implementation and at least as fast; the provenance says why cuda was not used.
    """
    if device == "cpu":
        return SklearnScorer(model)
    if device in ("cuda", "auto"):
        available, why = _cuda_status()
        if available:
            from .torch_trees import TorchTreeScorer

            return TorchTreeScorer(model, device="cuda", requested_device=device)
        if device == "auto":
            log.info("device auto: using scikit-learn on cpu because %s", why)
            return SklearnScorer(model, requested_device="auto", note=f"cuda not used: {why}")
        raise InferenceError(
            f"device cuda requested for model {model.path} but {why}; rerun with --device cpu or --device auto"
        )
    raise InferenceError(f"unknown device {device!r}; valid devices: cpu, cuda, auto")


def _make_local(cfg: InferenceConfig, model_path: Path | None) -> BaseScorer:
    if model_path is None:
        raise InferenceError("backend local needs a model file path; set the tagger's model path")
    return make_local_scorer(load_model(model_path), cfg.device)


def _make_triton(cfg: InferenceConfig, model_path: Path | None) -> BaseScorer:
    from .triton_client import TritonScorer

    return TritonScorer(cfg.triton, model_path=model_path, local_device=cfg.device)


_BACKENDS: Mapping[str, Callable[[InferenceConfig, Path | None], BaseScorer]] = {
    "local": _make_local,
    "triton": _make_triton,
}


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def make_scorer(
    inference_cfg: InferenceConfig | Mapping[str, Any] | None,
    model_path: str | os.PathLike[str] | None,
) -> BaseScorer:
    """Build the scorer the ``inference:`` settings ask for.

    Call once per worker process (after any fork: gRPC channels do not survive one) and
    reuse it for every chunk of the file; close it (or use ``with``) at the end.
    """
    from qgcal.config import format_validation

    try:
        cfg = InferenceConfig.model_validate(inference_cfg or {})
    except ValidationError as exc:
        raise InferenceError(format_validation(exc, "inference settings", prefix=("inference",))) from None
    path = Path(model_path) if model_path is not None else None
    return _BACKENDS[cfg.backend](cfg, path)

"""Save and load tagger models without pickle, with a metadata sidecar.

Why skops: a model file is an artifact that other people's jobs load; loading must never
execute code (``pickle``/``joblib`` would).  ``skops.io.load`` is given an explicit list of
trusted types, so a file that smuggles in anything else is refused.

Why a sidecar JSON (``<stem>.meta.json``) with a SHA-256 of the model file: the predict
pass, the Triton server and the provenance record all need to know *which* model scored
the jets, in which feature order, and what the score means, without loading the model.
The fingerprint also detects a model file replaced or truncated after training.

Why the fingerprint is of the file, not of the model: skops writes the current time and
Python object ids into its archive, so two saves of the same fitted model differ byte-wise.
Normalising that would mean rewriting skops' private archive layout, which any skops
release may change.  So the SHA-256 names one model *file*: a retrained model is a new file
with a new fingerprint (and the predict pass rescoring after a retrain is correct), while
reproducibility is a property of the training: the same data and seed give the same trees
and bit-identical scores, which the tests check on the predictions themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from qgcal.artifacts import library_versions as _all_versions
from qgcal.artifacts import sha256_file

from .errors import InferenceError

__all__ = [
    "TRUSTED_TYPES",
    "LoadedModel",
    "ModelMeta",
    "columns_fingerprint",
    "file_sha256",
    "library_versions",
    "load_model",
    "meta_path",
    "read_meta",
    "save_model",
]

# The only non-default type a fitted HistGradientBoostingClassifier needs (checked with
# skops.io.get_untrusted_types on scikit-learn 1.9); anything else in a file is refused.
TRUSTED_TYPES: tuple[str, ...] = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)

SCORE_DEFINITION = (
    "HistGradientBoostingClassifier.decision_function: raw log-odds of class 1 (gluon); higher = more gluon-like"
)


class ModelMeta(BaseModel):
    """What a model file is, read from its sidecar without loading the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = Field(default=1, description="Version of this metadata layout.")
    model_kind: str = Field(description="Estimator class, e.g. sklearn HistGradientBoostingClassifier.")
    model_file: str = Field(description="File name of the skops model, next to this sidecar.")
    model_sha256: str = Field(description="SHA-256 of the model file's bytes.")
    features: list[str] = Field(description="Feature names, in the column order the model expects.")
    classes: list[int] = Field(description="Class labels as stored in the model (classes_).")
    class_names: dict[str, str] = Field(description="Label -> meaning, e.g. {'0': 'quark', '1': 'gluon'}.")
    positive_class: int = Field(description="The class whose log-odds the score is.")
    score: str = Field(description="Definition of the score the model returns.")
    training_sample_sha256: str = Field(description="SHA-256 over the training columns used.")
    training: dict[str, Any] = Field(default_factory=dict, description="Split, sizes, binning, seed.")
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="Estimator parameters.")
    versions: dict[str, str] = Field(default_factory=dict, description="Library versions at training.")


@dataclass(frozen=True)
class LoadedModel:
    """A verified model: the estimator, its metadata and where it came from."""

    estimator: Any
    meta: ModelMeta
    path: Path

    @property
    def fingerprint(self) -> str:
        return self.meta.model_sha256


def meta_path(model_path: str | os.PathLike[str]) -> Path:
    """Sidecar location: ``tagger.skops`` -> ``tagger.meta.json``."""
    path = Path(model_path)
    return path.with_name(path.stem + ".meta.json")


def file_sha256(path: str | os.PathLike[str]) -> str:
    return sha256_file(Path(path))


def columns_fingerprint(columns: Mapping[str, np.ndarray], names: Sequence[str]) -> str:
    """SHA-256 over named columns (name, dtype, shape, bytes), in the given order."""
    digest = hashlib.sha256()
    for name in names:
        array = np.ascontiguousarray(columns[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """What a model's metadata records: the versions that can change its scores."""
    wanted = {"qgcal", "numpy", "scikit-learn", "skops"}
    return {k: v for k, v in _all_versions().items() if k in wanted}


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_model(
    estimator: Any,
    path: str | os.PathLike[str],
    *,
    features: Sequence[str],
    training_sample_sha256: str,
    class_names: Mapping[int, str] | None = None,
    training: Mapping[str, Any] | None = None,
) -> ModelMeta:
    """Write ``path`` (skops) and its sidecar atomically; return the metadata written."""
    import skops.io as sio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = sio.dumps(estimator)
    classes = [int(c) for c in estimator.classes_]
    meta = ModelMeta(
        model_kind=f"{type(estimator).__module__}.{type(estimator).__qualname__}",
        model_file=path.name,
        model_sha256=hashlib.sha256(data).hexdigest(),
        features=list(features),
        classes=classes,
        class_names={str(k): v for k, v in (class_names or {0: "quark", 1: "gluon"}).items()},
        positive_class=classes[-1],
        score=SCORE_DEFINITION,
        training_sample_sha256=training_sample_sha256,
        training=dict(training or {}),
        hyperparameters=_jsonable_params(estimator.get_params()),
        versions=library_versions(),
    )
    _atomic_write(path, data)
    _atomic_write(meta_path(path), (meta.model_dump_json(indent=2) + "\n").encode())
    return meta


def _jsonable_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(params), default=repr, sort_keys=True))


def read_meta(model_path: str | os.PathLike[str]) -> ModelMeta:
    """Read and validate the sidecar (cheap: does not touch the model file)."""
    sidecar = meta_path(model_path)
    if not sidecar.is_file():
        raise InferenceError(
            f"model metadata {sidecar} not found next to {model_path}; "
            "retrain with `qgcal train --config C` (it writes both files)"
        )
    try:
        return ModelMeta.model_validate_json(sidecar.read_bytes())
    except ValueError as exc:
        raise InferenceError(
            f"model metadata {sidecar} is unreadable ({exc.__class__.__name__}); retrain with `qgcal train --config C`"
        ) from exc


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a model after checking its fingerprint; never executes code from the file."""
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"model file {path} not found; train it with `qgcal train --config C`")
    meta = read_meta(path)
    actual = file_sha256(path)
    if actual != meta.model_sha256:
        raise InferenceError(
            f"model file {path} has sha256 {actual[:12]} but its metadata {meta_path(path).name} "
            f"says {meta.model_sha256[:12]}: the file was modified or truncated; "
            "retrain or restore it"
        )
    try:
        untrusted = set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES)
        if untrusted:
            raise InferenceError(
                f"model file {path} contains types qgcal does not trust "
                f"({', '.join(sorted(untrusted))}); "
                "refusing to load it"
            )
        estimator = sio.load(path, trusted=list(TRUSTED_TYPES))
    except InferenceError:
        raise
    except Exception as exc:  # zip/json/skops errors on a corrupt file
        raise InferenceError(
            f"model file {path} could not be loaded ({exc.__class__.__name__}: {exc}); retrain it"
        ) from exc
    n_in = getattr(estimator, "n_features_in_", None)
    if n_in != len(meta.features):
        raise InferenceError(f"model file {path} expects {n_in} features but its metadata lists {len(meta.features)}")
    return LoadedModel(estimator=estimator, meta=meta, path=path)

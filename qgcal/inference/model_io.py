"""Save and load tagger models without pickle, with a metadata sidecar.

Why skops: a model file is an artifact that other people's jobs load; loading must never
execute code (``pickle``/``joblib`` would).  ``skops.io.load`` is given an explicit list of
trusted types, so a file that smuggles in anything else is refused.

Why a sidecar JSON (``<stem>.meta.json``) with a SHA-256 of the model file: the predict
pass, the Triton server and the provenance record all need to know *which* model scored
the jets, in which feature order, and what the score means, without loading the model.
The fingerprint also detects a model file replaced or truncated after training.

Why a canonical archive: skops writes the current time and Python object ids into the
archive, so two dumps of the same model differ byte-wise; we rewrite it (fixed timestamps,
ids renumbered) so that the same training (same data and seed) gives the same bytes and
the same fingerprint, and reruns can skip unchanged artifacts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
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
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)

SCORE_DEFINITION = (
    "HistGradientBoostingClassifier.decision_function: raw log-odds of class 1 (gluon); "
    "higher = more gluon-like"
)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_ID_FILE = re.compile(r"^(\d+)(\.[A-Za-z0-9]+)$")


class ModelMeta(BaseModel):
    """What a model file is, read from its sidecar without loading the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = Field(default=1, description="Version of this metadata layout.")
    model_kind: str = Field(
        description="Estimator class, e.g. sklearn HistGradientBoostingClassifier."
    )
    model_file: str = Field(description="File name of the skops model, next to this sidecar.")
    model_sha256: str = Field(description="SHA-256 of the model file's bytes.")
    features: list[str] = Field(description="Feature names, in the column order the model expects.")
    classes: list[int] = Field(description="Class labels as stored in the model (classes_).")
    class_names: dict[str, str] = Field(
        description="Label -> meaning, e.g. {'0': 'quark', '1': 'gluon'}."
    )
    positive_class: int = Field(description="The class whose log-odds the score is.")
    score: str = Field(description="Definition of the score the model returns.")
    training_sample_sha256: str = Field(description="SHA-256 over the training columns used.")
    training: dict[str, Any] = Field(
        default_factory=dict, description="Split, sizes, binning, seed."
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="Estimator parameters."
    )
    versions: dict[str, str] = Field(
        default_factory=dict, description="Library versions at training."
    )


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
    return {k: v for k, v in _all_versions().items() if k in {"qgcal", "numpy", "scikit-learn", "skops"}}


def _canonical_skops(raw: bytes) -> bytes:
    """Make a skops archive reproducible: object ids -> 1, 2, ... and fixed zip timestamps.

    skops names the arrays after ``id(obj)`` and records ``__id__`` memo keys, both of
    which change from one process to the next.  Renumbering them in order of appearance
    (consistently, so shared references stay shared) keeps the archive loadable by
    ``skops.io.load`` and makes equal models byte-identical.
    """
    mapping: dict[int, int] = {}
    file_names: dict[str, str] = {}

    def renumber(old: int) -> int:
        return mapping.setdefault(int(old), len(mapping) + 1)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("__id__"), int):
                node["__id__"] = renumber(node["__id__"])
            name = node.get("file")
            if isinstance(name, str):
                match = _ID_FILE.match(name)
                if match:
                    new_name = f"{renumber(int(match.group(1)))}{match.group(2)}"
                    file_names[name] = new_name
                    node["file"] = new_name
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(out, "w") as dst:
        schema = json.loads(src.read("schema.json"))
        walk(schema)
        entries = {"schema.json": json.dumps(schema, indent=2).encode()}
        for info in src.infolist():
            if info.filename != "schema.json":
                entries[file_names.get(info.filename, info.filename)] = src.read(info.filename)
        for name in sorted(entries):
            fixed = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            fixed.compress_type = zipfile.ZIP_STORED
            fixed.external_attr = 0o644 << 16
            dst.writestr(fixed, entries[name])
    return out.getvalue()


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
    data = _canonical_skops(sio.dumps(estimator))
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
            f"model metadata {sidecar} is unreadable ({exc.__class__.__name__}); "
            "retrain with `qgcal train --config C`"
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
            f"says {meta.model_sha256[:12]}: the file was modified or truncated; retrain or restore it"
        )
    try:
        untrusted = set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES)
        if untrusted:
            raise InferenceError(
                f"model file {path} contains types qgcal does not trust ({', '.join(sorted(untrusted))}); "
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
        raise InferenceError(
            f"model file {path} expects {n_in} features but its metadata lists {len(meta.features)}"
        )
    return LoadedModel(estimator=estimator, meta=meta, path=path)

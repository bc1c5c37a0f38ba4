"""The constituent tagger's model: a DeepSets network over each jet's constituents, stored without pickle.

Why DeepSets: a jet is an unordered, variable-length set of constituents. A per-constituent
MLP (phi), a permutation-invariant pooling (sum and mean over the jet's constituents) and a
per-jet MLP (rho) give a score that does not depend on the constituents' order or on
padding: requests carry *flattened* constituents ``[N, k]`` plus per-jet ``counts [n]``
(primitive arrays, no padding), the same two arrays a Triton request would carry.

Stored format: the weights in the safetensors layout (8-byte little-endian header length, a
JSON header of dtype/shape/offsets, raw little-endian tensors), written and read here with
numpy alone, so no pickle is ever loaded and the file is byte-reproducible; a JSON sidecar
``<model>.json`` holds the architecture, the feature names, the input normalisation and the
SHA-256 of the weights file (checked on load).

Determinism: scoring runs on CPU with one intra-op thread under
``torch.use_deterministic_algorithms(True)``; per-jet pooling is an ``index_add`` in a fixed
order. The same file and inputs give bit-identical scores for any worker count. Not
batch-invariant: the float32 matrix products of a jet depend on the other rows of its batch at
the ~1e-5 level (see docs/constituents.md), so equal batches are what makes scores equal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import BaseScorer
from .errors import InferenceError

__all__ = [
    "FORMAT",
    "ConstituentMeta",
    "ConstituentScorer",
    "build_network",
    "deterministic_torch",
    "load_constituent_model",
    "read_safetensors",
    "save_constituent_model",
    "sidecar_path",
    "write_safetensors",
]

FORMAT = "qgcal-constituents-deepsets-v1"
_DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
#: sum pooling is divided by this (typical constituent multiplicity), keeping activations O(1)
SUM_SCALE = 16.0


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".json")


# ----------------------------------------------------------------------------- safetensors layout


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """Write ``tensors`` (sorted by name) in the safetensors layout, atomically."""
    header: dict[str, Any] = {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        dt = arr.dtype.newbyteorder("<")
        if dt not in _NAMES:
            raise InferenceError(f"{path}: tensor {name!r} has unsupported dtype {arr.dtype}")
        raw = arr.astype(dt, copy=False).tobytes()
        header[name] = {"dtype": _NAMES[dt], "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(len(head).to_bytes(8, "little"))
        fh.write(head)
        fh.writelines(blobs)
    os.replace(tmp, path)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file (numpy only; nothing is unpickled)."""
    data = path.read_bytes()
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        base = 8 + n
        out = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            lo, hi = spec["data_offsets"]
            dt = _DTYPES[spec["dtype"]]
            out[name] = np.frombuffer(data[base + lo : base + hi], dtype=dt).reshape(spec["shape"]).copy()
    except (KeyError, ValueError, TypeError) as err:
        raise InferenceError(f"{path}: not a valid safetensors weights file ({err}); retrain with 'qgcal train'")
    return out


# ----------------------------------------------------------------------------- network


@contextlib.contextmanager
def deterministic_torch(threads: int = 1) -> Iterator[Any]:
    """torch with deterministic algorithms and a fixed number of intra-op threads, restored after."""
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield torch
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def build_network(n_features: int, hidden: int) -> Any:
    """The DeepSets module (weights freshly initialised from torch's global generator)."""
    import torch
    from torch import nn

    class DeepSets(nn.Module):
        """phi: per constituent; pooling: sum/16 and mean per jet, plus log(1 + count); rho: per jet."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(n_features))
            self.register_buffer("scale", torch.ones(n_features))
            self.phi = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
            self.rho = nn.Sequential(nn.Linear(2 * hidden + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            self.sum_scale = float(SUM_SCALE)  # an attribute, not a global: TorchScript needs it

        def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
            n = counts.shape[0]
            # attribute access, not get_buffer(): TorchScript (the export for stock servers) needs it
            mean: torch.Tensor = self.mean  # type: ignore[assignment]
            scale: torch.Tensor = self.scale  # type: ignore[assignment]
            h = self.phi((x - mean) * scale)
            jet = torch.repeat_interleave(torch.arange(n, device=counts.device), counts)
            pooled = torch.zeros((n, h.shape[1]), dtype=h.dtype, device=h.device).index_add_(0, jet, h)
            c = counts.to(h.dtype).unsqueeze(1)
            feats = torch.cat([pooled / self.sum_scale, pooled / c.clamp(min=1.0), torch.log1p(c)], dim=1)
            out: torch.Tensor = self.rho(feats).squeeze(1)
            return out

    return DeepSets()


# ----------------------------------------------------------------------------- files


@dataclass(frozen=True)
class ConstituentMeta:
    """What the sidecar says about a constituent model."""

    features: tuple[str, ...]
    hidden: int
    weights_sha256: str
    training_sample_sha256: str
    training: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "architecture": {
                "kind": "deepsets",
                "n_features": len(self.features),
                "hidden": self.hidden,
                "pooling": f"sum/{SUM_SCALE:g}, mean, log1p(count)",
            },
            "features": list(self.features),
            "inputs": "flattened constituents float32 [N, k] + per-jet counts int64 [n]",
            "score": "gluon log-odds (higher = more gluon-like)",
            "weights_sha256": self.weights_sha256,
            "training_sample_sha256": self.training_sample_sha256,
            "training": self.training,
        }


def save_constituent_model(
    network: Any,
    path: str | os.PathLike[str],
    *,
    features: Sequence[str],
    hidden: int,
    training_sample_sha256: str,
    training: Mapping[str, Any],
) -> ConstituentMeta:
    """Write the weights (safetensors layout) and the JSON sidecar; byte-reproducible."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().numpy() for k, v in network.state_dict().items()}
    write_safetensors(p, tensors)
    meta = ConstituentMeta(
        features=tuple(features),
        hidden=int(hidden),
        weights_sha256=hashlib.sha256(p.read_bytes()).hexdigest(),
        training_sample_sha256=training_sample_sha256,
        training=dict(training),
    )
    side = sidecar_path(p)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps(meta.to_json(), sort_keys=True, indent=2) + "\n")
    os.replace(tmp, side)
    return meta


def read_constituent_meta(path: Path) -> ConstituentMeta:
    side = sidecar_path(path)
    try:
        doc = json.loads(side.read_text())
    except (OSError, ValueError) as err:
        raise InferenceError(f"{side}: missing or unreadable model sidecar ({err}); retrain with 'qgcal train'")
    if doc.get("format") != FORMAT:
        raise InferenceError(f"{side}: format {doc.get('format')!r}, expected {FORMAT!r}; retrain with 'qgcal train'")
    return ConstituentMeta(
        features=tuple(doc["features"]),
        hidden=int(doc["architecture"]["hidden"]),
        weights_sha256=str(doc["weights_sha256"]),
        training_sample_sha256=str(doc.get("training_sample_sha256", "")),
        training=dict(doc.get("training", {})),
    )


def load_constituent_model(path: str | os.PathLike[str]) -> tuple[Any, ConstituentMeta]:
    """(network in eval mode, metadata); the weights' SHA-256 must match the sidecar."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise InferenceError(f"{p}: constituent model not found; run 'qgcal train --config <config>' first")
    meta = read_constituent_meta(p)
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    if digest != meta.weights_sha256:
        raise InferenceError(
            f"{p}: weights SHA-256 {digest[:12]} differs from its sidecar's {meta.weights_sha256[:12]}; "
            "the files do not belong together, retrain with 'qgcal train'"
        )
    net = build_network(len(meta.features), meta.hidden)
    state = {k: torch.from_numpy(v) for k, v in read_safetensors(p).items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InferenceError(f"{p}: weights do not fit the sidecar's architecture ({err}); retrain") from None
    net.eval()
    return net, meta


def score_network(net: Any, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """float32 scores ``[n]`` of jets given as flattened constituents and counts."""
    with deterministic_torch(1) as torch, torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        c = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.int64))
        out: np.ndarray = net(x, c).numpy().astype(np.float32)
    return out


class ConstituentScorer(BaseScorer):
    """Local CPU scoring of a constituent model (``predict_constituents``)."""

    def __init__(
        self, path: str | os.PathLike[str], *, note: str | None = None, requested: Mapping[str, str] | None = None
    ) -> None:
        self.path = Path(path)
        self.net, self.meta = load_constituent_model(self.path)
        self._note = note
        self._requested = dict(requested or {"backend": "local", "device": "cpu"})

    def predict_constituents(self, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Scores of ``len(counts)`` jets; ``values`` is ``[sum(counts), k]`` in jet order."""
        x = np.ascontiguousarray(values, dtype=np.float32)
        c = np.asarray(counts, dtype=np.int64)
        k = len(self.meta.features)
        if x.ndim != 2 or x.shape[1] != k or c.ndim != 1 or int(c.sum()) != x.shape[0] or (c < 0).any():
            raise InferenceError(
                f"model {self.path} expects constituents [sum(counts), {k}] and counts [n] >= 0, got "
                f"{list(x.shape)} and {list(c.shape)} (sum {int(c.sum())}); check the tagger's features"
            )
        if c.size == 0:
            return np.empty(0, dtype=np.float32)
        return score_network(self.net, x, c)

    def predict(self, features: np.ndarray) -> np.ndarray:
        raise InferenceError(f"model {self.path} scores constituents: call predict_constituents(values, counts)")

    def provenance(self) -> dict[str, Any]:
        import torch

        return {
            "backend": "local",
            "engine": "torch-deepsets",
            "device": "cpu",
            "requested": dict(self._requested),
            "device_note": self._note,
            "model": {
                "path": str(self.path),
                "sha256": self.meta.weights_sha256,
                "features": list(self.meta.features),
                "score": "gluon log-odds",
            },
            "fallback": {"happened": False, "reason": None},
            "versions": {"torch": torch.__version__, "numpy": np.__version__},
        }

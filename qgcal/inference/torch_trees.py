"""HistGradientBoosting trees as tensors, evaluated on a torch device (GPU, or CPU in CI).

Why this shape: a GPU is fast at wide, branch-free gathers and slow at per-row pointer
chasing.  All trees are flattened into one node table (feature, threshold, first child with the
two children adjacent, missing-goes-right, leaf value); leaves point to themselves, so
``max_depth`` rounds of "gather the feature, compare, step to a child" move every
(jet, tree) pair to its leaf with no data-dependent control flow.  The leaf values are then
summed over trees in float64, plus the baseline, exactly like scikit-learn's ``_raw_predict``.

Exactness: scikit-learn compares ``float64(x) <= num_threshold`` (float64).  For a float32
``x`` that equals ``x <= t32`` where ``t32`` is the largest float32 not above the float64
threshold, so we round thresholds *down* once on the host and compare in float32 on the
device: every branch decision is identical, and only the float64 summation order of the
leaf values differs (~1e-15), far inside the 1e-5 contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends import BaseScorer, as_features, model_provenance
from .errors import InferenceError, import_optional
from .model_io import LoadedModel

__all__ = ["TorchTreeScorer", "TreeTables", "flatten_trees"]


@dataclass(frozen=True)
class TreeTables:
    """Flattened node arrays of all trees (host side, numpy), siblings adjacent.

    ``first_child[i]`` is the left child; the right child is ``first_child[i] + 1``, so a
    step is one gather plus an add.  Leaves have ``first_child[i] == i`` and an infinite
    threshold, so they stay put: ``x > inf`` is never true and NaN goes "left" (to itself).
    """

    feature: np.ndarray
    threshold: np.ndarray
    first_child: np.ndarray
    missing_right: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    depth: int
    baseline: float


def _round_down_f32(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # 1e300 ("almost inf") -> inf, fixed just below
        t32 = values.astype(np.float32)
    above = t32.astype(np.float64) > values
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def _bfs_order(nodes: np.ndarray) -> np.ndarray:
    """Old node ids in an order where each node's two children are adjacent."""
    order, head = [0], 0
    while head < len(order):
        node = nodes[order[head]]
        head += 1
        if not node["is_leaf"]:
            order += [int(node["left"]), int(node["right"])]
    return np.asarray(order, dtype=np.int64)


def flatten_trees(estimator: Any, where: str) -> TreeTables:
    """Turn a fitted binary HistGradientBoostingClassifier into :class:`TreeTables`."""
    if getattr(estimator, "n_trees_per_iteration_", None) != 1:
        raise InferenceError(f"{where}: the torch backend supports binary classifiers only; use --device cpu")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("f", "t", "c", "m", "v")}
    roots, offset, depth = [], 0, 0
    for (predictor,) in estimator._predictors:
        nodes = predictor.nodes
        if nodes["is_categorical"].any():
            raise InferenceError(
                f"{where}: categorical splits are not supported by the torch backend; use --device cpu"
            )
        order = _bfs_order(nodes)
        new_id = np.empty(len(nodes), dtype=np.int64)
        new_id[order] = np.arange(len(order)) + offset
        tree = nodes[order]
        leaf = tree["is_leaf"].astype(bool)
        parts["f"].append(np.where(leaf, 0, tree["feature_idx"]))
        parts["t"].append(np.where(leaf, np.inf, tree["num_threshold"]))
        parts["c"].append(np.where(leaf, new_id[order], new_id[np.where(leaf, 0, tree["left"])]))
        parts["m"].append(~leaf & (tree["missing_go_to_left"] == 0))
        parts["v"].append(np.where(leaf, tree["value"], 0.0))
        roots.append(offset)
        depth = max(depth, int(tree["depth"].max()))
        offset += len(order)
    if offset >= 2**31:
        raise InferenceError(f"{where}: too many tree nodes ({offset}) for the torch backend")
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return TreeTables(
        feature=cat["f"].astype(np.int32),
        threshold=_round_down_f32(cat["t"].astype(np.float64)),
        first_child=cat["c"].astype(np.int32),
        missing_right=cat["m"].astype(bool),
        value=cat["v"].astype(np.float64),
        roots=np.asarray(roots, dtype=np.int32),
        depth=depth,
        baseline=float(np.asarray(estimator._baseline_prediction).ravel()[0]),
    )


class TorchTreeScorer(BaseScorer):
    """Scores with torch on ``device`` ("cuda", "cuda:1", or "cpu" for CI)."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        device: str = "cuda",
        requested_device: str | None = None,
        chunk_elements: int | None = None,
    ) -> None:
        torch = import_optional("torch", "gpu", "device cuda")
        self.model = model
        self._where = f"model {model.path}"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InferenceError(
                f"device {device} requested for {self._where} but torch {torch.__version__} sees no "
                "CUDA device; rerun with --device cpu or --device auto"
            )
        self._torch = torch
        self.device = torch.device(device)
        self._requested = requested_device or device
        tables = flatten_trees(model.estimator, self._where)
        put = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
        self._feature, self._threshold = put(tables.feature), put(tables.threshold)
        self._first_child, self._missing_right = put(tables.first_child), put(tables.missing_right)
        self._value, self._roots = put(tables.value), put(tables.roots)
        self._depth, self._baseline = tables.depth, tables.baseline
        self._n_features = len(model.meta.features)
        n_trees = len(tables.roots)
        # Rows per chunk keep the [rows, trees] working set bounded (~100 MiB on CPU).
        budget = chunk_elements or (1 << 26 if self.device.type == "cuda" else 1 << 23)
        self._chunk_rows = max(256, budget // max(n_trees, 1))

    def _score_chunk(self, x: Any) -> Any:
        """Leaf-value sum (float64) for one chunk ``x`` [rows, k] already on the device."""
        torch = self._torch
        rows = x.shape[0]
        flat_x = x.reshape(-1)
        row_base = (torch.arange(rows, device=self.device, dtype=torch.int32) * self._n_features)[:, None]
        has_nan = bool(torch.isnan(x).any())
        node = self._roots.expand(rows, -1).reshape(-1)
        for _ in range(self._depth):
            feat = self._feature.index_select(0, node).view(rows, -1)
            value = flat_x.index_select(0, (feat + row_base).view(-1))
            go_right = value > self._threshold.index_select(0, node)
            if has_nan:
                go_right |= torch.isnan(value) & self._missing_right.index_select(0, node)
            node = self._first_child.index_select(0, node) + go_right
        return self._value.index_select(0, node).view(rows, -1).sum(dim=1) + self._baseline

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = as_features(features, len(self.model.meta.features), self._where)
        out = np.empty(x.shape[0], dtype=np.float32)
        torch = self._torch
        with torch.inference_mode():
            for start in range(0, x.shape[0], self._chunk_rows):
                chunk = torch.from_numpy(x[start : start + self._chunk_rows]).to(self.device)
                scores = self._score_chunk(chunk).to(torch.float32)
                out[start : start + chunk.shape[0]] = scores.cpu().numpy()
        return out

    def provenance(self) -> dict[str, Any]:
        torch = self._torch
        return {
            "backend": "local",
            "engine": "torch",
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "requested": {"backend": "local", "device": self._requested},
            "device_note": None,
            "model": model_provenance(self.model),
            "fallback": {"happened": False, "reason": None},
            "versions": {"torch": torch.__version__, "numpy": np.__version__},
        }

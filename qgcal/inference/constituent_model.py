"""The constituent tagger's models: DeepSets or a kNN graph network over each jet's constituents, stored without pickle.

Why DeepSets: a jet is an unordered, variable-length set of constituents. A per-constituent
MLP (phi), a permutation-invariant pooling (sum and mean over the jet's constituents) and a
per-jet MLP (rho) give a score that does not depend on the constituents' order or on
padding: requests carry *flattened* constituents ``[N, k]`` plus per-jet ``counts [n]``
(primitive arrays, no padding), the same two arrays a Triton request would carry.

Why a graph network (``architecture: knn``): DeepSets sees each constituent alone; the
graph network also sees its neighbourhood (the ExaTrkX shape "build a graph, then run a
GNN"). Two stages, kept apart so that they can be served as two models:

* graph stage (:func:`build_graph_stage`): per jet, each constituent's
  ``k`` nearest other constituents in the coordinates (deta, dphi), as row indices
  ``[N, k]`` (-1 where a jet has fewer than ``k + 1`` constituents). Exact: squared distances
  are sums of squares in a fixed order (no matrix product), ties broken by index, so the
  neighbour lists do not depend on how jets are batched.
* GNN stage (:func:`build_gnn_stage`): one EdgeConv layer (``ReLU(W [x_i, x_j - x_i] + b)``,
  max over the neighbours), a node MLP, then the DeepSets pooling and per-jet MLP.

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
    "ARCHITECTURES",
    "DEFAULT_NEIGHBOURS",
    "FORMAT",
    "ConstituentMeta",
    "ConstituentScorer",
    "build_gnn_stage",
    "build_graph_stage",
    "build_network",
    "deterministic_torch",
    "graph_neighbours",
    "load_constituent_model",
    "read_safetensors",
    "save_constituent_model",
    "score_neighbours",
    "score_network",
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
#: the constituent architectures (``taggers.<t>.architecture``); sidecars without one are deepsets
ARCHITECTURES = ("deepsets", "knn")
#: neighbours per constituent of the kNN graph unless configured
DEFAULT_NEIGHBOURS = 8
#: constituents per block of the neighbour max (a block of [rows, H] float32 stays in cache)
_GATHER_ROWS = 4096


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
    """torch with deterministic algorithms and a fixed number of intra-op threads, restored after.

    Why ``fill_uninitialized_memory`` is off: under deterministic algorithms torch otherwise
    fills every freshly allocated output with NaN before the op overwrites it (a guard for ops
    that read memory they never wrote, which none here does); that fill was ~20% of the kNN
    network's time. It changes no result.
    """
    import torch
    import torch.utils.deterministic as det

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_fill = det.fill_uninitialized_memory  # type: ignore[attr-defined]
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    det.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        yield torch
    finally:
        det.fill_uninitialized_memory = old_fill  # type: ignore[attr-defined]
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def build_network(
    n_features: int,
    hidden: int,
    *,
    architecture: str = "deepsets",
    neighbours: int = DEFAULT_NEIGHBOURS,
    coordinates: Sequence[int] = (1, 2),
) -> Any:
    """The network of ``architecture`` (weights freshly initialised from torch's global generator).

    Every architecture is a module ``forward(x [N, n_features] float32, counts [n] int64) -> [n]``
    (gluon log-odds); ``knn`` also has ``.knn`` (graph stage; not ``.graph``, which a ScriptModule
    reserves) and ``.gnn`` (GNN stage), so ``net(x, c) == net.gnn(x, c, net.knn(x, c))``.
    ``neighbours`` and ``coordinates`` (feature indices of the kNN metric, usually deta and dphi)
    are used by ``knn`` only.
    """
    if architecture == "deepsets":
        return _build_deepsets(n_features, hidden)
    if architecture == "knn":
        return _build_knn(n_features, hidden, neighbours, coordinates)
    raise InferenceError(f"unknown constituent architecture {architecture!r}; expected one of {list(ARCHITECTURES)}")


def _pooling_module() -> Any:
    """Per-jet pooling shared by the architectures: [sum/16, mean, log(1 + count)] of node features."""
    import torch
    from torch import nn

    class JetPooling(nn.Module):
        """No parameters (adds no state-dict keys): ``forward(h [N, H], counts [n]) -> [n, 2H + 1]``."""

        def __init__(self) -> None:
            super().__init__()
            self.sum_scale = float(SUM_SCALE)  # an attribute, not a global: TorchScript needs it

        def forward(self, h: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
            n = counts.shape[0]
            jet = torch.repeat_interleave(torch.arange(n, device=counts.device), counts)
            pooled = torch.zeros((n, h.shape[1]), dtype=h.dtype, device=h.device).index_add_(0, jet, h)
            return self.finish(pooled, counts)

        def finish(self, pooled: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
            """The jet features from the per-jet sums ``pooled [n, H]`` (for callers that sum in blocks)."""
            c = counts.to(pooled.dtype).unsqueeze(1)
            return torch.cat([pooled / self.sum_scale, pooled / c.clamp(min=1.0), torch.log1p(c)], dim=1)

    return JetPooling()


def _build_deepsets(n_features: int, hidden: int) -> Any:
    import torch
    from torch import nn

    pooling = _pooling_module()

    class DeepSets(nn.Module):
        """phi: per constituent; pooling: sum/16 and mean per jet, plus log(1 + count); rho: per jet."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(n_features))
            self.register_buffer("scale", torch.ones(n_features))
            self.phi = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
            self.rho = nn.Sequential(nn.Linear(2 * hidden + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            self.pool = pooling
            self.sum_scale = float(SUM_SCALE)  # kept for callers that pool by hand (benchmarks)

        def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
            # attribute access, not get_buffer(): TorchScript (the export for stock servers) needs it
            mean: torch.Tensor = self.mean  # type: ignore[assignment]
            scale: torch.Tensor = self.scale  # type: ignore[assignment]
            h = self.phi((x - mean) * scale)
            out: torch.Tensor = self.rho(self.pool(h, counts)).squeeze(1)
            return out

    return DeepSets()


def build_graph_stage(neighbours: int, coordinates: Sequence[int]) -> Any:
    """The graph stage alone: ``forward(x [N, F], counts [n]) -> neighbours int64 [N, k]``.

    Row ``r`` lists the rows (indices into ``x``) of its ``min(k, count - 1)`` nearest other
    constituents of the same jet, nearest first, then -1. Why jets are grouped by
    constituent count: all jets of one count form one dense ``[m, c, c]`` distance block, no
    padding and no cross-jet pairs. Why a stable sort, not ``topk``: equal distances (duplicate
    coordinates) then come in index order, the documented tie-break, on any device; NaN
    distances count as infinite. The row itself is removed by position, not by its distance 0,
    so duplicates of it are still neighbours.
    """
    import torch
    from torch import nn

    if neighbours < 1 or not coordinates:
        raise InferenceError("a kNN graph needs neighbours >= 1 and at least one coordinate")
    coords = [int(c) for c in coordinates]

    class KnnGraph(nn.Module):
        """kNN in the coordinate features, per jet, self excluded (no parameters)."""

        def __init__(self) -> None:
            super().__init__()
            self.k = int(neighbours)
            self.coordinates = coords

        def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
            out = torch.full((x.shape[0], self.k), -1, dtype=torch.long, device=x.device)
            if x.shape[0] == 0:
                return out
            starts = torch.cumsum(counts, 0) - counts
            sizes: list[int] = torch.unique(counts).tolist()
            for c in sizes:
                if c < 2:
                    continue  # a lone constituent has no neighbour
                jets = torch.nonzero(counts == c).squeeze(1)
                local = torch.arange(c, device=x.device)
                rows = starts[jets].unsqueeze(1) + local.unsqueeze(0)  # [m, c]
                d2 = torch.zeros((jets.shape[0], c, c), dtype=x.dtype, device=x.device)
                for f in self.coordinates:  # sum of squares in a fixed order: exact for any batch
                    p = x[:, f][rows]
                    d = p.unsqueeze(2) - p.unsqueeze(1)
                    d2 = d2 + d * d
                d2 = torch.where(torch.isnan(d2), torch.full_like(d2, float("inf")), d2)  # NaN: farthest
                kk = min(self.k, c - 1)
                cand = torch.sort(d2, dim=2, stable=True).indices[:, :, : kk + 1]  # ties: lower index first
                # drop the row itself (one of the kk + 1 unless kk + 1 others tie at distance 0 before it)
                is_self = (cand == local.view(1, c, 1)).to(torch.int32)
                nearest = cand.gather(2, torch.sort(is_self, dim=2, stable=True).indices)[:, :, :kk]
                found = (nearest + starts[jets].view(-1, 1, 1)).reshape(-1, kk)
                block = torch.full((found.shape[0], self.k), -1, dtype=torch.long, device=x.device)
                block[:, :kk] = found
                out.index_copy_(0, rows.reshape(-1), block)
            return out

    return KnnGraph()


def build_gnn_stage(n_features: int, hidden: int) -> Any:
    """The GNN stage alone: ``forward(x [N, F], counts [n], neighbours [N, k]) -> [n]`` log-odds.

    One EdgeConv layer with max aggregation: constituent i gets
    ``e_i = max_j ReLU(W [z_i, z_j - z_i] + b)`` over its neighbours j (z: standardised features;
    0 for a constituent without neighbours), then a node MLP, the DeepSets pooling per jet and rho.

    Why it is computed as ``ReLU(c_i + max_j B z_j)`` with ``c_i = (A - B) z_i + b``: writing
    ``W = [A | B]``, ``W [z_i, z_j - z_i] = (A - B) z_i + B z_j``, and ReLU and ``+ c_i`` are
    monotonic, so the max moves inside. Identical up to float rounding of the sum, and it
    gathers ``[rows, H]`` blocks k times instead of building an ``[N, k, H]`` edge tensor: at
    100k jets (1.9M constituents, k = 8, H = 32) that tensor alone is 2 GB. The max is exact,
    so the neighbour aggregation does not depend on batching; only the matrix products do.

    ``neighbours`` as the graph stage writes them: rows of the same jet, found ones first,
    then -1 (a list starting with -1 means no neighbour at all).
    """
    import torch
    from torch import nn

    pooling = _pooling_module()

    class EdgeConvTagger(nn.Module):
        """EdgeConv (max aggregation) over a given neighbour list, node MLP, pooling and rho."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(n_features))
            self.register_buffer("scale", torch.ones(n_features))
            self.edge_self = nn.Linear(n_features, hidden)  # A - B, plus the bias
            self.edge_neighbour = nn.Linear(n_features, hidden, bias=False)  # B
            self.node = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
            self.rho = nn.Sequential(nn.Linear(2 * hidden + 1, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            self.pool = pooling
            self.chunk = _GATHER_ROWS

        def forward(self, x: torch.Tensor, counts: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
            mean: torch.Tensor = self.mean  # type: ignore[assignment]
            scale: torch.Tensor = self.scale  # type: ignore[assignment]
            z = (x - mean) * scale
            b = self.edge_neighbour(z)
            n, hidden = counts.shape[0], b.shape[1]
            jet = torch.repeat_interleave(torch.arange(n, device=counts.device), counts)
            pooled = torch.zeros((n, hidden), dtype=z.dtype, device=z.device)
            # blocks of constituents: every [rows, H] intermediate stays in cache (whole-request
            # [N, H] temporaries cost more in fresh memory than in arithmetic); the per-jet sums
            # are added row after row, in the same order as one index_add over all rows
            for lo in range(0, z.shape[0], self.chunk):
                rows = neighbours[lo : lo + self.chunk]
                # a missing neighbour (-1, always after the found ones) repeats the nearest one, which
                # leaves the max alone; a constituent without any reads its own row and its message
                # is zeroed: nothing is ever read from another jet
                first = rows[:, :1]
                own = torch.arange(lo, lo + rows.shape[0], device=rows.device).unsqueeze(1)
                rows = torch.where(rows >= 0, rows, torch.where(first >= 0, first, own))
                best = b.index_select(0, rows[:, 0])
                for j in range(1, rows.shape[1]):  # max over the neighbours, one column at a time
                    best = torch.maximum(best, b.index_select(0, rows[:, j]))
                has = (first >= 0).to(z.dtype)
                h = self.node(torch.relu(self.edge_self(z[lo : lo + self.chunk]) + best) * has)
                pooled.index_add_(0, jet[lo : lo + self.chunk], h)
            out: torch.Tensor = self.rho(self.pool.finish(pooled, counts)).squeeze(1)
            return out

    return EdgeConvTagger()


def _build_knn(n_features: int, hidden: int, neighbours: int, coordinates: Sequence[int]) -> Any:
    import torch
    from torch import nn

    if any(not 0 <= int(c) < n_features for c in coordinates):
        raise InferenceError(f"kNN coordinates {list(coordinates)} are not feature indices 0..{n_features - 1}")
    graph = build_graph_stage(neighbours, coordinates)
    gnn = build_gnn_stage(n_features, hidden)

    class KnnTagger(nn.Module):
        """Fused: graph stage, then GNN stage, in one module (one served model)."""

        def __init__(self) -> None:
            super().__init__()
            self.knn = graph
            self.gnn = gnn

        def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.gnn(x, counts, self.knn(x, counts))
            return out

    return KnnTagger()


# ----------------------------------------------------------------------------- files


@dataclass(frozen=True)
class ConstituentMeta:
    """What the sidecar says about a constituent model."""

    features: tuple[str, ...]
    hidden: int
    weights_sha256: str
    training_sample_sha256: str
    training: dict[str, Any]
    architecture: str = "deepsets"
    #: knn only: neighbours per constituent and the features of the kNN metric (names)
    neighbours: int = 0
    coordinates: tuple[str, ...] = ()

    @property
    def coordinate_indices(self) -> tuple[int, ...]:
        return tuple(self.features.index(c) for c in self.coordinates)

    @property
    def engine(self) -> str:
        """How provenance names the model: ``torch-deepsets`` or ``torch-knn``."""
        return f"torch-{self.architecture}"

    def _architecture_json(self) -> dict[str, Any]:
        arch: dict[str, Any] = {
            "kind": self.architecture,
            "n_features": len(self.features),
            "hidden": self.hidden,
            "pooling": f"sum/{SUM_SCALE:g}, mean, log1p(count)",
        }
        if self.architecture == "knn":
            arch["neighbours"] = self.neighbours
            arch["coordinates"] = list(self.coordinates)
            arch["graph"] = "per jet, k nearest other constituents in the coordinates, ties by index"
            arch["message_passing"] = "1 EdgeConv: max_j ReLU(W [x_i, x_j - x_i] + b), then a node MLP"
        return arch

    def build(self) -> Any:
        """A freshly initialised network of this architecture (weights to be loaded)."""
        return build_network(
            len(self.features),
            self.hidden,
            architecture=self.architecture,
            neighbours=self.neighbours or DEFAULT_NEIGHBOURS,
            coordinates=self.coordinate_indices or (0,),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "architecture": self._architecture_json(),
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
    architecture: str = "deepsets",
    neighbours: int = 0,
    coordinates: Sequence[str] = (),
) -> ConstituentMeta:
    """Write the weights (safetensors layout) and the JSON sidecar; byte-reproducible.

    ``neighbours`` and ``coordinates`` (feature names) describe a ``knn`` network's graph.
    """
    if architecture not in ARCHITECTURES:
        raise InferenceError(
            f"unknown constituent architecture {architecture!r}; expected one of {list(ARCHITECTURES)}"
        )
    if architecture == "knn" and (neighbours < 1 or not coordinates or not set(coordinates) <= set(features)):
        raise InferenceError(f"a knn model needs neighbours >= 1 and coordinates among {list(features)}")
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
        architecture=architecture,
        neighbours=int(neighbours) if architecture == "knn" else 0,
        coordinates=tuple(coordinates) if architecture == "knn" else (),
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
    try:
        arch = doc["architecture"]
        kind = str(arch.get("kind", "deepsets"))  # sidecars written before the knn network: deepsets
        meta = ConstituentMeta(
            features=tuple(doc["features"]),
            hidden=int(arch["hidden"]),
            weights_sha256=str(doc["weights_sha256"]),
            training_sample_sha256=str(doc.get("training_sample_sha256", "")),
            training=dict(doc.get("training", {})),
            architecture=kind,
            neighbours=int(arch["neighbours"]) if kind == "knn" else 0,
            coordinates=tuple(arch["coordinates"]) if kind == "knn" else (),
        )
        meta.coordinate_indices  # noqa: B018 - a coordinate that is not a feature raises here
    except (KeyError, TypeError, ValueError) as err:
        raise InferenceError(f"{side}: incomplete model sidecar ({err!r}); retrain with 'qgcal train'") from None
    if kind not in ARCHITECTURES or (kind == "knn" and (meta.neighbours < 1 or not meta.coordinates)):
        raise InferenceError(f"{side}: unknown architecture {arch!r}; retrain with 'qgcal train'")
    return meta


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
    net = meta.build()
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


def graph_neighbours(net: Any, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The graph stage of a ``knn`` network alone: neighbour rows int64 ``[N, k]`` (-1: none).

    With :func:`score_neighbours` it is the split route (two models, two round trips); the
    fused ``net(x, c)`` runs both in one call on the same tensors, so the scores agree bit for bit.
    """
    with deterministic_torch(1) as torch, torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        c = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.int64))
        out: np.ndarray = net.knn(x, c).numpy()
    return out


def score_neighbours(net: Any, values: np.ndarray, counts: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """The GNN stage of a ``knn`` network alone: float32 scores ``[n]`` given the neighbour rows."""
    with deterministic_torch(1) as torch, torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        c = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.int64))
        nb = torch.from_numpy(np.ascontiguousarray(neighbours, dtype=np.int64))
        out: np.ndarray = net.gnn(x, c, nb).numpy().astype(np.float32)
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
            "engine": self.meta.engine,
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

"""Train the constituent tagger (DeepSets or the kNN graph network) and measure it against nTracks alone.

The same conventions as :mod:`qgcal.training` (and for the same reasons): gluon is the
positive class (the score is the gluon log-odds, higher = more gluon-like, like nTracks);
even event numbers train, odd ones evaluate; flat-pT |weight| training weights; the
evaluation AUCs use the signed weights.

Determinism: CPU, one intra-op thread, ``torch.use_deterministic_algorithms(True)``, the
initial weights and the mini-batch order drawn from generators seeded by ``seed`` inside
``torch.random.fork_rng`` (the caller's global torch RNG is untouched): the same inputs and
seed give the same weights file, byte for byte.

The kNN network's graph stage has no parameters and is exact (no float matrix products), so
the training jets' neighbour lists are built once, up front, and each mini-batch takes its
rows' lists shifted to the batch's row numbers (:func:`batch_neighbours`): the same
neighbours the fused model builds for the same jets at scoring time.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from qgcal.inference.constituent_model import (
    ARCHITECTURES,
    DEFAULT_NEIGHBOURS,
    ConstituentMeta,
    build_network,
    deterministic_torch,
    graph_neighbours,
    save_constituent_model,
    score_network,
)
from qgcal.training import (
    DEFAULT_PT_BINS_GEV,
    GLUON,
    OTHER,
    QUARK,
    TrainResult,
    evaluate_scores,
    flat_pt_weights,
    truth_class,
)

__all__ = ["ConstituentTrainResult", "batch_neighbours", "jets_subset", "train_constituent_tagger"]

log = logging.getLogger(__name__)


def jets_subset(values: np.ndarray, counts: np.ndarray, select: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(constituents, counts) of the jets where ``select`` is True, in order."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    idx = np.nonzero(select)[0]
    lens = counts[idx].astype(np.int64)
    out_off = np.zeros(lens.size + 1, dtype=np.int64)
    np.cumsum(lens, out=out_off[1:])
    rows = np.repeat(offsets[idx] - out_off[:-1], lens) + np.arange(int(out_off[-1]))
    return values[rows], lens


def batch_neighbours(neighbours: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The neighbour lists of ``rows`` (whole jets, in order) renumbered to positions in ``rows``.

    A neighbour is in the same jet, and a jet's rows are contiguous in both numberings, so
    the shift ``position - row`` of a constituent is its neighbours' shift too; -1 stays -1.
    """
    nb = neighbours[rows]
    shift = (np.arange(len(rows), dtype=np.int64) - rows)[:, None]
    return np.where(nb >= 0, nb + shift, -1)


@dataclass
class ConstituentTrainResult(TrainResult):
    """A trained constituent network; ``save`` writes safetensors weights and the JSON sidecar."""

    hidden: int = 32
    architecture: str = "deepsets"
    neighbours: int = 0
    coordinates: tuple[str, ...] = ()

    def save(self, path: str | os.PathLike[str]) -> ConstituentMeta:  # type: ignore[override]
        return save_constituent_model(
            self.model,
            path,
            features=self.features,
            hidden=self.hidden,
            training_sample_sha256=self.training_sample_sha256,
            training=self.training,
            architecture=self.architecture,
            neighbours=self.neighbours,
            coordinates=self.coordinates,
        )


def _fingerprint(columns: Mapping[str, np.ndarray], values: np.ndarray, counts: np.ndarray) -> str:
    h = hashlib.sha256()
    for name in sorted(columns):
        a = np.ascontiguousarray(columns[name])
        h.update(name.encode() + str(a.dtype).encode() + a.tobytes())
    h.update(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(counts, dtype=np.int64).tobytes())
    return h.hexdigest()


def train_constituent_tagger(
    columns: Mapping[str, np.ndarray],
    values: np.ndarray,
    counts: np.ndarray,
    *,
    features: Sequence[str],
    pt_bins_gev: Sequence[float] = DEFAULT_PT_BINS_GEV,
    seed: int = 0,
    epochs: int = 30,
    hidden: int = 32,
    batch_jets: int = 256,
    learning_rate: float = 3e-3,
    reference_feature: str = "nTracks",
    architecture: str = "deepsets",
    neighbours: int = DEFAULT_NEIGHBOURS,
    coordinates: Sequence[str] = ("constit_deta", "constit_dphi"),
) -> ConstituentTrainResult:
    """Fit the constituent tagger on even events; evaluate on odd events against ``reference_feature``.

    ``columns``: per-jet ``pt`` (GeV), ``event``, ``parton_label``, ``weight`` (optional) and the
    reference; ``values``: float32 ``[sum(counts), len(features)]``, the jets' constituents in
    jet order; ``counts``: constituents per jet. ``architecture``: ``deepsets`` or ``knn``
    (``neighbours`` per constituent in the ``coordinates`` features).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {list(ARCHITECTURES)}, got {architecture!r}")
    knn = architecture == "knn"
    if knn and (neighbours < 1 or not coordinates or not set(coordinates) <= set(features)):
        raise ValueError(f"architecture knn needs neighbours >= 1 and coordinates among {list(features)}")
    coord_idx = tuple(list(features).index(c) for c in coordinates) if knn else (0,)
    edges = np.asarray(pt_bins_gev, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"pt_bins_gev must be increasing bin edges, got {list(pt_bins_gev)}")
    for name in ("pt", "event", "parton_label"):
        if name not in columns:
            raise ValueError(f"jet table has no {name!r} column (columns: {sorted(columns)})")
    counts = np.asarray(counts, dtype=np.int64)
    values = np.ascontiguousarray(values, dtype=np.float32)
    n = len(columns["pt"])
    if len(counts) != n or values.shape != (int(counts.sum()), len(features)):
        raise ValueError(
            f"constituents {list(values.shape)} and counts {list(counts.shape)} do not fit {n} jets "
            f"with {len(features)} features"
        )
    weight = np.asarray(columns["weight"], dtype=np.float64) if "weight" in columns else np.ones(n)
    pt = np.asarray(columns["pt"], dtype=np.float64)
    cls = truth_class(columns["parton_label"])
    in_range = (pt >= edges[0]) & (pt < edges[-1]) & (cls != OTHER)
    even = np.asarray(columns["event"]) % 2 == 0
    train, evaluate = in_range & even, in_range & ~even
    if not (np.any(cls[train] == QUARK) and np.any(cls[train] == GLUON)):
        raise ValueError("training half (even events, in pT range) needs both quark and gluon jets")
    fingerprint = _fingerprint({k: np.asarray(v) for k, v in columns.items()}, values, counts)

    x_tr, c_tr = jets_subset(values, counts, train)
    y_tr = (cls[train] == GLUON).astype(np.float32)
    w_tr = flat_pt_weights(pt[train], cls[train], weight[train], edges).astype(np.float32)
    x64 = x_tr.astype(np.float64)
    mean = x64.mean(axis=0) if len(x64) else np.zeros(len(features))
    std = x64.std(axis=0) if len(x64) else np.ones(len(features))
    scale = 1.0 / np.where(std > 0, std, 1.0)

    with deterministic_torch(1) as torch, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_network(
            len(features), hidden, architecture=architecture, neighbours=neighbours, coordinates=coord_idx
        )
        standardise = net.gnn if knn else net  # the module holding the input normalisation buffers
        with torch.no_grad():
            standardise.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
            standardise.scale.copy_(torch.from_numpy(scale.astype(np.float32)))
        opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
        gen = np.random.default_rng(np.random.SeedSequence([seed, 12]))
        off = np.zeros(len(c_tr) + 1, dtype=np.int64)
        np.cumsum(c_tr, out=off[1:])
        x_t = torch.from_numpy(x_tr)
        nb_tr = graph_neighbours(net, x_tr, c_tr) if knn else np.zeros((0, 0), np.int64)
        loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
        last = float("nan")
        for _ in range(epochs):
            order = gen.permutation(len(c_tr))
            for start in range(0, len(order), batch_jets):
                jets = np.sort(order[start : start + batch_jets])
                lens = c_tr[jets]
                o2 = np.zeros(len(jets) + 1, dtype=np.int64)
                np.cumsum(lens, out=o2[1:])
                rows = np.repeat(off[jets] - o2[:-1], lens) + np.arange(int(o2[-1]))
                x_b, c_b = x_t[torch.from_numpy(rows)], torch.from_numpy(lens)
                if knn:
                    logits = net.gnn(x_b, c_b, torch.from_numpy(batch_neighbours(nb_tr, rows)))
                else:
                    logits = net(x_b, c_b)
                loss = (loss_fn(logits, torch.from_numpy(y_tr[jets])) * torch.from_numpy(w_tr[jets])).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                last = float(loss.detach())
        net.eval()
    log.info("trained constituent tagger on %d jets (last batch loss %.4f)", int(train.sum()), last)

    x_ev, c_ev = jets_subset(values, counts, evaluate)
    score = score_network(net, x_ev, c_ev) if len(c_ev) else np.empty(0, np.float32)
    metrics, roc = evaluate_scores(score, columns, evaluate, pt, cls, weight, edges, reference_feature)
    return ConstituentTrainResult(
        model=net,
        features=tuple(features),
        pt_bins_gev=tuple(float(e) for e in edges),
        reference_feature=reference_feature,
        metrics=metrics,
        roc=roc,
        training_sample_sha256=fingerprint,
        training={
            "split": "event % 2 == 0 trains, odd evaluates",
            "n_train": int(train.sum()),
            "n_eval": int(evaluate.sum()),
            "pt_bins_gev": [float(e) for e in edges],
            "weights": "flat in pT per class from |MC weight|",
            "epochs": epochs,
            "batch_jets": batch_jets,
            "learning_rate": learning_rate,
            "seed": seed,
        },
        hidden=hidden,
        architecture=architecture,
        neighbours=int(neighbours) if knn else 0,
        coordinates=tuple(coordinates) if knn else (),
    )

"""Train the quark/gluon BDT tagger and measure it against nTracks alone.

Choices, and why:
- Labels: quark = |parton_label| in 1..5 (class 0), gluon = 21 (class 1), others dropped.
  Gluon is the positive class, so ``decision_function`` is the gluon log-odds and, like
  nTracks, *higher = more gluon-like*; one cut direction serves both taggers.
- Split by event number, even -> train, odd -> evaluate: both jets of an event land on the
  same side (no leakage through shared event kinematics), and the split does not depend on
  file order, chunking or worker count.
- Flat-pT weights: in each (class, pT bin) the |MC weights| are rescaled so every pT bin,
  and both classes inside it, carry the same total weight.  The classifier then cannot
  learn the steeply falling pT spectrum or the pT-dependent gluon fraction, only shapes at
  fixed pT, which is what the per-pT-bin calibration uses.  Jets outside the pT binning
  are outside the calibration and are not used.
- Negative MC weights (NLO generators): training uses |w|.  Gradient boosting needs
  non-negative sample weights (negative ones flip gradients and make hessians negative);
  using |w| can only make the discriminant less optimal, never bias the scale factors,
  which are measured on the score distribution afterwards.  The evaluation AUCs and ROC
  curves use the *signed* weights, i.e. the physical distributions.
- Determinism: ``early_stopping=False`` (its validation split is random) and a fixed
  ``random_state`` (it also seeds the binning subsample above 200k jets): the same columns
  and seed give the same trees and bit-identical scores.  Not the same model-file bytes:
  skops records save-time details, so a retrained model is a new file with a new SHA-256
  (see qgcal.inference.model_io).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qgcal.inference.model_io import ModelMeta, columns_fingerprint, save_model

__all__ = [
    "DEFAULT_FEATURES",
    "DEFAULT_PT_BINS_GEV",
    "BinMetrics",
    "TrainResult",
    "evaluate_scores",
    "flat_pt_weights",
    "train_tagger",
    "truth_class",
    "weighted_roc",
    "write_training_outputs",
]

log = logging.getLogger(__name__)

DEFAULT_FEATURES: tuple[str, ...] = ("pt", "nTracks", "trackWidth", "trackC1")
DEFAULT_PT_BINS_GEV: tuple[float, ...] = (500, 600, 800, 1000, 1200, 1500, 2000)
QUARK, GLUON, OTHER = 0, 1, -1


def truth_class(parton_label: np.ndarray) -> np.ndarray:
    """0 quark (|label| 1..5), 1 gluon (21), -1 anything else."""
    label = np.asarray(parton_label)
    out = np.full(label.shape, OTHER, dtype=np.int8)
    out[(np.abs(label) >= 1) & (np.abs(label) <= 5)] = QUARK
    out[label == 21] = GLUON
    return out


def flat_pt_weights(
    pt: np.ndarray, cls: np.ndarray, weight: np.ndarray, edges: Sequence[float] | np.ndarray
) -> np.ndarray:
    """|weight| rescaled so each (class, pT bin) has equal total; mean weight 1.

    Jets outside ``edges`` (or of class OTHER) get weight 0.
    """
    bins = np.digitize(pt, edges) - 1
    n_bins = len(edges) - 1
    abs_w = np.abs(np.asarray(weight, dtype=np.float64))
    out = np.zeros(len(pt), dtype=np.float64)
    for c in (QUARK, GLUON):
        for b in range(n_bins):
            sel = (cls == c) & (bins == b)
            total = abs_w[sel].sum()
            if total > 0:
                out[sel] = abs_w[sel] / total
    used = out > 0
    if used.any():
        out[used] *= used.sum() / out[used].sum()
    return out


def weighted_roc(scores: np.ndarray, is_gluon: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Quark efficiency and gluon rejection for cuts "score < c", and the AUC.

    Ties are grouped (nTracks is an integer), so the AUC equals
    P(s_g > s_q) + P(s_g = s_q) / 2 with weights, negative weights included.
    Returns (eff_quark, rej_gluon, auc); curves start at (0, 1) and end at (1, 0).
    """
    scores = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    g = np.asarray(is_gluon, dtype=bool)
    uniq, inverse = np.unique(scores, return_inverse=True)
    w_g = np.bincount(inverse, weights=np.where(g, w, 0.0), minlength=len(uniq))
    w_q = np.bincount(inverse, weights=np.where(g, 0.0, w), minlength=len(uniq))
    tot_g, tot_q = w_g.sum(), w_q.sum()
    if tot_g == 0 or tot_q == 0:
        return np.array([0.0, 1.0]), np.array([1.0, 0.0]), float("nan")
    eff_q = np.concatenate([[0.0], np.cumsum(w_q) / tot_q])
    rej_g = 1.0 - np.concatenate([[0.0], np.cumsum(w_g) / tot_g])
    auc = float(np.sum(np.diff(eff_q) * (rej_g[1:] + rej_g[:-1]) / 2.0))
    return eff_q, rej_g, auc


@dataclass(frozen=True)
class BinMetrics:
    """Evaluation-half performance in one pT bin (GeV)."""

    pt_low: float
    pt_high: float
    n_quark: int
    n_gluon: int
    auc_model: float
    auc_reference: float


@dataclass
class TrainResult:
    """The fitted model and what is needed to save it and judge it."""

    model: Any
    features: tuple[str, ...]
    pt_bins_gev: tuple[float, ...]
    reference_feature: str
    metrics: list[BinMetrics]
    roc: list[dict[str, tuple[np.ndarray, np.ndarray]]]
    training_sample_sha256: str
    training: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike[str]) -> ModelMeta:
        """Write the skops model and its metadata sidecar (see qgcal.inference.model_io)."""
        return save_model(
            self.model,
            path,
            features=self.features,
            training_sample_sha256=self.training_sample_sha256,
            class_names={QUARK: "quark", GLUON: "gluon"},
            training=self.training,
        )

    def metrics_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "reference": self.reference_feature,
            "score": "decision_function (gluon log-odds; higher = more gluon-like)",
            "evaluation": "odd event numbers, signed MC weights",
            "training_sample_sha256": self.training_sample_sha256,
            "pt_bins": [vars(m) for m in self.metrics],
        }


def _feature_matrix(columns: Mapping[str, np.ndarray], features: Sequence[str]) -> np.ndarray:
    missing = [f for f in features if f not in columns]
    if missing:
        raise ValueError(
            f"training features {missing} are not in the jet table (columns: {sorted(columns)}); "
            "fix the tagger's feature list in the config"
        )
    return np.ascontiguousarray(np.column_stack([columns[f] for f in features]), dtype=np.float32)


def train_tagger(
    columns: Mapping[str, np.ndarray],
    *,
    features: Sequence[str] = DEFAULT_FEATURES,
    pt_bins_gev: Sequence[float] = DEFAULT_PT_BINS_GEV,
    seed: int = 0,
    max_iter: int = 200,
    learning_rate: float = 0.1,
    max_leaf_nodes: int = 31,
    min_samples_leaf: int = 20,
    l2_regularization: float = 0.0,
    reference_feature: str = "nTracks",
) -> TrainResult:
    """Fit a HistGradientBoostingClassifier on even events; evaluate on odd events.

    ``columns`` is a jet table: feature columns, ``pt`` (GeV), ``event``, ``parton_label``
    and optionally ``weight`` (MC event weight; 1 when absent).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    edges = np.asarray(pt_bins_gev, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"pt_bins_gev must be increasing bin edges, got {list(pt_bins_gev)}")
    for name in ("pt", "event", "parton_label", reference_feature):
        if name not in columns:
            raise ValueError(f"jet table has no {name!r} column (columns: {sorted(columns)})")
    x = _feature_matrix(columns, features)
    n = len(columns["pt"])
    weight = np.asarray(columns["weight"], dtype=np.float64) if "weight" in columns else np.ones(n)
    used_names = sorted(
        {*features, "pt", "event", "parton_label", reference_feature} | ({"weight"} if "weight" in columns else set())
    )
    fingerprint = columns_fingerprint(columns, used_names)

    pt = np.asarray(columns["pt"], dtype=np.float64)
    cls = truth_class(columns["parton_label"])
    in_range = (pt >= edges[0]) & (pt < edges[-1]) & (cls != OTHER)
    even = np.asarray(columns["event"]) % 2 == 0
    train, evaluate = in_range & even, in_range & ~even
    if not (np.any(cls[train] == QUARK) and np.any(cls[train] == GLUON)):
        raise ValueError("training half (even events, in pT range) needs both quark and gluon jets")

    train_w = flat_pt_weights(pt[train], cls[train], weight[train], edges)
    hyper = {
        "max_iter": max_iter,
        "learning_rate": learning_rate,
        "max_leaf_nodes": max_leaf_nodes,
        "min_samples_leaf": min_samples_leaf,
        "l2_regularization": l2_regularization,
        "early_stopping": False,
        "random_state": seed,
    }
    model = HistGradientBoostingClassifier(**hyper)
    model.fit(x[train], cls[train], sample_weight=train_w)

    metrics, roc = _evaluate(model, x[evaluate], columns, evaluate, pt, cls, weight, edges, reference_feature)
    log.info("trained on %d jets, evaluated on %d", int(train.sum()), int(evaluate.sum()))
    return TrainResult(
        model=model,
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
            "n_out_of_pt_range_or_other": int((~in_range).sum()),
            "pt_bins_gev": [float(e) for e in edges],
            "weights": "flat in pT per class from |MC weight|",
            "seed": seed,
        },
    )


def _evaluate(
    model: Any,
    x_eval: np.ndarray,
    columns: Mapping[str, np.ndarray],
    evaluate: np.ndarray,
    pt: np.ndarray,
    cls: np.ndarray,
    weight: np.ndarray,
    edges: np.ndarray,
    reference_feature: str,
) -> tuple[list[BinMetrics], list[dict[str, tuple[np.ndarray, np.ndarray]]]]:
    score = model.decision_function(x_eval) if len(x_eval) else np.empty(0)
    return evaluate_scores(score, columns, evaluate, pt, cls, weight, edges, reference_feature)


def evaluate_scores(
    score: np.ndarray,
    columns: Mapping[str, np.ndarray],
    evaluate: np.ndarray,
    pt: np.ndarray,
    cls: np.ndarray,
    weight: np.ndarray,
    edges: np.ndarray,
    reference_feature: str,
) -> tuple[list[BinMetrics], list[dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """Per pT bin: AUC and ROC of the held-out ``score`` against the reference feature (e.g. nTracks),
    the same for every kind of trained tagger. Without the reference column its AUC is NaN."""
    has_ref = reference_feature in columns
    ref = np.asarray(columns[reference_feature], dtype=np.float64)[evaluate] if has_ref else np.zeros(len(score))
    bins = np.digitize(pt[evaluate], edges) - 1
    is_g, w = cls[evaluate] == GLUON, weight[evaluate]
    metrics, roc = [], []
    for b in range(len(edges) - 1):
        sel = bins == b
        eq_m, rg_m, auc_m = weighted_roc(score[sel], is_g[sel], w[sel])
        eq_r, rg_r, auc_r = weighted_roc(ref[sel], is_g[sel], w[sel])
        metrics.append(
            BinMetrics(
                pt_low=float(edges[b]),
                pt_high=float(edges[b + 1]),
                n_quark=int((sel & ~is_g).sum()),
                n_gluon=int((sel & is_g).sum()),
                auc_model=auc_m,
                auc_reference=auc_r if has_ref else float("nan"),
            )
        )
        roc.append({"model": (eq_m, rg_m), reference_feature: (eq_r, rg_r)})
    return metrics, roc


def write_training_outputs(
    result: TrainResult,
    out_dir: str | os.PathLike[str],
    *,
    tagger: str | None = None,
    label: str = "Simulation Internal",
) -> dict[str, Path]:
    """Write ``metrics.json`` and ``roc.png`` (one panel per pT bin) into ``out_dir``.

    The ROC curves show the gluon rejection 1/eps_g (log scale) against the quark
    efficiency eps_q, for cuts "score < c". ``tagger``: the config's name of the trained
    tagger, used as its legend label (default: the model file's stem, from an ``out_dir``
    named ``<stem>-training``, else "model"); ``label``: the ATLAS label text.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from qgcal.plotting import experiment_label, setup_matplotlib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    text = json.dumps(result.metrics_dict(), indent=2, allow_nan=True) + "\n"
    tmp = metrics_path.with_name(".metrics.json.tmp")
    tmp.write_text(text)
    os.replace(tmp, metrics_path)
    if tagger is None:
        tagger = out.name[: -len("-training")] if out.name.endswith("-training") else "model"

    setup_matplotlib()
    n_bins = len(result.metrics)
    ncols = min(3, n_bins)
    nrows = -(-n_bins // ncols)
    fig = Figure(figsize=(4.6 * ncols, 4.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, m, curves in zip(axes, result.metrics, result.roc):
        for key, style in (("model", "-"), (result.reference_feature, "--")):
            eff_q, rej_g = curves[key]
            eps_g = 1.0 - np.asarray(rej_g)
            ok = eps_g > 0
            with np.errstate(divide="ignore"):
                inv = 1.0 / eps_g[ok]
            auc = m.auc_model if key == "model" else m.auc_reference
            name = tagger if key == "model" else f"{key} alone"
            ax.plot(np.asarray(eff_q)[ok], inv, style, label=f"{name} (AUC {auc:.3f})")
        ax.set_title(f"{m.pt_low:g} < jet pT < {m.pt_high:g} GeV", fontsize=10)
        ax.set_xlabel("quark efficiency", fontsize=10)
        ax.set_ylabel("gluon rejection (1 / gluon efficiency)", fontsize=10)
        ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.set_ylim(1, None)
        ax.legend(loc="upper right", fontsize="small")
        experiment_label(ax, label, "MC, odd event numbers", loc="lower left")
    for ax in axes[n_bins:]:
        ax.set_visible(False)
    roc_path = out / "roc.png"
    fig.savefig(roc_path, dpi=100, metadata={"Software": None})
    return {"metrics": metrics_path, "roc": roc_path}

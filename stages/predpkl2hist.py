"""Pass 3 of 4, predpkl2hist: fill one set of weighted histograms per input file.

Per tagger: region (forward/central) x flavour (data, light, charm, bottom,
gluon, other) x jet pT x tagger value, Weight storage, filled with the RAW
event weight (slice normalisation happens at merge). Values outside a tagger's
declared ``valid`` range (sentinels such as Jet_qgl = -1) and NaN are left out of
that tagger's histograms and replicas and counted per tagger (``invalid_scores``,
``nan_scores`` in the artifact's metadata; the cut flow shows them): folding a
sentinel into the edge bin would pass it off as the most quark- or gluon-like jet.
Valid values outside the binning are folded into the first/last bin so that
every selected jet counts in the normalised shapes.

boost-histogram fills entries sequentially into each bin, so the per-file
result does not depend on how the jet table was chunked into row groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hist
import numpy as np

from qgcal.artifacts import config_hash, iter_parquet_batches, library_versions, read_parquet_provenance
from qgcal.bootstrap import ExactSum, dataset_key, poisson_replicas, replica_sums, to_arrays
from qgcal.config import Config, Tagger
from qgcal.contract import (
    FLAVOURS,
    LEAD_PT_HIST,
    REGION_FORWARD,
    REGIONS,
    REPLICA_CLASSES,
    flavour_codes,
    replica_class,
    tagger_column,
)
from qgcal.errors import ArtifactError
from qgcal.histset import HistSet, read_histset_meta, save_histset
from qgcal.passes import UpstreamPass
from qgcal.plan import FileTask

__all__ = ["PASS", "PredPkl2Hist", "book", "expected_provenance", "replica_shape", "run_file"]

NAME = "predpkl2hist"


def lead_pt_axis(cfg: Config) -> Any:
    lo, hi = cfg.pt_bins_gev[0], cfg.pt_bins_gev[-1]
    span = hi - lo
    return hist.axis.Regular(60, max(0.0, lo - 0.2 * span), hi + 0.2 * span, name="lead_pt")


def book(cfg: Config) -> HistSet:
    """Empty histograms for one file (also the template of every merge)."""
    hs: HistSet = {}
    for name, tagger in sorted(cfg.taggers.items()):
        hs[tagger_column(name)] = hist.Hist(
            hist.axis.IntCategory(list(REGIONS), name="region"),
            hist.axis.IntCategory(list(FLAVOURS), name="flavour"),
            hist.axis.Variable(cfg.pt_bins_gev, name="pt"),
            hist.axis.Variable(tagger.bins.bin_edges(), name="score", flow=False),
            storage=hist.storage.Weight(),
        )
    hs[LEAD_PT_HIST] = hist.Hist(
        hist.axis.IntCategory(list(FLAVOURS), name="flavour"),
        lead_pt_axis(cfg),
        storage=hist.storage.Weight(),
    )
    return hs


def pass_config(cfg: Config) -> dict[str, Any]:
    return {
        "bootstrap": cfg.bootstrap,
        "replica_format": "exact-limbs-32",  # per-file replica sums (qgcal.bootstrap.ExactSum)
        "pt_bins_gev": cfg.pt_bins_gev,
        "taggers": {n: t.bins.bin_edges() for n, t in sorted(cfg.taggers.items())},
        "valid": {n: t.valid for n, t in sorted(cfg.taggers.items()) if t.valid is not None},
        "truth": cfg.truth.model_dump(exclude={"other", "other_norm", "other_scale", "require_positive"}),
    }


def expected_provenance(cfg: Config, upstream: Path) -> dict[str, Any]:
    up = read_parquet_provenance(upstream)
    return {
        "pass": NAME,
        "config_hash": config_hash(pass_config(cfg)),
        "inputs": {"pkl2predpkl": config_hash(up) if up else "missing"},
    }


def _fold(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Clip into [first edge, last edge) so under/overflow land in the edge bins."""
    hi = np.nextafter(edges[-1], -np.inf)
    return np.clip(values, edges[0], hi)


def valid_mask(tagger: Tagger, score: np.ndarray) -> np.ndarray:
    """Jets whose value of ``tagger`` is usable: not NaN and inside its ``valid`` range (inclusive)."""
    ok = ~np.isnan(score)
    if tagger.valid is not None:
        lo, hi = tagger.valid
        ok &= (score >= lo) & (score <= hi)
    return ok


def replica_shape(cfg: Config, tagger: str) -> tuple[int, int, int, int, int]:
    """(region, class, pT bin, score bin, replica) of a replica array."""
    n_score = len(cfg.taggers[tagger].bins.bin_edges()) - 1
    return (2, REPLICA_CLASSES, len(cfg.pt_bins_gev) - 1, n_score, cfg.bootstrap)


def _fill_replicas(
    cfg: Config,
    reps: dict[str, ExactSum],
    table: Any,
    region: np.ndarray,
    pt: np.ndarray,
    weight: np.ndarray,
    flav: np.ndarray,
    dataset: str,
    scores: Mapping[str, np.ndarray],
    valid: Mapping[str, np.ndarray],
) -> None:
    """Add this row group's jets to the exact replica sums of every tagger.

    ``dataset`` keys the Poisson draws (:func:`qgcal.bootstrap.dataset_key`: sample and slice).
    The sums are exact whatever the weight scale (no quantum), so any split of the events
    into files or chunks gives the same merged replicas.
    ``scores`` and ``valid``: per tagger, the values and the jets whose value is usable
    (:func:`valid_mask`, NaN excluded); the others are left out.
    """
    n = cfg.bootstrap
    events = table.column("event").to_numpy()
    runs = table.column("run").to_numpy()
    poisson = poisson_replicas(dataset, runs, events, n)
    pt_idx = np.searchsorted(np.asarray(cfg.pt_bins_gev), pt, side="right") - 1
    cls = replica_class(flav)
    for name, tagger in cfg.taggers.items():
        shape = replica_shape(cfg, name)
        edges = np.asarray(tagger.bins.bin_edges())
        score = scores[name]
        ok = valid[name] & (pt_idx >= 0) & (pt_idx < shape[2])
        s_idx = np.clip(np.searchsorted(edges, _fold(score[ok], list(edges)), side="right") - 1, 0, shape[3] - 1)
        flat = np.ravel_multi_index((region[ok], cls[ok], pt_idx[ok], s_idx), shape[:4])
        try:
            sums = replica_sums(flat, weight[ok], poisson[ok], int(np.prod(shape[:4])))
        except ValueError as err:
            raise ArtifactError(f"bootstrap replicas of {dataset}: {err}; check the event weights") from None
        reps[name] += sums.reshaped(shape)


def run_file(cfg: Config, upstream: Path, out_path: Path, *, is_data: bool, carry: dict[str, Any]) -> int:
    """Fill and save; ``carry`` (sample, slice, sumw, cut flow) goes into the artifact's metadata."""
    if not upstream.is_file():
        raise ArtifactError(f"{upstream}: pkl2predpkl artifact missing; rerun pkl2predpkl")
    provenance = expected_provenance(cfg, upstream)
    hs = book(cfg)
    reps = {name: ExactSum.zeros(replica_shape(cfg, name)) for name in cfg.taggers} if cfg.bootstrap else {}
    n_nan = {name: 0 for name in cfg.taggers}
    n_invalid = {name: 0 for name in cfg.taggers}  # not NaN but outside the tagger's valid range
    n_jets = 0
    truth = cfg.truth
    dataset = dataset_key(carry["sample"], carry["slice"])
    for table in iter_parquet_batches(upstream):
        region = table.column("region").to_numpy().astype(np.int64)
        pt = table.column("pt").to_numpy().astype(np.float64)
        weight = table.column("weight").to_numpy()
        flav = flavour_codes(
            table.column("parton_label").to_numpy(), quark=truth.quark, gluon=truth.gluon, is_data=is_data
        )
        valid: dict[str, np.ndarray] = {}
        scores: dict[str, np.ndarray] = {}
        for name, tagger in cfg.taggers.items():
            score = scores[name] = table.column(tagger_column(name)).to_numpy()
            ok = valid[name] = valid_mask(tagger, score)
            nan = int(np.isnan(score).sum())
            n_nan[name] += nan
            n_invalid[name] += int(len(score) - ok.sum()) - nan
            hs[tagger_column(name)].fill(
                region=region[ok],
                flavour=flav[ok],
                pt=pt[ok],
                score=_fold(score[ok], tagger.bins.bin_edges()),
                weight=weight[ok],
            )
        fwd = region == REGION_FORWARD  # one row per event: the leading-jet pT spectrum
        hs[LEAD_PT_HIST].fill(
            flavour=flav[fwd], lead_pt=table.column("lead_pt").to_numpy()[fwd].astype(np.float64), weight=weight[fwd]
        )
        if reps:
            _fill_replicas(cfg, reps, table, region, pt, weight, flav, dataset, scores, valid)
        n_jets += table.num_rows
    meta = dict(provenance)
    meta.update(
        {
            "carry": carry,
            "jets": n_jets,
            "nan_scores": n_nan,
            "invalid_scores": n_invalid,
            "versions": library_versions(),
        }
    )
    save_histset(out_path, hs, meta, extra=to_arrays(reps))
    return n_jets


def carry_for(task: FileTask, upstream: Path) -> dict[str, Any]:
    """What the merge needs besides the histograms: the slice, its sum of weights, the cut flow."""
    up = (read_parquet_provenance(upstream) or {}).get("carry") or {}
    return {
        "sample": task.sample,
        "slice": task.slice,
        "file": Path(task.path).name,
        "sumw": up.get("sumw", 0.0),
        "cutflow": up.get("cutflow", {}),
        "cutflow_sumw": up.get("cutflow_sumw") or [],
    }


class PredPkl2Hist(UpstreamPass):
    """The :class:`qgcal.passes.FilePass` of pass 3: one histogram set per file task."""

    name = NAME
    ext = ".npz"

    def provenance_for(self, cfg: Config, upstream: Path) -> dict[str, Any]:
        return expected_provenance(cfg, upstream)

    def read_provenance(self, path: Path) -> dict[str, Any] | None:
        return read_histset_meta(path)

    def run_one(self, cfg: Config, task: FileTask, upstream: Path, out: Path) -> int:
        carry = carry_for(task, upstream)
        return run_file(cfg, upstream, out, is_data=task.kind == "data", carry=carry) // 2


PASS = PredPkl2Hist()

"""Pass 3 of 4, predpkl2hist: fill one set of weighted histograms per input file.

Per tagger: region (forward/central) x flavour (data, light, charm, bottom,
gluon, other) x jet pT x tagger value, Weight storage, filled with the RAW
event weight (slice normalisation happens at merge). Tagger values outside the
binning are folded into the first/last bin so that every selected jet counts
in the normalised shapes; NaN values are dropped and counted.

boost-histogram fills entries sequentially into each bin, so the per-file
result does not depend on how the jet table was chunked into row groups.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hist
import numpy as np

from qgcal.artifacts import config_hash, iter_parquet_batches, library_versions, read_parquet_provenance
from qgcal.bootstrap import poisson_replicas, quantise, replica_bincount
from qgcal.config import Config
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
        "pt_bins_gev": cfg.pt_bins_gev,
        "taggers": {n: t.bins.bin_edges() for n, t in sorted(cfg.taggers.items())},
        "truth": cfg.truth.model_dump(),
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


def replica_shape(cfg: Config, tagger: str) -> tuple[int, int, int, int, int]:
    """(region, class, pT bin, score bin, replica) of a replica array."""
    n_score = len(cfg.taggers[tagger].bins.bin_edges()) - 1
    return (2, REPLICA_CLASSES, len(cfg.pt_bins_gev) - 1, n_score, cfg.bootstrap)


def _fill_replicas(
    cfg: Config,
    reps: dict[str, np.ndarray],
    table: Any,
    region: np.ndarray,
    pt: np.ndarray,
    weight: np.ndarray,
    flav: np.ndarray,
    sample: str,
) -> None:
    """Add this row group's jets to the exact (int64) replica arrays of every tagger."""
    n = cfg.bootstrap
    events = table.column("event").to_numpy()
    runs = table.column("run").to_numpy()
    poisson = poisson_replicas(sample, runs, events, n)
    qweight = quantise(weight)
    pt_idx = np.searchsorted(np.asarray(cfg.pt_bins_gev), pt, side="right") - 1
    cls = replica_class(flav)
    for name, tagger in cfg.taggers.items():
        shape = replica_shape(cfg, name)
        edges = np.asarray(tagger.bins.bin_edges())
        score = table.column(tagger_column(name)).to_numpy()
        ok = ~np.isnan(score) & (pt_idx >= 0) & (pt_idx < shape[2])
        s_idx = np.clip(np.searchsorted(edges, _fold(score[ok], list(edges)), side="right") - 1, 0, shape[3] - 1)
        flat = np.ravel_multi_index((region[ok], cls[ok], pt_idx[ok], s_idx), shape[:4])
        counts = replica_bincount(flat, qweight[ok], poisson[ok], int(np.prod(shape[:4])))
        reps[name] += counts.reshape(shape)


def run_file(cfg: Config, upstream: Path, out_path: Path, *, is_data: bool, carry: dict[str, Any]) -> int:
    """Fill and save; ``carry`` (sample, slice, sumw, cut flow) goes into the artifact's metadata."""
    if not upstream.is_file():
        raise ArtifactError(f"{upstream}: pkl2predpkl artifact missing; rerun pkl2predpkl")
    provenance = expected_provenance(cfg, upstream)
    hs = book(cfg)
    reps = {name: np.zeros(replica_shape(cfg, name), dtype=np.int64) for name in cfg.taggers} if cfg.bootstrap else {}
    n_nan = {name: 0 for name in cfg.taggers}
    n_jets = 0
    truth = cfg.truth
    for table in iter_parquet_batches(upstream):
        region = table.column("region").to_numpy().astype(np.int64)
        pt = table.column("pt").to_numpy().astype(np.float64)
        weight = table.column("weight").to_numpy()
        flav = flavour_codes(
            table.column("parton_label").to_numpy(), quark=truth.quark, gluon=truth.gluon, is_data=is_data
        )
        for name, tagger in cfg.taggers.items():
            score = table.column(tagger_column(name)).to_numpy()
            ok = ~np.isnan(score)
            n_nan[name] += int((~ok).sum())
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
            _fill_replicas(cfg, reps, table, region, pt, weight, flav, carry["sample"])
        n_jets += table.num_rows
    meta = dict(provenance)
    meta.update({"carry": carry, "jets": n_jets, "nan_scores": n_nan, "versions": library_versions()})
    save_histset(out_path, hs, meta, extra={f"replicas.{k}": v for k, v in reps.items()})
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

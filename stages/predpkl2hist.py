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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest
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
    same_bits,
    tagger_column,
)
from qgcal.errors import ArtifactError
from qgcal.histset import HistSet, read_histset_meta, save_histset
from qgcal.passes import UpstreamPass
from qgcal.plan import FileTask

__all__ = [
    "PASS",
    "HistJob",
    "PredPkl2Hist",
    "book",
    "expected_provenance",
    "replica_shape",
    "run_file",
    "run_files",
]

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


# the columns every derived per-jet array depends on, besides one tagger's values (and not the weight)
_BASE_COLUMNS = ("region", "pt", "parton_label", "lead_pt", "event", "run")
# replica counts of a row group are converted to float64 once when at most this many numbers
# (the product in replica_sums multiplies float64; shared by the weight variations of a file)
_FLOAT_REPLICAS_MAX = 1 << 22


@dataclass
class _TaggerReplicas:
    """One tagger's jets in the replica sums of a row group."""

    jets: np.ndarray  # usable value AND jet pT inside the binning
    flat_bin: np.ndarray  # of those jets, into replica_shape(...)[:4]
    counts: np.ndarray  # their Poisson counts (uint8, or float64 when small)


@dataclass
class _TaggerJets:
    """One tagger's jets of a row group: those filled, their folded values, their replica bins."""

    fill: np.ndarray  # usable value (valid_mask): filled into the histograms
    region: np.ndarray
    flavour: np.ndarray
    pt: np.ndarray
    score: np.ndarray  # folded into the binning
    replicas: _TaggerReplicas | None  # None without replicas (bootstrap 0): their bin searches are skipped
    nan: int
    invalid: int  # not NaN but outside the tagger's valid range


@dataclass
class _JetReplicas:
    """The replicas' inputs of a row group's jets."""

    pt_idx: np.ndarray  # jet pT bin (-1 or len(bins) - 1 outside the binning)
    replica_class: np.ndarray
    poisson: np.ndarray  # (jets, bootstrap) Poisson counts


@dataclass
class _Jets:
    """The per-jet arrays of a row group that no tagger's values change (nor the weight)."""

    region: np.ndarray
    pt: np.ndarray
    flavour: np.ndarray
    replicas: _JetReplicas | None  # None without replicas (bootstrap 0)
    fwd: np.ndarray  # the forward jet of each event: the leading-jet pT spectrum
    flavour_fwd: np.ndarray
    lead_pt_fwd: np.ndarray


@dataclass
class _RowGroup:
    """What one row group of a jet table gives that does not depend on the event weight.

    The weight variations of a file (PDF sets, scale weights) select the same jets with the same
    values and differ in the weight column only; a branch variation changes some taggers'
    values. A fused job derives each piece once from bit-identical columns and fills every
    variation's histograms with its own weights.
    """

    key: tuple[str, bool]  # dataset (keys the Poisson draws) and whether it is data
    columns: dict[str, np.ndarray]  # the inputs, compared before anything is shared
    jets: _Jets
    taggers: dict[str, _TaggerJets]
    rows: int


def _derive(cfg: Config, table: Any, key: tuple[str, bool], like: Sequence[_RowGroup]) -> _RowGroup:
    """The weight-independent arrays of ``table``, taken from a row group in ``like`` wherever
    they were derived from bit-identical columns (the same results, computed once)."""
    columns = {c: table.column(c).to_numpy() for c in _BASE_COLUMNS}
    for name in cfg.taggers:
        columns[tagger_column(name)] = table.column(tagger_column(name)).to_numpy()
    ref = next(
        (r for r in like if r.key == key and all(same_bits(columns[c], r.columns[c]) for c in _BASE_COLUMNS)),
        None,
    )
    jets = ref.jets if ref is not None else _jets(cfg, columns, key)
    taggers = {
        name: (
            ref.taggers[name]
            if ref is not None and same_bits(columns[tagger_column(name)], ref.columns[tagger_column(name)])
            else _tagger_jets(cfg, name, columns[tagger_column(name)], jets)
        )
        for name in sorted(cfg.taggers)
    }
    return _RowGroup(key, columns, jets, taggers, table.num_rows)


def _jets(cfg: Config, columns: Mapping[str, np.ndarray], key: tuple[str, bool]) -> _Jets:
    dataset, is_data = key
    truth = cfg.truth
    region = columns["region"].astype(np.int64)
    pt = columns["pt"].astype(np.float64)
    flav = flavour_codes(columns["parton_label"], quark=truth.quark, gluon=truth.gluon, is_data=is_data)
    fwd = region == REGION_FORWARD  # one row per event
    replicas = None
    if cfg.bootstrap:
        replicas = _JetReplicas(
            pt_idx=np.searchsorted(np.asarray(cfg.pt_bins_gev), pt, side="right") - 1,
            replica_class=replica_class(flav),
            poisson=poisson_replicas(dataset, columns["run"], columns["event"], cfg.bootstrap),
        )
    return _Jets(
        region=region,
        pt=pt,
        flavour=flav,
        replicas=replicas,
        fwd=fwd,
        flavour_fwd=flav[fwd],
        lead_pt_fwd=columns["lead_pt"][fwd].astype(np.float64),
    )


def _tagger_jets(cfg: Config, name: str, score: np.ndarray, jets: _Jets) -> _TaggerJets:
    tagger = cfg.taggers[name]
    edges = tagger.bins.bin_edges()
    ok = valid_mask(tagger, score)
    nan = int(np.isnan(score).sum())
    replicas = None
    if jets.replicas is not None:
        jr = jets.replicas
        shape = replica_shape(cfg, name)
        rep = ok & (jr.pt_idx >= 0) & (jr.pt_idx < shape[2])
        s_idx = np.clip(np.searchsorted(edges, _fold(score[rep], edges), side="right") - 1, 0, shape[3] - 1)
        counts = jr.poisson[rep]
        replicas = _TaggerReplicas(
            jets=rep,
            flat_bin=np.ravel_multi_index((jets.region[rep], jr.replica_class[rep], jr.pt_idx[rep], s_idx), shape[:4]),
            counts=counts.astype(np.float64) if counts.size <= _FLOAT_REPLICAS_MAX else counts,
        )
    return _TaggerJets(
        fill=ok,
        region=jets.region[ok],
        flavour=jets.flavour[ok],
        pt=jets.pt[ok],
        score=_fold(score[ok], edges),
        replicas=replicas,
        nan=nan,
        invalid=int(len(score) - ok.sum()) - nan,
    )


@dataclass(frozen=True)
class HistJob:
    """One artifact to fill: the pkl2predpkl artifact it reads and where it writes."""

    upstream: Path
    out: Path
    is_data: bool
    carry: dict[str, Any]  # sample, slice, sumw, cut flow: into the artifact's metadata


class _Filling:
    """One artifact being filled: its histograms, exact replica sums and counts."""

    def __init__(self, cfg: Config, job: HistJob) -> None:
        self.job = job
        self.key = (dataset_key(job.carry["sample"], job.carry["slice"]), job.is_data)
        self.provenance = expected_provenance(cfg, job.upstream)
        self.hs = book(cfg)
        self.reps = {name: ExactSum.zeros(replica_shape(cfg, name)) for name in cfg.taggers} if cfg.bootstrap else {}
        self.nan = {name: 0 for name in cfg.taggers}
        self.invalid = {name: 0 for name in cfg.taggers}  # not NaN but outside the tagger's valid range
        self.jets = 0

    def add(self, cfg: Config, group: _RowGroup, weight: np.ndarray) -> None:
        """Fill this row group with this artifact's weights.

        The replica sums are exact whatever the weight scale (no quantum), so any split of the
        events into files or row groups gives the same merged replicas; the Poisson draws are
        keyed by the dataset (:func:`qgcal.bootstrap.dataset_key`: sample and slice).
        """
        for name in cfg.taggers:
            tj = group.taggers[name]
            self.nan[name] += tj.nan
            self.invalid[name] += tj.invalid
            self.hs[tagger_column(name)].fill(
                region=tj.region, flavour=tj.flavour, pt=tj.pt, score=tj.score, weight=weight[tj.fill]
            )
        jets = group.jets
        self.hs[LEAD_PT_HIST].fill(flavour=jets.flavour_fwd, lead_pt=jets.lead_pt_fwd, weight=weight[jets.fwd])
        for name, acc in self.reps.items():
            tr = group.taggers[name].replicas
            assert tr is not None  # derived whenever replicas are booked
            shape = replica_shape(cfg, name)
            try:
                sums = replica_sums(tr.flat_bin, weight[tr.jets], tr.counts, int(np.prod(shape[:4])))
            except ValueError as err:
                raise ArtifactError(f"bootstrap replicas of {self.key[0]}: {err}; check the event weights") from None
            acc.take(sums.reshaped(shape))
        self.jets += group.rows

    def save(self) -> int:
        meta = dict(self.provenance)
        meta.update(
            {
                "carry": self.job.carry,
                "jets": self.jets,
                "nan_scores": self.nan,
                "invalid_scores": self.invalid,
                "versions": library_versions(),
            }
        )
        save_histset(self.job.out, self.hs, meta, extra=to_arrays(self.reps))
        return self.jets


def run_files(cfg: Config, jobs: Sequence[HistJob]) -> list[int]:
    """Fill and save every job's artifact, reading their row groups in step; the jets of each.

    Jobs reading the same jets (the weight variations of one file) share everything derived
    from bit-identical columns (:func:`_derive`), and each artifact is the same bytes as when
    filled alone. Nothing is written unless every job's histograms were filled.
    """
    for job in jobs:
        if not job.upstream.is_file():
            raise ArtifactError(f"{job.upstream}: pkl2predpkl artifact missing; rerun pkl2predpkl")
    fillings = [_Filling(cfg, job) for job in jobs]
    for tables in zip_longest(*(iter_parquet_batches(job.upstream) for job in jobs)):
        derived: list[_RowGroup] = []
        for filling, table in zip(fillings, tables, strict=True):
            if table is None:  # this artifact has fewer row groups than another one
                continue
            group = _derive(cfg, table, filling.key, derived)
            derived.append(group)
            filling.add(cfg, group, table.column("weight").to_numpy())
    return [f.save() for f in fillings]


def run_file(cfg: Config, upstream: Path, out_path: Path, *, is_data: bool, carry: dict[str, Any]) -> int:
    """Fill and save one artifact (:func:`run_files` of one job); the jets filled."""
    return run_files(cfg, [HistJob(upstream, out_path, is_data, carry)])[0]


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
    """The :class:`qgcal.passes.FilePass` of pass 3: one histogram set per file task, the tasks
    reading one (file, tree) filled together."""

    name = NAME
    ext = ".npz"

    def provenance_for(self, cfg: Config, upstream: Path) -> dict[str, Any]:
        return expected_provenance(cfg, upstream)

    def read_provenance(self, path: Path) -> dict[str, Any] | None:
        return read_histset_meta(path)

    def run_many(
        self, cfg: Config, tasks: Sequence[FileTask], upstreams: Sequence[Path], outs: Sequence[Path]
    ) -> list[int]:
        jobs = [
            HistJob(up, out, t.kind == "data", carry_for(t, up))
            for t, up, out in zip(tasks, upstreams, outs, strict=True)
        ]
        return run_files(cfg, jobs)


PASS = PredPkl2Hist()

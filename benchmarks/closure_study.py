"""Closure study of the quoted statistical error: many small generated samples against known truth.

Run:  python benchmarks/closure_study.py [--seeds 50] [--events 200000] [--bootstrap 50] [--workers 1]
                                         [--out /tmp/closure-study] [--plot docs/closure_study.png]
      python benchmarks/closure_study.py --from-rows /tmp/closure-study/closure_rows.jsonl  (re-analyse only)

For each seed a sample is generated (``qgcal generate``: pseudo-data whose quark and gluon
shapes differ from the MC by known factors), and calibrated twice with the demo config
(nominal only, branch taggers), in two statistics settings from the same files:

* ``mc4x``:  the MC has 4 times the data statistics (one of four data files);
* ``mc0.25x``: the MC has 1/4 of the data statistics (one of four files per MC slice).

The truth is independent of qgcal: one large sample (``--truth-events``, its own seed) is read
with the plain uproot/numpy selection of tests/closure_truth.py, and the true SF of a record is
true eps(data) / true eps(MC) of forward jets, from the truth labels, at the cut the calibration
chose for that seed. Per setting and pT bin, pooled over taggers, working points and partons
(unflagged records only, and cells defined in at least half of the seeds):

* ``spread_over_stat``: sqrt(mean over cells of var_seeds(SF - true SF) / mean_seeds(stat)^2);
* ``pull_width``: the standard deviation of (SF - true SF) / stat over all seeds and cells;
* ``pull_width_robust``: half of the 15.87-84.13 % interval of the same pulls (1 for a unit
  Gaussian; insensitive to a few tail seeds, which dominate a standard deviation);
* ``pull_mean``.

Both widths should be 1 when the quoted ``stat`` is right. Every number has an ``_err``: the
standard deviation over a bootstrap of the seeds (whole seeds are resampled, since the 16 cells
of a bin share their samples, so their pulls are correlated and a 1/sqrt(2n) would be too small).

The same numbers for other definitions of the error, from the same samples (``stats``):
``bootstrap`` (the quoted ``stat``, bias-corrected), ``bootstrap_plain`` (``stat_bootstrap_plain``,
the replicas' spread before the correction), ``analytic`` (``stat_analytic``), and from each record's
bootstrap replicas (``results/nominal/replicas.npz``) ``replica_rms`` (plain standard deviation)
and ``replica_p68`` (half-width of the central 68.27 % of the replicas). ``diagnostics`` (quoted
stat) separate candidate causes: cells whose cut is the same in every seed or not, per tagger,
flagged records added, cells by relative error (all pT bins), and ``untruncated``: spread / stat
with the records that have no SF (extracted data efficiency <= 0) counted as eps_d / eps_m.
``--toy`` prints the bootstrap's own bias on a ratio, without qgcal (:func:`toy_ratio_bias`);
``--toy-kappa`` the bias correction of the quoted stat on histogram toys (:func:`toy_histogram_correction`).
``--clean`` deletes each seed's files once its rows are written (300 seeds need ~100 GB otherwise).

Writes ``<out>/closure_study.json``, ``<out>/closure_rows.jsonl`` (every record with its
replicas, one line per seed and setting as they finish, for ``--from-rows``) and, with
``--plot``, a figure. Deterministic for given arguments.
docs/physics.md quotes a run.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # closure_truth: the independent truth of the closure tests

SETTINGS = ("mc4x", "mc0.25x")
STATS = ("bootstrap", "bootstrap_plain", "analytic", "replica_rms", "replica_p68")
METRICS = ("spread_over_stat", "spread_over_stat_robust", "pull_width", "pull_width_robust", "pull_mean")
#: one-sigma quantiles of a Gaussian
Q_LO, Q_HI = 100 * 0.158655, 100 * 0.841345
SEED_BOOTSTRAP = 200
#: classes of a cell's relative SF error (upper bounds)
REL_CLASSES = (("a: <0.08", 0.08), ("b: 0.08-0.15", 0.15), ("c: 0.15-0.3", 0.3), ("d: >0.3", math.inf))


def _config(sample: Path, out: Path, setting: str, bootstrap: int, min_neff: float | None = None) -> Path:
    from qgcal.configs import demo_config_text

    doc = yaml.safe_load(demo_config_text())
    truth = json.loads((sample / "truth.json").read_text())
    doc["taggers"] = {k: v for k, v in doc["taggers"].items() if v["kind"] != "model"}
    doc["variations"] = {}
    doc["plots"] = {"enabled": False}
    doc["bootstrap"] = bootstrap
    doc["output"] = str(out)
    if min_neff is not None:
        doc["calibration"]["reweighting_min_mc_neff"] = min_neff
    data_files = sorted((sample / "data").glob("*.root"))
    if setting == "mc4x":
        doc["samples"]["data"]["files"] = [str(data_files[0])]
        doc["lumi_pb"] = truth["luminosity_pb"] / len(data_files)
    else:
        doc["samples"]["data"]["files"] = [str(p) for p in data_files]
        doc["lumi_pb"] = truth["luminosity_pb"]
        for name, sl in doc["samples"]["pythia"]["slices"].items():
            first = min((sample / "mc" / "pythia" / name).glob("*.root"))
            sl["files"] = [str(first)]
    # the demo's relative paths (sample/...) resolve against the seed's directory
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Truth:
    """True efficiencies of forward jets from one large independent sample, per (tagger, pT bin, cut, parton)."""

    def __init__(self, sample: Path) -> None:
        import closure_truth as ct

        self.ct = ct
        self.data = ct.forward_jets(sample, "data")
        self.mc = ct.forward_jets(sample, "pythia")
        self.cache: dict[tuple[Any, ...], tuple[float, float]] = {}

    def effs(self, rec: dict[str, Any]) -> tuple[float, float]:
        """(true eps of the pseudo-data, true eps of the MC) at the record's cut."""
        args = (rec["tagger"], rec["pt_low"], rec["pt_high"], rec["cut"], rec["quark_side"], rec["parton"])
        if args not in self.cache:
            self.cache[args] = (self.ct.true_efficiency(self.data, *args), self.ct.true_efficiency(self.mc, *args))
        return self.cache[args]


def half_width68(x: np.ndarray) -> float:
    """Half of the central 68.27 % interval: the standard deviation for a Gaussian, robust to tails."""
    lo, hi = np.percentile(x, [Q_LO, Q_HI])
    return float(hi - lo) / 2.0


def _replica_stats(reps: Sequence[float] | None) -> dict[str, float]:
    """The replica-based error definitions of one record (NaN without replicas)."""
    v = np.asarray([] if reps is None else reps, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return {"replica_rms": math.nan, "replica_p68": math.nan}
    return {"replica_rms": float(np.std(v, ddof=1)), "replica_p68": half_width68(v)}


def _row_stat(r: dict[str, Any], stat: str) -> float:
    if stat == "bootstrap":
        return float(r["stat"])
    if stat in ("analytic", "bootstrap_plain"):
        v = r.get(f"stat_{stat}")
        return math.nan if v is None else float(v)
    return float(r[stat])


Matrices = dict[float, tuple[np.ndarray, np.ndarray]]  # pT low -> (diff, stat), seeds x cells, NaN = missing


def _matrices(
    rows: Sequence[dict[str, Any]],
    seeds: Sequence[int],
    stat: str,
    keep: Callable[[dict[str, Any]], bool],
    group: Callable[[dict[str, Any]], Any] = lambda r: r["pt_low"],
) -> Matrices:
    """Per group (pT bin), diff and stat as (seed x cell) matrices; cells defined in at least half of the seeds."""
    seed_index = {s: i for i, s in enumerate(seeds)}
    cells: dict[Any, dict[tuple[str, float, str, float], dict[int, tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for r in rows:
        if not keep(r):
            continue
        err = _row_stat(r, stat)
        if not (math.isfinite(err) and err > 0):
            continue
        cell = (r["tagger"], r["working_point"], r["parton"], r["pt_low"])
        cells[group(r)][cell][seed_index[r["seed"]]] = (r["diff"], err)
    out: Matrices = {}
    for key in sorted(cells):
        good = [c for c in sorted(cells[key]) if len(cells[key][c]) >= max(3, len(seeds) // 2)]
        d = np.full((len(seeds), len(good)), np.nan)
        s = np.full((len(seeds), len(good)), np.nan)
        for j, c in enumerate(good):
            for i, (dv, sv) in cells[key][c].items():
                d[i, j], s[i, j] = dv, sv
        out[key] = (d, s)
    return out


def _metrics(d: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """The study's numbers for one bin from its (seed x cell) matrices (NaN = a missing record)."""
    cols = np.isfinite(d).sum(axis=0) >= 3
    pulls = (d / s)[np.isfinite(d)]
    if len(pulls) < 2 or not cols.any():
        return dict.fromkeys(METRICS, math.nan)
    dc, sc = d[:, cols], s[:, cols]
    mean_s = np.nanmean(sc, axis=0)
    ratio2 = np.nanvar(dc, axis=0, ddof=1) / mean_s**2
    lo, hi = np.nanpercentile(dc, [Q_LO, Q_HI], axis=0)
    ratio2_robust = (0.5 * (hi - lo) / mean_s) ** 2
    return {
        "spread_over_stat": math.sqrt(float(np.mean(ratio2))),
        "spread_over_stat_robust": math.sqrt(float(np.mean(ratio2_robust))),
        "pull_width": float(np.std(pulls, ddof=1)),
        "pull_width_robust": half_width68(pulls),
        "pull_mean": float(np.mean(pulls)),
    }


def _with_errors(d: np.ndarray, s: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """The bin's numbers, each with the standard deviation over a bootstrap of whole seeds."""
    out: dict[str, Any] = dict(_metrics(d, s))
    rng = np.random.default_rng(seed)
    n = d.shape[0]
    draws = [_metrics(d[idx], s[idx]) for idx in (rng.integers(0, n, n) for _ in range(n_boot))]
    for m in METRICS:
        vals = np.array([x[m] for x in draws])
        vals = vals[np.isfinite(vals)]
        out[f"{m}_err"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
    out["records"] = int(np.isfinite(d).sum())
    out["cells"] = int(d.shape[1])
    return out


def _unflagged(r: dict[str, Any]) -> bool:
    return not r["flags"] and r["diff"] is not None


def _defined(r: dict[str, Any]) -> bool:
    return r["diff"] is not None


def _untruncated(rows: Sequence[dict[str, Any]], seeds: Sequence[int], n_boot: int) -> dict[str, Any]:
    """Spread / mean stat per pT bin with and without the records whose SF is undefined.

    Where the extracted data efficiency is <= 0 the record has no SF (flagged): with relative
    errors near 100 % that removes the lower tail of the SF distribution and narrows the spread
    of what is left. Here every record with a cut counts with eps_d / eps_m (<= 0 too) against
    the cell's mean quoted stat; ``without_sf`` is the fraction of records it adds.
    """
    seed_index = {s: i for i, s in enumerate(seeds)}
    cells: dict[float, dict[tuple[Any, ...], dict[int, tuple[float, float, float]]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for r in rows:
        stat = math.nan if r["diff"] is None else float(r["stat"])
        diff = math.nan if r["diff"] is None else float(r["diff"])
        cell = (r["tagger"], r["working_point"], r["parton"])
        cells[r["pt_low"]][cell][seed_index[r["seed"]]] = (float(r["diff_raw"]), diff, stat)
    out: dict[str, Any] = {}
    rng = np.random.default_rng(4000)
    for pt_low in sorted(cells):
        good = [c for c in sorted(cells[pt_low]) if len(cells[pt_low][c]) >= max(3, len(seeds) // 2)]
        m = np.full((3, len(seeds), len(good)), np.nan)
        for j, c in enumerate(good):
            for i, v in cells[pt_low][c].items():
                m[:, i, j] = v

        def ratios(x: np.ndarray) -> tuple[float, float]:
            ok = np.sum(np.isfinite(x[1]), axis=0) >= 3
            mean_s = np.nanmean(x[2][:, ok], axis=0)
            raw = np.nanvar(x[0][:, ok], axis=0, ddof=1) / mean_s**2
            defined = np.nanvar(x[1][:, ok], axis=0, ddof=1) / mean_s**2
            return math.sqrt(float(np.mean(defined))), math.sqrt(float(np.mean(raw)))

        value = ratios(m)
        draws = np.array([ratios(m[:, rng.integers(0, len(seeds), len(seeds))]) for _ in range(n_boot)])
        n_all = int(np.isfinite(m[0]).sum())
        out[f"{pt_low:g}"] = {
            "spread_over_stat_defined": value[0],
            "spread_over_stat_all": value[1],
            "spread_over_stat_defined_err": float(np.nanstd(draws[:, 0], ddof=1)),
            "spread_over_stat_all_err": float(np.nanstd(draws[:, 1], ddof=1)),
            "without_sf": (n_all - int(np.isfinite(m[1]).sum())) / max(n_all, 1),
        }
    return out


def _summary(rows: Sequence[dict[str, Any]], seeds: Sequence[int], n_boot: int) -> dict[str, Any]:
    """Per error definition and pT bin: the numbers with their seed-bootstrap errors; and diagnostics."""
    stats: dict[str, Any] = {}
    for k, stat in enumerate(STATS):
        mats = _matrices(rows, seeds, stat, _unflagged)
        stats[stat] = {f"{pt:g}": _with_errors(d, s, n_boot, 1000 + k) for pt, (d, s) in mats.items()}
    return {"stats": stats, "diagnostics": _diagnostics(rows, seeds, n_boot)}


def _diagnostics(rows: Sequence[dict[str, Any]], seeds: Sequence[int], n_boot: int) -> dict[str, Any]:
    """Quoted-stat pull widths of sub-populations that separate candidate causes.

    * cut ``stable`` / ``moving``: cells whose cut is the same in every seed, or not. The cut is
      chosen on the sample's own MC (first edge reaching the WP) and frozen in the replicas, so
      where it can move, a seed's MC efficiency at its cut is known to lie on one side of the WP:
      the spread over seeds at a given cut is smaller than the replicas' (which are free);
    * per tagger;
    * ``with_flagged``: flagged records that still have an SF and a stat included.
    """
    modal: dict[tuple[Any, ...], tuple[float, float]] = {}
    by_cell: dict[tuple[Any, ...], Counter[float]] = defaultdict(Counter)
    for r in rows:
        if _unflagged(r):
            by_cell[(r["tagger"], r["working_point"], r["parton"], r["pt_low"])][r["cut"]] += 1
    for c, cnt in by_cell.items():
        modal[c] = (cnt.most_common(1)[0][0], cnt.most_common(1)[0][1] / sum(cnt.values()))

    def stable(r: dict[str, Any]) -> bool:
        return modal[(r["tagger"], r["working_point"], r["parton"], r["pt_low"])][1] == 1.0

    groups: dict[str, Callable[[dict[str, Any]], bool]] = {
        "cut_stable": lambda r: _unflagged(r) and stable(r),
        "cut_moving": lambda r: _unflagged(r) and not stable(r),
        "ntrk": lambda r: _unflagged(r) and r["tagger"] == "ntrk",
        "bdt": lambda r: _unflagged(r) and r["tagger"] == "bdt",
        "with_flagged": _defined,
    }
    out: dict[str, Any] = {}
    for k, (name, keep) in enumerate(groups.items()):
        mats = _matrices(rows, seeds, "bootstrap", keep)
        out[name] = {f"{pt:g}": _with_errors(d, s, n_boot, 2000 + k) for pt, (d, s) in mats.items()}
    # all pT bins together, cells by their relative error (mean stat / mean |SF| over seeds): the
    # bootstrap's own bias grows as the square of the relative noise of the MC-derived denominator
    rel: dict[tuple[Any, ...], list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if _unflagged(r):
            rel[(r["tagger"], r["working_point"], r["parton"], r["pt_low"])].append((r["stat"], abs(r["sf"])))
    rel_err = {c: float(np.mean([v[0] for v in vals]) / np.mean([v[1] for v in vals])) for c, vals in rel.items()}

    def rel_class(r: dict[str, Any]) -> str:
        x = rel_err[(r["tagger"], r["working_point"], r["parton"], r["pt_low"])]
        return next(name for name, top in REL_CLASSES if x < top)

    mats = _matrices(rows, seeds, "bootstrap", _unflagged, rel_class)
    out["by_relative_error"] = {key: _with_errors(d, s, n_boot, 3000) for key, (d, s) in mats.items()}
    if all("diff_raw" in r for r in rows):
        out["untruncated"] = _untruncated(rows, seeds, n_boot)
    return out


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("spread_over_stat", "spread / mean stat"),
        ("pull_width", "pull width (standard deviation)"),
        ("pull_width_robust", "pull width (half 16-84 % interval)"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), sharey=True)
    for ax, (metric, label) in zip(axes, panels):
        curves = [(setting, "bootstrap", marker, "") for setting, marker in zip(SETTINGS, ("o", "s"))]
        curves += [(setting, "bootstrap_plain", marker, " (plain)") for setting, marker in zip(SETTINGS, ("o", "s"))]
        edges = summary["pt_bins_gev"]
        for k, (setting, stat, marker, suffix) in enumerate(curves):
            bins = summary["settings"][setting]["stats"].get(stat, {})
            if not bins or not all(math.isfinite(bins[b][metric]) for b in bins):
                continue  # no uncorrected stat in these rows
            lo = [edges.index(float(b)) for b in bins]
            x = [0.5 * (edges[i] + edges[i + 1]) + (k - 1.5) * 0.05 * (edges[i + 1] - edges[i]) for i in lo]
            y = [bins[b][metric] for b in bins]
            e = [bins[b][f"{metric}_err"] for b in bins]
            name = setting.replace("mc", "MC = ").replace("x", " x data") + suffix
            face = "none" if suffix else None
            color = f"C{SETTINGS.index(setting)}"
            ax.errorbar(
                x,
                y,
                yerr=e,
                marker=marker,
                mfc=face,
                color=color,
                alpha=0.5 if suffix else 1.0,
                linestyle="",
                capsize=3,
                label=name,
            )
        ax.axhspan(0.9, 1.1, color="0.9")
        ax.axhline(1.0, color="0.5", lw=0.8)
        ax.set_xlabel("jet pT [GeV]")
        ax.set_title(label, fontsize=10)
        ax.legend(frameon=False, fontsize=9)
    axes[0].set_ylabel("ratio to quoted stat (error bars: bootstrap over seeds)")
    fig.suptitle(
        f"closure study: {summary['seeds']} seeds x {summary['events']} events, stat = {summary['stat_method']}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def toy_histogram_correction(n_mc: float = 1500, n_data: float = 6000, samples: int = 300) -> None:
    """The bias correction on histogram-level toys (``--toy-kappa``), without generated ROOT files.

    Per toy sample: Poisson counts of known quark/gluon shapes (fractions 0.55 forward, 0.35
    central; ``n_mc`` MC and ``n_data`` data jets over both regions), 50 Poisson replicas of its
    bins, the extraction of qgcal (:func:`qgcal.extraction.replica_scale_factors`, no
    reweighting, a fixed cut), the plain replica spread and the bias-corrected one. Printed per
    parton: the spread of SF - true SF over samples (standard deviation and half 16-84 %
    interval) over the mean plain error, the mean corrected error, and the corrected error
    without ``KAPPA_FLOOR`` (and the fraction of samples at the floor). docs/physics.md quotes
    ``--toy-kappa`` (1500 MC jets: the harsh regime where the uncapped correction over-corrects).
    """
    from qgcal.config import parse_config
    from qgcal.configs import demo_config_text
    from qgcal.contract import REPLICA_CLASSES, REPLICA_DATA, REPLICA_GLUON, REPLICA_QUARK
    from qgcal.extraction import replica_scale_factors, replica_sigma, variance_bias_factors

    doc = yaml.safe_load(demo_config_text())
    doc["taggers"] = {"ntrk": doc["taggers"]["ntrk"]}
    doc["pt_bins_gev"], doc["bootstrap"] = [500, 600], 50
    cfg = parse_config(doc)
    nb = cfg.taggers["ntrk"].bins.n
    x = np.arange(nb)

    def gauss(mu: float, sd: float) -> np.ndarray:
        v = np.exp(-0.5 * ((x - mu) / sd) ** 2)
        return v / v.sum()

    q, g, qd, gd = gauss(12, 4), gauss(20, 5), gauss(12.5, 4.2), gauss(19, 5)
    exp_mc = np.zeros((2, REPLICA_CLASSES, 1, nb))
    exp_d = np.zeros_like(exp_mc)
    for region, f in ((0, 0.55), (1, 0.35)):
        exp_mc[region, REPLICA_QUARK, 0] = n_mc / 2 * f * q
        exp_mc[region, REPLICA_GLUON, 0] = n_mc / 2 * (1 - f) * g
        exp_d[region, REPLICA_DATA, 0] = n_data / 2 * (f * qd + (1 - f) * gd)
    cut = 14
    cuts = {"ntrk": [{f"{wp:g}": {"index": cut} for wp in cfg.working_points}]}
    groups = {"ntrk": [[(i, i + 1) for i in range(nb)]]}
    truth = {"quark": qd[:cut].sum() / q[:cut].sum(), "gluon": gd[cut:].sum() / g[cut:].sum()}
    rng = np.random.default_rng(1)
    rows: dict[str, list[tuple[float, float, float, float]]] = {"quark": [], "gluon": []}
    for _ in range(samples):
        mc, d = rng.poisson(exp_mc).astype(float), rng.poisson(exp_d).astype(float)
        rep_mc = rng.poisson(np.broadcast_to(mc[..., None], (*mc.shape, 50))).astype(float)
        rep_d = rng.poisson(np.broadcast_to(d[..., None], (*d.shape, 50))).astype(float)
        sf = replica_scale_factors(cfg, {"ntrk": mc[..., None]}, {"ntrk": d[..., None]}, cuts, "none", groups)
        reps = replica_scale_factors(cfg, {"ntrk": rep_mc}, {"ntrk": rep_d}, cuts, "none", groups)
        kappa = variance_bias_factors(cfg, {"ntrk": rep_mc}, {"ntrk": rep_d}, cuts, "none", groups)
        # the same correction uncapped, for comparison
        uncapped = variance_bias_factors(cfg, {"ntrk": rep_mc}, {"ntrk": rep_d}, cuts, "none", groups, floor=0.0)
        for parton, out in rows.items():
            key = ("ntrk", 0, "0.5", parton)
            v = reps[key][np.isfinite(reps[key])]
            k, k0 = kappa.get(key, math.nan), uncapped.get(key, math.nan)
            if len(v) >= 25 and math.isfinite(sf[key][0]) and math.isfinite(k) and math.isfinite(k0):
                sig = replica_sigma(v)
                out.append((sf[key][0] - truth[parton], sig, sig * math.sqrt(k), sig * math.sqrt(k0)))
    print(f"histogram toy: {samples} samples, {n_mc:g} MC and {n_data:g} data jets, 50 replicas")
    for parton, r in rows.items():
        a = np.array(r)
        lo, hi = np.percentile(a[:, 0], [Q_LO, Q_HI])
        sd, robust = float(np.std(a[:, 0], ddof=1)), (hi - lo) / 2
        print(
            f"  {parton}: spread / plain {sd / a[:, 1].mean():.3f} (robust {robust / a[:, 1].mean():.3f}), "
            f"spread / corrected {sd / a[:, 2].mean():.3f} (robust {robust / a[:, 2].mean():.3f}), "
            f"uncapped {sd / a[:, 3].mean():.3f} (robust {robust / a[:, 3].mean():.3f}), "
            f"at the floor {np.mean(a[:, 2] > a[:, 3]):.2f}"
        )


def toy_ratio_bias(rel_errors: Sequence[float] = (0.05, 0.07, 0.10, 0.12, 0.15, 0.20), n: int = 20_000) -> None:
    """The bootstrap's own bias for a ratio, without qgcal: theta = 1/X, X ~ N(1, r) per sample.

    Each "sample" quotes the standard deviation of 1/X* over 50 replicas X* ~ N(X, r) (what a
    bootstrap does: it resamples around the sample's own X). Printed: the true standard deviation
    of 1/X over samples over the mean quoted one (the study's spread / mean stat) and the robust
    version (half 16-84 % interval over the median quoted). 1/X is convex, so its local spread
    grows as X falls: samples with a low X quote more than samples with a high X quote less, and
    on average the quoted error exceeds the true one by O(r^2).
    """
    rng = np.random.default_rng(7)
    print("toy 1/X: relative error of X | true sd / mean bootstrap sd | robust: true half-width / median sd")
    for r in rel_errors:
        x = rng.normal(1.0, r, n)
        x = x[x > 0.2]  # far from the pole (a real sample with X this low is flagged)
        boot = np.std(1.0 / (x[:, None] + rng.normal(0.0, r, (len(x), 50))), axis=1, ddof=1)
        print(
            f"  {r:.2f}  {np.std(1.0 / x, ddof=1) / np.mean(boot):.3f}  {half_width68(1.0 / x) / np.median(boot):.3f}"
        )


def _print(summary: dict[str, Any]) -> None:
    for s in SETTINGS:
        st = summary["settings"][s]["stats"]
        print(f"{s}: pT bin | spread/stat | pull width | robust pull width | pull mean | records")
        for stat in STATS:
            print(f"  [{stat}]")
            for k, v in st[stat].items():
                print(
                    f"  {k:>6}  {v['spread_over_stat']:.3f}+-{v['spread_over_stat_err']:.3f}"
                    f"  {v['pull_width']:.3f}+-{v['pull_width_err']:.3f}"
                    f"  {v['pull_width_robust']:.3f}+-{v['pull_width_robust_err']:.3f}"
                    f"  {v['pull_mean']:+.3f}+-{v['pull_mean_err']:.3f}  {v['records']}"
                )
        for name, bins in summary["settings"][s]["diagnostics"].items():
            if name == "untruncated":
                txt = "  ".join(
                    f"{k}:{v['spread_over_stat_defined']:.2f}->{v['spread_over_stat_all']:.2f}"
                    f"+-{v['spread_over_stat_all_err']:.2f}({v['without_sf']:.3f})"
                    for k, v in bins.items()
                )
                print(f"  diag untruncated (spread/stat defined SFs -> all, fraction without SF): {txt}")
                continue
            txt = "  ".join(
                f"{k}:{v['pull_width']:.2f}+-{v['pull_width_err']:.2f}/{v['pull_width_robust']:.2f}({v['records']})"
                for k, v in bins.items()
            )
            print(f"  diag {name}: {txt}")


def _generate_and_calibrate(args: argparse.Namespace) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    import qgcal
    from qgcal.config import load_config
    from qgcal.extraction import REPLICAS_FILE, load_replicas, replica_key
    from qgcal.generate import generate_or_reuse

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    truth_dir = args.out / "truth-sample"
    generate_or_reuse(truth_dir / "sample", events=args.truth_events, files=8, seed=999_999)
    truth = Truth(truth_dir / "sample")
    print(f"truth sample ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
    pt_bins: list[float] = []
    rows_path = args.out / f"closure_rows{args.tag}.jsonl"
    rows_file = rows_path.open("w")  # one JSON line per seed and setting, written as they finish
    run_meta = {k: getattr(args, k) for k in ("first_seed", "events", "truth_events", "bootstrap", "min_neff")}
    rows_file.write(json.dumps({"meta": run_meta}) + "\n")
    for i in range(args.seeds):
        seed = args.first_seed + i
        base = args.out / f"seed{seed}"
        sample = base / "sample"
        generate_or_reuse(sample, events=args.events, files=4, seed=seed)
        for setting in SETTINGS:
            cfg = load_config(_config(sample, base / f"{setting}{args.tag}", setting, args.bootstrap, args.min_neff))
            pt_bins = [float(x) for x in cfg.pt_bins_gev]
            records = qgcal.run(cfg, "nominal", workers=args.workers).records
            reps = load_replicas(cfg.output_path / "results" / "nominal" / REPLICAS_FILE) or {}
            first = len(rows[setting])
            for r in records:
                if r["cut"] is None or r["eff_data"] is None or not (r["eff_mc"] or 0.0) > 0:
                    continue  # nothing extracted: nothing to compare
                t_d, t_m = truth.effs(r)
                rep = reps.get(replica_key(r))
                rows[setting].append(
                    {
                        **{k: r[k] for k in ("tagger", "working_point", "parton", "pt_low", "pt_high", "cut")},
                        **{
                            k: r[k]
                            for k in (
                                "sf",
                                "stat",
                                "stat_analytic",
                                "stat_bootstrap_plain",
                                "eff_data",
                                "eff_mc",
                                "flags",
                            )
                        },
                        "seed": seed,
                        "true_eff_data": t_d,
                        "true_eff_mc": t_m,
                        # SF null (flagged) where the extracted data efficiency is <= 0: kept as eps_d / eps_m
                        "diff": None if r["sf"] is None or r["stat"] is None else r["sf"] - t_d / t_m,
                        "diff_raw": r["eff_data"] / r["eff_mc"] - t_d / t_m,
                        "replicas": None if rep is None else [None if not math.isfinite(x) else x for x in rep],
                    }
                )
            line = {"setting": setting, "seed": seed, "pt_bins_gev": pt_bins, "rows": rows[setting][first:]}
            rows_file.write(json.dumps(line) + "\n")
            rows_file.flush()
        if args.clean:  # its rows are written: the seed's sample and runs are not needed again
            shutil.rmtree(base)
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    meta = {
        "seeds": args.seeds,
        "first_seed": args.first_seed,
        "events": args.events,
        "truth_events": args.truth_events,
        "bootstrap": args.bootstrap,
        "reweighting_min_mc_neff": args.min_neff,
        "pt_bins_gev": pt_bins,
        "seconds": round(time.perf_counter() - t0),
    }
    rows_file.write(json.dumps({"meta": meta}) + "\n")
    rows_file.close()
    return rows, meta


def _stat_method(meta: dict[str, Any], rows: dict[str, list[dict[str, Any]]]) -> str:
    if not meta["bootstrap"]:
        return "analytic"
    corrected = any(r.get("stat_bootstrap_plain") is not None for s in SETTINGS for r in rows[s])
    return f"bootstrap ({meta['bootstrap']} replicas{', bias-corrected' if corrected else ''})"


def _read_rows(path: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """A ``closure_rows.jsonl`` back (also one cut short: the seeds finished so far)."""
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
    meta: dict[str, Any] = {}
    for text in path.read_text().splitlines():
        line = json.loads(text)
        if "meta" in line:
            meta.update(line["meta"])
        else:
            rows[line["setting"]].extend(line["rows"])
            meta["pt_bins_gev"] = line["pt_bins_gev"]
    complete = set.intersection(*({r["seed"] for r in rows[s]} for s in SETTINGS))  # a run cut short mid-seed
    rows = {s: [r for r in rows[s] if r["seed"] in complete] for s in SETTINGS}
    meta.setdefault("reweighting_min_mc_neff", meta.get("min_neff"))
    return rows, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--first-seed", type=int, default=100)
    ap.add_argument("--events", type=int, default=200_000, help="data (and MC) events generated per seed")
    ap.add_argument("--truth-events", type=int, default=2_000_000)
    ap.add_argument("--bootstrap", type=int, default=50, help="replicas (0: the analytic error)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--min-neff", type=float, default=None, help="reweighting_min_mc_neff (default: the demo's)")
    ap.add_argument("--tag", default="", help="suffix of the per-seed output folders (several studies, one sample)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/closure-study"))
    ap.add_argument("--clean", action="store_true", help="delete each seed's sample and runs once its rows are written")
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--from-rows", type=Path, default=None, help="re-analyse a closure_rows.jsonl, run nothing")
    ap.add_argument("--seed-bootstrap", type=int, default=SEED_BOOTSTRAP, help="resamplings of the seeds")
    ap.add_argument("--toy", action="store_true", help="print the bootstrap's bias on a toy ratio and stop")
    ap.add_argument("--toy-kappa", action="store_true", help="the bias correction on histogram toys, and stop")
    args = ap.parse_args()
    if args.toy:
        toy_ratio_bias()
        return
    if args.toy_kappa:
        for n_mc, n_data in ((1500, 6000), (4000, 16000), (20000, 5000)):
            toy_histogram_correction(n_mc, n_data)
        return

    if args.from_rows is not None:
        rows, meta = _read_rows(args.from_rows)
        out_json = args.from_rows.parent / args.from_rows.name.replace("closure_rows", "closure_study")
        out_json = out_json.with_suffix(".json")
    else:
        rows, meta = _generate_and_calibrate(args)
        out_json = args.out / f"closure_study{args.tag}.json"
    for setting in SETTINGS:
        for r in rows[setting]:
            r.update(_replica_stats(r["replicas"]))
    seeds = sorted({r["seed"] for s in SETTINGS for r in rows[s]})
    meta["seeds"] = len(seeds)
    summary: dict[str, Any] = {
        **meta,
        "stat_method": _stat_method(meta, rows),
        "seed_bootstrap": args.seed_bootstrap,
        "settings": {
            s: {
                **_summary(rows[s], seeds, args.seed_bootstrap),
                "flagged_records": sum(1 for r in rows[s] if not _unflagged(r)),
                "records": sum(1 for r in rows[s] if _unflagged(r)),
            }
            for s in SETTINGS
        },
    }
    out_json.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    _print(summary)
    if args.plot is not None:
        _plot(summary, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()

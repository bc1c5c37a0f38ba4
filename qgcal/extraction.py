"""Reweighting, matrix-method extraction, working-point cuts and scale-factor records.

Pure functions of merged histograms (and bootstrap replica arrays): the maths of
the final pass, per tagger and pT bin, kept apart from where histograms come from.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from qgcal.calibration import (
    Binned,
    apply_weights,
    cut_efficiency,
    efficiencies,
    extract,
    fractions,
    merged_reweighting_factors,
    normalised,
    quark_mask,
    ratio_with_error,
    reweighting_groups,
    wp_cut_index,
)
from qgcal.config import Config, Truth
from qgcal.contract import (
    ALL_MC_FLAVOURS,
    FLAVOUR_DATA,
    FLAVOUR_GLUON,
    FLAVOUR_OTHER,
    QUARK_FLAVOURS,
    REGION_CENTRAL,
    REGION_FORWARD,
    REPLICA_DATA,
    REPLICA_GLUON,
    REPLICA_OTHER,
    REPLICA_QUARK,
    tagger_column,
)
from qgcal.histset import HistSet

__all__ = [
    "KAPPA_FLOOR",
    "KAPPA_RANGE",
    "KAPPA_REPLICAS",
    "REPLICAS_FILE",
    "BinInputs",
    "BootKey",
    "Extraction",
    "add_nonclosure",
    "bootstrap_stat",
    "extract_all",
    "extract_inputs",
    "extraction_summary",
    "frozen_cuts",
    "load_replicas",
    "min_neff_for",
    "nonclosure",
    "pseudo_data_inputs",
    "replica_key",
    "replica_scale_factors",
    "replica_sigma",
    "save_replicas",
    "scale_factor_records",
    "stat_method",
    "true_efficiencies",
    "variance_bias_factors",
]

F, C = REGION_FORWARD, REGION_CENTRAL


BootKey = tuple[str, int, str, str]  # tagger, pT bin index, WP key, parton


def _replica_rows(arr: np.ndarray, region: int, classes: Sequence[int], ipt: int) -> np.ndarray:
    """(replica, score bin) sums of the chosen classes of one region and pT bin, rows contiguous.

    The classes are added in the order given, element by element, as ``inputs_from_replica`` does.
    """
    return np.ascontiguousarray(arr[region, list(classes), ipt, :, :].sum(axis=0).T)


def _row_totals(values: np.ndarray) -> np.ndarray:
    """Per replica, ``Binned.total`` of its row: each row summed on its own (numpy's pairwise sum of a row).

    Only a C-contiguous array is summed row by row with the pairwise sum of a 1-D array; numpy
    adds the columns of any other layout one after the other (other bits), hence the copy.
    """
    return np.add.reduce(np.ascontiguousarray(values), axis=1)


def _row_shapes(values: np.ndarray) -> np.ndarray:
    """Per replica, :func:`qgcal.calibration.normalised` of its row (all-NaN rows where the total is not > 0)."""
    total = _row_totals(values)
    with np.errstate(all="ignore"):
        shapes = values / total[:, None]
    shapes[~(total > 0)] = np.nan
    return shapes


def _replica_reweighting(
    ref_f: np.ndarray, ref_c: np.ndarray, groups: Sequence[tuple[int, int]] | None, min_neff: float
) -> np.ndarray:
    """Per replica, :func:`qgcal.calibration.merged_reweighting_factors` of its rows (the factors only).

    ``groups`` None: each replica's own :func:`qgcal.calibration.reweighting_groups` (zero variances).
    """
    n_rep, n_bins = ref_f.shape
    if groups is None:
        zero = np.zeros(n_bins)
        rows = [
            _replica_reweighting(
                ref_f[r : r + 1],
                ref_c[r : r + 1],
                reweighting_groups(Binned(ref_f[r], zero), Binned(ref_c[r], zero), min_neff),
                min_neff,
            )
            for r in range(n_rep)
        ]
        return np.concatenate(rows) if rows else np.ones_like(ref_f)
    p_f, p_c = _row_shapes(ref_f), _row_shapes(ref_c)
    undefined = np.isnan(p_f).any(axis=1) | np.isnan(p_c).any(axis=1)  # factors of 1 (reweighting_factors)
    w = np.ones_like(ref_f)
    if all(b - a == 1 for a, b in groups):
        with np.errstate(all="ignore"):
            w = np.where(p_c > 0, p_f / p_c, 1.0)
    else:
        for a, b in groups:
            pf, pc = _row_totals(p_f[:, a:b]), _row_totals(p_c[:, a:b])
            with np.errstate(all="ignore"):
                w[:, a:b] = np.where(pc > 0, pf / pc, 1.0)[:, None]
    w[undefined] = 1.0
    return w


def _replica_side_fraction(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per replica, the fraction of :func:`qgcal.calibration.side_fraction` (NaN where the total is not > 0)."""
    a = _row_totals(values[:, mask])
    b = _row_totals(values[:, ~mask])
    tot = a + b
    with np.errstate(all="ignore"):
        frac = a / tot
    frac[~(tot > 0)] = np.nan
    return frac


def _replica_bin_sfs(
    cfg: Config,
    mc: np.ndarray,
    data: np.ndarray,
    ipt: int,
    reweight: str,
    groups: Sequence[tuple[int, int]] | None,
    masks: Mapping[str, np.ndarray],
) -> dict[tuple[str, str], np.ndarray]:
    """One pT bin's SFs in every replica at once: :func:`extract_inputs` and :func:`qgcal.calibration.efficiencies`
    on (replica, score bin) arrays, operation for operation, so each replica's value is bit for bit what
    the same computation on that replica alone gives."""
    q, g, o = REPLICA_QUARK, REPLICA_GLUON, REPLICA_OTHER
    fq, fg, f_all = (
        _replica_rows(mc, F, (q,), ipt),
        _replica_rows(mc, F, (g,), ipt),
        _replica_rows(mc, F, (q, g, o), ipt),
    )
    cq, cg, c_all = (
        _replica_rows(mc, C, (q,), ipt),
        _replica_rows(mc, C, (g,), ipt),
        _replica_rows(mc, C, (q, g, o), ipt),
    )
    d_f, d_c = _replica_rows(data, F, (REPLICA_DATA,), ipt), _replica_rows(data, C, (REPLICA_DATA,), ipt)
    truth = cfg.truth
    if truth.other == "gluon":  # with_other_class
        fg, cg = fg + _replica_rows(mc, F, (o,), ipt), cg + _replica_rows(mc, C, (o,), ipt)
    elif truth.other == "subtract":
        fo, co = _replica_rows(mc, F, (o,), ipt), _replica_rows(mc, C, (o,), ipt)
        s = truth.other_scale

        def norm(d: np.ndarray, mc_all: np.ndarray) -> np.ndarray:
            if truth.other_norm != "data":
                return np.ones(len(d))
            dt, mt = _row_totals(d), _row_totals(mc_all)
            with np.errstate(all="ignore"):
                return np.where((dt > 0) & (mt > 0), dt / mt, 0.0)

        k_f, k_c = s * norm(d_f, f_all), s * norm(d_c, c_all)
        f_all, c_all = f_all - 1.0 * fo, c_all - 1.0 * co
        d_f, d_c = d_f - k_f[:, None] * fo, d_c - k_c[:, None] * co
    if reweight == "none":
        w = np.ones_like(fq)
    else:
        ref_f, ref_c = (fq, cq) if reweight == "quark" else (fg, cg)
        w = _replica_reweighting(ref_f, ref_c, groups, cfg.calibration.reweighting_min_mc_neff)
    with np.errstate(all="ignore"):
        cq_w, c_all_w, d_c_w = cq * w, c_all * w, d_c * w
        t_fq, t_fall, t_cq, t_call = _row_totals(fq), _row_totals(f_all), _row_totals(cq_w), _row_totals(c_all_w)
        f_fq = np.where(t_fall > 0, t_fq / t_fall, np.nan)
        f_cq = np.where(t_call > 0, t_cq / t_call, np.nan)
        det = f_fq - f_cq
        ok = np.isfinite(det) & (f_fq != f_cq)
        # Fractions.inverse: [[1 - f_Cq, -(1 - f_Fq)], [-f_Cq, f_Fq]] / det
        i00, i01, i10, i11 = (1.0 - f_cq) / det, -(1.0 - f_fq) / det, -f_cq / det, f_fq / det
    out: dict[tuple[str, str], np.ndarray] = {}
    for wkey, mask in masks.items():
        eff = {}
        for side, (fwd, cen) in (("mc", (f_all, c_all_w)), ("data", (d_f, d_c_w))):
            e_f, e_c = _replica_side_fraction(fwd, mask), _replica_side_fraction(cen, mask)
            with np.errstate(all="ignore"):
                eff[side] = (i00 * e_f + i01 * e_c, 1.0 - (i10 * e_f + i11 * e_c))
        for i, parton in enumerate(("quark", "gluon")):
            num, den = eff["data"][i], eff["mc"][i]
            good = ok & (den > 0) & np.isfinite(num) & np.isfinite(den)
            with np.errstate(all="ignore"):
                out[(wkey, parton)] = np.where(good, num / den, np.nan)
    return out


def _cut_masks(
    cfg: Config, name: str, ipt: int, cuts: Mapping[str, list[dict[str, Any]]], n_bins: int
) -> dict[str, np.ndarray]:
    """The frozen cuts' masks over the score bins (axis 3 of a replica array), by WP key: the same in every replica."""
    side = cfg.taggers[name].quark_side
    masks: dict[str, np.ndarray] = {}
    for wp in cfg.working_points:
        cut = cuts[name][ipt][_wp_key(wp)]
        if cut is not None:
            masks[_wp_key(wp)] = quark_mask(n_bins, cut["index"], side)
    return masks


def replica_scale_factors(
    cfg: Config,
    mc: Mapping[str, np.ndarray],
    data: Mapping[str, np.ndarray],
    cuts: Mapping[str, list[dict[str, Any]]],
    reweight: str,
    groups: Mapping[str, Sequence[Sequence[tuple[int, int]]]] | None = None,
) -> dict[BootKey, np.ndarray]:
    """Each scale factor in every bootstrap replica (NaN where a replica leaves it undefined).

    Cuts are frozen from nominal and the reweighting groups from this systematic's own
    extraction (``groups[tagger][pT bin]``; each replica's own groups when None). Replicas are keyed by event
    identity, so nominal and a variation of the same events share them: the spread of
    (variation - nominal) over replicas is the statistical error of a systematic shift.
    All replicas of a pT bin are computed at once (:func:`_replica_bin_sfs`): the same
    numbers as replica by replica, 50x fewer numpy calls.
    """
    out: dict[BootKey, np.ndarray] = {}
    for name in sorted(cfg.taggers):
        for ipt in range(len(cfg.pt_bins_gev) - 1):
            masks = _cut_masks(cfg, name, ipt, cuts, mc[name].shape[3])
            g = None if groups is None else groups[name][ipt]
            for (wp_key, parton), values in _replica_bin_sfs(
                cfg, mc[name], data[name], ipt, reweight, g, masks
            ).items():
                out[(name, ipt, wp_key, parton)] = values
    return out


def bootstrap_stat(
    cfg: Config,
    mc: Mapping[str, np.ndarray],
    data: Mapping[str, np.ndarray],
    cuts: Mapping[str, list[dict[str, Any]]],
    reweight: str,
    replicas: Mapping[BootKey, np.ndarray] | None = None,
) -> dict[tuple[str, int, str, str], float]:
    """Standard deviation of each scale factor over the replicas (cuts frozen from nominal).

    Defined when at least half of the replicas (and two) give a defined SF and they differ;
    ``replicas``: the output of :func:`replica_scale_factors` when already computed.
    """
    reps = replica_scale_factors(cfg, mc, data, cuts, reweight) if replicas is None else replicas
    out: dict[tuple[str, int, str, str], float] = {}
    n_rep = cfg.bootstrap
    for key, arr in reps.items():
        values = arr[np.isfinite(arr)]
        if len(values) >= max(2, n_rep // 2):
            sigma = replica_sigma(values)
            if sigma > 0:  # every replica the same SF: no spread to estimate an error from (flagged)
                out[key] = sigma
    return out


#: Replicas further than this many robust standard deviations from the median are outliers.
OUTLIER_SIGMAS = 5.0


def replica_sigma(values: np.ndarray) -> float:
    """Standard deviation (ddof=1) of the replica values within 5 robust sigma of their median.

    An SF is a ratio of extracted efficiencies: with little MC, a replica whose denominator or
    fraction matrix comes close to zero gives an SF of 10^3, and one such replica makes a plain
    standard deviation meaningless (seen in the closure study with MC at 1/4 of the data). The
    robust sigma is 1.4826 x the median absolute deviation; for Gaussian replicas nothing is
    clipped (a 5 sigma replica is one in 10^6) and the result is the plain standard deviation.
    """
    v = np.asarray(values, dtype=np.float64)
    med = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - med)))
    keep = v if not mad > 0 else v[np.abs(v - med) <= OUTLIER_SIGMAS * mad]
    return float(np.std(keep, ddof=1)) if len(keep) >= 2 else float(np.std(v, ddof=1))


def _rows_nanmedian(values: np.ndarray) -> np.ndarray:
    """``np.nanmedian(values, axis=1, keepdims=True)`` from one sort (NaN sorts last): numpy's axis
    version goes through masked arrays, ~10x slower on the kappa's (N + 1) x N rows. The same
    numbers: the middle value, or the mean (a + b) / 2 of the two middle ones, as np.median takes it."""
    ordered = np.sort(values, axis=1)
    k = np.count_nonzero(~np.isnan(values), axis=1)
    rows = np.arange(len(values))
    lo, hi = ordered[rows, np.maximum(k - 1, 0) // 2], ordered[rows, k // 2]  # k = 0: any value, then NaN
    med = np.where(k % 2 == 1, lo, (lo + hi) / 2)
    med[k == 0] = np.nan
    return med[:, None]


def _rows_sigma2(values: np.ndarray, min_defined: int) -> np.ndarray:
    """Per row, :func:`replica_sigma` squared of its finite values (NaN with fewer than ``min_defined``),
    all rows at once: the same clipping (5 robust sigma about the median), equal to rounding.

    A copy of :func:`replica_sigma` on purpose: :func:`variance_bias_factors` needs (N + 1) rows per
    record, and calling it row by row made the correction 3x slower (0.75 s -> 0.25 s per final pass).
    tests/test_variance_bias.py holds the two to 1e-12."""
    finite = np.isfinite(values)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN, as wanted
        med = _rows_nanmedian(values)
        dev = np.abs(values - med)
        mad = 1.4826 * _rows_nanmedian(dev)
        keep = finite & (~(mad > 0) | (dev <= OUTLIER_SIGMAS * mad))
        few = keep.sum(axis=1, keepdims=True) < 2  # replica_sigma then takes every value
        keep = np.where(few, finite, keep)
        var = np.nanvar(np.where(keep, values, np.nan), axis=1, ddof=1)
    var[finite.sum(axis=1) < min_defined] = np.nan
    return var


#: A correction outside this range is not a second-order one: the expansion behind it does not hold
#: there (e.g. bin-by-bin reweighting factors of sparse tail bins), and the plain spread is kept.
KAPPA_RANGE = (0.5, 1.5)
#: The variance is never corrected down by more than this factor (the error by more than 10 %): in a
#: harsher regime than the closure study's (closure_study.py --toy-kappa, 750 MC jets per region) the
#: uncapped correction leaves errors 6-11 % too small; a quoted error should not err on the small side.
KAPPA_FLOOR = 0.8


#: Replicas used as points and as fluctuations of the correction (the first ones): its cost grows as
#: the square of this, and a ratio of two variances over the same fluctuations needs no more.
KAPPA_REPLICAS = 50


def _translated(arr: np.ndarray, ipt: int, m: int, classes: Sequence[int]) -> np.ndarray:
    """One pT bin of a replica array, as (1 + m) x m inner replicas: the replicas' centre (the mean of
    all of them), then each of the first m replicas b, plus each of the first m replicas' deviation
    from the centre, point-major (around the centre: the replicas themselves).

    Never below the lowest replica (0 for a bin without negative weights): a sparse tail bin must not
    go negative, where a reweighting factor changes sign. Only ``classes`` are translated (the ones
    :func:`_replica_bin_sfs` reads from this array: quark, gluon, other of MC, data of data); the
    others stay 0, which halves the work.
    """
    read = list(classes)
    full = arr[:, read, ipt : ipt + 1, :, :]
    centre = full.mean(axis=-1, keepdims=True)
    x = full[..., :m]
    points = np.concatenate([centre, x], axis=-1)
    floor = np.minimum(x.min(axis=-1, keepdims=True), 0.0)[..., None]
    inner = np.maximum(points[..., :, None] + (x - centre)[..., None, :], floor)
    out = np.zeros((*arr.shape[:2], 1, arr.shape[3], (1 + m) * m))
    out[:, read] = inner.reshape(*x.shape[:-1], (1 + m) * m)
    return out


def variance_bias_factors(
    cfg: Config,
    mc: Mapping[str, np.ndarray],
    data: Mapping[str, np.ndarray],
    cuts: Mapping[str, list[dict[str, Any]]],
    reweight: str,
    groups: Mapping[str, Sequence[Sequence[tuple[int, int]]]],
    *,
    floor: float = KAPPA_FLOOR,
) -> dict[BootKey, float]:
    """Per scale factor, kappa = v(centre) / mean over replicas b of v(b): the double bootstrap's
    correction of the bootstrap variance of a non-linear estimator, with translated inner replicas.

    The bootstrap evaluates the spread around the sample's own (noisy) fractions; an error that
    is a convex function of them (~ 1/det) is then too large on average (docs/physics.md,
    closure study). The second level measures that bias on the replicas themselves: around each
    replica b, and around the replicas' centre (their mean), the same event-level fluctuations
    d_c = X_c - mean (every replica's deviation, so jet correlations and all MC and data sources
    are kept, and the same d_c everywhere, so the noise of the ratio cancels) give a variance
    v(b); the mean of v(b) over b exceeds v(centre) by what v(sample) exceeds the true variance,
    to second order. The corrected variance is kappa x the bootstrap variance; kappa outside
    ``KAPPA_RANGE`` is left out (no correction), and below ``floor`` (``KAPPA_FLOOR``) raised to it. (Relative
    fluctuations, X_b x X_c / mean, were tried: they over-correct, spread / stat up to 1.14 in
    the closure study.) With more than ``KAPPA_REPLICAS`` replicas, the first ones are the points
    and the fluctuations.
    """
    out: dict[BootKey, float] = {}
    for name in sorted(cfg.taggers):
        arr_mc, arr_d = mc[name], data[name]
        n = min(arr_mc.shape[-1], KAPPA_REPLICAS)
        if n < 4:
            continue
        for ipt in range(len(cfg.pt_bins_gev) - 1):
            masks = _cut_masks(cfg, name, ipt, cuts, arr_mc.shape[3])
            if not masks:
                continue

            mc_t = _translated(arr_mc, ipt, n, (REPLICA_QUARK, REPLICA_GLUON, REPLICA_OTHER))
            data_t = _translated(arr_d, ipt, n, (REPLICA_DATA,))
            sfs = _replica_bin_sfs(cfg, mc_t, data_t, 0, reweight, groups[name][ipt], masks)
            for (wkey, parton), values in sfs.items():
                v = _rows_sigma2(values.reshape(1 + n, n), max(2, n // 2))
                outer = v[1:][np.isfinite(v[1:])]
                if math.isfinite(v[0]) and len(outer) >= max(2, n // 2) and float(np.mean(outer)) > 0:
                    kappa = float(v[0] / np.mean(outer))
                    if KAPPA_RANGE[0] <= kappa <= KAPPA_RANGE[1]:
                        out[(name, ipt, wkey, parton)] = max(kappa, floor)
    return out


REPLICAS_FILE = "replicas.npz"


def stat_method(cfg: Config) -> str:
    """How the quoted ``stat`` of a run with this config is computed, in words (metadata, report)."""
    if not cfg.bootstrap:
        return "analytic"
    corrected = ", bias-corrected" if cfg.calibration.bootstrap_bias_correction else ""
    return f"bootstrap ({cfg.bootstrap} Poisson replicas{corrected})"


def replica_key(rec: Mapping[str, Any]) -> str:
    """The record a row of ``replicas.npz`` belongs to: tagger|WP|parton|pT low|pT high (GeV)."""
    return f"{rec['tagger']}|{float(rec['working_point']):g}|{rec['parton']}|{rec['pt_low']:g}|{rec['pt_high']:g}"


def save_replicas(
    path: Path, records: Sequence[Mapping[str, Any]], replicas: Mapping[BootKey, np.ndarray], n_rep: int
) -> None:
    """``results/<syst>/replicas.npz``: the SF of every record in every bootstrap replica.

    Two plain arrays (no pickle): ``keys`` (one :func:`replica_key` per record, in the order of
    scale_factors.json) and ``sf`` (records x replicas, float64, NaN where undefined). qgcal
    combine takes (variation - nominal) replica by replica for the shifts' significance.
    Deterministic bytes (np.savez writes fixed zip dates).
    """
    import io

    from qgcal.artifacts import atomic_path

    bins = [float(x) for x in sorted({r["pt_low"] for r in records})]
    rows = np.full((len(records), n_rep), np.nan)
    for i, rec in enumerate(records):
        ipt = bins.index(float(rec["pt_low"]))
        got = replicas.get((rec["tagger"], ipt, _wp_key(rec["working_point"]), rec["parton"]))
        if got is not None:
            rows[i] = got
    keys = np.array([replica_key(r) for r in records], dtype=str)
    buf = io.BytesIO()
    savez: Any = np.savez
    savez(buf, keys=keys, sf=rows)
    with atomic_path(path, ".npz") as tmp:
        tmp.write_bytes(buf.getvalue())


def load_replicas(path: Path) -> dict[str, np.ndarray] | None:
    """:func:`save_replicas`'s file as record key -> replica SFs; None when there is no file (no bootstrap)."""
    import zipfile

    from qgcal.errors import ArtifactError

    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
            keys, sf = npz["keys"], npz["sf"]
            if sf.ndim != 2 or len(keys) != len(sf):
                raise ValueError("keys and sf disagree")
            return {str(k): np.asarray(row, dtype=np.float64) for k, row in zip(keys, sf)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        why = type(err).__name__
        raise ArtifactError(f"{path}: unreadable bootstrap replicas ({why}); rerun the systematic") from None


def min_neff_for(cfg: Config, syst: str) -> float:
    """Effective MC entries per reweighting bin group of a systematic (a reweighting variation may set its own)."""
    from qgcal.config import ReweightingVariation

    var = cfg.variations.get(syst)
    if isinstance(var, ReweightingVariation) and var.min_mc_neff is not None:
        return float(var.min_mc_neff)
    return float(cfg.calibration.reweighting_min_mc_neff)


# ----------------------------------------------------------------------------- extraction


def _binned(h: Any, region: int, flavours: Sequence[int], ipt: int) -> Binned:
    """Sum of the chosen flavours for one region and pT bin, as (values, variances)."""
    vals = h.values()
    vars_ = h.variances()
    reg_ax, flav_ax = h.axes["region"], h.axes["flavour"]
    ir = reg_ax.index(region)
    idx = [flav_ax.index(f) for f in flavours]
    return Binned(vals[ir, idx, ipt, :].sum(axis=0), vars_[ir, idx, ipt, :].sum(axis=0))


@dataclass
class Extraction:
    """Everything derived for one tagger and pT bin (MC and data)."""

    pt_low: float
    pt_high: float
    f_fq: float
    f_cq: float
    weights: np.ndarray
    mc_forward: Binned
    mc_central: Binned
    data_forward: Binned
    data_central: Binned
    p_q_mc: np.ndarray
    p_g_mc: np.ndarray
    p_q_data: np.ndarray
    p_g_data: np.ndarray
    truth_q_mc: np.ndarray
    truth_g_mc: np.ndarray
    data_jets: tuple[float, float]
    flags: list[str]
    rw_groups: list[tuple[int, int]] = field(default_factory=list)  # reweighting bin groups (start, stop)

    def fractions(self) -> Any:
        from qgcal.calibration import Fractions

        return Fractions(self.f_fq, self.f_cq)


@dataclass(frozen=True)
class BinInputs:
    """The histograms one pT bin's extraction needs (MC by truth class, data), as Binned."""

    fq: Binned
    fg: Binned
    f_all: Binned
    cq: Binned
    cg: Binned
    c_all: Binned
    d_f: Binned
    d_c: Binned
    pt_low: float
    pt_high: float


def inputs_from_hists(
    mc: Any, data: Any, ipt: int, truth: Truth | None = None, *, data_flavours: Sequence[int] = (FLAVOUR_DATA,)
) -> BinInputs:
    """One pT bin's inputs from merged histograms; ``truth`` says how the 'other' class enters
    (:func:`with_other_class`; None: as ``drop_events``, the historical behaviour). ``data_flavours``:
    the categories of ``data`` that are the data (all MC classes when an MC sample is pseudo-data)."""
    edges = mc.axes["pt"].edges
    x = BinInputs(
        fq=_binned(mc, F, QUARK_FLAVOURS, ipt),
        fg=_binned(mc, F, (FLAVOUR_GLUON,), ipt),
        f_all=_binned(mc, F, ALL_MC_FLAVOURS, ipt),
        cq=_binned(mc, C, QUARK_FLAVOURS, ipt),
        cg=_binned(mc, C, (FLAVOUR_GLUON,), ipt),
        c_all=_binned(mc, C, ALL_MC_FLAVOURS, ipt),
        d_f=_binned(data, F, data_flavours, ipt),
        d_c=_binned(data, C, data_flavours, ipt),
        pt_low=float(edges[ipt]),
        pt_high=float(edges[ipt + 1]),
    )
    if truth is None:
        return x
    return with_other_class(x, _binned(mc, F, (FLAVOUR_OTHER,), ipt), _binned(mc, C, (FLAVOUR_OTHER,), ipt), truth)


def inputs_from_replica(
    mc: np.ndarray, data: np.ndarray, ipt: int, r: int, pt_edges: Sequence[float], truth: Truth | None = None
) -> BinInputs:
    """One bootstrap replica: arrays (region, class[data, quark, gluon, other], pT, score, replica)."""

    def b(arr: np.ndarray, region: int, classes: Sequence[int]) -> Binned:
        v = arr[region, list(classes), ipt, :, r].sum(axis=0)
        return Binned(v, np.zeros_like(v))

    q, g, o = REPLICA_QUARK, REPLICA_GLUON, REPLICA_OTHER
    x = BinInputs(
        fq=b(mc, F, (q,)),
        fg=b(mc, F, (g,)),
        f_all=b(mc, F, (q, g, o)),
        cq=b(mc, C, (q,)),
        cg=b(mc, C, (g,)),
        c_all=b(mc, C, (q, g, o)),
        d_f=b(data, F, (REPLICA_DATA,)),
        d_c=b(data, C, (REPLICA_DATA,)),
        pt_low=float(pt_edges[ipt]),
        pt_high=float(pt_edges[ipt + 1]),
    )
    if truth is None:
        return x
    return with_other_class(x, b(mc, F, (o,)), b(mc, C, (o,)), truth)


def _subtract(total: Binned, part: Binned, k: float) -> Binned:
    return Binned(total.values - k * part.values, total.variances + k * k * part.variances)


def _other_norm(d: Binned, mc_all: Binned) -> float:
    """Data/MC normalisation of one region (0 when either is empty: nothing to subtract)."""
    return d.total / mc_all.total if d.total > 0 and mc_all.total > 0 else 0.0


def with_other_class(x: BinInputs, fo: Binned, co: Binned, truth: Truth) -> BinInputs:
    """Apply ``truth.other`` to one pT bin's inputs (``fo``/``co``: the MC 'other' class, F and C).

    * ``subtract``: the matrix method sees quark + gluon only. MC totals lose their
      'other' jets exactly; data lose the MC 'other' shape normalised like the MC
      (the MC 'other' yield times the region's data/MC ratio), times
      ``truth.other_scale`` (vary it for a systematic); its variance is added.
    * ``gluon``: 'other' jets are counted as gluons (gluon template and totals).
    * ``drop_events``: unchanged (events with unlabelled leading jets were dropped in
      root2pkl; any other label stays in the totals, as before).
    """
    if truth.other == "drop_events":
        return x
    if truth.other == "gluon":
        return replace(x, fg=x.fg + fo, cg=x.cg + co)
    s = truth.other_scale
    return replace(
        x,
        f_all=_subtract(x.f_all, fo, 1.0),
        c_all=_subtract(x.c_all, co, 1.0),
        d_f=_subtract(x.d_f, fo, s * (_other_norm(x.d_f, x.f_all) if truth.other_norm == "data" else 1.0)),
        d_c=_subtract(x.d_c, co, s * (_other_norm(x.d_c, x.c_all) if truth.other_norm == "data" else 1.0)),
    )


def extract_bin(
    cfg: Config, mc: Any, data: Any, ipt: int, reweight: str = "quark", min_neff: float | None = None
) -> Extraction:
    return extract_inputs(cfg, inputs_from_hists(mc, data, ipt, cfg.truth), reweight, min_neff=min_neff)


def extract_inputs(
    cfg: Config,
    x: BinInputs,
    reweight: str = "quark",
    *,
    min_neff: float | None = None,
    groups: Sequence[tuple[int, int]] | None = None,
) -> Extraction:
    """Pass 1 (reweighting) and pass 2 (matrix method) for one pT bin.

    The reweighting merges tagger bins to ``min_neff`` effective MC entries
    (default ``calibration.reweighting_min_mc_neff``; 0: bin by bin), or uses the given
    ``groups`` (bootstrap replicas reuse their systematic's groups).
    """
    flags: list[str] = []
    fq, fg, f_all, cq, cg, c_all, d_f, d_c = x.fq, x.fg, x.f_all, x.cq, x.cg, x.c_all, x.d_f, x.d_c
    if not (f_all.total > 0 and c_all.total > 0 and fq.total > 0 and cq.total > 0):
        flags.append("empty_mc_bin")
    if not (d_f.total > 0 and d_c.total > 0):
        flags.append("empty_data_bin")
    elif min(d_f.total, d_c.total) < cfg.calibration.min_data_jets:
        flags.append("low_stats")
    n_bins = len(fq.values)
    if reweight == "none":
        w = np.ones_like(fq.values)
        groups = [(i, i + 1) for i in range(n_bins)]
    else:
        ref_f, ref_c = (fq, cq) if reweight == "quark" else (fg, cg)
        if groups is None:
            neff = cfg.calibration.reweighting_min_mc_neff if min_neff is None else min_neff
            groups = reweighting_groups(ref_f, ref_c, neff)
        w, lost = merged_reweighting_factors(ref_f, ref_c, groups)
        if lost and "empty_mc_bin" not in flags:
            flags.append("reweighting_empty_bins")
    cq_w, c_all_w, d_c_w = apply_weights(cq, w), apply_weights(c_all, w), apply_weights(d_c, w)
    fr = fractions(fq, f_all, cq_w, c_all_w)
    if not (math.isfinite(fr.det) and fr.det != 0):
        flags.append("singular_fraction_matrix")
        nan = np.full_like(fq.values, np.nan)
        p_q_mc = p_g_mc = p_q_d = p_g_d = nan
    else:
        if abs(fr.det) < cfg.calibration.min_fraction_separation:
            flags.append("ill_conditioned")
        if not (0.0 <= fr.f_fq <= 1.0 and 0.0 <= fr.f_cq <= 1.0):
            # negative event weights can make a gluon (or reweighted quark) yield negative: a
            # "fraction" outside [0, 1] is no mixture, whatever the algebra returns
            flags.append("unphysical_fraction")
        p_q_mc, p_g_mc = extract(fr, normalised(f_all), normalised(c_all_w))
        p_q_d, p_g_d = extract(fr, normalised(d_f), normalised(d_c_w))
    return Extraction(
        pt_low=x.pt_low,
        pt_high=x.pt_high,
        f_fq=fr.f_fq,
        f_cq=fr.f_cq,
        weights=w,
        mc_forward=f_all,
        mc_central=c_all_w,
        data_forward=d_f,
        data_central=d_c_w,
        p_q_mc=p_q_mc,
        p_g_mc=p_g_mc,
        p_q_data=p_q_d,
        p_g_data=p_g_d,
        truth_q_mc=normalised(fq),
        truth_g_mc=normalised(fg),
        data_jets=(d_f.total, d_c.total),
        flags=flags,
        rw_groups=[(int(a), int(b)) for a, b in groups],
    )


def extract_all(
    cfg: Config, mc: HistSet, data: HistSet, reweight: str = "quark", min_neff: float | None = None
) -> dict[str, list[Extraction]]:
    out: dict[str, list[Extraction]] = {}
    for name in sorted(cfg.taggers):
        col = tagger_column(name)
        n_pt = len(cfg.pt_bins_gev) - 1
        out[name] = [extract_bin(cfg, mc[col], data[col], i, reweight, min_neff) for i in range(n_pt)]
    return out


# ----------------------------------------------------------------------------- scale factors


def frozen_cuts(cfg: Config, nominal: Mapping[str, list[Extraction]]) -> dict[str, list[dict[str, Any]]]:
    """Cut per tagger, pT bin and WP from nominal extracted MC (``calibration.wp_rule``).

    Each cut: ``index`` (bin edge), ``value`` (the edge), ``efficiency`` (the quark efficiency
    it achieves on the extracted nominal MC: what the WP really is on a discrete tagger) and
    ``shared_with`` (the other WPs of the same pT bin that land on the same edge).
    """
    cuts: dict[str, list[dict[str, Any]]] = {}
    rule = cfg.calibration.wp_rule
    for name, ex_bins in sorted(nominal.items()):
        tagger = cfg.taggers[name]
        edges = tagger.bins.bin_edges()
        per_bin = []
        for ex in ex_bins:
            per_wp: dict[str, Any] = {}
            for wp in cfg.working_points:
                k = wp_cut_index(ex.p_q_mc, wp, tagger.quark_side, rule)
                per_wp[_wp_key(wp)] = (
                    None
                    if k is None
                    else {
                        "index": k,
                        "value": float(edges[k]),
                        "efficiency": _num(cut_efficiency(ex.p_q_mc, k, tagger.quark_side)),
                    }
                )
            for key, cut in per_wp.items():
                if cut is not None:
                    cut["shared_with"] = sorted(
                        float(w) for w, c in per_wp.items() if w != key and c is not None and c["index"] == cut["index"]
                    )
            per_bin.append(per_wp)
        cuts[name] = per_bin
    return cuts


def _wp_key(wp: float) -> str:
    return f"{wp:g}"


def _num(x: float) -> float | None:
    """JSON has no NaN: undefined numbers are written as null (and flagged)."""
    return float(x) if math.isfinite(x) else None


def scale_factor_records(
    cfg: Config,
    syst: str,
    extractions: Mapping[str, list[Extraction]],
    cuts: Mapping[str, list[dict[str, Any]]],
    boot: Mapping[tuple[str, int, str, str], float] | None = None,
    boot_plain: Mapping[tuple[str, int, str, str], float] | None = None,
) -> list[dict[str, Any]]:
    """One record per (tagger, pT bin, WP, parton). ``boot``: the quoted bootstrap errors;
    ``boot_plain``: the uncorrected replica spread when ``boot`` is bias-corrected
    (:func:`variance_bias_factors`), written as ``stat_bootstrap_plain``."""
    records: list[dict[str, Any]] = []
    for name in sorted(extractions):
        tagger = cfg.taggers[name]
        for ipt, ex in enumerate(extractions[name]):
            for wp in cfg.working_points:
                cut = cuts[name][ipt][_wp_key(wp)]
                flags = list(ex.flags)
                if cut is None:
                    flags.append("wp_unreachable")
                fr = ex.fractions()
                bad = cut is None or "singular_fraction_matrix" in flags or "empty_mc_bin" in flags
                eff_mc = eff_d = None
                if not bad:
                    mask = quark_mask(len(ex.weights), cut["index"], tagger.quark_side)
                    eff_mc = efficiencies(fr, ex.mc_forward, ex.mc_central, mask)
                    if "empty_data_bin" in flags:
                        eff_d = None
                    else:
                        eff_d = efficiencies(fr, ex.data_forward, ex.data_central, mask)
                for parton in ("quark", "gluon"):
                    rec_flags = list(flags)
                    for eff in (eff_mc, eff_d):
                        if eff is not None:
                            rec_flags.extend(eff.flags_for(parton))  # this record's quantity only
                    if bad or eff_d is None or eff_mc is None:
                        sf = stat = stat_d = stat_m = e_d = e_m = float("nan")
                    else:
                        if parton == "quark":
                            e_d, v_d, e_m, v_m = eff_d.eps_q, eff_d.var_eps_q, eff_mc.eps_q, eff_mc.var_eps_q
                        else:
                            e_d, v_d, e_m, v_m = eff_d.rej_g, eff_d.var_rej_g, eff_mc.rej_g, eff_mc.var_rej_g
                        sf, stat = ratio_with_error(e_d, v_d, e_m, v_m)
                        _, stat_d = ratio_with_error(e_d, v_d, e_m, 0.0)
                        _, stat_m = ratio_with_error(e_d, 0.0, e_m, v_m)
                        if not math.isfinite(sf):
                            rec_flags.append("unphysical_efficiency")
                    if not math.isfinite(sf) and not rec_flags:
                        rec_flags.append("undefined")
                    stat_analytic = stat
                    key = (name, ipt, _wp_key(wp), parton)
                    plain = boot_plain.get(key, float("nan")) if boot_plain is not None else None
                    if boot is not None:
                        stat = boot.get(key, float("nan"))
                        if math.isfinite(sf) and not math.isfinite(stat):
                            rec_flags.append("bootstrap_unstable")
                    records.append(
                        {
                            "systematic": syst,
                            "tagger": name,
                            "working_point": wp,
                            "parton": parton,
                            "quantity": "quark_efficiency" if parton == "quark" else "gluon_rejection",
                            "pt_low": ex.pt_low,
                            "pt_high": ex.pt_high,
                            "sf": _num(sf),
                            "stat": _num(stat),
                            "stat_method": "bootstrap" if boot is not None else "analytic",
                            "stat_analytic": _num(stat_analytic),
                            "stat_bootstrap_plain": None if plain is None else _num(plain),
                            "stat_data": _num(stat_d),
                            "stat_mc": _num(stat_m),
                            "eff_data": _num(e_d),
                            "eff_mc": _num(e_m),
                            "cut": None if cut is None else cut["value"],
                            "wp_efficiency": None if cut is None else cut.get("efficiency"),
                            "wp_shared_with": [] if cut is None else list(cut.get("shared_with", [])),
                            "quark_side": tagger.quark_side,
                            "f_forward_quark": _num(ex.f_fq),
                            "f_central_quark": _num(ex.f_cq),
                            "flags": sorted(set(rec_flags)),
                        }
                    )
    return records


def extraction_summary(extractions: Mapping[str, list[Extraction]]) -> dict[str, Any]:
    """The extracted shapes and fractions, for plots and reports (JSON, NaN as null)."""

    def arr(a: np.ndarray) -> list[float | None]:
        return [_num(float(x)) for x in a]

    out: dict[str, Any] = {}
    for name, bins in sorted(extractions.items()):
        out[name] = [
            {
                "pt_low": ex.pt_low,
                "pt_high": ex.pt_high,
                "f_forward_quark": _num(ex.f_fq),
                "f_central_quark": _num(ex.f_cq),
                "reweighting": arr(ex.weights),
                "reweighting_groups": [list(g) for g in ex.rw_groups],
                "p_q_mc": arr(ex.p_q_mc),
                "p_g_mc": arr(ex.p_g_mc),
                "p_q_data": arr(ex.p_q_data),
                "p_g_data": arr(ex.p_g_data),
                "truth_q_mc": arr(ex.truth_q_mc),
                "truth_g_mc": arr(ex.truth_g_mc),
                "data_jets": [float(x) for x in ex.data_jets],
                "flags": sorted(set(ex.flags)),
            }
            for ex in bins
        ]
    return out


# ----------------------------------------------------------------------------- MC non-closure


def pseudo_data_inputs(templates: Any, pseudo: Any, ipt: int, truth: Truth | None = None) -> BinInputs:
    """One pT bin with the ``templates`` MC histograms as MC and the ``pseudo`` MC (all classes) as data."""
    return inputs_from_hists(templates, pseudo, ipt, truth, data_flavours=ALL_MC_FLAVOURS)


def true_efficiencies(fq: Binned, fg: Binned, mask: np.ndarray) -> tuple[float, float]:
    """True quark efficiency and gluon rejection of forward jets from MC truth (what a SF compares)."""
    p_q, p_g = normalised(fq), normalised(fg)
    return float(np.sum(p_q[mask])), float(np.sum(p_g[~mask]))


def nonclosure(
    cfg: Config, templates: HistSet, pseudo: HistSet, cuts: Mapping[str, list[dict[str, Any]]]
) -> dict[tuple[str, int, str, str], tuple[float, float]]:
    """(extracted SF, true SF) per (tagger, pT bin, WP key, parton) with ``pseudo`` MC as pseudo-data.

    The method (nominal reweighting and cuts) applied to another MC sample whose truth is known,
    against the nominal MC templates: the true SF is the pseudo-data's true forward-jet efficiency
    over the templates' (MC truth labels of both samples). Their difference is the MC non-closure:
    what the method's assumptions (the same quark and gluon shapes forward and central after
    reweighting) miss when the physics differs as it does between the two generators.
    """
    out: dict[tuple[str, int, str, str], tuple[float, float]] = {}
    for name in sorted(cfg.taggers):
        col = tagger_column(name)
        tagger = cfg.taggers[name]
        for ipt in range(len(cfg.pt_bins_gev) - 1):
            x = pseudo_data_inputs(templates[col], pseudo[col], ipt, cfg.truth)
            ex = extract_inputs(cfg, x)
            alt = pseudo_data_inputs(pseudo[col], pseudo[col], ipt, cfg.truth)
            fr_ = ex.fractions()
            for wp in cfg.working_points:
                cut = cuts[name][ipt][_wp_key(wp)]
                if cut is None or not math.isfinite(fr_.det) or fr_.det == 0:
                    continue
                mask = quark_mask(len(ex.weights), cut["index"], tagger.quark_side)
                e_m = efficiencies(fr_, ex.mc_forward, ex.mc_central, mask)
                e_d = efficiencies(fr_, ex.data_forward, ex.data_central, mask)
                t_q_d, t_g_d = true_efficiencies(alt.fq, alt.fg, mask)
                t_q_m, t_g_m = true_efficiencies(x.fq, x.fg, mask)
                for parton, num, den, t_num, t_den in (
                    ("quark", e_d.eps_q, e_m.eps_q, t_q_d, t_q_m),
                    ("gluon", e_d.rej_g, e_m.rej_g, t_g_d, t_g_m),
                ):
                    sf = num / den if den > 0 and math.isfinite(num) else float("nan")
                    true = t_num / t_den if t_den > 0 else float("nan")
                    out[(name, ipt, _wp_key(wp), parton)] = (sf, true)
    return out


def add_nonclosure(
    records: list[dict[str, Any]],
    values: Mapping[tuple[str, int, str, str], tuple[float, float]],
    pt_edges: Sequence[float],
) -> None:
    """Write ``nonclosure_sf`` (extracted on pseudo-data), ``nonclosure_sf_true`` and ``nonclosure`` (their
    difference, null where undefined) into each record."""
    lows = [float(x) for x in pt_edges[:-1]]
    for rec in records:
        key = (rec["tagger"], lows.index(float(rec["pt_low"])), _wp_key(rec["working_point"]), rec["parton"])
        sf, true = values.get(key, (float("nan"), float("nan")))
        rec["nonclosure_sf"] = _num(sf)
        rec["nonclosure_sf_true"] = _num(true)
        rec["nonclosure"] = _num(sf - true)

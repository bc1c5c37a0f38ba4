"""Reweighting, matrix-method extraction, working-point cuts and scale-factor records.

Pure functions of merged histograms (and bootstrap replica arrays): the maths of
the final pass, per tagger and pT bin, kept apart from where histograms come from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qgcal.calibration import (
    Binned,
    apply_weights,
    efficiencies,
    extract,
    fractions,
    normalised,
    quark_mask,
    ratio_with_error,
    reweighting_factors,
    wp_cut_index,
)
from qgcal.config import Config
from qgcal.contract import (
    ALL_MC_FLAVOURS,
    FLAVOUR_DATA,
    FLAVOUR_GLUON,
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
    "BinInputs",
    "Extraction",
    "bootstrap_stat",
    "extract_all",
    "extract_inputs",
    "extraction_summary",
    "frozen_cuts",
    "scale_factor_records",
]

F, C = REGION_FORWARD, REGION_CENTRAL


def bootstrap_stat(
    cfg: Config,
    mc: Mapping[str, np.ndarray],
    data: Mapping[str, np.ndarray],
    cuts: Mapping[str, list[dict[str, Any]]],
    reweight: str,
) -> dict[tuple[str, int, str, str], float]:
    """Standard deviation of each scale factor over the replicas (cuts frozen from nominal)."""
    out: dict[tuple[str, int, str, str], float] = {}
    n_rep = cfg.bootstrap
    for name in sorted(cfg.taggers):
        tagger = cfg.taggers[name]
        for ipt in range(len(cfg.pt_bins_gev) - 1):
            samples: dict[tuple[str, str], list[float]] = {}
            for r in range(n_rep):
                ex = extract_inputs(cfg, inputs_from_replica(mc[name], data[name], ipt, r, cfg.pt_bins_gev), reweight)
                if not (math.isfinite(ex.f_fq - ex.f_cq) and ex.f_fq != ex.f_cq):
                    continue
                fr_ = ex.fractions()
                for wp in cfg.working_points:
                    cut = cuts[name][ipt][_wp_key(wp)]
                    if cut is None:
                        continue
                    mask = quark_mask(len(ex.weights), cut["index"], tagger.quark_side)
                    e_m = efficiencies(fr_, ex.mc_forward, ex.mc_central, mask)
                    e_d = efficiencies(fr_, ex.data_forward, ex.data_central, mask)
                    for parton, num, den in (("quark", e_d.eps_q, e_m.eps_q), ("gluon", e_d.rej_g, e_m.rej_g)):
                        if den > 0 and math.isfinite(num) and math.isfinite(den):
                            samples.setdefault((_wp_key(wp), parton), []).append(num / den)
            for (wp_key, parton), values in samples.items():
                if len(values) >= max(2, n_rep // 2):
                    out[(name, ipt, wp_key, parton)] = float(np.std(np.asarray(values), ddof=1))
    return out


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


def inputs_from_hists(mc: Any, data: Any, ipt: int) -> BinInputs:
    edges = mc.axes["pt"].edges
    return BinInputs(
        fq=_binned(mc, F, QUARK_FLAVOURS, ipt),
        fg=_binned(mc, F, (FLAVOUR_GLUON,), ipt),
        f_all=_binned(mc, F, ALL_MC_FLAVOURS, ipt),
        cq=_binned(mc, C, QUARK_FLAVOURS, ipt),
        cg=_binned(mc, C, (FLAVOUR_GLUON,), ipt),
        c_all=_binned(mc, C, ALL_MC_FLAVOURS, ipt),
        d_f=_binned(data, F, (FLAVOUR_DATA,), ipt),
        d_c=_binned(data, C, (FLAVOUR_DATA,), ipt),
        pt_low=float(edges[ipt]),
        pt_high=float(edges[ipt + 1]),
    )


def inputs_from_replica(mc: np.ndarray, data: np.ndarray, ipt: int, r: int, pt_edges: Sequence[float]) -> BinInputs:
    """One bootstrap replica: arrays (region, class[data, quark, gluon, other], pT, score, replica)."""

    def b(arr: np.ndarray, region: int, classes: Sequence[int]) -> Binned:
        v = arr[region, list(classes), ipt, :, r].sum(axis=0)
        return Binned(v, np.zeros_like(v))

    q, g, o = REPLICA_QUARK, REPLICA_GLUON, REPLICA_OTHER
    return BinInputs(
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


def extract_bin(cfg: Config, mc: Any, data: Any, ipt: int, reweight: str = "quark") -> Extraction:
    return extract_inputs(cfg, inputs_from_hists(mc, data, ipt), reweight)


def extract_inputs(cfg: Config, x: BinInputs, reweight: str = "quark") -> Extraction:
    """Pass 1 (reweighting) and pass 2 (matrix method) for one pT bin."""
    flags: list[str] = []
    fq, fg, f_all, cq, cg, c_all, d_f, d_c = x.fq, x.fg, x.f_all, x.cq, x.cg, x.c_all, x.d_f, x.d_c
    if not (f_all.total > 0 and c_all.total > 0 and fq.total > 0 and cq.total > 0):
        flags.append("empty_mc_bin")
    if not (d_f.total > 0 and d_c.total > 0):
        flags.append("empty_data_bin")
    elif min(d_f.total, d_c.total) < cfg.calibration.min_data_jets:
        flags.append("low_stats")
    if reweight == "none":
        w = np.ones_like(fq.values)
    else:
        ref_f, ref_c = (fq, cq) if reweight == "quark" else (fg, cg)
        w, lost = reweighting_factors(ref_f, ref_c)
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
    )


def extract_all(cfg: Config, mc: HistSet, data: HistSet, reweight: str = "quark") -> dict[str, list[Extraction]]:
    out: dict[str, list[Extraction]] = {}
    for name in sorted(cfg.taggers):
        col = tagger_column(name)
        n_pt = len(cfg.pt_bins_gev) - 1
        out[name] = [extract_bin(cfg, mc[col], data[col], i, reweight) for i in range(n_pt)]
    return out


# ----------------------------------------------------------------------------- scale factors


def frozen_cuts(cfg: Config, nominal: Mapping[str, list[Extraction]]) -> dict[str, list[dict[str, Any]]]:
    """Cut (bin-edge index and value) per tagger, pT bin and WP from nominal extracted MC."""
    cuts: dict[str, list[dict[str, Any]]] = {}
    for name, ex_bins in sorted(nominal.items()):
        tagger = cfg.taggers[name]
        edges = tagger.bins.bin_edges()
        per_bin = []
        for ex in ex_bins:
            per_wp: dict[str, Any] = {}
            for wp in cfg.working_points:
                k = wp_cut_index(ex.p_q_mc, wp, tagger.quark_side)
                per_wp[_wp_key(wp)] = None if k is None else {"index": k, "value": float(edges[k])}
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
) -> list[dict[str, Any]]:
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
                    if boot is not None:
                        stat = boot.get((name, ipt, _wp_key(wp), parton), float("nan"))
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
                            "stat_data": _num(stat_d),
                            "stat_mc": _num(stat_m),
                            "eff_data": _num(e_d),
                            "eff_mc": _num(e_m),
                            "cut": None if cut is None else cut["value"],
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

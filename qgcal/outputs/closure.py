"""Truth of a generated sample (``qgcal generate``) for the closure plots.

A sample written by qgcal's generator has ``truth.json`` next to its ``data/`` folder and
the true parton label of every pseudo-data jet in the branch ``closure_PartonTruthLabelID``,
which the calibration never reads. From them, per branch tagger and pT bin, this module
histograms the forward data jets (the selection of the calibration's config, applied here
with plain uproot + numpy) by true parton: the true data shapes, and at the calibration's
cuts the true data efficiencies; the true MC ones come from the MC truth shapes of
``extraction.json``. Nothing here is used by the calibration itself.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qgcal.config import BranchTagger, Config, parse_branch_expr
from qgcal.errors import ConfigError

__all__ = ["TRUTH_BRANCH", "DataTruth", "data_truth", "generated_truth_file", "true_efficiency"]

TRUTH_BRANCH = "closure_PartonTruthLabelID"


@dataclass
class DataTruth:
    """Per branch tagger: per pT bin, the true quark and gluon shapes of forward data jets (area 1)."""

    quark: dict[str, list[np.ndarray]]
    gluon: dict[str, list[np.ndarray]]


def _data_files(cfg: Config) -> list[Path]:
    out: list[Path] = []
    for sl in cfg.samples[cfg.data].slice_map().values():
        out += cfg.resolve_files(list(sl.files))
    return out


def generated_truth_file(cfg: Config) -> Path | None:
    """truth.json of a sample written by qgcal generate, when the config's data come from one."""
    try:
        files = _data_files(cfg)
    except (ConfigError, OSError):  # an unreadable sample: no closure, the calibration reports it
        return None
    dirs = {f.parent.parent for f in files}
    if len(dirs) != 1:
        return None
    path = dirs.pop() / "truth.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return path if doc.get("generator", {}).get("package") == "qgcal" else None


def _branch(cfg: Config, logical: str) -> str | None:
    expr = parse_branch_expr(cfg.branches.get(logical, logical))
    return expr.name if expr.index is None else None


def data_truth(cfg: Config) -> DataTruth | None:
    """True shapes of the forward data jets, or None when the sample is not a generated one."""
    import awkward as ak
    import uproot

    if generated_truth_file(cfg) is None:
        return None
    if cfg.selection.event_cuts or cfg.selection.jet_cuts or cfg.samples[cfg.data].triggers is not None:
        return None  # this replica of the selection knows the classic cuts only
    taggers = {n: t for n, t in sorted(cfg.taggers.items()) if isinstance(t, BranchTagger) and _branch(cfg, t.variable)}
    wanted: dict[str, str | None] = {k: _branch(cfg, k) for k in ("jet_pt", "jet_eta")}
    sel = cfg.selection
    extra = {"trigger": sel.require_trigger, "jet_cleaning": sel.require_cleaning}
    for k, on in extra.items():
        if on:
            wanted[k] = _branch(cfg, k)
    if sel.min_ntracks is not None:
        wanted["ntracks"] = _branch(cfg, sel.ntracks_variable)
    for n, t in taggers.items():
        wanted[f"tagger:{n}"] = _branch(cfg, t.variable)
    names = {k: v for k, v in wanted.items() if v is not None}
    if len(names) != len(wanted):
        return None
    scale = cfg.energy_scale()
    parts: list[dict[str, np.ndarray]] = []
    for path in _data_files(cfg):
        with uproot.open(path) as f:
            tree = f[cfg.samples[cfg.data].tree or cfg.tree]
            if TRUTH_BRANCH not in tree:
                return None
            a = tree.arrays(sorted({*names.values(), TRUTH_BRANCH}))
        a = a[ak.num(a[names["jet_pt"]]) >= 2]
        order = ak.argsort(a[names["jet_pt"]], ascending=False)

        def lead(branch: str, i: int, a: Any = a, order: Any = order) -> np.ndarray:
            return ak.to_numpy(a[branch][order][:, i])

        pt0, pt1 = lead(names["jet_pt"], 0) * scale, lead(names["jet_pt"], 1) * scale
        eta0, eta1 = lead(names["jet_eta"], 0), lead(names["jet_eta"], 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            m = (pt1 > sel.subleading_pt_min_gev) & (pt0 < sel.leading_pt_max_gev) & (pt0 / pt1 < sel.pt_balance_max)
        m &= (np.abs(eta0) < sel.abs_eta_max) & (np.abs(eta1) < sel.abs_eta_max)
        if sel.require_trigger:
            m &= ak.to_numpy(a[names["trigger"]]).astype(bool)
        if sel.require_cleaning:
            m &= lead(names["jet_cleaning"], 0).astype(bool) & lead(names["jet_cleaning"], 1).astype(bool)
        if sel.min_ntracks is not None:
            m &= (lead(names["ntracks"], 0) >= sel.min_ntracks) & (lead(names["ntracks"], 1) >= sel.min_ntracks)
        fwd0 = np.abs(eta0) >= np.abs(eta1)
        part = {
            "pt": np.where(fwd0, pt0, pt1)[m],
            "label": np.abs(np.where(fwd0, lead(TRUTH_BRANCH, 0), lead(TRUTH_BRANCH, 1))[m]),
        }
        for n in taggers:
            b = names[f"tagger:{n}"]
            part[n] = np.where(fwd0, lead(b, 0), lead(b, 1))[m].astype(float)
        parts.append(part)
    if not parts:
        return None
    jets = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    is_q = np.isin(jets["label"], [abs(x) for x in cfg.truth.quark])
    is_g = np.isin(jets["label"], [abs(x) for x in cfg.truth.gluon])
    pt_edges = cfg.pt_bins_gev
    out = DataTruth({}, {})
    for n, t in taggers.items():
        edges = np.asarray(t.bins.bin_edges())
        x = jets[n]
        inside = (x >= edges[0]) & (x < edges[-1])  # the histograms' flow bins are not in the shapes
        for store, lab in ((out.quark, is_q), (out.gluon, is_g)):
            shapes = []
            for lo, hi in itertools.pairwise(pt_edges):
                s = (jets["pt"] >= lo) & (jets["pt"] < hi) & lab & inside
                h = np.histogram(x[s], bins=edges)[0].astype(float)
                shapes.append(h / h.sum() if h.sum() > 0 else np.full(len(h), np.nan))
            store[n] = shapes
    return out


def true_efficiency(shape_q: Any, shape_g: Any, edges: Any, cut: float, side: str) -> tuple[float, float]:
    """(quark efficiency, gluon rejection) of true shapes at a cut on a bin edge."""
    k = int(np.searchsorted(np.asarray(edges), cut))
    q, g = np.asarray(shape_q, dtype=float), np.asarray(shape_g, dtype=float)
    tagged = np.arange(len(q)) < k if side == "low" else np.arange(len(q)) >= k
    return float(np.sum(q[tagged])), float(np.sum(g[~tagged]))


def true_sf(
    records: Sequence[Mapping[str, Any]],
    extraction: Mapping[str, Any],
    truth: DataTruth,
    cfg: Config,
) -> dict[tuple[str, float, str, float], float]:
    """(tagger, WP, parton, pt_low) -> true eps(data) / true eps(MC) at the record's cut."""
    out = {}
    for r in records:
        t = r["tagger"]
        if t not in truth.quark or r["cut"] is None or t not in extraction:
            continue
        ipt = [b["pt_low"] for b in extraction[t]].index(r["pt_low"])
        edges = cfg.taggers[t].bins.bin_edges()
        b = extraction[t][ipt]
        mc_q = [np.nan if v is None else v for v in b["truth_q_mc"]]
        mc_g = [np.nan if v is None else v for v in b["truth_g_mc"]]
        d = true_efficiency(truth.quark[t][ipt], truth.gluon[t][ipt], edges, r["cut"], r["quark_side"])
        m = true_efficiency(mc_q, mc_g, edges, r["cut"], r["quark_side"])
        i = 0 if r["parton"] == "quark" else 1
        out[(t, r["working_point"], r["parton"], r["pt_low"])] = d[i] / m[i] if m[i] > 0 else float("nan")
    return out

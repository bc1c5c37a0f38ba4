"""Slice normalisation: the stitched MC leading-jet pT spectrum must match the pseudo-data."""

from __future__ import annotations

import numpy as np

import qgcal
from qgcal.histset import load_histset


def _chi2(cfg) -> tuple[float, int, float]:
    out = cfg.output_path / "nominal" / "final_reweighting"
    mc, _ = load_histset(out / "merged_pythia.npz")
    data, _ = load_histset(out / "merged_data.npz")
    m = mc["lead_pt"].project("lead_pt")
    d = data["lead_pt"].project("lead_pt")
    mv, mvar = m.values(), m.variances()
    dv = d.values()
    use = dv > 20
    chi2 = float(np.sum((mv[use] - dv[use]) ** 2 / (mvar[use] + dv[use])))
    return chi2, int(use.sum()), float(mv.sum() / dv.sum())


def _same_selection(doc):
    # the MC-only truth-label requirement drops the ~3% of MC events with an unmatched
    # leading jet; data cannot be cut on truth, so the absolute comparison goes without it
    doc["truth"]["require_positive"] = False


def test_stitched_mc_matches_data_spectrum(shifted_sample, make_config):
    _, cfg = make_config(shifted_sample, mutate=_same_selection)
    qgcal.run(cfg, "nominal", workers=2)
    chi2, ndf, ratio = _chi2(cfg)
    assert ndf > 20
    assert chi2 / ndf < 2.0, (chi2, ndf)
    assert abs(ratio - 1.0) < 0.03  # absolute normalisation: lumi x xsec x eff / sumw


def test_wrong_slice_weight_bends_the_spectrum(shifted_sample, make_config):
    def wrong(doc):
        _same_selection(doc)
        doc["samples"]["pythia"]["slices"]["JZ5"]["filter_eff"] = 1.0  # forgot the filter efficiency

    _, cfg = make_config(shifted_sample, mutate=wrong)
    qgcal.run(cfg, "nominal", workers=2)
    chi2, ndf, _ = _chi2(cfg)
    assert chi2 / ndf > 5.0, (chi2, ndf)

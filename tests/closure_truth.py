"""Independent truth for closure tests: true efficiencies from the generator's truth labels.

Deliberately written without qgcal code (plain uproot + numpy), so a bug in the
pipeline's selection or normalisation cannot hide in its own expected values.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

SEL = {"sub_min": 500.0, "lead_max": 2000.0, "balance": 1.5, "eta_max": 2.1, "w_max": 100.0, "ntrk_min": 2}


@dataclass
class ForwardJets:
    pt: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    ntrk: np.ndarray
    bdt: np.ndarray


def _select(path: str, *, is_data: bool, norm: float) -> ForwardJets:
    label_branch = "closure_PartonTruthLabelID" if is_data else "jet_PartonTruthLabelID"
    names = ["jet_pt", "jet_eta", "jet_nTracks", "jet_trackBDT", "jet_cleaning", "jet_fire", label_branch]
    if not is_data:
        names += ["mcEventWeight", "pu_weight"]
    with uproot.open(path) as f:
        a = f["nominal"].arrays(names)
    a = a[(ak.num(a["jet_pt"]) >= 2) & (a["jet_fire"] != 0)]
    order = ak.argsort(a["jet_pt"], ascending=False)

    def lead(name: str, i: int) -> np.ndarray:
        return ak.to_numpy(a[name][order][:, i])

    pt0, pt1 = lead("jet_pt", 0) / 1000.0, lead("jet_pt", 1) / 1000.0
    eta0, eta1 = lead("jet_eta", 0), lead("jet_eta", 1)
    w = np.ones(len(a)) if is_data else ak.to_numpy(a["mcEventWeight"]).astype(float) * ak.to_numpy(a["pu_weight"])
    n0, n1 = lead("jet_nTracks", 0), lead("jet_nTracks", 1)
    l0, l1 = lead(label_branch, 0), lead(label_branch, 1)
    m = (pt1 > SEL["sub_min"]) & (pt0 < SEL["lead_max"]) & (pt0 / pt1 < SEL["balance"])
    m &= (np.abs(eta0) < SEL["eta_max"]) & (np.abs(eta1) < SEL["eta_max"])
    m &= (lead("jet_cleaning", 0) != 0) & (lead("jet_cleaning", 1) != 0)
    m &= (n0 >= SEL["ntrk_min"]) & (n1 >= SEL["ntrk_min"])
    if not is_data:
        m &= np.abs(w) < SEL["w_max"]
        m &= (l0 > 0) & (l1 > 0)
    fwd0 = np.abs(eta0) >= np.abs(eta1)

    def fwd(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
        return np.where(fwd0, x0, x1)[m]

    return ForwardJets(
        pt=fwd(pt0, pt1),
        label=fwd(l0, l1),
        weight=w[m] * norm,
        ntrk=fwd(n0, n1).astype(float),
        bdt=fwd(lead("jet_trackBDT", 0), lead("jet_trackBDT", 1)),
    )


def _concat(parts: list[ForwardJets]) -> ForwardJets:
    fields = ("pt", "label", "weight", "ntrk", "bdt")
    return ForwardJets(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


def forward_jets(sample_dir: Path, sample: str) -> ForwardJets:
    """Selected forward jets of 'data' or an MC sample, MC normalised per slice from truth.json."""
    truth = json.loads((sample_dir / "truth.json").read_text())
    if sample == "data":
        return _concat([_select(p, is_data=True, norm=1.0) for p in sorted(glob.glob(str(sample_dir / "data/*.root")))])
    lumi = truth["luminosity_pb"]
    parts = []
    for sl in truth["samples"][sample]["slices"]:
        files = sorted(glob.glob(str(sample_dir / f"mc/{sample}/{sl['name']}/*.root")))
        sumw = 0.0
        for p in files:
            with uproot.open(p) as f:
                sumw += float(f["histoEventCount"].values()[1])
        norm = lumi * sl["xsec_pb"] * sl["filter_eff"] / sumw
        parts += [_select(p, is_data=False, norm=norm) for p in files]
    return _concat(parts)


def true_efficiency(
    j: ForwardJets, tagger: str, pt_lo: float, pt_hi: float, cut: float, quark_side: str, parton: str
) -> float:
    """True quark efficiency (parton='quark') or gluon rejection ('gluon') of forward jets."""
    in_bin = (j.pt >= pt_lo) & (j.pt < pt_hi)
    value = j.ntrk if tagger == "ntrk" else j.bdt
    lab = np.abs(j.label)
    is_q = (lab >= 1) & (lab <= 5)
    is_g = lab == 21
    tagged_q = value < cut if quark_side == "low" else value >= cut
    if parton == "quark":
        sel = in_bin & is_q
        return float(np.sum(j.weight[sel & tagged_q]) / np.sum(j.weight[sel]))
    sel = in_bin & is_g
    return float(np.sum(j.weight[sel & ~tagged_q]) / np.sum(j.weight[sel]))

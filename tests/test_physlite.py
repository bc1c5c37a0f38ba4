"""The shipped configs/atlas_physlite.yaml on a generated file in the DAOD_PHYSLITE layout.

qgcal.generate.physlite rewrites the generated sample as PHYSLITE: xAOD branch names, MeV,
jets not pT-ordered, ``mcEventWeights[0]`` of 1e5-1e8 differing per JZ slice, one runNumber
for every slice and overlapping eventNumbers, an event-level cleaning flag. The same events
through the flat-ntuple demo config (with the same selection) must give the same scale
factors: layout, units, jet order and weight scale change nothing.
"""

from __future__ import annotations

import json
import math

import awkward as ak
import numpy as np
import uproot
import yaml

import qgcal
from conftest import DEMO, REPO
from qgcal.config import load_config
from qgcal.generate.physlite import DEFAULT_WEIGHT_SCALE, TREE, write_physlite


def _key(r: dict) -> tuple:
    return (r["tagger"], r["working_point"], r["parton"], r["pt_low"])


WIDTH = {"kind": "branch", "variable": "trackWidth", "valid": [0, 1], "bins": {"n": 40, "low": 0, "high": 0.4}}


def test_physlite_layout_through_the_shipped_config(small_sample, make_config, tmp_path):
    pl = write_physlite(small_sample / "sample", tmp_path / "physlite")
    # the layout's traps are really there
    with uproot.open(pl.slices["JZ5"][0]) as f:
        t = f[TREE]
        pt = t["AnalysisJetsAuxDyn.pt"].array()
        weights = t["EventInfoAuxDyn.mcEventWeights"].array()
        assert ak.any(pt[:, 1:] > pt[:, :-1])  # not pT-ordered
        assert 1e5 < float(np.median(np.abs(ak.to_numpy(weights[:, 0])))) < 1e8
        assert set(t["EventInfoAuxDyn.runNumber"].array(library="np").tolist()) == {284500}
    with uproot.open(pl.slices["JZ4"][0]) as f4, uproot.open(pl.slices["JZ6"][0]) as f6:
        e4 = set(f4[TREE]["EventInfoAuxDyn.eventNumber"].array(library="np").tolist())
        e6 = set(f6[TREE]["EventInfoAuxDyn.eventNumber"].array(library="np").tolist())
        assert len(e4 & e6) > 100  # slices share (run, event) numbers

    demo = yaml.safe_load(DEMO.read_text())
    truth = json.loads((small_sample / "sample" / "truth.json").read_text())
    doc = yaml.safe_load((REPO / "configs" / "atlas_physlite.yaml").read_text())
    doc["output"] = str(tmp_path / "out")
    doc["lumi_pb"] = truth["luminosity_pb"]
    doc["samples"]["data"]["files"] = [str(p) for p in pl.data]
    for name, sl in list(doc["samples"]["pythia"]["slices"].items()):
        gen = demo["samples"]["pythia"]["slices"][name]  # the generator's cross-sections, not ATLAS's
        sl.update(files=[str(p) for p in pl.slices[name]], xsec_pb=gen["xsec_pb"], filter_eff=gen["filter_eff"])
        sl["sum_of_weights"] = pl.sum_of_weights[name]
    doc["taggers"]["width"] = {**doc["taggers"]["width"], "valid": WIDTH["valid"], "bins": WIDTH["bins"]}
    doc["executor"] = {"kind": "serial", "workers": 1}
    doc["plots"] = {"enabled": False}
    doc["bootstrap"] = 10
    path = tmp_path / "atlas_physlite.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    cfg = load_config(path)
    got = qgcal.run(cfg, "nominal", workers=1).records

    def flat(d):  # the same events, flat layout, the same selection (no trigger: PHYSLITE has none)
        d["variations"] = {}
        d["plots"] = {"enabled": False}
        d["selection"]["require_trigger"] = False
        d["selection"]["abs_weight_max"] = None
        d["taggers"] = {"ntrk": d["taggers"]["ntrk"], "width": {**WIDTH, "quark_side": "low"}}

    _, ref_cfg = make_config(small_sample, mutate=flat)
    ref = qgcal.run(ref_cfg, "nominal", workers=1).records

    assert len(got) == len(ref) == 2 * 6 * 4 * 2
    by_key = {_key(r): r for r in got}
    n = 0
    for r in ref:
        g = by_key[_key(r)]
        if r["sf"] is None:
            assert g["sf"] is None
            continue
        # float32 mcEventWeights of 1e5-1e8 round each weight at 6e-8: SFs agree far below any error
        assert math.isclose(g["sf"], r["sf"], rel_tol=1e-5), (_key(r), g["sf"], r["sf"])
        assert g["stat"] is not None and g["stat"] > 0  # bootstrap errors at realistic weights
        n += 1
    assert n > 0.5 * len(ref)
    doc = json.loads((cfg.output_path / "results" / "nominal" / "scale_factors.json").read_text())
    slices = doc["metadata"]["merge"]["mc"]["slices"]
    for name, scale in DEFAULT_WEIGHT_SCALE.items():
        assert slices[name]["sumw"] == pl.sum_of_weights[name] and pl.sum_of_weights[name] > scale

"""The closure plots' truth of a generated sample agrees with tests/closure_truth.py.

qgcal.outputs.closure selects the forward data jets again (plain uproot) to get their true
shapes; closure_truth.py is an independent selection written for the closure tests. At every
cut of the calibration, the true data quark efficiency and gluon rejection from the two must agree.
"""

from __future__ import annotations

import json

import pytest
from closure_truth import forward_jets, true_efficiency
from test_outputs import published_small  # noqa: F401  (the session fixture: a sweep + publish)

from qgcal.outputs.closure import data_truth, generated_truth_file
from qgcal.outputs.closure import true_efficiency as shape_efficiency


def test_data_truth_matches_the_independent_selection(published_small, small_sample):  # noqa: F811
    cfg = published_small["cfg"]
    assert generated_truth_file(cfg) == small_sample / "sample" / "truth.json"
    truth = data_truth(cfg)
    assert truth is not None and set(truth.quark) == {"ntrk", "bdt"}  # branch taggers; gbdt is a model
    jets = forward_jets(small_sample / "sample", "data")
    records = json.loads((cfg.output_path / "results" / "combined" / "scale_factors.json").read_text())["records"]
    edges_pt = cfg.pt_bins_gev
    checked = 0
    for r in records:
        if r["tagger"] not in truth.quark or r["cut"] is None:
            continue
        ipt = edges_pt.index(r["pt_low"])
        edges = cfg.taggers[r["tagger"]].bins.bin_edges()
        q, g = truth.quark[r["tagger"]][ipt], truth.gluon[r["tagger"]][ipt]
        mine = shape_efficiency(q, g, edges, r["cut"], r["quark_side"])[0 if r["parton"] == "quark" else 1]
        want = true_efficiency(jets, r["tagger"], r["pt_low"], r["pt_high"], r["cut"], r["quark_side"], r["parton"])
        assert mine == pytest.approx(want, rel=1e-9), r
        checked += 1
    assert checked > len(records) // 2


def test_no_truth_for_a_sample_that_is_not_generated(small_sample, tmp_path):
    """Data that do not sit next to a qgcal truth.json get no truth closure (and no error)."""
    import shutil

    from conftest import write_config

    base = tmp_path / "copy"
    (base / "sample").mkdir(parents=True)
    shutil.copytree(small_sample / "sample" / "data", base / "sample" / "data")
    (base / "sample" / "mc").symlink_to(small_sample / "sample" / "mc")
    shutil.copyfile(small_sample / "sample" / "truth.json", base / "sample" / "truth.json")
    _, cfg = write_config(base, tmp_path / "out", name=f"nogen-{tmp_path.name}")
    assert generated_truth_file(cfg) == base / "sample" / "truth.json"
    (base / "sample" / "truth.json").write_text(json.dumps({"generator": {"package": "another"}}))
    assert generated_truth_file(cfg) is None
    (base / "sample" / "truth.json").unlink()
    assert generated_truth_file(cfg) is None and data_truth(cfg) is None

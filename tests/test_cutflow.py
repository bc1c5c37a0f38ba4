"""Cut flows: recorded per file (events and sum of weights after each cut, in order), summed per
sample by ``qgcal run`` and ``qgcal status``, warned about when a quality cut removes more than
``selection.warn_fraction``, and shown by the "no data after selection" error.

Expected sums are computed here with uproot and numpy, not with qgcal.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import uproot

import qgcal
from qgcal.artifacts import read_parquet_provenance
from qgcal.cutflow import CutFlow, cutflow_from_metas, large_cuts
from qgcal.stages.final_reweighting import NoDataError
from qgcal.workflows.status import collect_status, print_status


def _no_variations(doc: dict) -> None:
    doc["variations"] = {}


def test_root2pkl_records_events_and_weights_after_each_cut(small_sample, make_config):
    _, cfg = make_config(small_sample, mutate=_no_variations)
    qgcal.run(cfg, "nominal", workers=1)
    out = cfg.output_path / "nominal" / "root2pkl"
    for path in sorted(out.rglob("*.parquet")):
        prov = read_parquet_provenance(path)
        assert prov is not None
        events, sumw = prov["cutflow"], prov["cutflow_sumw"]
        order = [k for k, _ in sumw]
        assert order[:3] == ["read", "two_jets", "trigger"] and order[-1] == "selected"
        counts = [events[k] for k in order]
        assert counts == sorted(counts, reverse=True)  # never more events after a cut
        source = small_sample / "sample" / prov["task"]["kind"]
        if prov["task"]["kind"] == "data":
            assert all(w == events[k] for k, w in sumw)  # data weights are 1
        else:
            # the raw MC weight of every event in the file, summed independently of qgcal
            name = Path(next(iter(prov["inputs"]))).name
            (root,) = list(source.rglob(name))
            with uproot.open(root) as f:
                a = f["nominal"].arrays(["mcEventWeight", "pu_weight"], library="np")
            expected = math.fsum((a["mcEventWeight"].astype(np.float64) * a["pu_weight"]).tolist())
            assert dict(sumw)["read"] == pytest.approx(expected, rel=1e-12)


def test_run_logs_the_cut_flow_and_warns_once_per_sample(small_sample, make_config, caplog):
    def mutate(doc: dict) -> None:
        # an odd-nTracks "jet ID" removes about 3/4 of the events: a cut nobody means
        doc["selection"]["jet_cuts"] = [{"variable": "nTracks", "bits_all": 1, "name": "odd"}]
        doc["variations"] = {k: v for k, v in doc["variations"].items() if k in ("JES_up", "JES_down")}

    _, cfg = make_config(small_sample, mutate=mutate)
    with caplog.at_level(logging.INFO, logger="qgcal"):
        qgcal.sweep(cfg, ["nominal", "JES_up", "JES_down"], workers=1)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(m.startswith("cut flow of 'data' (data, 2 file(s))") for m in infos)
    assert any(m.startswith("cut flow of 'pythia' (mc, 8 file(s))") for m in infos)
    assert any("jet_cut.odd" in m for m in infos)
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "jet_cut.odd" in r.getMessage()
    ]
    # once per sample in the whole sweep (three systematics share data; JES trees are other MC reads)
    assert len([w for w in warnings if "sample 'data'" in w]) == 1, warnings
    assert len([w for w in warnings if "sample 'pythia'" in w]) == 1, warnings
    fraction = float(next(w for w in warnings if "sample 'data'" in w).split("removes ")[1].split("%")[0])
    assert 50 < fraction < 95


def test_status_shows_the_nominal_cut_flows(small_sample, make_config):
    _, cfg = make_config(small_sample, mutate=_no_variations)
    assert collect_status(cfg).cutflows == []  # nothing run yet: nothing to show
    qgcal.run(cfg, "nominal", workers=1)
    status = collect_status(cfg)
    flows = {f.sample: f for f in status.cutflows}
    assert set(flows) == {"data", "pythia"}
    with uproot.open(next((small_sample / "sample" / "data").glob("*.root"))) as f:
        per_file = f["nominal"].num_entries
    assert flows["data"].events["read"] == 2 * per_file
    doc = status.to_dict()
    assert doc["cutflows"]["data"]["cuts"][0] == ["read", 2 * per_file, 2 * per_file]
    text = io.StringIO()
    print_status(status, file=text)
    assert "cut flow of 'data'" in text.getvalue() and "selected" in text.getvalue()


def test_no_data_error_shows_the_cut_flow(small_sample, make_config):
    def mutate(doc: dict) -> None:
        doc["variations"] = {}
        doc["selection"]["event_cuts"] = [{"variable": "trigger", "min": 2, "apply_to": "data", "name": "never"}]

    _, cfg = make_config(small_sample, mutate=mutate)
    with pytest.raises(NoDataError) as err:
        qgcal.run(cfg, "nominal", workers=1)
    msg = str(err.value)
    assert "\n" not in msg
    assert "cut flow: read " in msg and "-> event_cut.never 0 ->" in msg and msg.endswith("selected 0")


def test_mc_sum_of_weights_is_normalised_per_slice():
    """Two slices, raw weights 1e6 apart: the cut flow adds them normalised, not raw."""
    import yaml

    from conftest import DEMO
    from qgcal.config import parse_config

    cfg = parse_config(yaml.safe_load(DEMO.read_text()), base_dir=DEMO.parent)
    jz4, jz5 = cfg.samples["pythia"].slices["JZ4"], cfg.samples["pythia"].slices["JZ5"]

    def meta(slice_name: str, sumw: float, read_w: float, sel_w: float) -> dict:
        carry = {
            "slice": slice_name,
            "sumw": sumw,
            "cutflow": {"read": 10, "selected": 4},
            "cutflow_sumw": [["read", read_w], ["selected", sel_w]],
        }
        return {"carry": carry, "invalid_scores": {"bdt": 1}}

    flow = cutflow_from_metas(cfg, "pythia", [meta("JZ4", 10.0, 10.0, 4.0), meta("JZ5", 1e7, 1e7, 4e6)])
    lumi = cfg.lumi_pb
    expected = lumi * jz4.xsec_pb * jz4.filter_eff * 0.4 + lumi * jz5.xsec_pb * jz5.filter_eff * 0.4
    assert flow.sumw["selected"] == pytest.approx(expected, rel=1e-12)
    assert flow.events == {"read": 20, "selected": 8}
    assert flow.invalid_scores == {"bdt": 2}


def test_large_cuts_skip_the_phase_space_and_count_tagger_exclusions():
    flow = CutFlow(
        "s",
        "data",
        events={"read": 1000, "two_jets": 900, "subleading_pt": 100, "cleaning": 94, "abs_weight": 90, "selected": 90},
        invalid_scores={"qgl": 20},
    )
    got = dict(large_cuts(flow, 0.05))
    assert set(got) == {"cleaning", "taggers.qgl.valid"}  # two_jets / subleading_pt: phase space
    assert got["cleaning"] == pytest.approx(0.06)
    assert got["taggers.qgl.valid"] == pytest.approx(20 / 180)

"""Selection terms: bit masks, event flags, per-sample triggers with pT ranges and prescales,
relative weight cuts, and tagger validity ranges (sentinels left out, never folded).

Expected values are written out by hand from small synthetic chunks.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import numpy as np
import pytest
import yaml

import qgcal
from conftest import DEMO
from qgcal.artifacts import iter_parquet_batches
from qgcal.config import Requirement, parse_config
from qgcal.contract import tagger_column
from qgcal.errors import ConfigError
from qgcal.histset import load_artifact
from qgcal.plan import FileTask, _needed_logicals
from qgcal.stages.root2pkl import requirement_mask, select_chunk


def _doc() -> dict[str, Any]:
    return yaml.safe_load(DEMO.read_text())


def _cfg(mutate=None):
    doc = _doc()
    doc["selection"].update({"min_ntracks": None, "require_cleaning": False, "abs_weight_max": None})
    if mutate is not None:
        mutate(doc)
    return parse_config(doc, base_dir=DEMO.parent)


def _task(kind: str = "data", sample: str = "data", slice_: str = "all") -> FileTask:
    return FileTask(
        sample=sample, slice=slice_, kind=kind, path="synthetic.root", variation="nominal", tree="t", branches=()
    )


def _chunk(pt: list[list[float]], **extra: Any) -> dict[str, Any]:
    """Events with the given jet pTs (GeV x 1000: the demo's MeV), central jets, all triggers fired."""
    n = len(pt)
    data: dict[str, Any] = {
        "jet_pt": ak.Array([[p * 1000 for p in ev] for ev in pt]),
        "jet_eta": ak.Array([[0.1] * len(ev) for ev in pt]),
        "run": np.ones(n, dtype=np.int64),
        "event": np.arange(n, dtype=np.int64),
        "trigger": np.ones(n, dtype=bool),
        "parton_label": ak.Array([[21] * len(ev) for ev in pt]),
        "mc_weight": np.ones(n),
        "pu_weight": np.ones(n),
        "nTracks": ak.Array([[10] * len(ev) for ev in pt]),
        "trackBDT": ak.Array([[0.0] * len(ev) for ev in pt]),
    }
    data.update(extra)
    return data


VARS = ["nTracks", "trackBDT"]


def test_requirement_terms():
    v = np.array([0, 1, 2, 3, 6, 7])
    assert requirement_mask(v, Requirement(variable="x")).tolist() == [False, True, True, True, True, True]
    assert requirement_mask(v, Requirement(variable="x", bits_all=2)).tolist() == [0, 0, 1, 1, 1, 1]
    assert requirement_mask(v, Requirement(variable="x", bits_all=3)).tolist() == [0, 0, 0, 1, 0, 1]
    assert requirement_mask(v, Requirement(variable="x", bits_any=5)).tolist() == [0, 1, 0, 1, 1, 1]
    assert requirement_mask(v, Requirement(variable="x", bits_none=4)).tolist() == [1, 1, 1, 1, 0, 0]
    assert requirement_mask(v, Requirement(variable="x", min=2, max=6)).tolist() == [0, 0, 1, 1, 1, 0]
    both = Requirement(variable="x", bits_all=2, bits_none=4)
    assert requirement_mask(v, both).tolist() == [0, 0, 1, 1, 0, 0]


def test_jet_id_bits_on_both_leading_jets():
    cfg = _cfg(lambda d: d["selection"].update(jet_cuts=[{"variable": "nTracks", "bits_all": 2, "name": "jetId"}]))
    # jetId-like values: event 0 both pass (6, 2), event 1 sub-leading fails (6, 4), event 2 a third jet fails (ignored)
    data = _chunk([[700, 600], [700, 600], [700, 600, 550]], nTracks=ak.Array([[6, 2], [6, 4], [2, 3, 0]]))
    cols, flow, flow_w = select_chunk(cfg, _task(), data, VARS)
    assert flow["jet_cut.jetId"] == 2 and flow["selected"] == 2
    assert sorted(set(cols["event"].tolist())) == [0, 2]
    assert list(flow) == list(flow_w) and flow_w["selected"] == 2.0


def test_event_flags_and_event_level_cleaning():
    def mutate(d):
        d["branches"]["met_filter"] = "Flag_METFilters"
        d["selection"].update(require_cleaning=True, event_cuts=[{"variable": "met_filter"}])

    cfg = _cfg(mutate)
    data = _chunk(
        [[700, 600]] * 4,
        met_filter=np.array([1, 0, 1, 1]),
        jet_cleaning=np.array([True, True, False, True]),  # a per-EVENT cleaning flag
    )
    cols, flow, _ = select_chunk(cfg, _task(), data, VARS)
    assert flow["event_cut.met_filter"] == 3
    assert flow["cleaning"] == 2
    assert sorted(set(cols["event"].tolist())) == [0, 3]


def _trigger_cfg(mode: str, triggers: list[dict[str, Any]]):
    def mutate(d):
        d["branches"].update({"hlt_a": "HLT_A", "hlt_b": "HLT_B", "ps_a": "PS_A"})
        d["samples"]["data"].update(triggers=triggers, trigger_mode=mode)
        d["samples"]["pythia"]["triggers"] = []
        d["selection"]["leading_pt_max_gev"] = 5000

    return _cfg(mutate)


def test_trigger_any_of_the_sample_s_own_branches():
    cfg = _trigger_cfg("any", [{"variable": "hlt_a"}, {"variable": "hlt_b"}])
    data = _chunk([[700, 600]] * 3, hlt_a=np.array([1, 0, 0]), hlt_b=np.array([0, 1, 0]))
    del data["trigger"]  # the generic 'trigger' branch is not read for this sample
    _, flow, _ = select_chunk(cfg, _task(), data, VARS)
    assert flow["trigger"] == 2


def test_pt_range_triggers_weight_data_by_the_prescale():
    trigs = [
        {"variable": "hlt_a", "lead_pt_min_gev": 500, "lead_pt_max_gev": 800, "prescale_variable": "ps_a"},
        {"variable": "hlt_b", "lead_pt_min_gev": 800, "prescale": 2.0},
    ]
    cfg = _trigger_cfg("pt_ranges", trigs)
    # leading pT 700 (range a), 700 with only b fired (out: b does not own 700), 900 (range b), 900 with only a
    data = _chunk(
        [[700, 600], [700, 600], [900, 800], [900, 800]],
        hlt_a=np.array([1, 0, 0, 1]),
        hlt_b=np.array([0, 1, 1, 0]),
        ps_a=np.array([7.0, 7.0, 7.0, 7.0]),
    )
    cols, flow, flow_w = select_chunk(cfg, _task(), data, VARS)
    assert flow["trigger"] == 2
    assert cols["event"][0::2].tolist() == [0, 2]
    assert cols["weight"][0::2].tolist() == [7.0, 2.0]
    assert flow_w["selected"] == 9.0
    assert flow_w["trigger"] == flow_w["abs_eta"] == 9.0  # the prescale-weighted sums after every later cut
    assert flow_w["two_jets"] == 4.0  # before the trigger: unweighted


def test_mc_without_triggers_reads_no_trigger_branch():
    cfg = _trigger_cfg("any", [{"variable": "hlt_a"}])
    data = _needed_logicals(cfg, "data", "data")
    mc = _needed_logicals(cfg, "mc", "pythia")
    assert "hlt_a" in data and "trigger" not in data
    assert "hlt_a" not in mc and "trigger" not in mc


def test_relative_weight_cut_uses_the_slice_reference():
    def mutate(d):
        d["selection"]["rel_weight_max"] = 10
        for s in ("pythia", "herwig"):
            for sl in d["samples"][s]["slices"].values():
                sl["weight_ref"] = 1e6

    cfg = _cfg(mutate)
    # the last event fails the sub-leading pT cut; the one before the relative weight cut
    data = _chunk([[700, 600]] * 3 + [[700, 400], [700]], mc_weight=np.array([1e6, 9.9e6, 1.1e7, 5.0, 7.0]))
    _, flow, flow_w = select_chunk(cfg, _task("mc", "pythia", "JZ4"), data, VARS)
    assert flow["rel_weight"] == 2
    assert flow_w["rel_weight"] == pytest.approx(1.09e7)
    assert flow_w["read"] == pytest.approx(2.19e7 + 12.0)
    assert flow_w["two_jets"] == pytest.approx(2.19e7 + 5.0)
    assert flow_w["trigger"] == pytest.approx(2.19e7 + 5.0)
    assert flow_w["subleading_pt"] == flow_w["abs_eta"] == pytest.approx(2.19e7)
    assert flow["subleading_pt"] == 3 and flow["two_jets"] == 4


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d["selection"].update(rel_weight_max=10), "weight_ref: needed by selection.rel_weight_max"),
        (lambda d: d["selection"].update(jet_cuts=[{"variable": "jet_id"}]), r"jet_cuts\[0\].variable"),
        (
            lambda d: d["samples"]["data"].update(triggers=[{"variable": "trigger", "prescale": 2.0}]),
            "prescale needs trigger_mode: pt_ranges",
        ),
        (
            lambda d: d["samples"]["data"].update(
                trigger_mode="pt_ranges",
                triggers=[
                    {"variable": "trigger", "lead_pt_min_gev": 500, "lead_pt_max_gev": 700},
                    {"variable": "trigger", "lead_pt_min_gev": 600},
                ],
            ),
            "overlap",
        ),
        (lambda d: d["taggers"]["bdt"].update(valid=[1, 0]), "lo <= hi"),
    ],
)
def test_bad_selection_terms_are_one_line_errors(mutate, match):
    with pytest.raises(ConfigError, match=match) as err:
        _cfg(mutate)
    assert "\n" not in str(err.value)


def test_defaults_keep_old_keys_and_drop_the_raw_weight_cut():
    cfg = _cfg()
    assert cfg.selection.abs_weight_max is None
    assert cfg.selection.require_trigger is True
    assert cfg.taggers["bdt"].valid is None


def test_out_of_range_tagger_values_are_left_out_not_folded(small_sample, make_config):
    """bdt: the generator's sentinel -10 (no tracks) and every value below -0.5 fall outside valid."""

    def mutate(d):
        d["selection"]["min_ntracks"] = None  # keep the no-track jets (bdt sentinel -10)
        d["variations"] = {}
        d["bootstrap"] = 4
        d["taggers"]["bdt"]["valid"] = [-0.5, 1.0]

    _, cfg = make_config(small_sample, mutate=mutate)
    qgcal.run(cfg, "nominal", workers=1)
    out = cfg.output_path / "nominal"
    n_bad = n_jets = 0
    for path in sorted((out / "pkl2predpkl" / "data").rglob("*.parquet")):
        for table in iter_parquet_batches(path):
            score = table.column(tagger_column("bdt")).to_numpy()
            n_bad += int(np.sum((score < -0.5) | (score > 1.0)))
            n_jets += len(score)
    assert n_bad > 0
    total = first_bin = 0.0
    invalid = 0
    for path in sorted((out / "predpkl2hist" / "data").rglob("*.npz")):
        hs, meta, extra = load_artifact(path)
        h = hs[tagger_column("bdt")]
        total += float(h.values().sum())
        first_bin += float(h.values()[..., 0].sum())
        invalid += meta["invalid_scores"]["bdt"]
        reps = extra["replicas.bdt"]
        assert reps.shape[-1] == 4
    # data weights are 1: the histogram holds exactly the valid jets inside the pT bins' range...
    assert invalid == n_bad
    assert total <= n_jets - n_bad
    # ...and the first bin (from -1) holds no folded sentinel: only values in [-0.5, first edge) can land
    # there, and bins below -0.5 are empty
    h_edges = np.asarray(cfg.taggers["bdt"].bins.bin_edges())
    assert h_edges[1] <= -0.5 and first_bin == 0.0

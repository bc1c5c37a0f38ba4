"""Where the MC sum of weights comes from: a bookkeeping tree, a histogram bin, a number, the tree itself.

Real normalisation comes from bookkeeping written before any skim (CMS ``Runs/genEventSumw``
summed over every file of a dataset; an ATLAS ``histoEventCount``-like histogram; a number
from AMI), never from a skimmed events tree. Every source must give the same slice
normalisation for the same bookkeeping, and each per-file artifact must hold only its own
file's share (the slice's sum is formed at merge).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot

import qgcal
from qgcal.artifacts import read_parquet_provenance
from qgcal.config import parse_branch_expr, parse_config
from qgcal.errors import ConfigError, InputError
from qgcal.rootio import open_tree, sum_over_entries

REAL = Path(__file__).resolve().parent / "data" / "real"  # vendored real files (README there)
SLICES = ("JZ4", "JZ5", "JZ6", "JZ7")


def _with_runs_tree(src: Path, dst: Path, *, rntuple: bool = False) -> float:
    """Copy ``src`` (nominal tree + histoEventCount) adding a CMS-like ``Runs`` tree whose
    two entries hold the file's sum of weights; return that sum (histoEventCount bin 2)."""
    with uproot.open(src) as f:
        arr = f["nominal"].arrays()
        counts = np.asarray(f["histoEventCount"].values(flow=False), dtype=np.float64)
    sumw = float(counts[1])
    runs = {"run": np.array([1, 2], dtype=np.uint32), "genEventSumw": np.array([0.25 * sumw, 0.75 * sumw])}
    with uproot.recreate(dst) as g:
        g.mktree("nominal", {field: arr[field].type.content for field in arr.fields})
        g["nominal"].extend({field: arr[field] for field in arr.fields})
        g["histoEventCount"] = (counts, np.arange(4, dtype=np.float64))
        if rntuple:
            g["Runs"] = runs  # uproot 5.7 writes a dict as an RNTuple
        else:
            g.mktree("Runs", {k: v.dtype for k, v in runs.items()})
            g["Runs"].extend(runs)
    return sumw


@pytest.fixture(scope="module")
def runs_sample(small_sample, tmp_path_factory) -> dict[str, Any]:
    """The small sample's Pythia slices copied with a Runs tree (JZ6 and JZ7 as RNTuples)."""
    dst = tmp_path_factory.mktemp("runs")
    slices: dict[str, list[str]] = {}
    sums: dict[str, float] = {}
    for name in SLICES:
        (dst / name).mkdir()
        files = sorted((small_sample / "sample" / "mc" / "pythia" / name).glob("*.root"))
        slices[name] = []
        sums[name] = 0.0
        for f in files:
            out = dst / name / f.name
            sums[name] += _with_runs_tree(f, out, rntuple=name in ("JZ6", "JZ7"))
            slices[name].append(str(out))
    return {"slices": slices, "sums": sums}


def _run(make_config, base: Path, slices: dict[str, list[str]], sow: dict, per_slice: dict | None = None) -> Any:
    def mutate(doc):
        doc["variations"] = {}
        doc["plots"] = {"enabled": False}
        doc["samples"]["pythia"]["sum_of_weights"] = sow
        for name, files in slices.items():
            doc["samples"]["pythia"]["slices"][name]["files"] = files
            if per_slice:
                doc["samples"]["pythia"]["slices"][name]["sum_of_weights"] = per_slice[name]

    _, cfg = make_config(base, mutate=mutate)
    return qgcal.run(cfg, "nominal", workers=1), cfg


def _sfs(result) -> dict[tuple, float | None]:
    return {(r["tagger"], r["working_point"], r["parton"], r["pt_low"]): r["sf"] for r in result.records}


def _merge_info(cfg) -> dict[str, Any]:
    doc = json.loads((cfg.output_path / "results" / "nominal" / "scale_factors.json").read_text())
    return doc["metadata"]["merge"]["mc"]["slices"]


def test_runs_tree_histogram_and_per_slice_value_give_the_same_normalisation(small_sample, make_config, runs_sample):
    slices, sums = runs_sample["slices"], runs_sample["sums"]
    ref, ref_cfg = _run(
        make_config, small_sample, slices, {"source": "histogram", "histogram": "histoEventCount", "bin": 2}
    )
    runs, runs_cfg = _run(
        make_config, small_sample, slices, {"source": "branch", "tree": "Runs", "branch": "genEventSumw"}
    )
    value, value_cfg = _run(make_config, small_sample, slices, {"source": "value"}, per_slice=sums)
    for cfg in (ref_cfg, runs_cfg, value_cfg):
        info = _merge_info(cfg)
        for name in SLICES:  # the slice's sum over ALL its files (two files per slice)
            assert info[name]["files"] == 2
            assert math.isclose(info[name]["sumw"], sums[name], rel_tol=1e-12)
    a, b, c = _sfs(ref), _sfs(runs), _sfs(value)
    assert a.keys() == b.keys() == c.keys()
    assert sum(v is not None for v in a.values()) > 0.5 * len(a)
    for k, v in a.items():
        if v is None:
            assert b[k] is None and c[k] is None
        else:
            assert math.isclose(b[k], v, rel_tol=1e-12) and math.isclose(c[k], v, rel_tol=1e-12), k
    # each per-file artifact holds its own file's Runs sum, not the slice's
    for name in SLICES:
        art = sorted((runs_cfg.output_path / "nominal" / "root2pkl" / "pythia" / name).glob("*.parquet"))
        assert len(art) == 2
        own = [read_parquet_provenance(p)["sumw"] for p in art]
        assert math.isclose(math.fsum(own), sums[name], rel_tol=1e-12)
        assert all(0 < s < sums[name] for s in own)


def test_real_pfnano_runs_tree_sum(tmp_path):
    """The Runs tree of a real PFNano file: genEventSumw summed over its entries, from the file alone."""
    path = REAL / "pfnano.root"
    with uproot.open(path) as f:
        expected = float(np.sum(f["Runs"]["genEventSumw"].array(library="np"), dtype=np.float64))
    with open_tree(path, "Events", config_key="tree") as ot:
        got = sum_over_entries(ot, "Runs", parse_branch_expr("genEventSumw"), config_key="k")
        assert got == expected == 10.0  # 10 events of weight 1
        with pytest.raises(InputError, match=r"no tree 'Run'.*did you mean 'Runs'"):
            sum_over_entries(ot, "Run", parse_branch_expr("genEventSumw"), config_key="samples.mc.sum_of_weights")
        with pytest.raises(InputError, match=r"no branch 'genEventSum'.*genEventSumw"):
            sum_over_entries(ot, "Runs", parse_branch_expr("genEventSum"), config_key="samples.mc.sum_of_weights")
        with pytest.raises(InputError, match=r"vector per entry"):
            sum_over_entries(ot, "Runs", parse_branch_expr("LHEPdfSumw"), config_key="samples.mc.sum_of_weights")
        with pytest.raises(InputError, match=r"out of range"):  # this file's LHEPdfSumw vectors are empty
            sum_over_entries(ot, "Runs", parse_branch_expr("LHEPdfSumw[0]"), config_key="k")


def test_events_tree_branch_sum_does_not_depend_on_chunking(small_sample, make_config):
    """source=branch of the events tree itself (valid only for unskimmed trees): an exact sum,
    the same bits for 1000-entry chunks and for whole-file chunks."""
    sow = {"source": "branch", "branch": "mcEventWeight"}
    sums = []
    for step in (1000, "100 MB"):

        def mutate(doc, step=step):
            doc["variations"] = {}
            doc["plots"] = {"enabled": False}
            doc["samples"]["pythia"]["sum_of_weights"] = sow
            doc["reading"]["step_size"] = step

        _, cfg = make_config(small_sample, mutate=mutate)
        qgcal.run(cfg, "nominal", workers=1)
        sums.append({k: v["sumw"] for k, v in _merge_info(cfg).items()})
    assert sums[0] == sums[1]
    src = small_sample / "sample" / "mc" / "pythia" / "JZ5"
    values = []
    for f in sorted(src.glob("*.root")):
        with uproot.open(f) as g:
            values.extend(g["nominal"]["mcEventWeight"].array(library="np").astype(np.float64).tolist())
    assert math.isclose(sums[0]["JZ5"], math.fsum(values), rel_tol=1e-15)  # the exact sum, rounded once


def _doc(sow: dict, slices: dict | None = None) -> dict:
    return {
        "lumi_pb": 1.0,
        "nominal_mc": "mc",
        "samples": {
            "data": {"kind": "data", "files": ["d.root"]},
            "mc": {
                "kind": "mc",
                "sum_of_weights": sow,
                "slices": slices or {"A": {"files": ["a.root"], "xsec_pb": 1.0}},
            },
        },
        "branches": {"run": "r", "event": "e", "jet_pt": "p", "jet_eta": "h", "parton_label": "l", "x": "x"},
        "event_weight": [],
        "selection": {"require_trigger": False, "require_cleaning": False, "min_ntracks": None},
        "taggers": {
            "t": {"kind": "branch", "variable": "x", "bins": {"n": 2, "low": 0, "high": 1}, "quark_side": "low"}
        },
    }


def test_bookkeeping_config_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"source='value' needs 'value', or a sum_of_weights in every slice.*A"):
        parse_config(_doc({"source": "value"}))
    with pytest.raises(ConfigError, match=r"'tree' is the tree of source=branch"):
        parse_config(_doc({"source": "histogram", "histogram": "h", "bin": 2, "tree": "Runs"}))
    with pytest.raises(ConfigError, match=r"slices A: a slice's sum_of_weights is used only with"):
        parse_config(
            _doc(
                {"source": "histogram", "histogram": "h", "bin": 2},
                {"A": {"files": ["a.root"], "xsec_pb": 1.0, "sum_of_weights": 5.0}},
            )
        )
    cfg = parse_config(
        _doc(
            {"source": "value", "value": 7.0},
            {
                "A": {"files": ["a.root"], "xsec_pb": 1.0, "sum_of_weights": 5.0},
                "B": {"files": ["b.root"], "xsec_pb": 1.0},
            },
        )
    )
    mc = cfg.samples["mc"]
    assert mc.configured_sum_of_weights("A") == 5.0 and mc.configured_sum_of_weights("B") == 7.0
    cfg = parse_config(_doc({"source": "branch", "tree": "Runs", "branch": "genEventSumw"}))
    assert cfg.samples["mc"].sum_of_weights.tree == "Runs"

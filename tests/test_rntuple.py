"""RNTuple inputs run end to end like TTrees: same config, same results as a TTree of the same data.

RNTuple is the ROOT columnar format of the HL-LHC era; uproot 5 reads it (and, from 5.7,
writes it: ``file[name] = {...}``). The generated sample is rewritten as RNTuples in several
clusters (so chunked reading is exercised), and a real CMS NanoAOD RNTuple is compared with a
TTree copy of what uproot reads from it.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot

import qgcal
from qgcal.config import parse_branch_expr
from qgcal.errors import InputError
from qgcal.rootio import chunk_ranges, is_rntuple, open_tree, read_chunk, resolve_branches

REAL = Path(__file__).resolve().parent / "data" / "real"  # vendored real files (README there)
SLICES = ("JZ4", "JZ5", "JZ6", "JZ7")


def _as_rntuple(src: Path, dst: Path, clusters: int = 4) -> None:
    """``src``'s nominal tree as an RNTuple of ``clusters`` clusters (+ its histoEventCount TH1)."""
    with uproot.open(src) as f:
        arr = f["nominal"].arrays()
        counts = f["histoEventCount"].values(flow=False) if "histoEventCount" in f else None
    edges = np.linspace(0, len(arr), clusters + 1).astype(int)
    with uproot.recreate(dst) as g:
        g["nominal"] = arr[edges[0] : edges[1]]
        for a, b in itertools.pairwise(edges[1:]):
            g["nominal"].extend(arr[a:b])
        if counts is not None:
            g["histoEventCount"] = (np.asarray(counts, dtype=np.float64), np.arange(4, dtype=np.float64))


@pytest.fixture(scope="module")
def rntuple_sample(small_sample, tmp_path_factory) -> dict[str, Any]:
    dst = tmp_path_factory.mktemp("rntuple")
    out: dict[str, Any] = {"data": [], "slices": {}}
    (dst / "data").mkdir()
    for f in sorted((small_sample / "sample" / "data").glob("*.root")):
        _as_rntuple(f, dst / "data" / f.name)
        out["data"].append(str(dst / "data" / f.name))
    for name in SLICES:
        (dst / name).mkdir()
        out["slices"][name] = []
        for f in sorted((small_sample / "sample" / "mc" / "pythia" / name).glob("*.root")):
            _as_rntuple(f, dst / name / f.name)
            out["slices"][name].append(str(dst / name / f.name))
    return out


def _records(cfg) -> list[dict]:
    doc = json.loads((cfg.output_path / "results" / "nominal" / "scale_factors.json").read_text())
    return doc["records"]


def test_generated_sample_as_rntuple_gives_the_ttree_results(small_sample, make_config, rntuple_sample):
    def common(doc):
        doc["variations"] = {}
        doc["plots"] = {"enabled": False}
        doc["bootstrap"] = 8

    _, ttree_cfg = make_config(small_sample, mutate=common)
    qgcal.run(ttree_cfg, "nominal", workers=1)

    def as_rntuple(doc, step):
        common(doc)
        doc["reading"]["step_size"] = step
        doc["samples"]["data"]["files"] = rntuple_sample["data"]
        for name, files in rntuple_sample["slices"].items():
            doc["samples"]["pythia"]["slices"][name]["files"] = files

    ref = _records(ttree_cfg)
    assert sum(r["sf"] is not None for r in ref) > 0.5 * len(ref)
    for step in ("100 MB", 700):  # whole file, and chunks on the cluster boundaries
        _, cfg = make_config(small_sample, mutate=lambda doc, step=step: as_rntuple(doc, step))
        qgcal.run(cfg, "nominal", workers=1)
        assert _records(cfg) == ref, step
        merged = cfg.output_path / "nominal" / "final_reweighting" / "merged_pythia.npz"
        assert (
            merged.read_bytes()
            == (ttree_cfg.output_path / "nominal" / "final_reweighting" / "merged_pythia.npz").read_bytes()
        )


def test_rntuple_chunks_follow_clusters_and_names_resolve_with_did_you_mean(rntuple_sample):
    path = Path(rntuple_sample["slices"]["JZ5"][0])
    with open_tree(path, "nominal", config_key="tree") as ot:
        assert is_rntuple(ot.tree)
        wanted = {
            "pt": (parse_branch_expr("jet_pt"), "branches.jet_pt"),
            "w": (parse_branch_expr("mcEventWeight"), "k"),
        }
        branches = resolve_branches(ot, wanted)
        n = int(ot.tree.num_entries)
        clusters = [0, *(int(c.num_first_entry) + int(c.num_entries) for c in ot.tree.cluster_summaries)]
        assert len(clusters) == 5
        ranges = chunk_ranges(ot, list(branches.values()), 1)
        assert [a for a, _ in ranges] + [n] == clusters  # one chunk per cluster
        assert chunk_ranges(ot, list(branches.values()), "100 MB") == ranges  # a memory size: one cluster each
        assert chunk_ranges(ot, list(branches.values()), 10**9) == [(0, n)]
        a, b = ranges[1]
        chunk = read_chunk(ot, branches, {k: v[0] for k, v in wanted.items()}, a, b)
        with uproot.open(path) as f:
            expected = f["nominal"]["jet_pt"].array(entry_start=a, entry_stop=b)
        assert chunk["pt"].tolist() == expected.tolist() and chunk["pt"].ndim == 2  # jagged, per jet
        with pytest.raises(InputError, match=r"has no branch 'jet_pT' \(asked for by branches.jet_pt\).*'jet_pt'"):
            resolve_branches(ot, {"pt": (parse_branch_expr("jet_pT"), "branches.jet_pt")})
    with pytest.raises(InputError, match=r"no tree 'nominl'.*did you mean 'nominal'"):
        open_tree(path, "nominl", config_key="tree")
    # a real NanoAOD RNTuple (~1500 top-level fields): jagged Jet_pt, and a did-you-mean for a typo
    with open_tree(REAL / "nano_dy_rntuple.root", "Events", config_key="tree") as ot:
        got = resolve_branches(ot, {"pt": (parse_branch_expr("Jet_pt"), "branches.jet_pt")})
        (a, b), *_ = chunk_ranges(ot, list(got.values()), "100 MB")
        assert read_chunk(ot, got, {"pt": parse_branch_expr("Jet_pt")}, a, b)["pt"].ndim == 2
        with pytest.raises(InputError, match=r"no branch 'Jet_ptt' \(asked for by branches.jet_pt\).*'Jet_pt'"):
            resolve_branches(ot, {"pt": (parse_branch_expr("Jet_ptt"), "branches.jet_pt")})


def _ttree_copy(src: Path, dst: Path, branches: list[str]) -> None:
    """A TTree holding what uproot reads from the RNTuple ``src`` (the named fields)."""
    with uproot.open(src) as f:
        arr = {name: f["Events"][name].array() for name in branches}  # per field: fast on ~2000 fields
    with uproot.recreate(dst) as g:
        g.mktree("Events", {name: a.type.content for name, a in arr.items()})
        g["Events"].extend(arr)


def _nano_doc(data: Path, mc: Path, out: Path) -> dict:
    return {
        "name": "nano-dy-rntuple",
        "output": str(out),
        "units": {"energy": "GeV"},
        "tree": "Events",
        "lumi_pb": 1.0,
        "data": "data",
        "nominal_mc": "mc",
        "samples": {
            "data": {"kind": "data", "files": [str(data)]},
            "mc": {
                "kind": "mc",
                "files": [str(mc)],
                "xsec_pb": 1.0,
                "sum_of_weights": {"source": "branch", "branch": "genWeight"},
            },
        },
        "branches": {
            "run": "run",
            "event": "event",
            "genWeight": "genWeight",
            "jet_pt": "Jet_pt",
            "jet_eta": "Jet_eta",
            "parton_label": "Jet_partonFlavour",
            "qgl": "Jet_qgl",
            "nconst": "Jet_nConstituents",
        },
        "event_weight": ["genWeight"],
        "selection": {
            "require_trigger": False,
            "require_cleaning": False,
            "subleading_pt_min_gev": 15,
            "leading_pt_max_gev": 1000,
            "pt_balance_max": 10,
            "abs_eta_max": 4.7,
            "min_ntracks": None,
        },
        "truth": {"use_abs": True},
        "pt_bins_gev": [15, 30, 1000],
        "taggers": {
            "qgl": {"kind": "branch", "variable": "qgl", "bins": {"n": 10, "low": 0, "high": 1}, "quark_side": "high"},
            "nconst": {
                "kind": "branch",
                "variable": "nconst",
                "bins": {"n": 20, "low": 0, "high": 60},
                "quark_side": "low",
            },
        },
        "working_points": [0.5, 0.7],
        "executor": {"kind": "serial", "workers": 1},
        "plots": {"enabled": False},
    }


def test_real_nanoaod_rntuple_gives_the_results_of_its_ttree_copy(tmp_path):
    import yaml

    from qgcal.config import load_config

    src = REAL / "nano_dy_rntuple.root"
    fields = ["run", "event", "genWeight", "Jet_pt", "Jet_eta", "Jet_partonFlavour", "Jet_qgl", "Jet_nConstituents"]
    results = {}
    for kind in ("rntuple", "ttree"):
        d = tmp_path / kind
        d.mkdir()
        mc = d / "mc.root"
        if kind == "rntuple":
            shutil.copyfile(src, mc)
        else:
            _ttree_copy(src, mc, fields)
        data = d / "data.root"  # pseudo-data: the same events (one file belongs to one sample only)
        shutil.copyfile(mc, data)
        path = d / "config.yaml"
        path.write_text(yaml.safe_dump(_nano_doc(data, mc, d / "out")))
        cfg = load_config(path)
        qgcal.run(cfg, "nominal", workers=1)
        results[kind] = _records(cfg)
        doc = json.loads((cfg.output_path / "results" / "nominal" / "scale_factors.json").read_text())
        assert doc["metadata"]["merge"]["mc"]["slices"]["all"]["jets"] > 20  # real events were selected
    assert results["rntuple"] == results["ttree"]
    assert len(results["ttree"]) == 2 * 2 * 2 * 2  # taggers x pT bins x WPs x partons
    with uproot.open(src) as f:
        assert f["Events"].classname == "ROOT::RNTuple"

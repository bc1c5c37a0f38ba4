"""The constituent tagger: generated constituents, DeepSets training, scoring in pass 2, closure.

Truth for the checks comes from the ROOT files, read here independently of the passes: the
constituents of each selected forward jet are gathered from the raw branches and scored by the
saved model, and the true efficiencies use the generator's labels (closure_PartonTruthLabelID in
pseudo-data).
"""

from __future__ import annotations

import glob
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot
from closure_truth import SEL

import qgcal
from conftest import write_config
from qgcal.generate import generate_sample

torch = pytest.importorskip("torch")
roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score

FEATURES = ["constit_ptFrac", "constit_deta", "constit_dphi", "constit_charge", "constit_d0", "constit_dz"]
EPOCHS = 6


def _mutate(doc: dict[str, Any]) -> None:
    doc["branches"]["nConstituents"] = "jet_nConstituents"
    doc["branches"].update({f: f for f in FEATURES})
    doc["taggers"] = {
        "ntrk": doc["taggers"]["ntrk"],
        "cons": {
            "kind": "constituents",
            "model": "cons.safetensors",
            "features": FEATURES,
            "counts": "nConstituents",
            "bins": {"n": 60, "low": -6, "high": 6},
            "quark_side": "low",
            "train_epochs": EPOCHS,
            "hidden": 16,
        },
    }
    doc["variations"] = {}


@pytest.fixture(scope="module")
def cons_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("constituents")
    generate_sample(base / "sample", events=40_000, files=2, seed=5, constituents=True)
    return base


@pytest.fixture(scope="module")
def calibrated(cons_sample: Path) -> tuple[Any, Any]:
    _, cfg = write_config(cons_sample, cons_sample / "out1", name="cons1", mutate=_mutate)
    qgcal.train(cfg, workers=2)
    return cfg, qgcal.run(cfg, "nominal", workers=2)


# ----------------------------------------------------------------------------- generator


def _check_consistent(arrays: ak.Array) -> None:
    assert ak.all(arrays["jet_nConstituents"] == arrays["jet_nTracks"])
    assert ak.all(ak.sum(arrays["jet_nConstituents"], axis=1) == ak.num(arrays["constit_ptFrac"]))
    c = ak.flatten(arrays["jet_nConstituents"])
    z = ak.unflatten(ak.flatten(arrays["constit_ptFrac"]), c)
    dr = np.hypot(
        ak.unflatten(ak.flatten(arrays["constit_deta"]), c), ak.unflatten(ak.flatten(arrays["constit_dphi"]), c)
    )
    ok = ak.to_numpy(c) > 0
    width = ak.to_numpy(ak.sum(z * dr, axis=1) / ak.where(ak.sum(z, axis=1) > 0, ak.sum(z, axis=1), 1.0))[ok]
    expected = ak.to_numpy(ak.flatten(arrays["jet_trackWidth"]))[ok]
    assert np.max(np.abs(width - expected) / expected) < 1e-3  # FLOAT_BITS quantisation only


def test_constituents_match_ntracks_and_width_in_every_tree(cons_sample: Path) -> None:
    names = ["jet_nTracks", "jet_trackWidth", "jet_nConstituents", *FEATURES]
    for path in [
        *sorted(glob.glob(str(cons_sample / "sample/data/*.root")))[:1],
        *sorted(glob.glob(str(cons_sample / "sample/mc/pythia/JZ5/*.root")))[:1],
    ]:
        with uproot.open(path) as f:
            for tree in [k.split(";")[0] for k in f.keys() if f[k].classname == "TTree"]:
                _check_consistent(f[tree].arrays(names))  # the JER tree re-sorts jets: constituents follow


def test_switching_constituents_on_leaves_every_other_branch_alone(tmp_path: Path) -> None:
    generate_sample(tmp_path / "a", events=1500, files=1, seed=3, constituents=True)
    generate_sample(tmp_path / "b", events=1500, files=1, seed=3)
    rel = "mc/pythia/JZ5/pythia_JZ5_000.root"
    with uproot.open(tmp_path / "a" / rel) as fa, uproot.open(tmp_path / "b" / rel) as fb:
        for tree in ("nominal", "syst_JET_JER__1up"):
            b = fb[tree].arrays()
            a = fa[tree].arrays(b.fields)
            assert {f for f in fa[tree].keys()} - set(b.fields) >= {"jet_nConstituents", *FEATURES}
            for field in b.fields:
                assert ak.all(a[field] == b[field]), (tree, field)


# ----------------------------------------------------------------------------- training and scoring


def _pred_tables(cfg: Any, sample: str) -> dict[str, np.ndarray]:
    files = sorted(glob.glob(str(cfg.output_path / "nominal" / "pkl2predpkl" / sample / "*" / "*.parquet")))
    tables = [pq.read_table(p) for p in files]
    return {n: np.concatenate([t.column(n).to_numpy() for t in tables]) for n in tables[0].column_names}


def test_beats_ntracks_in_every_pt_bin_on_held_out_jets(calibrated: tuple[Any, Any]) -> None:
    cfg, _ = calibrated
    t = _pred_tables(cfg, "pythia")
    label = np.abs(t["parton_label"])
    held_out = (t["event"] % 2 == 1) & ((label == 21) | ((label >= 1) & (label <= 5)))
    edges = cfg.pt_bins_gev
    for lo, hi in itertools.pairwise(edges):
        sel = held_out & (t["pt"] >= lo) & (t["pt"] < hi)
        gluon = label[sel] == 21
        assert 200 < gluon.size and 0 < gluon.sum() < gluon.size, (lo, gluon.size)
        auc_model = roc_auc_score(gluon, t["tagger.cons"][sel])
        auc_ntrk = roc_auc_score(gluon, t["tagger.ntrk"][sel])
        assert auc_model > auc_ntrk + 0.02, (lo, hi, auc_model, auc_ntrk)


def test_training_and_scores_are_reproducible_for_any_worker_count(calibrated: tuple[Any, Any]) -> None:
    cfg, _ = calibrated
    base = cfg.output_path.parent
    _, cfg2 = write_config(base, base / "out2", name="cons2", mutate=_mutate)
    shutil.copytree(cfg.output_path / "nominal" / "root2pkl", cfg2.output_path / "nominal" / "root2pkl")
    qgcal.train(cfg2, workers=1)
    m1, m2 = cfg.output_path / "models", cfg2.output_path / "models"
    assert (m1 / "cons.safetensors").read_bytes() == (m2 / "cons.safetensors").read_bytes()
    assert (m1 / "cons.safetensors.json").read_bytes() == (m2 / "cons.safetensors.json").read_bytes()
    qgcal.run(cfg2, "nominal", workers=1)
    for sample in ("data", "pythia"):
        a, b = _pred_tables(cfg, sample)["tagger.cons"], _pred_tables(cfg2, sample)["tagger.cons"]
        assert a.tobytes() == b.tobytes()
    # the model file holds tensors only: the safetensors header is JSON, nothing to unpickle
    raw = (m1 / "cons.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert all(v["dtype"] == "F32" for v in header.values())


def test_provenance_names_the_route_and_the_model(calibrated: tuple[Any, Any]) -> None:
    cfg, _ = calibrated
    path = min(glob.glob(str(cfg.output_path / "nominal" / "pkl2predpkl" / "data" / "*" / "*.parquet")))
    from qgcal.artifacts import read_parquet_provenance

    prov = read_parquet_provenance(Path(path))
    assert prov is not None
    inf = prov["inference"]["cons"]
    sidecar = json.loads((cfg.output_path / "models" / "cons.safetensors.json").read_text())
    assert inf["backend"] == "local" and inf["device"] == "cpu"
    assert inf["model"]["sha256"] == sidecar["weights_sha256"]


# ----------------------------------------------------------------------------- calibration closure


def _forward_scored(path: str, *, is_data: bool, norm: float, scorer: Any) -> dict[str, np.ndarray]:
    """The closure_truth selection, plus the forward jet's constituents scored straight from the file."""
    label_branch = "closure_PartonTruthLabelID" if is_data else "jet_PartonTruthLabelID"
    names = ["jet_pt", "jet_eta", "jet_nTracks", "jet_cleaning", "jet_fire", label_branch, "jet_nConstituents"]
    names += FEATURES + ([] if is_data else ["mcEventWeight", "pu_weight"])
    with uproot.open(path) as f:
        a = f["nominal"].arrays(names)
    a = a[(ak.num(a["jet_pt"]) >= 2) & (a["jet_fire"] != 0)]
    order = ak.argsort(a["jet_pt"], ascending=False)
    i0, i1 = ak.to_numpy(order[:, 0]), ak.to_numpy(order[:, 1])

    def lead(name: str, k: int) -> np.ndarray:
        return ak.to_numpy(a[name][order][:, k])

    pt0, pt1 = lead("jet_pt", 0) / 1000.0, lead("jet_pt", 1) / 1000.0
    eta0, eta1 = lead("jet_eta", 0), lead("jet_eta", 1)
    w = np.ones(len(a)) if is_data else ak.to_numpy(a["mcEventWeight"]).astype(float) * ak.to_numpy(a["pu_weight"])
    l0, l1 = lead(label_branch, 0), lead(label_branch, 1)
    m = (pt1 > SEL["sub_min"]) & (pt0 < SEL["lead_max"]) & (pt0 / pt1 < SEL["balance"])
    m &= (np.abs(eta0) < SEL["eta_max"]) & (np.abs(eta1) < SEL["eta_max"])
    m &= (lead("jet_cleaning", 0) != 0) & (lead("jet_cleaning", 1) != 0)
    m &= (lead("jet_nTracks", 0) >= SEL["ntrk_min"]) & (lead("jet_nTracks", 1) >= SEL["ntrk_min"])
    if not is_data:
        m &= (np.abs(w) < SEL["w_max"]) & (l0 > 0) & (l1 > 0)
    fwd0 = np.abs(eta0) >= np.abs(eta1)
    jet_in_event = np.where(fwd0, i0, i1)[m]
    # constituents of those jets: events' jets one after the other, each jet's constituents in turn
    jet_off = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(a["jet_pt"])))])
    counts = ak.to_numpy(ak.flatten(a["jet_nConstituents"])).astype(np.int64)
    first = np.concatenate([[0], np.cumsum(counts)])
    g = jet_off[:-1][m] + jet_in_event
    lens = counts[g]
    out_off = np.concatenate([[0], np.cumsum(lens)])
    rows = np.repeat(first[g] - out_off[:-1], lens) + np.arange(out_off[-1])
    values = np.column_stack([ak.to_numpy(ak.flatten(a[f])).astype(np.float32) for f in FEATURES])[rows]
    return {
        "pt": np.where(fwd0, pt0, pt1)[m],
        "label": np.where(fwd0, l0, l1)[m],
        "weight": w[m] * norm,
        "score": scorer.predict_constituents(values, lens).astype(np.float64),
    }


def _forward_jets(sample_dir: Path, sample: str, scorer: Any) -> dict[str, np.ndarray]:
    truth = json.loads((sample_dir / "truth.json").read_text())
    parts = []
    if sample == "data":
        for p in sorted(glob.glob(str(sample_dir / "data/*.root"))):
            parts.append(_forward_scored(p, is_data=True, norm=1.0, scorer=scorer))
    else:
        for sl in truth["samples"][sample]["slices"]:
            files = sorted(glob.glob(str(sample_dir / f"mc/{sample}/{sl['name']}/*.root")))
            sumw = 0.0
            for p in files:
                with uproot.open(p) as f:
                    sumw += float(f["histoEventCount"].values()[1])
            norm = truth["luminosity_pb"] * sl["xsec_pb"] * sl["filter_eff"] / sumw
            parts += [_forward_scored(p, is_data=False, norm=norm, scorer=scorer) for p in files]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _true_eff(j: dict[str, np.ndarray], r: dict[str, Any]) -> float:
    in_bin = (j["pt"] >= r["pt_low"]) & (j["pt"] < r["pt_high"])
    lab = np.abs(j["label"])
    tagged_q = j["score"] < r["cut"] if r["quark_side"] == "low" else j["score"] >= r["cut"]
    if r["parton"] == "quark":
        sel = in_bin & (lab >= 1) & (lab <= 5)
        return float(np.sum(j["weight"][sel & tagged_q]) / np.sum(j["weight"][sel]))
    sel = in_bin & (lab == 21)
    return float(np.sum(j["weight"][sel & ~tagged_q]) / np.sum(j["weight"][sel]))


def test_calibration_gives_healthy_records_that_close_on_truth(calibrated: tuple[Any, Any]) -> None:
    from qgcal.inference.constituent_model import ConstituentScorer

    cfg, result = calibrated
    records = [r for r in result.records if r["tagger"] == "cons"]
    assert len(records) == 6 * 4 * 2  # pT bins x WPs x partons
    flagged = [r for r in records if r["flags"]]
    assert all(r["flags"] == ["unphysical_efficiency"] for r in flagged), [r["flags"] for r in flagged]
    assert len(flagged) <= len(records) // 10
    scorer = ConstituentScorer(cfg.output_path / "models" / "cons.safetensors")
    sample_dir = cfg.output_path.parent / "sample"
    data, mc = _forward_jets(sample_dir, "data", scorer), _forward_jets(sample_dir, "pythia", scorer)
    # the passes scored the same forward jets as the independent gather from the files did
    passes = _pred_tables(cfg, "data")
    fwd = passes["tagger.cons"][passes["region"] == 0]
    np.testing.assert_allclose(np.sort(fwd), np.sort(data["score"]), rtol=0, atol=1e-6)
    pulls = []
    for r in records:
        if r["flags"]:
            continue
        truth = _true_eff(data, r) / _true_eff(mc, r)
        pulls.append((r["sf"] - truth) / r["stat"])
    pulls_a = np.array(pulls)
    assert np.all(np.abs(pulls_a) < 3.0), pulls_a
    assert 0.2 < np.std(pulls_a) < 1.6


# ----------------------------------------------------------------------------- real PFNano constituents

PFNANO = {
    "pfc_pt": "JetPFCands_pt",
    "pfc_etarel": "JetPFCands_btagEtaRel",
    "pfc_ptratio": "JetPFCands_btagPtRatio",
    "pfc_ppar": "JetPFCands_btagPParRatio",
    "pfc_sip3d": "JetPFCands_btagSip3dVal",
    "pfc_jetdist": "JetPFCands_btagJetDistVal",
}


def test_pfnano_constituents_reach_the_jet_tables(tmp_path: Path) -> None:
    """The mapping documented in configs/cms_nanoaod.yaml, on the real PFNano file: each selected
    jet's list holds exactly its Jet_nConstituents JetPFCands values, in the file's order."""
    import yaml

    from conftest import REPO
    from qgcal.config import load_config
    from qgcal.plan import plan_tasks
    from qgcal.workflows.single import make_runner, run_file_passes

    real = REPO / "tests" / "data" / "real" / "pfnano.root"  # vendored from shared/data/real
    doc = yaml.safe_load((REPO / "configs" / "cms_nanoaod.yaml").read_text())
    mc = tmp_path / "mc.root"
    shutil.copyfile(real, mc)
    doc["output"] = str(tmp_path / "out")
    doc["executor"] = {"kind": "serial"}
    doc["samples"][doc["nominal_mc"]]["slices"] = {"one": {"files": [str(mc)], "xsec_pb": 1.0}}
    doc["samples"][doc["data"]]["files"] = [str(tmp_path / "data.root")]
    shutil.copyfile(real, tmp_path / "data.root")
    doc["branches"].update(PFNANO)
    doc["taggers"]["pfcands"] = {
        "kind": "constituents",
        "model": "pfcands.safetensors",
        "counts": "nconst",
        "features": list(PFNANO),
        "bins": {"n": 60, "low": -6, "high": 6},
    }
    doc["variations"] = {}
    path = tmp_path / "pfnano.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    cfg = load_config(path)
    tasks = plan_tasks(cfg, "nominal", include_data=False)
    runner = make_runner(cfg)
    try:
        run_file_passes(cfg, tasks, runner, through=0)
    finally:
        runner.shutdown()
    table = pq.read_table(min(glob.glob(str(cfg.output_path / "nominal" / "root2pkl" / "*" / "*" / "*.parquet"))))
    assert table.num_rows > 0
    lens = table.column("pfc_pt").combine_chunks().value_lengths().to_numpy()
    np.testing.assert_array_equal(lens, table.column("nconst").to_numpy())
    with uproot.open(mc) as f:
        raw = f["Events"].arrays(["event", "Jet_pt", "Jet_nConstituents", "JetPFCands_pt"])
    events = ak.to_numpy(raw["event"]).tolist()
    pts = table.column("pt").to_numpy()
    lists = table.column("pfc_pt").to_pylist()
    for ev, pt, values in zip(table.column("event").to_numpy().tolist(), pts, lists):
        e = events.index(ev)
        jet = int(np.argmin(np.abs(ak.to_numpy(raw["Jet_pt"][e]) - pt)))
        start = int(np.sum(ak.to_numpy(raw["Jet_nConstituents"][e])[:jet]))
        expected = ak.to_numpy(raw["JetPFCands_pt"][e])[start : start + len(values)]
        np.testing.assert_array_equal(np.asarray(values, dtype=np.float32), expected)


def test_counts_of_another_collection_are_a_one_line_error(cons_sample: Path) -> None:
    from qgcal.errors import QgcalError

    def mutate(doc: dict[str, Any]) -> None:
        _mutate(doc)
        doc["branches"]["nConstituents"] = "jet_nTracks_sys_eff"  # thinned: not the constituents' count
        doc["samples"] = {k: v for k, v in doc["samples"].items() if k != "herwig"}

    _, cfg = write_config(cons_sample, cons_sample / "out_bad", name="cons_bad", mutate=mutate)
    with pytest.raises(QgcalError, match="nConstituents") as err:
        qgcal.train(cfg, workers=1)
    assert "\n" not in str(err.value) and "constituent" in str(err.value), str(err.value)
    assert not (cfg.output_path / "models" / "cons.safetensors").exists()

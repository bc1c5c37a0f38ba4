"""Tests of qgcal.generate: layout, branch types, normalisation, physics, determinism.

Expectations come from truth.json (the generator's own record) or from
closed-form physics (the power-law integral), never from copied constants,
so a change of model numbers only fails tests that it really breaks.
"""

from __future__ import annotations

import itertools
import json
import zlib
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

from qgcal.generate import GeneratedSample, generate_sample
from qgcal.generate.compress import BasketCompressor
from qgcal.generate.model import PYTHIA_WEIGHTS
from qgcal.generate.spectrum import TRUE_SPECTRUM

EVENTS = 20_000
FILES = 2
PT_EDGES = np.array([500.0, 600.0, 800.0, 1000.0, 1200.0, 1500.0, 2000.0])
MC_TREES = ["nominal", "syst_JET_JES__1up", "syst_JET_JES__1down", "syst_JET_JER__1up"]
JET_BRANCHES = {
    "jet_pt": "float32",
    "jet_eta": "float32",
    "jet_phi": "float32",
    "jet_nTracks": "int32",
    "jet_trackWidth": "float32",
    "jet_trackC1": "float32",
    "jet_trackBDT": "float32",
    "jet_PartonTruthLabelID": "int32",
    "jet_cleaning": "bool",
}
EVENT_BRANCHES = {"runNumber": "int32", "eventNumber": "int64", "jet_fire": "bool"}
MC_ONLY = {
    "mcEventWeight": "float32",
    "pu_weight": "float32",
    "jet_nTracks_sys_eff": "int32",
    "pdf_weight": "float32",
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> GeneratedSample:
    return generate_sample(tmp_path_factory.mktemp("gen"), events=EVENTS, files=FILES, seed=7)


@pytest.fixture(scope="module")
def truth(sample: GeneratedSample) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(sample.truth.read_text())
    return out


def _read(path: Path, tree: str = "nominal") -> ak.Array:
    with uproot.open(path) as f:
        return f[tree].arrays()


def _concat(out: Path, files: list[dict[str, Any]], tree: str = "nominal") -> ak.Array:
    return ak.concatenate([_read(out / f["path"], tree) for f in files])


def _mc_events(sample: GeneratedSample, truth: dict[str, Any], name: str) -> tuple[ak.Array, np.ndarray]:
    """All nominal events of an MC sample with their full normalisation weight."""
    lumi = truth["luminosity_pb"]
    parts, weights = [], []
    for sl in truth["samples"][name]["slices"]:
        sumw = 0.0
        for f in sl["files"]:
            with uproot.open(sample.out / f["path"]) as rf:
                sumw += float(rf["histoEventCount"].values()[1])
        a = _concat(sample.out, sl["files"])
        w = ak.to_numpy(a.mcEventWeight).astype(np.float64) * ak.to_numpy(a.pu_weight)
        parts.append(a)
        weights.append(lumi * sl["xsec_pb"] * sl["filter_eff"] * w / sumw)
    return ak.concatenate(parts), np.concatenate(weights)


def _select(a: ak.Array, label_branch: str, mc: bool) -> dict[str, np.ndarray]:
    """The PHYSICS.md default selection; returns per-event arrays of the two leading jets."""
    two = a[a.njet >= 2]
    pt = ak.to_numpy(two.jet_pt[:, :2]) / 1000.0
    eta = ak.to_numpy(two.jet_eta[:, :2])
    ntrk = ak.to_numpy(two.jet_nTracks[:, :2])
    clean = ak.to_numpy(two.jet_cleaning[:, :2])
    label = ak.to_numpy(two[label_branch][:, :2])
    ok = (
        ak.to_numpy(two.jet_fire)
        & (pt[:, 1] > 500)
        & (pt[:, 0] < 2000)
        & (pt[:, 0] / pt[:, 1] < 1.5)
        & np.all(np.abs(eta) < 2.1, axis=1)
        & np.all(clean, axis=1)
        & np.all(ntrk > 1, axis=1)
    )
    if mc:
        ok &= (np.abs(ak.to_numpy(two.mcEventWeight)) < 100) & np.all(label > 0, axis=1)
    fwd = np.argmax(np.abs(eta[ok]), axis=1)
    rows = np.arange(int(ok.sum()))
    sel = {"ok": ok, "pt": pt[ok], "lead": pt[ok][:, 0]}
    for name, arr in (("pt", pt), ("label", label), ("ntrk", ntrk), ("eta", eta)):
        sel[f"{name}_F"] = arr[ok][rows, fwd]
        sel[f"{name}_C"] = arr[ok][rows, 1 - fwd]
    return sel


def _type(arr: ak.Array) -> str:
    return str(arr.type.content)


# --- layout and types -----------------------------------------------------------


def test_layout_matches_truth(sample: GeneratedSample, truth: dict[str, Any]) -> None:
    listed = [f["path"] for f in truth["samples"]["data"]["files"]]
    for name in ("pythia", "herwig"):
        for sl in truth["samples"][name]["slices"]:
            assert len(sl["files"]) == FILES
            listed += [f["path"] for f in sl["files"]]
    assert sorted(listed) == sorted(str(p.relative_to(sample.out)) for p in sample.files)
    on_disk = [p.relative_to(sample.out).as_posix() for p in sample.out.rglob("*.root")]
    assert sorted(on_disk) == sorted(listed)
    assert "mc/pythia/JZ4/pythia_JZ4_000.root" in listed and "data/data_001.root" in listed
    assert not list(sample.out.rglob("*.tmp"))
    text = sample.truth.read_text()
    assert text == json.dumps(truth, sort_keys=True, indent=2) + "\n"


def test_data_trees_and_branches(sample: GeneratedSample, truth: dict[str, Any]) -> None:
    path = sample.out / truth["samples"]["data"]["files"][0]["path"]
    with uproot.open(path) as f:
        assert [k.split(";")[0] for k in f.keys()] == ["nominal"]
        t = f["nominal"]
        expected = {*EVENT_BRANCHES, *JET_BRANCHES, "closure_PartonTruthLabelID", "njet"}
        assert set(t.keys()) == expected
        a = t.arrays()
    for name, dtype in EVENT_BRANCHES.items():
        assert _type(a[name]) == dtype
    for name, dtype in {**JET_BRANCHES, "closure_PartonTruthLabelID": "int32"}.items():
        assert _type(a[name]) == f"var * {dtype}", name
        assert np.array_equal(ak.to_numpy(ak.num(a[name])), ak.to_numpy(a.njet))
    assert set(np.unique(ak.to_numpy(a.runNumber))) <= set(truth["samples"]["data"]["run_numbers"])
    labels = ak.to_numpy(ak.flatten(a.closure_PartonTruthLabelID))
    assert set(np.unique(labels)) == {-1, 1, 2, 3, 4, 5, 21}
    assert np.array_equal(labels, ak.to_numpy(ak.flatten(a.jet_PartonTruthLabelID)))


def test_mc_trees_and_branches(sample: GeneratedSample, truth: dict[str, Any]) -> None:
    sl = truth["samples"]["pythia"]["slices"][1]
    with uproot.open(sample.out / sl["files"][0]["path"]) as f:
        assert sorted(k.split(";")[0] for k in f.keys()) == sorted([*MC_TREES, "histoEventCount"])
        assert f.classname_of("histoEventCount") == "TH1D"
        keys = {tree: f[tree].keys() for tree in MC_TREES}
        entries = {f[tree].num_entries for tree in MC_TREES}
        a = f["nominal"].arrays()
    assert all(k == keys["nominal"] for k in keys.values())
    assert set(keys["nominal"]) == {*EVENT_BRANCHES, *JET_BRANCHES, *MC_ONLY, "njet", "npdf_weight"}
    assert entries == {sl["events_per_file"][0]}
    assert set(np.unique(ak.to_numpy(a.runNumber))) == {sl["dsid"]}
    assert _type(a.mcEventWeight) == "float32" and _type(a.pu_weight) == "float32"
    assert _type(a.jet_nTracks_sys_eff) == "var * int32"
    assert _type(a.pdf_weight) == "var * float32"
    pdf = ak.to_numpy(a.pdf_weight)
    assert pdf.shape == (len(a), 11)
    assert np.all(pdf[:, 0] == 1.0)
    assert 0.005 < np.abs(pdf[:, 1:] - 1).max() < 0.1
    assert np.all(np.abs(pdf[:, 1:] - 1) < 0.1)
    assert 0.95 < float(np.mean(ak.to_numpy(a.pu_weight))) < 1.05


def test_jets_in_mev_sorted_and_multiplicity(sample: GeneratedSample, truth: dict[str, Any]) -> None:
    a = _concat(sample.out, truth["samples"]["data"]["files"])
    njet = ak.to_numpy(a.njet)
    assert njet.min() == 1 and njet.max() == 4
    assert 0.003 < np.mean(njet == 1) < 0.03
    lead = ak.to_numpy(a.jet_pt[:, 0])
    assert 2.0e5 < lead.min() and lead.max() < 5.0e6  # MeV: 200 GeV .. 5 TeV
    pt = a.jet_pt
    assert ak.all(pt[:, 1:] <= pt[:, :-1])
    eta = np.abs(ak.to_numpy(ak.flatten(a.jet_eta[:, :2])))
    assert eta.max() < 2.8 and 0.02 < np.mean(eta > 2.1) < 0.3
    assert 0.97 < np.mean(ak.to_numpy(a.jet_fire)) < 0.99
    assert 0.99 < np.mean(ak.to_numpy(ak.flatten(a.jet_cleaning))) < 1.0
    bdt = ak.to_numpy(ak.flatten(a.jet_trackBDT[:, :2]))
    assert np.all((np.abs(bdt) <= 1.0) | (bdt == -10.0))
    event = ak.to_numpy(a.eventNumber)
    assert np.unique(event).size == event.size


# --- normalisation ----------------------------------------------------------------


def test_histo_event_count(sample: GeneratedSample, truth: dict[str, Any]) -> None:
    for name in ("pythia", "herwig"):
        for sl in truth["samples"][name]["slices"]:
            for f, n in zip(sl["files"], sl["events_per_file"], strict=True):
                with uproot.open(sample.out / f["path"]) as rf:
                    counts = rf["histoEventCount"].values()
                    w = rf["nominal"]["mcEventWeight"].array(library="np").astype(np.float64)
                assert counts.shape == (3,)
                assert counts[0] == n == len(w) == f["events"]
                assert counts[1] == pytest.approx(w.sum(), rel=1e-9)
                assert counts[2] == pytest.approx((w * w).sum(), rel=1e-9)


def test_weights_nontrivial(sample: GeneratedSample, truth: dict[str, Any]) -> None:
    a, _ = _mc_events(sample, truth, "pythia")
    w = ak.to_numpy(a.mcEventWeight)
    assert 0.003 < np.mean(w < 0) < 0.03
    assert w.std() > 0.3
    assert np.all(np.abs(w) < 1000)


def test_truth_slice_table(truth: dict[str, Any]) -> None:
    sp = truth["spectrum"]
    n, ref, norm = sp["n"], sp["pt_ref_gev"], sp["norm_pb_per_gev"]

    def integral(lo: float, hi: float) -> float:
        return float(norm * ref / (n - 1) * ((lo / ref) ** (1 - n) - (hi / ref) ** (1 - n)))

    total = integral(sp["pt_min_gev"], sp["pt_max_gev"])
    assert sp["total_xsec_pb"] == pytest.approx(total, rel=1e-12)
    n_data = sum(f["events"] for f in truth["samples"]["data"]["files"])
    assert n_data == EVENTS == truth["events"]
    assert truth["luminosity_pb"] == pytest.approx(n_data / sp["total_xsec_pb"], rel=1e-12)
    for name, total in (("pythia", EVENTS), ("herwig", EVENTS // 2)):
        slices = truth["samples"][name]["slices"]
        assert [s["name"] for s in slices] == ["JZ4", "JZ5", "JZ6", "JZ7"]
        assert slices[0]["pt_hat_min_gev"] == sp["pt_min_gev"]
        assert slices[-1]["pt_hat_max_gev"] == sp["pt_max_gev"]
        for lo, hi in itertools.pairwise(slices):
            assert lo["pt_hat_max_gev"] == hi["pt_hat_min_gev"]
        for s in slices:
            sigma = integral(s["pt_hat_min_gev"], s["pt_hat_max_gev"])
            assert s["xsec_pb"] * s["filter_eff"] == pytest.approx(sigma, rel=1e-12)
            assert sum(s["events_per_file"]) == s["events"] >= FILES
        assert len({s["filter_eff"] for s in slices}) == 4
        assert sum(s["events"] for s in slices) == total
    q, g = truth["taggers"]["data_shift"]["quark"], truth["taggers"]["data_shift"]["gluon"]
    assert q["nTracks_mean"] > 1 > g["nTracks_mean"]
    assert truth["taggers"]["eta_dependence"]["same_for_quark_and_gluon"] is True


def test_stitched_spectrum_matches_data_only_with_right_slice_weights(
    sample: GeneratedSample, truth: dict[str, Any]
) -> None:
    data_events = _concat(sample.out, truth["samples"]["data"]["files"])
    data = _select(data_events, "closure_PartonTruthLabelID", mc=False)
    mc, w = _mc_events(sample, truth, "pythia")
    sel = _select(mc, "jet_PartonTruthLabelID", mc=True)
    two = ak.to_numpy(mc.njet) >= 2
    w = w[two][sel["ok"]]
    # the classic mistake: forgetting the filter efficiency (runNumber is the slice DSID)
    eff = {s["dsid"]: s["filter_eff"] for s in truth["samples"]["pythia"]["slices"]}
    run = ak.to_numpy(mc.runNumber)[two][sel["ok"]]
    forgot_eff = w / np.array([eff[r] for r in run])
    bins = np.array([500.0, 600.0, 700.0, 850.0, 1000.0, 1300.0, 2000.0])
    hd, _ = np.histogram(data["lead"], bins)

    def chi2(weights: np.ndarray) -> float:
        hm, _ = np.histogram(sel["lead"], bins, weights=weights)
        hm2, _ = np.histogram(sel["lead"], bins, weights=weights * weights)
        scale = hd.sum() / hm.sum()  # shapes only: the truth-label cut removes ~3 % of MC
        return float(np.sum((hd - scale * hm) ** 2 / (hd + scale**2 * hm2)) / (len(bins) - 2))

    assert chi2(w) < 3.0
    assert chi2(forgot_eff) > 10.0
    # the absolute normalisation follows from lumi: data/MC within the ~3 % label cut
    assert 0.97 < hd.sum() / np.histogram(sel["lead"], bins, weights=w)[0].sum() < 1.12


# --- physics ------------------------------------------------------------------------


def test_gluon_fraction_falls_with_pt(sample: GeneratedSample, truth: dict[str, Any]) -> None:
    a, w = _mc_events(sample, truth, "pythia")
    two = ak.to_numpy(a.njet) >= 2
    pt = ak.to_numpy(a.jet_pt[two][:, 0]) / 1000.0
    eta = np.abs(ak.to_numpy(a.jet_eta[two][:, 0]))
    label = ak.to_numpy(a.jet_PartonTruthLabelID[two][:, 0])
    w = w[two]

    def f_gluon(lo: float, hi: float) -> float:
        m = (pt >= lo) & (pt < hi) & (eta < 1.0) & (label > 0)
        return float(w[m & (label == 21)].sum() / w[m].sum())

    fractions = [f_gluon(lo, hi) for lo, hi in [(500, 700), (900, 1100), (1500, 2000)]]
    assert fractions[0] > fractions[1] > fractions[2]
    assert fractions[0] - fractions[2] > 0.1


def test_forward_jets_more_quark_like(sample: GeneratedSample, truth: dict[str, Any]) -> None:
    mc, w = _mc_events(sample, truth, "pythia")
    sel = _select(mc, "jet_PartonTruthLabelID", mc=True)
    w = w[ak.to_numpy(mc.njet) >= 2][sel["ok"]]
    diffs = []
    for lo, hi in itertools.pairwise(PT_EDGES):
        fq = {}
        for side in "FC":
            m = (sel[f"pt_{side}"] >= lo) & (sel[f"pt_{side}"] < hi)
            fq[side] = w[m & (sel[f"label_{side}"] < 21)].sum() / w[m].sum()
        diffs.append(fq["F"] - fq["C"])
    assert all(0.05 < d < 0.25 for d in diffs), diffs
    assert 0.10 < float(np.mean(diffs)) < 0.25, diffs


def _tagger_means(
    a: ak.Array,
    label_branch: str,
    weights: np.ndarray | None,
    pt_range: tuple[float, float],
    max_eta: float,
) -> dict[str, dict[str, float]]:
    """Mean taggers of the two leading jets in a pT (GeV) and |eta| range, per parton."""
    two = ak.to_numpy(a.njet) >= 2
    lead2 = a[two]
    pt = ak.to_numpy(lead2.jet_pt[:, :2]).ravel() / 1000.0
    eta = np.abs(ak.to_numpy(lead2.jet_eta[:, :2]).ravel())
    label = ak.to_numpy(lead2[label_branch][:, :2]).ravel()
    w = np.ones(pt.size) if weights is None else np.repeat(weights[two], 2)
    base = (pt >= pt_range[0]) & (pt < pt_range[1]) & (eta < max_eta)
    out: dict[str, dict[str, float]] = {}
    for parton, m in (("quark", base & (label > 0) & (label < 6)), ("gluon", base & (label == 21))):
        out[parton] = {
            var: float(np.average(ak.to_numpy(lead2[f"jet_{var}"][:, :2]).ravel()[m], weights=w[m]))
            for var in ("nTracks", "trackWidth", "trackC1", "trackBDT")
        }
    return out


def test_gluons_have_more_tracks_at_fixed_pt(sample: GeneratedSample, truth: dict[str, Any]) -> None:
    mc, w = _mc_events(sample, truth, "pythia")
    means = _tagger_means(mc, "jet_PartonTruthLabelID", w, (500.0, 700.0), 1.0)
    q, g = means["quark"], means["gluon"]
    assert g["nTracks"] > 1.3 * q["nTracks"]
    assert g["trackWidth"] > q["trackWidth"] and g["trackC1"] > q["trackC1"]
    assert q["trackBDT"] > 0.2 > -0.1 > g["trackBDT"]  # higher BDT = more quark-like


def test_data_shift_injected_as_recorded(sample: GeneratedSample, truth: dict[str, Any]) -> None:
    mc, w = _mc_events(sample, truth, "pythia")
    mc_means = _tagger_means(mc, "jet_PartonTruthLabelID", w, (500.0, 1000.0), 2.1)
    data = _concat(sample.out, truth["samples"]["data"]["files"])
    data_means = _tagger_means(data, "closure_PartonTruthLabelID", None, (500.0, 1000.0), 2.1)
    for parton in ("quark", "gluon"):
        factor = truth["taggers"]["data_shift"][parton]["nTracks_mean"]
        ratio = data_means[parton]["nTracks"] / mc_means[parton]["nTracks"]
        assert ratio == pytest.approx(factor, abs=0.02), parton


def test_no_data_shift_gives_mc_shapes(tmp_path: Path) -> None:
    s = generate_sample(tmp_path, events=20_000, files=1, seed=3, data_shift=False)
    truth = json.loads(s.truth.read_text())
    assert truth["data_shift"] is False
    assert truth["taggers"]["data"] == truth["taggers"]["pythia"]
    mc, w = _mc_events(s, truth, "pythia")
    mc_means = _tagger_means(mc, "jet_PartonTruthLabelID", w, (500.0, 1000.0), 2.1)
    data = _concat(s.out, truth["samples"]["data"]["files"])
    data_means = _tagger_means(data, "closure_PartonTruthLabelID", None, (500.0, 1000.0), 2.1)
    for parton in ("quark", "gluon"):
        ratio = data_means[parton]["nTracks"] / mc_means[parton]["nTracks"]
        assert ratio == pytest.approx(1.0, abs=0.02), parton


def test_shapes_depend_mildly_on_eta(sample: GeneratedSample, truth: dict[str, Any]) -> None:
    a = _concat(sample.out, truth["samples"]["data"]["files"])
    pt = ak.to_numpy(ak.flatten(a.jet_pt[:, :2])) / 1000.0
    eta = np.abs(ak.to_numpy(ak.flatten(a.jet_eta[:, :2])))
    ntrk = ak.to_numpy(ak.flatten(a.jet_nTracks[:, :2]))
    label = ak.to_numpy(ak.flatten(a.closure_PartonTruthLabelID[:, :2]))
    slope = truth["taggers"]["eta_dependence"]["slope"]
    m = (pt > 450) & (pt < 650) & (label == 21)
    lo, hi = m & (eta < 0.5), m & (eta > 1.5)
    expected = (1 + slope * eta[hi].mean()) / (1 + slope * eta[lo].mean())
    assert ntrk[hi].mean() / ntrk[lo].mean() == pytest.approx(expected, abs=0.025)


# --- systematic variations ----------------------------------------------------------


def test_track_efficiency_branch(sample: GeneratedSample, truth: dict[str, Any]) -> None:
    a = _read(sample.out / truth["samples"]["pythia"]["slices"][0]["files"][0]["path"])
    n = ak.to_numpy(ak.flatten(a.jet_nTracks))
    eff = ak.to_numpy(ak.flatten(a.jet_nTracks_sys_eff))
    assert np.all(eff <= n) and np.any(eff < n)
    loss = truth["systematics"]["branches"]["jet_nTracks_sys_eff"]["track_loss_probability"]
    assert 1 - eff.sum() / n.sum() == pytest.approx(loss, abs=0.003)


def test_jes_trees_scale_pt_only(sample: GeneratedSample, truth: dict[str, Any]) -> None:
    path = sample.out / truth["samples"]["herwig"]["slices"][2]["files"][1]["path"]
    nominal = _read(path)
    for tree, spec in truth["systematics"]["trees"].items():
        if spec["kind"] != "jet_pt_scale":
            continue
        var = _read(path, tree)
        ratio = ak.to_numpy(ak.flatten(var.jet_pt)) / ak.to_numpy(ak.flatten(nominal.jet_pt))
        assert np.allclose(ratio, spec["factor"], rtol=1e-6, atol=0), tree
        for field in nominal.fields:
            if field != "jet_pt":
                assert ak.array_equal(var[field], nominal[field]), (tree, field)
    assert {"syst_JET_JES__1up", "syst_JET_JES__1down"} <= set(truth["systematics"]["trees"])


def test_jer_tree_smears_and_resorts_consistently(sample: GeneratedSample, truth: dict[str, Any]) -> None:
    path = sample.out / truth["samples"]["pythia"]["slices"][0]["files"][0]["path"]
    nominal, jer = _read(path), _read(path, "syst_JET_JER__1up")
    assert ak.array_equal(jer.njet, nominal.njet)
    assert ak.array_equal(jer.mcEventWeight, nominal.mcEventWeight)
    assert ak.all(jer.jet_pt[:, 1:] <= jer.jet_pt[:, :-1])
    # the same jets, re-ordered: sort both by phi (unique per jet) and compare
    order_n = ak.argsort(nominal.jet_phi, axis=1)
    order_j = ak.argsort(jer.jet_phi, axis=1)
    per_jet = ["jet_eta", "jet_nTracks", "jet_trackBDT", "jet_PartonTruthLabelID"]
    for field in [*per_jet, "jet_nTracks_sys_eff"]:
        assert ak.array_equal(nominal[field][order_n], jer[field][order_j]), field
    ratio = ak.to_numpy(ak.flatten(jer.jet_pt[order_j] / nominal.jet_pt[order_n]))
    sigma = truth["systematics"]["trees"]["syst_JET_JER__1up"]["sigma"]
    assert ratio.std() == pytest.approx(sigma, rel=0.1)
    swapped = ak.any(jer.jet_phi != nominal.jet_phi, axis=1)
    assert 0 < np.mean(ak.to_numpy(swapped)) < 0.5


# --- building blocks ----------------------------------------------------------------


@pytest.mark.parametrize("suffix_entries", [0, 3, 1000])
def test_basket_compressor_emits_plain_zlib_and_reuses_content(suffix_entries: int) -> None:
    comp = BasketCompressor(1)
    comp.begin_block(suffix_entries)
    deflated: list[int] = []
    deflate = comp._deflate

    def counting(data: bytes, final: bool) -> bytes:
        deflated.append(len(data))
        return deflate(data, final)

    comp._deflate = counting  # type: ignore[method-assign]
    content = np.arange(5000, dtype=">f4").tobytes() + b"\x00" * 300
    tail_a = np.arange(4 * (suffix_entries + 2), dtype=np.uint8).tobytes()
    tail_b = bytes(reversed(tail_a))
    first = comp.compression.compress(content + tail_a)
    second = comp.compression.compress(content + tail_b)
    assert deflated.count(len(content)) == 1  # the shared content was compressed once
    assert zlib.decompress(first) == content + tail_a  # checks the Adler-32 too
    assert zlib.decompress(second) == content + tail_b
    assert isinstance(comp.compression, uproot.ZLIB) and comp.compression.code == 101
    assert len(first) < len(content)
    if tail_a != tail_b:
        assert first != second
    assert first == comp.compression.compress(content + tail_a)  # deterministic


def test_power_law_sampling_and_weights_reproduce_the_true_spectrum() -> None:
    rng = np.random.default_rng(5)
    lo, hi = 800.0, 1300.0
    model = PYTHIA_WEIGHTS
    pt = model.sample_pt_hat(rng, 400_000, lo, hi)
    assert pt.min() >= lo and pt.max() < hi
    w = model.kinematic_weight(pt, lo, hi)
    assert w.mean() == pytest.approx(1.0, abs=0.01)
    edges = np.array([800.0, 900.0, 1000.0, 1100.0, 1300.0])
    weighted, _ = np.histogram(pt, edges, weights=w)
    expected = np.array([TRUE_SPECTRUM.integral(a, b) for a, b in itertools.pairwise(edges)])
    np.testing.assert_allclose(weighted / weighted.sum(), expected / expected.sum(), rtol=0.02)
    unweighted, _ = np.histogram(pt, edges)
    assert unweighted[-1] / unweighted[0] > 1.5 * expected[-1] / expected[0]  # flatter proposal


# --- determinism and API ------------------------------------------------------------


def _all_arrays(out: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for path in sorted(out.rglob("*.root")):
        with uproot.open(path) as f:
            for key, cls in f.classnames().items():
                name = f"{path.relative_to(out)}:{key}"
                result[name] = f[key].arrays() if cls == "TTree" else f[key].values()
    return result


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    return bool(ak.array_equal(a, b))


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    """Same arguments -> same arrays. uproot stamps each key with the write time
    (fDatime), so the files are not byte-identical: only those bytes differ."""
    kw: dict[str, Any] = {"events": 4000, "files": 2}
    one = generate_sample(tmp_path / "a", seed=11, **kw)
    two = generate_sample(tmp_path / "b", seed=11, **kw)
    other = generate_sample(tmp_path / "c", seed=12, **kw)
    a, b, c = _all_arrays(one.out), _all_arrays(two.out), _all_arrays(other.out)
    assert a.keys() == b.keys() == c.keys()
    assert all(_same(a[k], b[k]) for k in a)
    assert one.truth.read_bytes() == two.truth.read_bytes()
    for p, q in zip(one.files, two.files, strict=True):
        assert p.stat().st_size == q.stat().st_size
    trees = [k for k in a if k.endswith("nominal;1")]
    assert not any(ak.array_equal(a[k].jet_pt, c[k].jet_pt) for k in trees)
    # a file does not depend on how many other files there are
    more = generate_sample(tmp_path / "d", seed=11, events=6000, files=3)
    d = _all_arrays(more.out)
    for k in ("data/data_000.root:nominal;1", "data/data_001.root:nominal;1"):
        assert _same(a[k], d[k])


def test_progress_and_argument_errors(tmp_path: Path) -> None:
    messages: list[str] = []
    s = generate_sample(tmp_path / "p", events=100, files=1, progress=messages.append)
    assert len(messages) == len(s.files) + 1 and "truth.json" in messages[-1]
    assert isinstance(s, GeneratedSample) and s.out == tmp_path / "p"
    with pytest.raises(ValueError, match="files"):
        generate_sample(tmp_path / "x", events=1, files=2)
    with pytest.raises(ValueError, match="seed"):
        generate_sample(tmp_path / "x", events=10, files=1, seed=-1)


def test_generate_or_reuse_keeps_the_same_sample_and_refuses_another(sample: GeneratedSample, tmp_path: Path) -> None:
    """A benchmark's --workdir: the sample made with the same numbers is kept (not rewritten),
    one made with other numbers is refused instead of being timed as if it were the asked one."""
    from qgcal.generate import generate_or_reuse

    where = sample.truth.parent
    before = {p: p.stat().st_mtime_ns for p in where.rglob("*") if p.is_file()}
    assert generate_or_reuse(where, events=EVENTS, files=FILES, seed=7) is False
    assert {p: p.stat().st_mtime_ns for p in where.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match=r"'events': 20000.*'events': 40000.*another --workdir"):
        generate_or_reuse(where, events=2 * EVENTS, files=FILES, seed=7)
    with pytest.raises(ValueError, match="'seed': 8"):
        generate_or_reuse(where, events=EVENTS, files=FILES, seed=8)
    fresh = tmp_path / "fresh"
    assert generate_or_reuse(fresh, events=2000, files=1, seed=3) is True
    assert json.loads((fresh / "truth.json").read_text())["events"] == 2000

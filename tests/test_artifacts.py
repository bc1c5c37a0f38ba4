"""Artifacts: provenance, reuse of valid ones, --force, staleness, safe histogram format."""

from __future__ import annotations

import zipfile

import numpy as np

import qgcal
from qgcal.artifacts import read_parquet_provenance
from qgcal.histset import load_histset, read_histset_meta
from qgcal.plan import plan_tasks
from qgcal.stages import artifact


def test_rerun_reuses_valid_artifacts_and_force_redoes(small_sample, make_config):
    _, cfg = make_config(small_sample)
    first = qgcal.run(cfg, "nominal", workers=1)
    n_files = len(plan_tasks(cfg, "nominal"))
    assert first.files_processed == {"root2pkl": n_files, "pkl2predpkl": n_files, "predpkl2hist": n_files}
    again = qgcal.run(cfg, "nominal", workers=1)
    assert again.files_processed == {"root2pkl": 0, "pkl2predpkl": 0, "predpkl2hist": 0}
    assert again.records == first.records
    forced = qgcal.run(cfg, "nominal", workers=1, force=True)
    assert forced.files_processed["root2pkl"] == n_files


def test_changed_cut_reruns_from_root2pkl_and_binning_only_from_hist(small_sample, make_config, tmp_path):
    out = tmp_path / "shared-out"
    _, cfg = make_config(small_sample, output=out)
    qgcal.run(cfg, "nominal", workers=1)
    n_files = len(plan_tasks(cfg, "nominal"))

    def rebin(doc):
        doc["taggers"]["ntrk"]["bins"] = {"n": 30, "low": 0, "high": 60}

    _, cfg2 = make_config(small_sample, output=out, mutate=rebin)
    res = qgcal.run(cfg2, "nominal", workers=1)
    assert res.files_processed == {"root2pkl": 0, "pkl2predpkl": 0, "predpkl2hist": n_files}

    def recut(doc):
        rebin(doc)
        doc["selection"]["subleading_pt_min_gev"] = 550

    _, cfg3 = make_config(small_sample, output=out, mutate=recut)
    res = qgcal.run(cfg3, "nominal", workers=1)
    assert res.files_processed == {"root2pkl": n_files, "pkl2predpkl": n_files, "predpkl2hist": n_files}
    assert min(r["pt_low"] for r in res.records) == 500  # bins unchanged, events above 550 only


def test_provenance_is_embedded_and_histograms_load_without_pickle(small_sample, make_config):
    _, cfg = make_config(small_sample)
    qgcal.run(cfg, "nominal", workers=1)
    task = plan_tasks(cfg, "nominal")[0]
    prov = read_parquet_provenance(artifact(cfg, task, "root2pkl"))
    # the input is named relative to the config's directory (copying both keeps the artifact valid)
    assert prov["pass"] == "root2pkl" and list(prov["inputs"]) == ["sample/data/data_000.root"]
    assert prov["cutflow"]["read"] >= prov["cutflow"]["selected"] > 0
    hpath = artifact(cfg, task, "predpkl2hist")
    meta = read_histset_meta(hpath)
    assert meta["pass"] == "predpkl2hist"
    with zipfile.ZipFile(hpath) as zf:  # plain .npy members and a JSON blob, nothing pickled
        for name in zf.namelist():
            assert name.endswith(".npy")
    hs, _ = load_histset(hpath)
    h = hs["tagger.ntrk"]
    assert h.values().sum() > 0 and np.all(h.variances() >= 0)

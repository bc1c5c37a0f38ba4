"""Real files nobody here wrote, end to end through the SHIPPED configs.

The four files of shared/data/real/, vendored in tests/data/real/ (see its README): NanoAOD v15 with real q/g scores and
their -1 sentinels, PFNano with a ``Runs`` bookkeeping tree, a NanoAOD RNTuple, and an empty
``Events`` tree. Each runs through configs/cms_nanoaod.yaml or configs/cms_nanoaod_v15.yaml to
flagged results (200 events cannot calibrate anything) or, for the empty file, a clear one-line
error: never a traceback, never a silent NaN.

What the tests change in the shipped config, and why: the files (pointed at copies of the
shared files; one file is both pseudo-data and MC, the data being a copy because a file may
belong to one sample only), a single MC slice, pT thresholds and bins scaled down to the soft
jets of these ttbar/DY files, no trigger (the soft ttbar/DY jets never reach the config's
HLT_PFJet500 range), and, for the files without a ``Runs`` tree, the bookkeeping
source (their events tree is unskimmed, so summing genWeight over it is valid here). Branch
names, jet ID, event flags, tagger validity ranges, truth labelling, weights and the bootstrap
are the shipped ones.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO
from qgcal.cli import main
from qgcal.config import load_config
from qgcal.histset import read_histset_meta

REAL = REPO / "tests" / "data" / "real"  # vendored from shared/data/real (README there)
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_every_shipped_config_is_valid():
    names = {p.stem for p in SHIPPED}
    assert {"demo", "atlas", "cms_nanoaod", "cms_nanoaod_v15", "atlas_physlite"} <= names
    for path in SHIPPED:
        cfg = load_config(path)
        assert cfg.samples[cfg.nominal_mc].kind == "mc", path.name


def _config(tmp_path: Path, shipped: str, real: str, *, edit: Any = None, soft: bool = True) -> Path:
    doc = yaml.safe_load((REPO / "configs" / f"{shipped}.yaml").read_text())
    mc = tmp_path / f"mc_{real}"
    data = tmp_path / f"data_{real}"
    shutil.copyfile(REAL / real, mc)
    shutil.copyfile(REAL / real, data)
    mc_name = doc["nominal_mc"]
    doc["output"] = str(tmp_path / "out")
    doc["samples"][doc["data"]]["files"] = [str(data)]
    doc["samples"][mc_name]["slices"] = {"one": {"files": [str(mc)], "xsec_pb": 1.0}}
    if soft:  # the ttbar/DY files' jets are 20-300 GeV: no HLT_PFJet500 range, lower thresholds
        for sample in (doc["data"], mc_name):
            doc["samples"][sample]["triggers"] = []
            doc["samples"][sample].pop("trigger_mode", None)
        doc["selection"].update({"subleading_pt_min_gev": 20, "leading_pt_max_gev": 1000, "pt_balance_max": 5})
        doc["pt_bins_gev"] = [20, 40, 1000]
    doc["executor"] = {"kind": "serial", "workers": 1}
    doc["plots"] = {"enabled": False}
    doc["bootstrap"] = 20
    if edit is not None:
        edit(doc)
    path = tmp_path / f"{shipped}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _events_tree_sumw(doc: dict) -> None:
    doc["samples"][doc["nominal_mc"]]["sum_of_weights"] = {"source": "branch", "branch": "genWeight"}


def _results(tmp_path: Path) -> dict:
    text = (tmp_path / "out" / "results" / "nominal" / "scale_factors.json").read_text()
    assert not re.search(r":\s*-?(NaN|Infinity)\b", text)  # undefined numbers are null, and flagged
    return json.loads(text)


def _check_flagged(doc: dict, n_taggers: int, n_pt: int = 2) -> None:
    records = doc["records"]
    assert len(records) == n_taggers * n_pt * 4 * 2  # taggers x pT bins x WPs x partons
    for r in records:
        for key in ("sf", "stat"):
            assert r[key] is None or math.isfinite(r[key])
        if r["sf"] is None or r["stat"] is None:
            assert r["flags"], r  # no number, or no error: the record says why
        if r["sf"] is not None and r["stat"] is None:
            assert "bootstrap_unstable" in r["flags"], r
    assert sum(bool(r["flags"]) for r in records) >= len(records) // 2  # a few hundred events: mostly flagged


def _invalid_scores(tmp_path: Path, sample: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for p in (tmp_path / "out" / "nominal" / "predpkl2hist" / sample).rglob("*.npz"):
        for k, v in ((read_histset_meta(p) or {}).get("invalid_scores") or {}).items():
            total[k] = total.get(k, 0) + int(v)
    return total


def _outside(tmp_path: Path, sample: str, tagger: str, lo: float, hi: float) -> int:
    """Selected jets whose score is outside [lo, hi], counted from the jet tables (not by the pass)."""
    import pyarrow.parquet as pq

    n = 0
    for p in (tmp_path / "out" / "nominal" / "pkl2predpkl" / sample).rglob("*.parquet"):
        values = pq.read_table(p, columns=[f"tagger.{tagger}"]).column(0).to_numpy()
        n += int((~((values >= lo) & (values <= hi))).sum())
    return n


def test_nanoaod_v15_real_scores_and_sentinels(tmp_path, caplog):
    def edit(doc):
        _events_tree_sumw(doc)
        doc["selection"]["abs_eta_max"] = 4.7  # forward jets too: there UParT is undefined (-1)

    cfg = _config(tmp_path, "cms_nanoaod_v15", "nano_tt_v15.root", edit=edit)
    assert main(["run", "--config", str(cfg)]) == 0
    doc = _results(tmp_path)
    _check_flagged(doc, n_taggers=3)
    mc = doc["metadata"]["merge"]["mc"]["slices"]["one"]
    assert mc["jets"] > 0 and mc["sumw"] == pytest.approx(200 * 350.17, rel=1e-6)  # 200 events x genWeight
    # UParT's -1 sentinels are left out of its histograms and counted, never folded into a bin
    for sample in ("qcd", "data"):
        sentinels = _outside(tmp_path, sample, "upart_qvg", 0, 1)
        assert sentinels > 0
        assert _invalid_scores(tmp_path, sample)["upart_qvg"] == sentinels
        assert _invalid_scores(tmp_path, sample)["pnet_qvg"] == _outside(tmp_path, sample, "pnet_qvg", 0, 1)


def test_nanoaod_v15_without_a_runs_tree_is_a_one_line_error(tmp_path, capsys):
    cfg = _config(tmp_path, "cms_nanoaod_v15", "nano_tt_v15.root")  # the shipped Runs/genEventSumw source
    assert main(["run", "--config", str(cfg)]) == 2  # found by the pre-flight check, before any event is read
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert "no tree 'Runs'" in err and "samples.qcd.sum_of_weights" in err, err
    assert not (tmp_path / "out" / "results").exists()


def test_pfnano_with_its_runs_tree_bookkeeping(tmp_path):
    # the shipped bookkeeping (Runs/genEventSumw), triggers and dijet selection: these jets are TeV jets
    cfg = _config(tmp_path, "cms_nanoaod", "pfnano.root", soft=False)
    assert main(["run", "--config", str(cfg)]) == 0
    doc = _results(tmp_path)
    _check_flagged(doc, n_taggers=2, n_pt=6)
    assert doc["metadata"]["merge"]["mc"]["slices"]["one"]["jets"] > 0
    assert doc["metadata"]["merge"]["mc"]["slices"]["one"]["sumw"] == 10.0  # Runs/genEventSumw of the file
    assert _invalid_scores(tmp_path, "qcd")["qgl"] == _outside(tmp_path, "qcd", "qgl", 0, 1)  # -1 sentinels


def test_nanoaod_rntuple_runs_like_a_ttree(tmp_path):
    cfg = _config(tmp_path, "cms_nanoaod", "nano_dy_rntuple.root", edit=_events_tree_sumw)
    assert main(["run", "--config", str(cfg)]) == 0
    doc = _results(tmp_path)
    _check_flagged(doc, n_taggers=2)
    assert doc["metadata"]["merge"]["data"]["slices"]["all"]["jets"] > 0
    sentinels = _outside(tmp_path, "qcd", "qgl", 0, 1)
    assert sentinels > 0 and _invalid_scores(tmp_path, "qcd")["qgl"] == sentinels  # Jet_qgl = -1, left out


def test_empty_nanoaod_is_a_clear_one_line_error(tmp_path, capsys):
    cfg = _config(tmp_path, "cms_nanoaod", "nano_dy_empty.root", edit=_events_tree_sumw)
    assert main(["run", "--config", str(cfg)]) != 0
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("qgcal: error:")]
    assert len(lines) == 1, err
    print(lines[0])
    assert not (tmp_path / "out" / "results").exists()


def test_vendored_real_files_match_their_checksums() -> None:
    """The vendored copies are the shared files, byte for byte (SHA256SUMS from shared/data/real)."""
    import hashlib

    lines = (REAL / "SHA256SUMS").read_text().split("\n")
    sums = dict(reversed(line.split()) for line in lines if line.strip())
    assert len(sums) == 4
    for name, digest in sums.items():
        assert hashlib.sha256((REAL / name).read_bytes()).hexdigest() == digest, name

"""A real ROOT file nobody here wrote: CMS jets from scikit-hep-testdata, mapped by config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import hist
import pytest
import yaml

from qgcal.cli import main
from qgcal.histset import load_histset

# scikit-hep-testdata <= 0.3.12 bundles its files (later versions download them); it is not a
# declared test dependency: the real files of ../shared/data/real are (tests/test_real_files_e2e.py)
skhep_testdata = pytest.importorskip("skhep_testdata")


def _cms_config(tmp_path: Path) -> Path:
    path = skhep_testdata.data_path("uproot-mc10events.root")
    # pseudo-data are the same events as the MC (a closure); one file may belong to one sample
    # only (qgcal validate: it would be counted twice), so the data are a copy
    data = tmp_path / "pseudo_data.root"
    shutil.copyfile(path, data)
    doc = {
        "name": "cms-mc10events",
        "output": str(tmp_path / "out"),
        "units": {"energy": "GeV"},
        "tree": "Events",
        "lumi_pb": 1.0,
        "data": "pseudo_data",
        "nominal_mc": "mc",
        "samples": {
            "pseudo_data": {"kind": "data", "files": [str(data)]},
            "mc": {
                "kind": "mc",
                "files": [path],
                "xsec_pb": 1.0,
                "sum_of_weights": {"source": "branch", "branch": "GenEvtInfo/weight"},
            },
        },
        "branches": {
            "run": "Info/runNum",
            "event": "Info/evtNum",
            "mc_weight": "GenEvtInfo/weight",
            "jet_pt": "AK4CHS.pt",
            "jet_eta": "AK4CHS.eta",
            "parton_label": "AK4CHS.partonFlavor",
            "nTracks": "AK4CHS.mult",
            "qgid": "AK4CHS.qgid",
        },
        "event_weight": ["mc_weight"],
        "selection": {
            "require_trigger": False,
            "require_cleaning": False,
            "subleading_pt_min_gev": 30,
            "leading_pt_max_gev": 1000,
            "pt_balance_max": 5,
            "abs_eta_max": 2.5,
            "min_ntracks": 2,
            "abs_weight_max": None,
        },  # CMS generator weights are ~6e3
        "truth": {"use_abs": True},  # CMS partonFlavor is signed
        "pt_bins_gev": [30, 100, 1000],
        "taggers": {
            "qgid": {
                "kind": "branch",
                "variable": "qgid",
                "bins": {"n": 10, "low": 0, "high": 1},
                "quark_side": "high",
            },
            "mult": {
                "kind": "branch",
                "variable": "nTracks",
                "bins": {"n": 50, "low": 0, "high": 50},
                "quark_side": "low",
            },
        },
        "executor": {"kind": "serial", "workers": 1},
    }
    cfg = tmp_path / "cms.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


def test_cms_file_runs_end_to_end_and_flags_why(tmp_path, capsys, caplog):
    cfg = _cms_config(tmp_path)
    assert main(["run", "--config", str(cfg)]) == 0
    doc = json.loads((tmp_path / "out" / "results" / "nominal" / "scale_factors.json").read_text())
    records = doc["records"]
    assert len(records) == 2 * 2 * 4 * 2
    assert all(r["flags"] for r in records)  # 10 events cannot calibrate anything
    reasons = {f for r in records for f in r["flags"]}
    assert reasons & {
        "low_stats",
        "empty_data_bin",
        "ill_conditioned",
        "singular_fraction_matrix",
        "unphysical_efficiency",
        "empty_mc_bin",
    }
    assert all(r["sf"] is None or r["flags"] for r in records)  # never an unflagged number
    assert "flagged" in caplog.text
    # selection really happened on the CMS branches: 10 events read, some selected
    slices = doc["metadata"]["merge"]["data"]["slices"]
    assert 0 < slices["all"]["jets"] <= 20
    # the signed-label mapping (|partonFlavor|) found quarks and gluons among the selected MC jets
    mc, _ = load_histset(tmp_path / "out" / "nominal" / "final_reweighting" / "merged_mc.npz")
    by_flavour = mc["tagger.mult"].project("flavour")
    assert by_flavour[hist.loc(21)].value > 0
    assert sum(by_flavour[hist.loc(f)].value for f in (1, 4, 5)) > 0

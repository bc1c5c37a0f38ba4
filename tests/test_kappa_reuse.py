"""A weight variation's bootstrap error is corrected with nominal's variance-bias factors.

The factors (kappa, qgcal.extraction.variance_bias_factors) were over half of a weight
variation's final pass. A weight variation reweights the same events through the same
estimator, so its own kappa is nominal's to second order in the weight shift; these tests
check that it is nominal's that is applied (and said so), that its own would differ by far
less than the ~10 % to which the replicas know an error, and that other kinds keep their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qgcal
import qgcal.stages.final_reweighting as final
from qgcal.workflows.single import finalise


def _mutate(doc: dict[str, Any]) -> None:
    doc["bootstrap"] = 20
    doc["plots"] = {"enabled": False}
    doc["variations"] = {
        "pdf_1": {"kind": "weight", "multiply": ["pdf_weight[1]"], "group": "PDF"},
        "trk_eff": {"kind": "branch", "replace": {"nTracks": "jet_nTracks_sys_eff"}, "group": "tracking"},
    }


def _key(rec: dict[str, Any]) -> tuple[Any, ...]:
    return rec["tagger"], rec["working_point"], rec["parton"], rec["pt_low"]


def _kappas(records: list[dict[str, Any]]) -> dict[tuple[Any, ...], float]:
    return {_key(r): (r["stat"] / r["stat_bootstrap_plain"]) ** 2 for r in records if r["stat"]}


def _metadata(results: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((results / "scale_factors.json").read_text())
    return doc["metadata"]


@pytest.fixture(scope="module")
def swept(small_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any]]:
    from conftest import write_config

    _, cfg = write_config(small_sample, tmp_path_factory.mktemp("kappa") / "out", name="kappa", mutate=_mutate)
    return cfg, qgcal.sweep(cfg, workers=2)


def test_weight_variation_takes_nominals_kappa_and_says_so(swept):
    _, res = swept
    nominal, pdf = _kappas(res["nominal"].records), _kappas(res["pdf_1"].records)
    assert len(nominal) >= 0.8 * len(res["nominal"].records) and set(pdf) == set(nominal)
    for key, k in nominal.items():
        assert pdf[key] == pytest.approx(k, rel=1e-12), key
    # its own replica spread, not nominal's
    plain = {_key(r): r["stat_bootstrap_plain"] for r in res["nominal"].records}
    assert any(r["stat_bootstrap_plain"] != plain[_key(r)] for r in res["pdf_1"].records)
    assert _metadata(res["pdf_1"].results_dir)["bias_correction_from"] == "nominal"
    assert _metadata(res["nominal"].results_dir)["bias_correction_from"] == "nominal"
    # a branch variation moves jets between bins: it computes its own
    assert _metadata(res["trk_eff"].results_dir)["bias_correction_from"] == "trk_eff"
    assert _kappas(res["trk_eff"].records) != nominal


def test_weight_variations_own_kappa_is_nominals_to_well_below_its_precision(swept, monkeypatch):
    cfg, res = swept
    reused = {_key(r): r for r in res["pdf_1"].records}
    monkeypatch.setattr(final, "_kappa_is_nominals", lambda *a, **k: False)
    own = finalise(cfg, "pdf_1").records
    assert _metadata(res["pdf_1"].results_dir)["bias_correction_from"] == "pdf_1"
    ratios = []
    for r in own:
        other = reused[_key(r)]
        assert r["sf"] == other["sf"] and r["stat_bootstrap_plain"] == other["stat_bootstrap_plain"]
        if r["stat"]:
            ratios.append(r["stat"] / other["stat"])
    ratios_arr = np.array(ratios)
    assert np.any(ratios_arr != 1.0)  # its own factors are others: the reuse above was real
    # 20 replicas know an error to ~16 % (1/sqrt(2 x 19)); the factors differ by far less: typically
    # by < 0.2 %, at most by a few % on this small sample (kappa is itself estimated from 20 replicas)
    dev = np.abs(ratios_arr - 1.0)
    assert np.median(dev) < 0.002 and np.max(dev) < 0.05, ratios_arr


def test_remembered_factors_are_a_fresh_computations(swept):
    from qgcal.extraction import variance_bias_factors
    from qgcal.histset import load_extra

    cfg, res = swept
    cuts = json.loads((res["nominal"].results_dir / "cuts.json").read_text())
    merged = cfg.output_path / "nominal" / "final_reweighting"
    reps = {
        role: {k.split(".", 1)[1]: v for k, v in load_extra(merged / f"merged_{sample}.npz").items()}
        for role, sample in (("mc", cfg.nominal_mc), ("data", cfg.data))
    }
    n_pt = len(cfg.pt_bins_gev) - 1
    groups = {name: [[(i, i + 1) for i in range(reps["mc"][name].shape[3])]] * n_pt for name in sorted(cfg.taggers)}
    fresh = variance_bias_factors(cfg, reps["mc"], reps["data"], cuts, "quark", groups)
    assert len(fresh) > 10
    first = final.bias_factors(cfg, reps["mc"], reps["data"], cuts, "quark", groups)
    again = final.bias_factors(cfg, reps["mc"], reps["data"], cuts, "quark", groups)
    assert first == fresh == again
    other = {k: v * 1.5 for k, v in reps["data"].items()}  # other inputs: not the remembered answer
    assert final.bias_factors(cfg, reps["mc"], other, cuts, "quark", groups) == variance_bias_factors(
        cfg, reps["mc"], other, cuts, "quark", groups
    )
    assert final.bias_factors(cfg, reps["mc"], other, cuts, "quark", groups) != first

"""Combination maths on hand-made records, with answers computed by hand; file-level errors.

Every expected number below is worked out in the comment next to it from the
conventions of docs/outputs.md, not taken from the code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import DEMO
from qgcal.combine import (
    VariationSpec,
    combine,
    combine_records,
    components,
    pair_errors,
    quadrature,
    set_errors,
    single_errors,
    specs_from_config,
)
from qgcal.config import load_config
from qgcal.errors import ArtifactError, ConfigError

approx = lambda x: pytest.approx(x, rel=1e-12, abs=1e-15)


# ----------------------------------------------------------------------------- elementary rules


@pytest.mark.parametrize(
    ("up", "down", "expected"),
    [
        (0.02, -0.01, (0.02, 0.01)),  # the usual case: up raises the SF, down lowers it
        (-0.01, 0.03, (0.03, 0.01)),  # anti-correlated response: signs kept, not the labels
        (0.02, 0.01, (0.02, 0.0)),  # same sign: one-sided, the larger one
        (-0.03, -0.01, (0.0, 0.03)),
        (0.0, 0.0, (0.0, 0.0)),
    ],
)
def test_pair(up, down, expected):
    assert pair_errors(up, down) == expected


def test_pair_single_set_null_is_null():
    assert pair_errors(None, 0.1) is None
    assert pair_errors(0.1, None) is None
    assert single_errors(None) is None
    assert set_errors([0.1, None, 0.2], "std") is None
    assert set_errors([], "std") is None
    assert quadrature([0.1, None]) is None


def test_single_is_symmetrised():
    assert single_errors(-0.05) == (0.05, 0.05)
    assert single_errors(0.07) == (0.07, 0.07)


def test_set_std_and_envelope():
    # shifts 0.01, 0.03, -0.01: mean 0.01, deviations 0, 0.02, -0.02; sum of squares 8e-4 / (3 - 1) -> 0.02
    up, down = set_errors([0.01, 0.03, -0.01], "std")
    assert up == down == approx(0.02)
    assert set_errors([0.01, 0.03, -0.04], "envelope") == (0.04, 0.04)
    assert set_errors([-0.02], "std") == (0.02, 0.02)  # a set of one: |shift|


def test_quadrature():
    assert quadrature([0.03, 0.04]) == approx(0.05)
    assert quadrature([]) == 0.0


# ----------------------------------------------------------------------------- records


SPECS = [
    VariationSpec("JES_up", "JES", "tree", "up", "JES_down"),
    VariationSpec("JES_down", "JES", "tree", "down", "JES_up"),
    VariationSpec("JES_flavour", "JES", "tree"),
    VariationSpec("JER_up", "JER", "tree"),
    VariationSpec("pdf_1", "PDF", "weight", set="pdf"),
    VariationSpec("pdf_2", "PDF", "weight", set="pdf"),
    VariationSpec("pdf_3", "PDF", "weight", set="pdf"),
    VariationSpec("herwig", "parton shower", "sample"),
    VariationSpec("gluon_rw", "reweighting", "reweighting"),
]


def _rec(sf: float | None, pt_low: float = 500.0, flags: list[str] | None = None, cut: float = 20.0) -> dict[str, Any]:
    return {
        "systematic": "x",
        "tagger": "ntrk",
        "working_point": 0.6,
        "parton": "quark",
        "quantity": "quark_efficiency",
        "pt_low": pt_low,
        "pt_high": pt_low + 100.0,
        "sf": sf,
        "stat": None if sf is None else 0.1,
        "stat_data": None,
        "stat_mc": None,
        "eff_data": None,
        "eff_mc": None,
        "cut": cut,
        "quark_side": "low",
        "f_forward_quark": 0.6,
        "f_central_quark": 0.4,
        "flags": list(flags or ([] if sf is not None else ["empty_mc_bin"])),
    }


# nominal SF 1.0 in two bins; variation SFs chosen for easy shifts
VAR_SF = {
    "JES_up": 1.03,
    "JES_down": 0.99,
    "JES_flavour": 0.96,
    "JER_up": 1.12,
    "pdf_1": 1.01,
    "pdf_2": 1.03,
    "pdf_3": 0.99,
    "herwig": 0.95,
    "gluon_rw": 1.0,
}


def _variations(overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name, sf in VAR_SF.items():
        recs = [_rec(sf, 500.0), _rec(sf, 600.0)]
        for key, value in (overrides or {}).get(name, {}).items():
            recs[1][key] = value
        out[name] = recs
    return out


def test_groups_and_total_by_hand():
    nominal = [_rec(1.0, 500.0), _rec(1.0, 600.0)]
    out = combine_records(SPECS, nominal, _variations())
    assert len(out) == 2
    r = out[0]
    assert r["sf"] == 1.0 and r["stat"] == 0.1 and r["flags"] == []
    assert r["variations"]["JES_up"] == approx(0.03)
    assert r["variations"]["herwig"] == approx(-0.05)
    g = r["groups"]
    # JES: pair (0.03 up, 0.01 down) and single 0.04 -> up sqrt(.03^2+.04^2) = .05, down sqrt(.01^2+.04^2)
    assert g["JES"]["up"] == approx(0.05)
    assert g["JES"]["down"] == approx(math.sqrt(0.0017))
    assert g["JER"] == {"up": approx(0.12), "down": approx(0.12)}
    # PDF set: shifts .01 .03 -.01 -> sample std 0.02 (see test_set_std_and_envelope)
    assert g["PDF"]["up"] == approx(0.02) and g["PDF"]["down"] == approx(0.02)
    assert g["parton shower"] == {"up": approx(0.05), "down": approx(0.05)}  # sample kind: a single
    assert g["reweighting"] == {"up": 0.0, "down": 0.0}
    # total: sqrt(.05^2 + .12^2 + .02^2 + .05^2 + 0) up; sqrt(.0017 + .12^2 + .02^2 + .05^2) down
    assert r["total_up"] == approx(math.sqrt(0.0198))
    assert r["total_down"] == approx(math.sqrt(0.0017 + 0.0144 + 0.0004 + 0.0025))
    assert r["undefined_variations"] == [] and r["variation_flags"] == {}


def test_envelope_set():
    specs = [VariationSpec(f"pdf_{i}", "PDF", "weight", set="pdf", set_combine="envelope") for i in (1, 2, 3)]
    nominal = [_rec(1.0)]
    out = combine_records(specs, nominal, {f"pdf_{i}": [_rec(sf)] for i, sf in ((1, 1.01), (2, 0.97), (3, 1.02))})
    assert out[0]["groups"]["PDF"] == {"up": approx(0.03), "down": approx(0.03)}
    assert out[0]["total_up"] == approx(0.03)


def test_null_shift_is_flagged_never_zero():
    nominal = [_rec(1.0, 500.0), _rec(1.0, 600.0)]
    variations = _variations({"herwig": {"sf": None, "flags": ["unphysical_efficiency"]}})
    first, second = combine_records(SPECS, nominal, variations)
    assert first["groups"]["parton shower"]["up"] == approx(0.05)  # the healthy bin is untouched
    assert second["variations"]["herwig"] is None
    assert second["groups"]["parton shower"] == {"up": None, "down": None}
    assert second["total_up"] is None and second["total_down"] is None
    assert second["groups"]["JES"]["up"] == approx(0.05)  # other groups stay defined
    assert "variation_undefined" in second["flags"] and "variation_flagged" in second["flags"]
    assert second["undefined_variations"] == ["herwig"]
    assert second["variation_flags"] == {"herwig": ["unphysical_efficiency"]}


def test_null_set_member_nulls_the_set():
    nominal = [_rec(1.0, 500.0), _rec(1.0, 600.0)]
    second = combine_records(SPECS, nominal, _variations({"pdf_2": {"sf": None}}))[1]
    assert second["groups"]["PDF"] == {"up": None, "down": None}
    assert second["undefined_variations"] == ["pdf_2"]


def test_null_nominal():
    nominal = [_rec(1.0, 500.0), _rec(None, 600.0)]
    second = combine_records(SPECS, nominal, _variations())[1]
    assert second["sf"] is None and second["total_up"] is None
    assert all(v is None for v in second["variations"].values())
    assert second["flags"] == ["empty_mc_bin"]  # nominal's reason, no extra noise
    assert second["undefined_variations"] == []


def test_components_of_the_demo_config(tmp_path):
    cfg = _demo_config(tmp_path)
    comps = {c.name: c for c in components(specs_from_config(cfg))}
    assert comps["JES_up/JES_down"].rule == "pair" and comps["JES_up/JES_down"].members == ("JES_up", "JES_down")
    assert comps["pdf"].rule == "std" and comps["pdf"].members == ("pdf_1", "pdf_2", "pdf_3")
    assert comps["herwig"].rule == "single" and comps["gluon_rw"].rule == "single"
    assert comps["JER_up"].rule == "single"


def test_bad_structures_are_config_errors():
    with pytest.raises(ConfigError, match="two groups"):
        components([VariationSpec("a", "JES", "tree", "up", "b"), VariationSpec("b", "JER", "tree", "down", "a")])
    with pytest.raises(ConfigError, match="reserved"):
        components([VariationSpec("a", "total", "tree")])
    with pytest.raises(ConfigError, match="disagree"):
        components([VariationSpec("p1", "PDF", "weight", set="p"), VariationSpec("p2", "other", "weight", set="p")])


def test_mismatched_results_are_rejected():
    nominal = [_rec(1.0, 500.0), _rec(1.0, 600.0)]
    variations = _variations({"JER_up": {"cut": 21.0}})
    with pytest.raises(ArtifactError, match="JER_up.*cut 21.0 differs"):
        combine_records(SPECS, nominal, variations)
    variations = _variations()
    variations["JER_up"] = variations["JER_up"][:1]
    with pytest.raises(ArtifactError, match="other bins"):
        combine_records(SPECS, nominal, variations)


# ----------------------------------------------------------------------------- files


def _demo_config(tmp_path: Path) -> Any:
    doc = yaml.safe_load(DEMO.read_text())
    doc["output"] = str(tmp_path / "out")
    doc["variations"]["herwig"].pop("nonclosure", None)  # hand-made results: no non-closure (tests/test_nonclosure.py)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_config(path)


def _write_results(cfg: Any, systs: list[str]) -> None:
    for s in systs:
        sf = 1.0 if s == "nominal" else VAR_SF.get(s, 1.02)
        p = cfg.output_path / "results" / s / "scale_factors.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"metadata": {}, "records": [_rec(sf, 500.0), _rec(sf, 600.0)]}))


def test_missing_results_name_the_file_and_the_command(tmp_path):
    cfg = _demo_config(tmp_path)
    names = cfg.variation_names()
    _write_results(cfg, [n for n in names if n != "pdf_2"])
    with pytest.raises(ArtifactError) as err:
        combine(cfg, config_path="my.yaml")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(cfg.output_path / "results" / "pdf_2" / "scale_factors.json") in msg
    assert "qgcal sweep --config my.yaml" in msg


def test_combined_file_is_deterministic(tmp_path):
    cfg = _demo_config(tmp_path)
    _write_results(cfg, cfg.variation_names())
    first = combine(cfg)
    assert first.path is not None
    blob = first.path.read_bytes()
    combine(cfg)
    assert first.path.read_bytes() == blob
    doc = json.loads(blob)
    assert list(doc) == ["metadata", "records"]
    assert doc["metadata"]["inputs"]["nominal"]["path"] == "results/nominal/scale_factors.json"
    assert set(doc["records"][0]["groups"]) == {v.group for v in cfg.variations.values()}
    # the demo's pdf set is 'std': shifts .01 .03 -.01 -> 0.02, as by hand above
    assert doc["records"][0]["groups"]["PDF"]["up"] == approx(0.02)

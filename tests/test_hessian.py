"""PDF sets combined as Hessian eigenvectors (sum in quadrature) next to std and envelope."""

from __future__ import annotations

import statistics
from typing import Any

import pytest
import yaml

from conftest import DEMO
from qgcal.combine import VariationSpec, combine_records, components, set_errors, specs_from_config
from qgcal.config import parse_config


def test_hessian_is_the_quadrature_sum_of_the_eigenvector_shifts() -> None:
    up, down = set_errors([0.03, -0.04, 0.0], "hessian")
    assert up == down == pytest.approx(0.05)  # sqrt(0.03^2 + 0.04^2), independent of the mean
    # the same shifts as MC replicas: a standard deviation around their mean, a smaller number
    assert set_errors([0.03, -0.04, 0.0], "std")[0] == pytest.approx(statistics.stdev([0.03, -0.04, 0.0]))
    assert set_errors([0.03, None], "hessian") is None
    assert set_errors([-0.02], "hessian") == pytest.approx((0.02, 0.02))


def _rec(sf: float) -> dict[str, Any]:
    return {
        "tagger": "ntrk", "working_point": 0.6, "parton": "quark", "pt_low": 500.0, "pt_high": 600.0,
        "sf": sf, "stat": 0.01, "cut": 20.0, "flags": [],
    }  # fmt: skip


def test_a_hessian_set_in_a_combination() -> None:
    specs = [VariationSpec(f"ct_{i}", "PDF", "weight", set="ct", set_combine="hessian") for i in (1, 2)]
    (r,) = combine_records(specs, [_rec(1.0)], {"ct_1": [_rec(1.03)], "ct_2": [_rec(0.96)]})
    assert r["groups"]["PDF"]["up"] == pytest.approx(0.05) and r["total_down"] == pytest.approx(0.05)
    assert components(specs)[0].rule == "hessian"


def test_config_accepts_set_combine_hessian_on_a_range() -> None:
    doc = yaml.safe_load(DEMO.read_text())
    doc["variations"] = {"ct": {"kind": "weight", "multiply": ["pdf_weight[1..3]"], "group": "PDF",
                                "set_combine": "hessian"}}  # fmt: skip
    cfg = parse_config(doc)
    (comp,) = components(specs_from_config(cfg))
    assert comp.rule == "hessian" and len(comp.members) == 3

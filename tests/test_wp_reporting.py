"""Working points on a discrete tagger: the achieved efficiency and shared cuts reach every output.

A cut can only sit on a bin edge; on an integer tagger "WP 0.5" keeps more than half of
the quarks and two WPs may land on one edge. The expected efficiencies below are sums of a
hand-made shape, never numbers taken from the code under test.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot
import yaml

from conftest import DEMO
from qgcal import extraction as fr
from qgcal.calibration import Binned, cut_efficiency, wp_cut_index
from qgcal.combine import VariationSpec, combine_records
from qgcal.config import parse_config
from qgcal.outputs.correction import write_corrections
from qgcal.outputs.report import render_report
from qgcal.outputs.rootfile import write_root
from qgcal.report import print_sf_table

# quark shape over 4 integer bins: cumulative from the low side 0.0, 0.45, 0.75, 0.9, 1.0
P_Q = np.array([0.45, 0.30, 0.15, 0.10])


def test_at_least_is_the_tightest_edge_reaching_the_wp() -> None:
    assert wp_cut_index(P_Q, 0.5, "low") == 2  # 0.45 < 0.5 <= 0.75
    assert cut_efficiency(P_Q, 2, "low") == pytest.approx(0.75)
    assert wp_cut_index(P_Q, 0.7, "low") == 2  # WPs 0.5 and 0.7 collapse onto one edge
    # quark-like high values: sum(p[k:]) = 1.0, 0.55, 0.25, 0.10, 0
    assert wp_cut_index(P_Q, 0.5, "high") == 1 and cut_efficiency(P_Q, 1, "high") == pytest.approx(0.55)


def test_nearest_rule_takes_the_closest_edge() -> None:
    assert wp_cut_index(P_Q, 0.5, "low", "nearest") == 1  # |0.45 - 0.5| < |0.75 - 0.5|
    assert wp_cut_index(P_Q, 0.7, "low", "nearest") == 2
    assert wp_cut_index(P_Q, 0.6, "low", "nearest") == 2  # tie 0.45 / 0.75: the one that reaches it
    assert wp_cut_index(P_Q, 0.01, "low", "nearest") == 1  # never an edge that tags no jet
    with pytest.raises(ValueError, match="rule"):
        wp_cut_index(P_Q, 0.5, "low", "closest")


def _cfg(rule: str = "at_least") -> Any:
    doc = yaml.safe_load(DEMO.read_text())
    doc["taggers"] = {
        "t": {"kind": "branch", "variable": "nTracks", "bins": {"n": 4, "low": 0, "high": 4}, "quark_side": "low"}
    }
    doc["pt_bins_gev"] = [500, 600]
    doc["working_points"] = [0.5, 0.7, 0.8]
    doc["calibration"] = {"min_data_jets": 0, "wp_rule": rule}
    doc["variations"] = {}
    doc.pop("inference", None)
    return parse_config(doc)


def _records(rule: str = "at_least") -> list[dict[str, Any]]:
    """Nominal records of one pT bin whose extracted MC quark shape is P_Q (pure samples, no mixing error)."""
    cfg = _cfg(rule)
    g = np.array([0.1, 0.2, 0.3, 0.4])

    def b(v: Any) -> Binned:
        return Binned(np.asarray(v, float), np.asarray(v, float))

    fq, fg, cq, cg = 8000 * P_Q, 2000 * g, 3000 * P_Q, 7000 * g
    x = fr.BinInputs(
        fq=b(fq), fg=b(fg), f_all=b(fq + fg), cq=b(cq), cg=b(cg), c_all=b(cq + cg),
        d_f=b(fq + fg), d_c=b(cq + cg), pt_low=500.0, pt_high=600.0,
    )  # fmt: skip
    ex = fr.extract_inputs(cfg, x)
    cuts = fr.frozen_cuts(cfg, {"t": [ex]})
    return fr.scale_factor_records(cfg, "nominal", {"t": [ex]}, cuts)


def _combined(rule: str = "at_least") -> list[dict[str, Any]]:
    nominal = _records(rule)
    return combine_records([VariationSpec("v", "G")], nominal, {"v": nominal})


def test_records_carry_the_achieved_efficiency_and_the_shared_cut() -> None:
    by_wp = {(r["working_point"], r["parton"]): r for r in _records()}
    for parton in ("quark", "gluon"):
        assert by_wp[(0.5, parton)]["wp_efficiency"] == pytest.approx(0.75)
        assert by_wp[(0.5, parton)]["wp_shared_with"] == [0.7]
        assert by_wp[(0.7, parton)]["wp_shared_with"] == [0.5]
        assert by_wp[(0.8, parton)]["wp_efficiency"] == pytest.approx(0.9)
        assert by_wp[(0.8, parton)]["wp_shared_with"] == []
    assert by_wp[(0.5, "quark")]["eff_mc"] == pytest.approx(0.75)  # the quark record's MC efficiency is the same
    nearest = {(r["working_point"], r["parton"]): r for r in _records("nearest")}
    assert nearest[(0.5, "quark")]["wp_efficiency"] == pytest.approx(0.45)
    assert nearest[(0.5, "quark")]["wp_shared_with"] == []
    # 0.8: |0.75 - 0.8| < |0.9 - 0.8|, the edge WP 0.7 has too
    assert nearest[(0.8, "quark")]["wp_efficiency"] == pytest.approx(0.75)
    assert nearest[(0.8, "quark")]["wp_shared_with"] == [0.7]


def test_correctionlib_and_root_publish_the_achieved_efficiency(tmp_path: Path) -> None:
    import correctionlib

    recs = _combined()
    write_corrections(tmp_path / "c.json", recs, ["G"], abs_eta_max=2.1)
    cset = correctionlib.CorrectionSet.from_file(str(tmp_path / "c.json"))
    assert cset["qg_wp_eff"].evaluate("t", "0.5", 550.0, 0.3) == pytest.approx(0.75)
    assert cset["qg_wp_eff"].evaluate("t", "0.8", 550.0, 0.3) == pytest.approx(0.9)
    assert cset["qg_wp_cut"].evaluate("t", "0.5", 550.0, 0.3) == cset["qg_wp_cut"].evaluate("t", "0.7", 550.0, 0.3)
    write_root(tmp_path / "c.root", recs, ["G"], abs_eta_max=2.1)
    with uproot.open(tmp_path / "c.root") as f:
        h = f["t/wp0.5/wp_efficiency"]
        assert h.values()[0] == pytest.approx(0.75)
        assert "0.7" in h.member("fTitle")


def test_report_and_table_say_each_collapse_once(tmp_path: Path) -> None:
    recs = _combined()
    meta = {"groups": {"G": []}, "systematics": {}, "qgcal_version": "x"}
    text = render_report("demo", meta, recs, [], tmp_path)
    assert "## Working points" in text
    assert text.count("WPs 0.5, 0.7 share one cut") == 1
    assert "0.750 =" in text and "0.900" in text
    buf = io.StringIO()
    print_sf_table(recs, file=buf)
    out = buf.getvalue()
    assert out.count("WPs 0.5, 0.7 share one cut") == 1 and "0.750 =" in out
    json.dumps(recs, allow_nan=False)

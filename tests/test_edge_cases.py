"""Numerical edge cases, from small hand-made histograms and records.

Empty pT bins, zero-weight bins, negative weights, a singular fraction matrix, an
unreachable working point, overflowing reweighting factors: every record carries a
flag where something is undefined or unphysical, and ``null`` where a number is
undefined, never an unflagged number; the correctionlib and ROOT writers publish
flagged bins exactly as docs/outputs.md says.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DEMO
from qgcal import extraction as fr
from qgcal.calibration import Binned, wp_cut_index
from qgcal.combine import VariationSpec, combine_records
from qgcal.config import parse_config
from qgcal.outputs.correction import write_corrections
from qgcal.outputs.rootfile import write_root

NUMBERS = ("sf", "stat", "stat_data", "stat_mc", "eff_data", "eff_mc", "cut", "f_forward_quark", "f_central_quark")


def _cfg(quark_side: str = "low") -> Any:
    doc = yaml.safe_load(DEMO.read_text())
    doc["taggers"] = {
        "t": {"kind": "branch", "variable": "nTracks", "bins": {"n": 4, "low": 0, "high": 4}, "quark_side": quark_side}
    }
    doc["pt_bins_gev"] = [500, 600]
    doc["calibration"] = {"min_data_jets": 0}
    doc.pop("inference", None)
    return parse_config(doc)


CFG = _cfg()
Q = np.array([400.0, 300.0, 200.0, 100.0])  # quark-like: low tagger values
G = np.array([100.0, 200.0, 300.0, 400.0])


def _b(values: Any, variances: Any = None) -> Binned:
    v = np.asarray(values, dtype=float)
    return Binned(v, np.abs(v) if variances is None else np.asarray(variances, dtype=float))


def inputs(fq: Any, fg: Any, cq: Any, cg: Any, d_f: Any, d_c: Any) -> fr.BinInputs:
    """One pT bin: forward/central MC quark and gluon histograms, and data."""
    fq, fg, cq, cg, d_f, d_c = map(_b, (fq, fg, cq, cg, d_f, d_c))
    return fr.BinInputs(
        fq=fq, fg=fg, f_all=fq + fg, cq=cq, cg=cg, c_all=cq + cg, d_f=d_f, d_c=d_c, pt_low=500.0, pt_high=600.0
    )


def mixture(f_fq: float, f_cq: float, n: float = 1.0) -> dict[str, Any]:
    """MC and data built from the same shapes: forward quark fraction f_fq, central f_cq."""
    return {
        "fq": n * f_fq * Q,
        "fg": n * (1 - f_fq) * G,
        "cq": n * f_cq * Q,
        "cg": n * (1 - f_cq) * G,
        "d_f": n * (f_fq * Q + (1 - f_fq) * G),
        "d_c": n * (f_cq * Q + (1 - f_cq) * G),
    }


def records(x: fr.BinInputs, cfg: Any = CFG) -> tuple[fr.Extraction, list[dict[str, Any]]]:
    ex = fr.extract_inputs(cfg, x)
    cuts = fr.frozen_cuts(cfg, {"t": [ex]})
    recs = fr.scale_factor_records(cfg, "nominal", {"t": [ex]}, cuts)
    check_contract(recs)
    json.dumps(fr.extraction_summary({"t": [ex]}), allow_nan=False)
    return ex, recs


def check_contract(recs: list[dict[str, Any]]) -> None:
    """null only with a flag; an unflagged record is finite and physical; JSON has no NaN."""
    json.dumps(recs, allow_nan=False)
    for r in recs:
        nulls = [k for k in NUMBERS if r[k] is None]
        if nulls:
            assert r["flags"], (nulls, r)
        if not r["flags"]:
            assert all(math.isfinite(r[k]) for k in NUMBERS), r
            assert 0 <= r["f_forward_quark"] <= 1 and 0 <= r["f_central_quark"] <= 1, r
            assert r["sf"] > 0 and r["eff_data"] > 0 and r["eff_mc"] > 0 and r["stat"] >= 0, r


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    out.update(changes)
    return out


HEALTHY = mixture(0.6, 0.3, n=10)
ZERO = np.zeros(4)

CASES: dict[str, tuple[dict[str, Any], set[str], bool]] = {
    # name: (histograms, flags every record must carry, whether sf is null)
    "empty_pt_bin": ({k: ZERO for k in HEALTHY}, {"empty_mc_bin", "empty_data_bin", "singular_fraction_matrix"}, True),
    "empty_data": (_with(HEALTHY, d_f=ZERO, d_c=ZERO), {"empty_data_bin"}, True),
    "empty_mc_quark": (_with(HEALTHY, fq=ZERO, cq=ZERO), {"empty_mc_bin"}, True),
    "zero_weight_region": (
        _with(HEALTHY, fq=[5.0, -5.0, 0, 0], fg=[-1.0, 1.0, 0, 0]),  # weights cancel
        {"empty_mc_bin"},
        True,
    ),
    "negative_quark_total": (_with(HEALTHY, fq=-HEALTHY["fq"]), {"empty_mc_bin"}, True),
    "negative_gluon_total": (_with(HEALTHY, fg=-0.5 * HEALTHY["fg"]), {"unphysical_fraction"}, False),
    "negative_central_quark_bin": (_with(HEALTHY, cq=[1200.0, -900.0, 600.0, 300.0]), {"unphysical_fraction"}, False),
    "singular_matrix": (mixture(0.45, 0.45, n=10), {"singular_fraction_matrix"}, True),
    "ill_conditioned": (mixture(0.45, 0.44, n=10), {"ill_conditioned"}, False),
    "zero_bins_in_central_quark": (_with(HEALTHY, cq=[0.0, 0.0, 600.0, 300.0]), {"reweighting_empty_bins"}, None),
    "no_data_on_the_quark_side": (
        _with(HEALTHY, d_f=[0, 0, 3000.0, 4000.0], d_c=[0, 0, 3000.0, 4000.0]),
        set(),
        None,
    ),  # some quark SFs are null (flagged), the gluon's are not
    "overflowing_reweighting": (_with(HEALTHY, cq=[1e-300, 900.0, 600.0, 300.0]), set(), None),
}


def test_a_healthy_bin_has_no_flag_and_finite_numbers():
    _, recs = records(inputs(**HEALTHY))
    assert all(not r["flags"] for r in recs)
    assert all(r["sf"] == pytest.approx(1.0) for r in recs)  # data = MC


@pytest.mark.parametrize("name", list(CASES))
def test_edge_case_records_are_flagged_and_null_where_undefined(name):
    hists, flags, sf_null = CASES[name]
    _, recs = records(inputs(**hists))
    for r in recs:
        assert flags <= set(r["flags"]), (name, r["flags"])
        if sf_null is not None:
            assert (r["sf"] is None) == sf_null, (name, r)
        if r["sf"] is None:
            assert r["stat"] is None and r["flags"]
    if name == "no_data_on_the_quark_side":
        null = [r for r in recs if r["sf"] is None]
        assert null and all(r["parton"] == "quark" and "unphysical_efficiency" in r["flags"] for r in null)
    if name == "singular_matrix":
        assert all(r["cut"] is None and "wp_unreachable" in r["flags"] for r in recs)
        assert all(r["f_forward_quark"] == pytest.approx(0.45) for r in recs)  # defined: kept


def test_unreachable_working_point_is_flagged_and_null_in_every_systematic():
    ex, _ = records(inputs(**HEALTHY))
    # an extracted MC quark shape whose cumulative never reaches 0.5 (defined, but too little quark)
    odd = dataclasses.replace(ex, p_q_mc=np.array([0.1, 0.1, 0.1, 0.1]))
    assert wp_cut_index(odd.p_q_mc, 0.5, "low") is None and wp_cut_index(odd.p_q_mc, 0.5, "high") is None
    cuts = fr.frozen_cuts(CFG, {"t": [odd]})
    assert cuts["t"][0]["0.5"] is None
    for syst, extraction in (("nominal", odd), ("JES_up", ex)):  # a variation reuses nominal's frozen cuts
        recs = fr.scale_factor_records(CFG, syst, {"t": [extraction]}, cuts)
        check_contract(recs)
        unreachable = [r for r in recs if r["working_point"] <= 0.5]
        assert unreachable and all(
            r["sf"] is None and r["cut"] is None and "wp_unreachable" in r["flags"] for r in unreachable
        )


def test_bootstrap_that_cannot_estimate_the_error_is_flagged():
    ex, _ = records(inputs(**HEALTHY))
    cuts = fr.frozen_cuts(CFG, {"t": [ex]})
    recs = fr.scale_factor_records(CFG, "nominal", {"t": [ex]}, cuts, boot={})
    check_contract(recs)
    assert all(r["stat"] is None and "bootstrap_unstable" in r["flags"] and r["sf"] is not None for r in recs)


_value = st.one_of(
    st.just(0.0), st.integers(0, 60).map(float), st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False)
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_value, min_size=4, max_size=4), min_size=6, max_size=6), st.sampled_from(["low", "high"]))
def test_any_histograms_give_flagged_nulls_never_an_unflagged_bad_number(hists, side):
    fq, fg, cq, cg, d_f, d_c = hists
    cfg = CFG if side == "low" else _CFG_HIGH
    records(inputs(fq, fg, cq, cg, np.abs(d_f), np.abs(d_c)), cfg)  # data weights are >= 0


_CFG_HIGH = _cfg("high")


# ----------------------------------------------------------------------------- published outputs


def _rec(pt_low: float, sf: float | None, stat: float | None, flags: list[str]) -> dict[str, Any]:
    return {
        "systematic": "nominal",
        "tagger": "t",
        "working_point": 0.6,
        "parton": "quark",
        "quantity": "quark_efficiency",
        "pt_low": pt_low,
        "pt_high": pt_low + 100.0,
        "sf": sf,
        "stat": stat,
        "stat_data": stat,
        "stat_mc": stat,
        "eff_data": None if sf is None else 0.5,
        "eff_mc": None if sf is None else 0.5,
        "cut": None if sf is None else 2.0,
        "quark_side": "low",
        "f_forward_quark": 0.6,
        "f_central_quark": 0.3,
        "flags": flags,
    }


def _combined() -> tuple[list[dict[str, Any]], list[str]]:
    nominal = [
        _rec(500, 1.00, 0.10, []),  # healthy
        _rec(600, 0.90, 0.20, ["low_stats"]),  # flagged, numbers defined
        _rec(700, None, None, ["empty_data_bin"]),  # undefined SF
        _rec(800, 1.10, 0.10, []),  # a variation undefined here
        _rec(900, 1.20, None, ["bootstrap_unstable"]),  # SF defined, stat undefined
    ]
    shift = {"JES_up": 0.05, "JES_down": -0.03, "herwig": 0.02}
    variations = {}
    for name, d in shift.items():
        recs = []
        for r in nominal:
            v = dict(r)
            v["systematic"] = name
            v["sf"] = None if r["sf"] is None else r["sf"] + d
            if name == "JES_up" and r["pt_low"] == 800:
                v["sf"], v["flags"] = None, ["unphysical_efficiency"]
            recs.append(v)
        variations[name] = recs
    specs = [
        VariationSpec("JES_up", "JES", "tree", "up", "JES_down"),
        VariationSpec("JES_down", "JES", "tree", "down", "JES_up"),
        VariationSpec("herwig", "parton shower", "sample"),
    ]
    combined = combine_records(specs, nominal, variations)
    return combined, ["JES", "parton shower"]


def test_combined_records_keep_nulls_flagged():
    combined, _ = _combined()
    by_pt = {r["pt_low"]: r for r in combined}
    assert by_pt[700]["sf"] is None and by_pt[700]["total_up"] is None and by_pt[700]["flags"]
    assert by_pt[800]["groups"]["JES"]["up"] is None and by_pt[800]["total_up"] is None
    assert "variation_undefined" in by_pt[800]["flags"] and by_pt[800]["undefined_variations"] == ["JES_up"]
    assert by_pt[800]["groups"]["parton shower"]["up"] == pytest.approx(0.02)
    assert by_pt[500]["flags"] == [] and by_pt[500]["total_up"] == pytest.approx(math.hypot(0.05, 0.02))
    json.dumps(combined, allow_nan=False)


def test_tables_print_nulls_as_a_dash_with_their_flags():
    """Regression: a null stat (bootstrap_unstable) crashed the table printer with a TypeError."""
    import io

    from qgcal.cli.combine import print_combined
    from qgcal.report import print_sf_table

    nominal = [
        _rec(500, 1.00, 0.10, []),
        _rec(700, None, None, ["empty_data_bin"]),
        _rec(900, 1.20, None, ["bootstrap_unstable"]),
    ]
    out = io.StringIO()
    print_sf_table(nominal, file=out)
    row = next(ln for ln in out.getvalue().splitlines() if ln.startswith("t "))
    assert "1.000 ± 0.100" in row
    assert "- ± - [empty_data_bin]" in row and "1.200 ± - [bootstrap_unstable]" in row
    combined, _ = _combined()
    out = io.StringIO()
    print_combined(combined, title="combined", wp=0.6, file=out)
    text = out.getvalue()
    assert "1.200 ± -" in text and "- [empty_data_bin]" in text and "None" not in text


def _expected(r: dict[str, Any]) -> tuple[dict[str, float | None], int, float]:
    """docs/outputs.md: an undefined value is not evaluable (correctionlib) / NaN (ROOT);
    qg_sf_flag bit 1 = some value undefined, plus one bit per flag (low_stats 8, empty_data_bin 4,
    bootstrap_unstable 1024, variation_undefined 2048, variation_flagged 4096); ROOT nominal
    bin error = stat (+inf when undefined)."""
    bits = {"low_stats": 8, "empty_data_bin": 4, "bootstrap_unstable": 1024, "variation_undefined": 2048}
    bits["variation_flagged"] = 4096
    bits["unphysical_efficiency"] = 512
    sf = r["sf"]
    out: dict[str, float | None] = {"nominal": sf}
    missing = sf is None

    def band(key: str, up: float | None, down: float | None) -> None:
        nonlocal missing
        if sf is None or up is None or down is None:
            out[f"{key}_up"] = out[f"{key}_down"] = None
            missing = True
        else:
            out[f"{key}_up"], out[f"{key}_down"] = sf + up, sf - down

    band("stat", r["stat"], r["stat"])
    band("JES", r["groups"]["JES"]["up"], r["groups"]["JES"]["down"])
    band("parton_shower", r["groups"]["parton shower"]["up"], r["groups"]["parton shower"]["down"])
    band("total", r["total_up"], r["total_down"])
    code = 1 if missing else 0
    for f in r["flags"]:
        code |= bits[f]
    error = r["stat"] if sf is not None and r["stat"] is not None else math.inf
    return out, code, error


def test_correctionlib_and_root_publish_flagged_bins_as_documented(tmp_path: Path):
    import correctionlib

    combined, groups = _combined()
    write_corrections(tmp_path / "c.json", combined, groups, abs_eta_max=2.1)
    write_root(tmp_path / "sf.root", combined, groups, abs_eta_max=2.1)
    cset = correctionlib.CorrectionSet.from_file(str(tmp_path / "c.json"))
    codes = []
    with uproot.open(tmp_path / "sf.root") as f:
        for i, r in enumerate(combined):
            values, code, error = _expected(r)
            pt = r["pt_low"] + 50.0
            for syst, v in values.items():
                if v is None:
                    with pytest.raises(IndexError):
                        cset["qg_sf"].evaluate("t", "0.6", "quark", syst, pt, 1.0)
                    assert math.isnan(f["t/wp0.6/quark"][syst].values()[i]), (r["pt_low"], syst)
                else:
                    assert cset["qg_sf"].evaluate("t", "0.6", "quark", syst, pt, 1.0) == pytest.approx(v)
                    assert f["t/wp0.6/quark"][syst].values()[i] == pytest.approx(v), (r["pt_low"], syst)
            assert cset["qg_sf_flag"].evaluate("t", "0.6", "quark", pt, 1.0) == code
            assert f["t/wp0.6/quark/flags"].values()[i] == code
            assert f["t/wp0.6/quark/nominal"].errors()[i] == pytest.approx(error)
            codes.append(code)
    # healthy; flagged (defined); undefined SF; an undefined variation (JES); undefined stat
    assert codes == [0, 8, 1 | 4, 1 | 2048 | 4096, 1 | 1024]

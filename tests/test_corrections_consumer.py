"""corrections.json used as an analysis would: correctionlib's evaluator alone, on arbitrary jets.

Expected values come from the combined JSON records with the rules of docs/outputs.md,
written out here (not with qgcal's writer helpers): SF, SF + up, SF - down; efficiencies
with sigma(eff_data) = stat_data x eff_mc, sigma(eff_mc) = stat_mc x eff_mc^2 / eff_data;
the flag bits as documented; an undefined value, another key, or a jet outside the
calibrated pT / |eta| range raises.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot
from test_outputs import published_small  # noqa: F401  (the session fixture: a sweep + publish)

from qgcal.outputs.correction import write_corrections
from qgcal.outputs.rootfile import write_root

correctionlib = pytest.importorskip("correctionlib")

#: docs/outputs.md, "qg_sf_flag": 0 healthy, else the sum of these bits.
DOC_BITS = {
    "undefined_value": 1,
    "empty_mc_bin": 2,
    "empty_data_bin": 4,
    "low_stats": 8,
    "reweighting_empty_bins": 16,
    "singular_fraction_matrix": 32,
    "ill_conditioned": 64,
    "unphysical_fraction": 128,
    "wp_unreachable": 256,
    "unphysical_efficiency": 512,
    "bootstrap_unstable": 1024,
    "variation_undefined": 2048,
    "variation_flagged": 4096,
    "undefined": 8192,
    "other": 16384,
}
ETA_MAX = 2.1


def syst_key(group: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", group).strip("_")


def expected_sf(rec: dict[str, Any], groups: list[str], syst: str, *, fallback: bool = False) -> float | None:
    """The documented value of ``qg_sf`` for one record and systematic; None: not evaluable."""
    sf = rec["sf"]
    if sf is None:
        if not fallback:
            return None
        return 1.0 if syst == "nominal" else 2.0 if syst.endswith("_up") else 0.0
    if syst == "nominal":
        return sf
    name, direction = syst.rsplit("_", 1)
    if name == "stat":
        up = down = rec["stat"]
    elif name == "total":
        up, down = rec["total_up"], rec["total_down"]
    else:
        g = {syst_key(g): g for g in groups}[name]
        up, down = rec["groups"][g]["up"], rec["groups"][g]["down"]
    if up is None or down is None:
        return (2.0 * sf if direction == "up" else 0.0) if fallback else None
    return sf + up if direction == "up" else sf - down


def expected_eff(rec: dict[str, Any], sample: str, syst: str) -> float | None:
    e_d, e_m = rec["eff_data"], rec["eff_mc"]
    e = e_d if sample == "data" else e_m
    if e is None or syst == "nominal":
        return e
    if e_d is None or e_m is None:
        return None
    if sample == "data":
        sigma = None if rec["stat_data"] is None else rec["stat_data"] * e_m
    else:
        sigma = None if rec["stat_mc"] is None or e_d == 0 else rec["stat_mc"] * e_m * e_m / e_d
    if sigma is None:
        return None
    return e + sigma if syst == "stat_up" else e - sigma


def expected_flag(rec: dict[str, Any], groups: list[str]) -> int:
    names = ["nominal", "stat_up", "stat_down", "total_up", "total_down"]
    names += [f"{syst_key(g)}_{d}" for g in groups for d in ("up", "down")]
    bits = DOC_BITS["undefined_value"] if any(expected_sf(rec, groups, s) is None for s in names) else 0
    for f in rec["flags"]:
        bits |= DOC_BITS.get(f, DOC_BITS["other"])
    return bits


def systematics(groups: list[str]) -> list[str]:
    out = ["nominal", "stat_up", "stat_down", "total_up", "total_down"]
    return out + [f"{syst_key(g)}_{d}" for g in groups for d in ("up", "down")]


def find_record(records: list[dict[str, Any]], tagger: str, wp: str, parton: str, pt: float) -> dict[str, Any]:
    hits = [
        r
        for r in records
        if r["tagger"] == tagger
        and f"{r['working_point']:g}" == wp
        and r["parton"] == parton
        and r["pt_low"] <= pt < r["pt_high"]
    ]
    assert len(hits) == 1, (tagger, wp, parton, pt)
    return hits[0]


def evaluate_or_none(corr: Any, *args: Any) -> float | None:
    try:
        return float(corr.evaluate(*args))
    except IndexError:  # documented: an undefined value is not in the file
        return None


def random_jets(records: list[dict[str, Any]], groups: list[str], n: int, seed: int) -> list[tuple[Any, ...]]:
    rng = np.random.default_rng(seed)
    taggers = sorted({r["tagger"] for r in records})
    wps = sorted({f"{r['working_point']:g}" for r in records})
    lo, hi = min(r["pt_low"] for r in records), max(r["pt_high"] for r in records)
    systs = systematics(groups)
    jets = []
    for _ in range(n):
        jets.append(
            (
                str(rng.choice(taggers)),
                str(rng.choice(wps)),
                str(rng.choice(["quark", "gluon"])),
                str(rng.choice(systs)),
                float(rng.uniform(lo, hi)),
                float(rng.uniform(0.0, ETA_MAX)),
            )
        )
    # bin edges exactly: a bin includes its low edge
    for r in records[:: max(1, len(records) // 20)]:
        jets.append((r["tagger"], f"{r['working_point']:g}", r["parton"], "nominal", float(r["pt_low"]), 0.0))
    return jets


def check_consumer(path: Path, records: list[dict[str, Any]], groups: list[str], n: int = 1500, seed: int = 7) -> int:
    """Evaluate every correction on random jets and compare with the records; returns the checks made."""
    cset = correctionlib.CorrectionSet.from_file(str(path))
    sf, flag, eff, cut, side = (cset[k] for k in ("qg_sf", "qg_sf_flag", "qg_eff", "qg_wp_cut", "qg_quark_side"))
    checks = 0
    undefined_seen = 0
    for tagger, wp, parton, syst, pt, eta in random_jets(records, groups, n, seed):
        rec = find_record(records, tagger, wp, parton, pt)
        want = expected_sf(rec, groups, syst)
        got = evaluate_or_none(sf, tagger, wp, parton, syst, pt, eta)
        if want is None:
            assert got is None, (rec, syst)
            undefined_seen += 1
        else:
            assert got == pytest.approx(want, rel=1e-12, abs=1e-15), (rec, syst)
        assert flag.evaluate(tagger, wp, parton, pt, eta) == expected_flag(rec, groups), rec
        if rec["cut"] is None:
            with pytest.raises(IndexError):
                cut.evaluate(tagger, wp, pt, eta)
        else:
            # correctionlib's JSON parser may differ from Python's in the last bit
            assert cut.evaluate(tagger, wp, pt, eta) == pytest.approx(rec["cut"], rel=1e-14, abs=1e-15)
        assert side.evaluate(tagger) == (-1.0 if rec["quark_side"] == "low" else 1.0)
        for sample in ("data", "mc"):
            for s in ("nominal", "stat_up", "stat_down"):
                want_e = expected_eff(rec, sample, s)
                got_e = evaluate_or_none(eff, tagger, wp, parton, sample, s, pt, eta)
                if want_e is None:
                    assert got_e is None, (rec, sample, s)
                else:
                    assert got_e == pytest.approx(want_e, rel=1e-12, abs=1e-15), (rec, sample, s)
        if rec["eff_data"] is not None and rec["eff_mc"] is not None and rec["eff_mc"] != 1.0:
            # the mis-tag SF (gluon) / quark inefficiency SF, formed from the published efficiencies
            e_d = eff.evaluate(tagger, wp, parton, "data", "nominal", pt, eta)
            e_m = eff.evaluate(tagger, wp, parton, "mc", "nominal", pt, eta)
            assert (1 - e_d) / (1 - e_m) == pytest.approx((1 - rec["eff_data"]) / (1 - rec["eff_mc"]), rel=1e-12)
        checks += 1
    return checks


# ----------------------------------------------------------------------------- hand-made records


def _rec(pt_low: float, parton: str, sf: float | None, **kw: Any) -> dict[str, Any]:
    groups = {"JES": {"up": 0.02, "down": 0.01}, "parton shower": {"up": 0.05, "down": 0.04}}
    groups.update(kw.pop("groups", {}))
    ups = [g["up"] for g in groups.values()]
    downs = [g["down"] for g in groups.values()]
    rec = {
        "tagger": "ntrk",
        "working_point": 0.6,
        "parton": parton,
        "quantity": "quark_efficiency" if parton == "quark" else "gluon_rejection",
        "pt_low": pt_low,
        "pt_high": pt_low + 100.0,
        "sf": sf,
        "stat": None if sf is None else 0.04,
        "stat_data": None if sf is None else 0.03,
        "stat_mc": None if sf is None else 0.02,
        "eff_data": None if sf is None else 0.55,
        "eff_mc": None if sf is None else 0.6,
        "cut": 12.0 + pt_low / 100.0,
        "quark_side": "low",
        "groups": groups,
        "total_up": None if sf is None or None in ups else math.hypot(*ups),
        "total_down": None if sf is None or None in downs else math.hypot(*downs),
        "flags": [],
    }
    rec.update(kw)
    return rec


GROUPS = ["JES", "parton shower"]
HAND = [
    _rec(500.0, "quark", 0.95),
    _rec(600.0, "quark", 0.20, stat=0.18, flags=["unphysical_efficiency"]),  # flagged but defined
    _rec(700.0, "quark", None, flags=["empty_data_bin"]),  # undefined SF
    _rec(800.0, "quark", 1.1, groups={"JES": {"up": None, "down": None}}, flags=["variation_undefined"]),
    _rec(900.0, "quark", 1.0, stat=None, flags=["bootstrap_unstable", "a_new_flag"]),
    _rec(500.0, "gluon", 0.9),
    _rec(600.0, "gluon", 1.2, flags=["low_stats"]),
    _rec(700.0, "gluon", None, flags=["empty_data_bin"]),
    _rec(800.0, "gluon", 1.05),
    _rec(900.0, "gluon", 0.97),
]


def test_hand_made_file_reproduces_the_records(tmp_path):
    path = write_corrections(tmp_path / "corrections.json", HAND, GROUPS, abs_eta_max=ETA_MAX)
    assert check_consumer(path, HAND, GROUPS, n=600) > 600
    cset = correctionlib.CorrectionSet.from_file(str(path))
    sf, flag = cset["qg_sf"], cset["qg_sf_flag"]
    # flagged-but-defined SFs are published, never as healthy
    assert sf.evaluate("ntrk", "0.6", "quark", "nominal", 650.0, 0.3) == pytest.approx(0.20)
    assert flag.evaluate("ntrk", "0.6", "quark", 650.0, 0.3) == 512
    assert flag.evaluate("ntrk", "0.6", "quark", 550.0, 0.3) == 0
    assert flag.evaluate("ntrk", "0.6", "quark", 750.0, 0.3) == 1 + 4
    assert flag.evaluate("ntrk", "0.6", "quark", 950.0, 0.3) == 1 + 1024 + 16384
    # undefined: not evaluable (no 1.0 presented as a measurement)
    with pytest.raises(IndexError):
        sf.evaluate("ntrk", "0.6", "quark", "nominal", 750.0, 0.3)
    with pytest.raises(IndexError):
        sf.evaluate("ntrk", "0.6", "quark", "JES_up", 850.0, 0.3)
    assert sf.evaluate("ntrk", "0.6", "quark", "parton_shower_up", 850.0, 0.3) == pytest.approx(1.15)


def test_out_of_range_and_near_miss_keys_raise(tmp_path):
    path = write_corrections(tmp_path / "corrections.json", HAND, GROUPS, abs_eta_max=ETA_MAX)
    cset = correctionlib.CorrectionSet.from_file(str(path))
    sf = cset["qg_sf"]
    assert sf.evaluate("ntrk", "0.6", "quark", "nominal", 500.0, 0.0) == pytest.approx(0.95)
    for pt, eta in (
        (30.0, 1.0),
        (499.999, 1.0),
        (1000.0, 1.0),
        (5000.0, 1.0),
        (550.0, 2.1),
        (550.0, 3.0),
        (550.0, -0.1),
    ):
        with pytest.raises(RuntimeError, match="bounds"):
            sf.evaluate("ntrk", "0.6", "quark", "nominal", pt, eta)
        for name, args in (
            ("qg_sf_flag", ("ntrk", "0.6", "quark", pt, eta)),
            ("qg_eff", ("ntrk", "0.6", "quark", "data", "nominal", pt, eta)),
            ("qg_wp_cut", ("ntrk", "0.6", pt, eta)),
        ):
            with pytest.raises(RuntimeError, match="bounds"):
                cset[name].evaluate(*args)
    # working points: one key format, f"{wp:g}"; a near miss is an error, never another WP
    for key in ("0.60", "0.65", "60", " 0.6"):
        with pytest.raises(IndexError):
            sf.evaluate("ntrk", key, "quark", "nominal", 550.0, 1.0)
    with pytest.raises(RuntimeError, match="wrong type"):
        sf.evaluate("ntrk", 0.6, "quark", "nominal", 550.0, 1.0)
    with pytest.raises(IndexError):
        sf.evaluate("ntrk", "0.6", "quark", "JES", 550.0, 1.0)


def test_clamp_and_fallback_are_options(tmp_path):
    path = write_corrections(tmp_path / "c.json", HAND, GROUPS, abs_eta_max=ETA_MAX, flow="clamp", undefined="fallback")
    sf = correctionlib.CorrectionSet.from_file(str(path))["qg_sf"]
    assert sf.evaluate("ntrk", "0.6", "quark", "nominal", 30.0, 1.0) == pytest.approx(0.95)  # first bin
    assert sf.evaluate("ntrk", "0.6", "gluon", "nominal", 5000.0, 4.0) == pytest.approx(0.97)  # last bin
    for rec in HAND:
        for syst in systematics(GROUPS):
            want = expected_sf(rec, GROUPS, syst, fallback=True)
            got = sf.evaluate("ntrk", "0.6", rec["parton"], syst, rec["pt_low"] + 1.0, 0.5)
            assert got == pytest.approx(want, rel=1e-12), (rec["pt_low"], syst)


def test_root_file_has_the_same_content(tmp_path):
    path = write_root(tmp_path / "sf.root", HAND, GROUPS, abs_eta_max=ETA_MAX)
    assert check_root_content(path, HAND, GROUPS) == len(HAND)


def check_root_content(path: Path, records: list[dict[str, Any]], groups: list[str]) -> int:
    """Every SF, flag, efficiency and cut of the records, read back by uproot."""
    n = 0
    with uproot.open(path) as f:
        assert list(f["abs_eta_range"].axis().edges()) == [0.0, ETA_MAX]
        for r in records:
            d = f"{r['tagger']}/wp{r['working_point']:g}"
            edges = f[f"{d}/{r['parton']}/nominal"].axis().edges()
            i = int(np.searchsorted(edges, r["pt_low"]))
            assert edges[i] == r["pt_low"] and edges[i + 1] == r["pt_high"]

            def value(name: str, d: str = d, r: dict[str, Any] = r, i: int = i) -> float:
                return float(f[f"{d}/{r['parton']}/{name}"].values()[i])

            for syst in systematics(groups):
                want = expected_sf(r, groups, syst)
                assert math.isnan(value(syst)) if want is None else value(syst) == pytest.approx(want, rel=1e-12)
            stat = f[f"{d}/{r['parton']}/nominal"].errors()[i]
            assert stat == math.inf if r["sf"] is None or r["stat"] is None else stat == pytest.approx(r["stat"])
            assert value("flags") == expected_flag(r, groups)
            for sample in ("data", "mc"):
                want = expected_eff(r, sample, "nominal")
                assert math.isnan(value(f"eff_{sample}")) if want is None else value(f"eff_{sample}") == want
                up = expected_eff(r, sample, "stat_up")
                err = f[f"{d}/{r['parton']}/eff_{sample}"].errors()[i]
                assert err == math.inf if up is None else err == pytest.approx(up - want, rel=1e-9)
            cut = float(f[f"{d}/cut"].values()[i])
            assert math.isnan(cut) if r["cut"] is None else cut == r["cut"]
            n += 1
    return n


# ----------------------------------------------------------------------------- a real combination


def test_published_corrections_on_random_jets(published_small):  # noqa: F811
    cfg = published_small["cfg"]
    d = cfg.output_path / "results" / "combined"
    doc = json.loads((d / "scale_factors.json").read_text())
    groups = list(doc["metadata"]["groups"])
    records = doc["records"]
    assert cfg.selection.abs_eta_max == ETA_MAX
    assert check_consumer(d / "corrections.json", records, groups, n=3000, seed=11) >= 3000
    assert check_root_content(d / "scale_factors.root", records, groups) == len(records)
    # the cuts are the ones the calibration froze (results/nominal/cuts.json)
    cuts = json.loads((cfg.output_path / "results" / "nominal" / "cuts.json").read_text())
    cset = correctionlib.CorrectionSet.from_file(str(d / "corrections.json"))
    edges = cfg.pt_bins_gev
    checked = 0
    for tagger, per_bin in cuts.items():
        for ipt, per_wp in enumerate(per_bin):
            pt = 0.5 * (edges[ipt] + edges[ipt + 1])
            for wp, c in per_wp.items():
                if c is None:
                    with pytest.raises(IndexError):
                        cset["qg_wp_cut"].evaluate(tagger, wp, pt, 1.0)
                else:
                    assert cset["qg_wp_cut"].evaluate(tagger, wp, pt, 1.0) == pytest.approx(
                        c["value"], rel=1e-14, abs=1e-15
                    )
                    checked += 1
    assert checked > 0
    # out of the calibrated phase space: an error, for every correction with pt/abs_eta
    for pt, eta in ((30.0, 1.0), (edges[-1], 1.0), (600.0, cfg.selection.abs_eta_max)):
        with pytest.raises(RuntimeError):
            cset["qg_sf"].evaluate("ntrk", "0.6", "quark", "nominal", pt, eta)


def test_correction_validate_accepts_the_file(published_small):  # noqa: F811
    path = published_small["cfg"].output_path / "results" / "combined" / "corrections.json"
    exe = shutil.which("correction") or str(Path(sys.executable).with_name("correction"))
    res = subprocess.run([exe, "validate", str(path)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_combine_command_writes_the_chosen_flow_and_fallback(published_small, tmp_path):  # noqa: F811
    """``qgcal combine --flow clamp --undefined fallback`` reaches the writer (on a copy of the output)."""
    import yaml

    from qgcal.cli import main

    src = published_small["config_path"]
    doc = yaml.safe_load(Path(src).read_text())
    out = tmp_path / "out"
    shutil.copytree(published_small["cfg"].output_path, out, symlinks=True)
    doc["output"] = str(out)
    cfg_path = Path(src).with_name(f"clamp-{tmp_path.name}.yaml")  # beside the original: same relative inputs
    cfg_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        code = main(
            ["-q", "combine", "--config", str(cfg_path), "--no-plots", "--flow", "clamp", "--undefined", "fallback"]
        )
    finally:
        cfg_path.unlink()
    assert code == 0
    cset = correctionlib.CorrectionSet.from_file(str(out / "results" / "combined" / "corrections.json"))
    edges = published_small["cfg"].pt_bins_gev
    first = cset["qg_sf"].evaluate("ntrk", "0.6", "quark", "nominal", 0.5 * (edges[0] + edges[1]), 1.0)
    assert cset["qg_sf"].evaluate("ntrk", "0.6", "quark", "nominal", 30.0, 1.0) == first  # clamped
    default = correctionlib.CorrectionSet.from_file(
        str(published_small["cfg"].output_path / "results" / "combined" / "corrections.json")
    )
    with pytest.raises(RuntimeError):
        default["qg_sf"].evaluate("ntrk", "0.6", "quark", "nominal", 30.0, 1.0)
    doc = json.loads((out / "results" / "combined" / "scale_factors.json").read_text())
    undefined = [r for r in doc["records"] if r["sf"] is None]
    for r in undefined[:5]:  # the fallback writes 1.0 where the default file has nothing to evaluate
        args = (r["tagger"], f"{r['working_point']:g}", r["parton"], "nominal", 0.5 * (r["pt_low"] + r["pt_high"]), 1.0)
        assert cset["qg_sf"].evaluate(*args) == 1.0
        with pytest.raises(IndexError):
            default["qg_sf"].evaluate(*args)

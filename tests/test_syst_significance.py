"""Statistical significance of systematic shifts from bootstrap replicas shared with nominal.

The shift's error is the spread over replicas of (variation - nominal): the same events get the
same Poisson weights in every systematic, so what both share cancels. Pruning and smoothing are
checked on hand-made numbers with expected values computed here; the pipeline test checks that
the replicas reach results/<syst>/ and the combination.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import qgcal
from qgcal.combine import VariationSpec, combine_records, shift_stat, treat_shifts
from qgcal.extraction import REPLICAS_FILE, load_replicas, replica_key
from qgcal.outputs import publish


def test_shared_replicas_cancel_what_nominal_and_variation_share() -> None:
    rng = np.random.default_rng(1)
    common = rng.normal(1.0, 0.05, 400)  # the statistical fluctuation both see
    own = rng.normal(0.0, 0.005, 400)  # what only the variation changes
    err = shift_stat(common, common + 0.01 + own)
    assert err == pytest.approx(np.std(own, ddof=1))
    assert err < 0.2 * 0.05  # treated as independent it would be 0.05 * sqrt(2)
    with_nan = common.copy()
    with_nan[:390] = np.nan  # fewer defined replica pairs than asked for: unknown
    assert shift_stat(with_nan, common, n_min=200) is None
    assert shift_stat(None, common) is None


def _rec(pt_low: float, sf: float = 1.0) -> dict[str, Any]:
    return {
        "tagger": "ntrk", "working_point": 0.6, "parton": "quark", "pt_low": pt_low, "pt_high": pt_low + 100.0,
        "sf": sf, "stat": 0.05, "cut": 20.0, "flags": [],
    }  # fmt: skip


SPECS = [
    VariationSpec("a", "A"),
    VariationSpec("up", "P", direction="up", pair="down"),
    VariationSpec("down", "P", direction="down", pair="up"),
    VariationSpec("s_1", "S", set="s"),
]


def test_prune_sets_insignificant_singles_and_pairs_to_zero() -> None:
    nominal = [_rec(500.0), _rec(600.0)]
    shifts = [{"a": 0.005, "up": 0.004, "down": 0.03, "s_1": 0.001}, {"a": 0.03, "up": 0.004, "down": -0.003}]
    shifts[1]["s_1"] = 0.001
    stats = [dict.fromkeys(shifts[0], 0.01), dict.fromkeys(shifts[1], 0.01)]
    got = treat_shifts(SPECS, nominal, shifts, stats, "prune", 1.0)
    assert got[0]["a"] == (0.0, 0.01, "pruned")
    assert got[0]["up"][2] == got[0]["down"][2] == "kept"  # one half significant: the pair stays
    assert got[1]["a"] == (0.03, 0.01, "kept")
    assert got[1]["up"] == (0.0, 0.01, "pruned") and got[1]["down"] == (0.0, 0.01, "pruned")
    assert got[0]["s_1"][2] == got[1]["s_1"][2] == "kept"  # set members are never pruned
    assert treat_shifts(SPECS, nominal, shifts, stats, "keep", 1.0)[0]["a"] == (0.005, 0.01, "kept")


def test_smooth_merges_adjacent_insignificant_bins_until_significant() -> None:
    nominal = [_rec(500.0 + 100.0 * i) for i in range(5)]
    # bins 0-2 each below 1.5 sigma, bin 3 significant alone, bin 4 insignificant alone
    vals = [(0.010, 0.01), (0.012, 0.01), (0.009, 0.02), (0.2, 0.01), (-0.004, 0.01)]
    shifts = [{"a": v} for v, _ in vals]
    stats = [{"a": e} for _, e in vals]
    got = treat_shifts([SPECS[0]], nominal, shifts, stats, "smooth", 1.5)
    # greedy from low pT: bins 0+1 reach |mean| >= 1.5 sigma(mean) = 1.5 * 0.01 / sqrt(2);
    # bin 2, insignificant and last of its run, joins them
    assert abs((0.010 + 0.012) / 2) / (0.01 / math.sqrt(2)) >= 1.5
    w = [1 / 0.01**2, 1 / 0.01**2, 1 / 0.02**2]
    mean = (0.010 * w[0] + 0.012 * w[1] + 0.009 * w[2]) / sum(w)
    for i in range(3):
        assert got[i]["a"] == pytest.approx((mean, vals[i][1], "smoothed"))
    assert got[3]["a"] == (0.2, 0.01, "kept")  # a significant shift is never touched
    assert got[4]["a"] == (-0.004, 0.01, "kept")  # a run of one: nothing to merge with
    # an all-insignificant series becomes one group: every bin gets the series' mean
    flat = treat_shifts([SPECS[0]], nominal[:2], [{"a": 0.001}, {"a": -0.003}], [{"a": 0.01}, {"a": 0.01}], "smooth")
    assert flat[0]["a"] == pytest.approx((-0.001, 0.01, "smoothed")) and flat[1]["a"][0] == pytest.approx(-0.001)


def test_combined_records_say_what_was_done() -> None:
    nominal = [_rec(500.0)]
    reps = np.random.default_rng(2).normal(1.0, 0.05, 50)
    key = replica_key(nominal[0])
    replicas = {"nominal": {key: reps}, "a": {key: reps + 0.001}, "up": None, "down": None, "s_1": None}
    variations = {"a": [_rec(500.0, 1.001)], "up": [_rec(500.0, 1.02)], "down": [_rec(500.0, 0.99)]}
    variations["s_1"] = [_rec(500.0, 1.0)]
    (r,) = combine_records(SPECS, nominal, variations, replicas, "prune", 2.0)
    assert r["shift_stat"]["a"] == pytest.approx(0.0, abs=1e-12)  # an exact copy shifted: no noise at all
    assert r["shift_treatment"]["a"] == "kept"  # 0.001 / ~0 is significant
    assert r["shift_stat"]["up"] is None and r["shift_treatment"]["up"] == "kept"  # no replicas: never pruned
    assert r["variations_measured"]["up"] == pytest.approx(0.02)
    (k,) = combine_records(SPECS, nominal, variations)
    assert k["groups"] == r["groups"] and k["shift_stat"] == dict.fromkeys(["a", "down", "s_1", "up"])


def test_pipeline_writes_replicas_and_combine_prunes(small_sample, make_config) -> None:
    def mutate(doc: dict[str, Any]) -> None:
        doc["bootstrap"] = 20
        doc["taggers"] = {"ntrk": doc["taggers"]["ntrk"]}
        doc["working_points"] = [0.6]
        doc["variations"] = {"gluon_rw": doc["variations"]["gluon_rw"], "herwig": doc["variations"]["herwig"]}
        doc["calibration"] = {"shift_policy": "prune", "shift_min_significance": 1.0}
        doc["plots"] = {"enabled": False}

    _, cfg = make_config(small_sample, mutate=mutate)
    qgcal.sweep(cfg, workers=1)
    out = publish(cfg, plots=False)
    nominal = load_replicas(cfg.output_path / "results" / "nominal" / REPLICAS_FILE)
    assert nominal is not None and all(len(v) == 20 for v in nominal.values())
    recs = [r for r in out.combined.records if r["sf"] is not None]
    assert recs and all(r["shift_stat"]["gluon_rw"] is not None for r in recs)
    for r in recs:
        for v in ("gluon_rw", "herwig"):
            sig, how = r["shift_significance"][v], r["shift_treatment"][v]
            if sig is not None and abs(sig) < 1.0:
                assert how == "pruned" and r["variations"][v] == 0.0
            else:
                assert how == "kept" and r["variations"][v] == r["variations_measured"][v]
    # the shift's error is the spread of the replica-by-replica difference of the two files
    rw = load_replicas(cfg.output_path / "results" / "gluon_rw" / REPLICAS_FILE)
    assert rw is not None
    for r in recs:
        d = rw[replica_key(r)] - nominal[replica_key(r)]
        d = d[np.isfinite(d)]
        med = np.median(d)
        mad = 1.4826 * np.median(np.abs(d - med))
        kept = d[np.abs(d - med) <= 5 * mad] if mad > 0 else d  # outlier replicas clipped at 5 robust sigma
        assert r["shift_stat"]["gluon_rw"] == pytest.approx(float(np.std(kept, ddof=1)), rel=1e-12)
    assert out.combined.metadata["shift_policy"]["policy"] == "prune"
    assert "## Statistical significance of the systematic shifts" in out.report.read_text()


def test_one_exploding_replica_does_not_make_the_error() -> None:
    from qgcal.extraction import replica_sigma

    rng = np.random.default_rng(3)
    v = rng.normal(1.0, 0.1, 50)
    assert replica_sigma(v) == pytest.approx(np.std(v, ddof=1))  # Gaussian replicas: nothing clipped
    exploded = np.append(v, 3000.0)  # a replica whose MC efficiency came close to zero
    assert np.std(exploded, ddof=1) > 100
    assert replica_sigma(exploded) == pytest.approx(np.std(v, ddof=1))

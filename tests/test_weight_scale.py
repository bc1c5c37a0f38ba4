"""Scale factors and bootstrap errors do not depend on the scale of the MC weights.

Real generator weights are not O(1) (ATLAS PHYSLITE mcEventWeights are 1e5-1e8 per event
and differ by orders of magnitude between JZ slices), and the normalisation
lumi x xsec / sum_of_weights cancels any factor common to a slice. So multiplying a
slice's weights AND its bookkeeping sum of weights by any factor must leave every
scale factor unchanged (to 1e-9) and every bootstrap error unchanged (to 1e-6), with
no overflow, no null error, and replica sums that stay byte-identical for any file split.

The scaled samples are copies of a generated sample whose ``mcEventWeight`` is rewritten
as float64 x factor (float64 so that the copy's weights are the factor times the
original ones up to 1e-16) and whose ``histoEventCount`` sum-of-weights bins are scaled
by the same factor (bin 2) and its square (bin 3).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot

import qgcal
from qgcal.bootstrap import ExactSum, exact_sum, from_arrays, poisson_replicas, replica_sums, to_arrays
from qgcal.histset import load_extra

SLICES = ("JZ4", "JZ5", "JZ6", "JZ7")
BOOTSTRAP = 12


@pytest.mark.parametrize("scale", [1e-300, 1e-7, 1.0, 3e7, 1e300])
def test_exact_replica_sums_at_any_scale(scale):
    """Sums of weight x Poisson count equal the exact rational sum rounded once (relative 1e-15),
    survive the artifact round trip, and are the same bits for any split into parts."""
    rng = np.random.default_rng(7)
    n = 3000
    w = rng.normal(0.2, 1.0, n) * np.exp(rng.normal(0, 4, n)) * scale  # both signs, 7 decades
    bins = rng.integers(0, 5, n)
    reps = poisson_replicas("x/y", np.zeros(n, np.int64), np.arange(n), 3)
    whole = replica_sums(bins, w, reps, 5)
    got = from_arrays(to_arrays({"t": whole}))["t"].to_float()
    for b in range(5):
        for r in range(3):
            m = bins == b
            exact = float(sum(Fraction(float(x)) * int(k) for x, k in zip(w[m], reps[m, r], strict=True)))
            assert math.isclose(got[b, r], exact, rel_tol=1e-15), (b, r)
    parts = ExactSum.zeros((5, 3))
    for sl in np.array_split(rng.permutation(n), 7):
        parts += replica_sums(bins[sl], w[sl], reps[sl], 5)
    assert parts.to_float().tobytes() == whole.to_float().tobytes()
    # cancellation and a top limb of 2^31 or more are exact too
    assert float(exact_sum(np.array([1e16, 1.0, -1e16])).to_float()[0]) == 1.0
    big = exact_sum(np.array([3.0e9]))
    assert float(from_arrays(to_arrays({"b": big}))["b"].to_float()[0]) == 3.0e9


def _copy_scaled(src: Path, dst: Path, factor: float, pieces: int = 1) -> list[Path]:
    """``src``'s nominal tree with mcEventWeight x factor (float64), in ``pieces`` files."""
    with uproot.open(src) as f:
        arr = f["nominal"].arrays()
        counts = np.asarray(f["histoEventCount"].values(flow=False), dtype=np.float64)
    arr["mcEventWeight"] = np.asarray(arr["mcEventWeight"], dtype=np.float64) * factor
    n = len(arr)
    edges = np.linspace(0, n, pieces + 1).astype(int)
    out = []
    for i in range(pieces):
        part = arr[edges[i] : edges[i + 1]]
        path = dst / f"{src.stem}_{i}.root"
        # the bookkeeping of a split file: generated events and weights shared out by the piece's events
        frac = (edges[i + 1] - edges[i]) / n
        hist_counts = counts * np.array([frac, frac * factor, frac * factor * factor])
        with uproot.recreate(path) as g:
            g.mktree("nominal", {field: part[field].type.content for field in part.fields})
            g["nominal"].extend({field: part[field] for field in part.fields})
            g["histoEventCount"] = (hist_counts, np.arange(4, dtype=np.float64))
        out.append(path)
    return out


def _scaled_sample(base: Path, dst: Path, factors: dict[str, float], pieces: dict[str, int] | None = None) -> dict:
    """Pythia slices with per-slice weight factors: the ``slices`` block of a config."""
    slices: dict[str, Any] = {}
    src = base / "sample" / "mc" / "pythia"
    for name in SLICES:
        d = dst / name
        d.mkdir(parents=True)
        files: list[Path] = []
        for f in sorted((src / name).glob("*.root")):
            files += _copy_scaled(f, d, factors[name], (pieces or {}).get(name, 1))
        slices[name] = [str(p) for p in files]
    return slices


def _run(make_config, sample: Path, slices: dict[str, list[str]], *, workers: int = 1) -> tuple[list[dict], Any]:
    def mutate(doc):
        doc["bootstrap"] = BOOTSTRAP
        doc["variations"] = {}
        doc["plots"] = {"enabled": False}
        doc["selection"]["abs_weight_max"] = None  # an absolute weight cut would itself depend on the scale
        for name, files in slices.items():
            doc["samples"]["pythia"]["slices"][name]["files"] = files

    _, cfg = make_config(sample, mutate=mutate)
    records = qgcal.run(cfg, "nominal", workers=workers).records
    return records, cfg


def _key(r: dict) -> tuple:
    return (r["tagger"], r["working_point"], r["parton"], r["pt_low"])


@pytest.fixture(scope="module")
def reference(small_sample, tmp_path_factory):
    """Unit factors, same rewritten layout as the scaled copies."""
    dst = tmp_path_factory.mktemp("scale_ref")
    return _scaled_sample(small_sample, dst, dict.fromkeys(SLICES, 1.0))


def _compare(ref: list[dict], got: list[dict]) -> None:
    assert len(ref) == len(got) > 0
    by_key = {_key(r): r for r in got}
    n_stat = 0
    for r in ref:
        g = by_key[_key(r)]
        assert g["flags"] == r["flags"], (_key(r), g["flags"], r["flags"])
        assert "bootstrap_unstable" not in g["flags"]
        if r["sf"] is None:
            assert g["sf"] is None
            continue
        assert math.isclose(g["sf"], r["sf"], rel_tol=1e-9, abs_tol=0.0), (_key(r), g["sf"], r["sf"])
        assert g["stat"] is not None and r["stat"] is not None, _key(r)  # never a null error
        assert math.isclose(g["stat"], r["stat"], rel_tol=1e-6, abs_tol=0.0), (_key(r), g["stat"], r["stat"])
        n_stat += 1
    assert n_stat >= 0.5 * len(ref)  # most records have a number: the comparison is not empty


@pytest.mark.parametrize(
    "factors",
    [
        dict.fromkeys(SLICES, 1e-7),
        dict.fromkeys(SLICES, 3e7),
        # different factors per slice, each compensated by its own sum of weights
        {"JZ4": 1e-7, "JZ5": 3e7, "JZ6": 1e8, "JZ7": 1e-8},
    ],
    ids=["x1e-7", "x3e7", "per-slice"],
)
def test_weight_scale_leaves_sfs_and_bootstrap_errors_unchanged(
    small_sample, make_config, reference, tmp_path, factors
):
    ref_records, _ = _run(make_config, small_sample, reference)
    scaled = _scaled_sample(small_sample, tmp_path / "scaled", factors)
    got, _ = _run(make_config, small_sample, scaled)
    _compare(ref_records, got)


@pytest.mark.parametrize("factor", [1e-7, 3e7])
def test_scaled_replicas_are_identical_for_any_file_split(small_sample, make_config, tmp_path, factor):
    """The exact replica sums of scaled weights: one file or three per slice, same bytes."""
    factors = dict.fromkeys(SLICES, factor)
    whole = _scaled_sample(small_sample, tmp_path / "whole", factors)
    split = _scaled_sample(small_sample, tmp_path / "split", factors, pieces={"JZ5": 3, "JZ6": 2})
    assert len(split["JZ5"]) == 3 * len(whole["JZ5"])
    r1, c1 = _run(make_config, small_sample, whole)
    r2, c2 = _run(make_config, small_sample, split, workers=2)
    name = "merged_pythia.npz"
    a = load_extra(c1.output_path / "nominal" / "final_reweighting" / name)
    b = load_extra(c2.output_path / "nominal" / "final_reweighting" / name)
    assert set(a) == set(b) and a
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
        assert np.abs(a[key]).sum() > 0
    # and the records: the sums of weights of the split bookkeeping are equal up to rounding
    by_key = {_key(r): r for r in r2}
    for r in r1:
        if r["sf"] is not None:
            assert math.isclose(by_key[_key(r)]["sf"], r["sf"], rel_tol=1e-9)

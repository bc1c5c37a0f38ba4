"""Bootstrap statistics: replicas keyed by (sample, run, event), exact and split-independent."""

from __future__ import annotations

import numpy as np
import uproot

import qgcal
from qgcal.bootstrap import ExactSum, poisson_replicas, replica_sums
from qgcal.histset import load_extra


def test_replica_weights_are_poisson_and_keyed_by_event():
    events = np.arange(200_000, dtype=np.int64)
    runs = np.full(len(events), 364704)
    w = poisson_replicas("pythia", runs, events, 8)
    assert w.shape == (len(events), 8)
    assert abs(w.mean() - 1.0) < 0.01 and abs(w.var() - 1.0) < 0.02  # Poisson(1)
    assert abs(np.mean(w == 0) - np.exp(-1)) < 0.005
    # the same event gets the same weights whatever else is in the array, in any order
    sub = poisson_replicas("pythia", runs[::-7], events[::-7], 8)
    np.testing.assert_array_equal(sub, w[::-7])
    # another sample or another run number gives other weights
    assert not np.array_equal(poisson_replicas("data", runs, events, 8), w)
    assert not np.array_equal(poisson_replicas("pythia", runs + 1, events, 8), w)
    # replicas are not copies of each other
    assert abs(np.corrcoef(w[:, 0], w[:, 1])[0, 1]) < 0.01


def test_exact_accumulation_is_order_independent():
    rng = np.random.default_rng(4)
    n = 50_000
    bins = rng.integers(0, 40, n)
    weight = rng.normal(1.0, 0.7, n)  # includes negative weights
    reps = poisson_replicas("x", np.zeros(n, np.int64), np.arange(n), 5)
    whole = replica_sums(bins, weight, reps, 40)
    perm = rng.permutation(n)
    parts = ExactSum.zeros((40, 5))
    for i in range(3):
        parts += replica_sums(bins[perm][i::3], weight[perm][i::3], reps[perm][i::3], 40)
    assert whole.to_float().tobytes() == parts.to_float().tobytes()
    np.testing.assert_allclose(whole.to_float()[:, 0], np.bincount(bins, weight * reps[:, 0], minlength=40), rtol=1e-12)


def _exact_value(s: ExactSum) -> list[int]:
    """Each cell's exact value as a Python integer times 2^(32 base): the reference arithmetic."""
    flat = s.limbs.reshape(len(s.limbs), -1)
    return [sum(int(flat[i, c]) << (32 * i) for i in range(len(flat))) for c in range(flat.shape[1])]


def test_many_additions_of_limbs_at_the_bound_stay_exact():
    """Sums are added without a carry pass while no limb can overflow (``ExactSum.cap``): a
    few thousand additions of limbs just below 2^52 (mostly positive: their sum passes 2^63),
    both signs and other limb ranges, give the Python-integer sums, and a normalised (unique)
    representation once trimmed."""
    rng = np.random.default_rng(11)
    top = (1 << 52) - 1
    total = ExactSum.zeros((6,))
    ref = [0] * 6
    parts = []
    for i in range(8000):
        base = int(rng.integers(-3, 3)) if i % 100 == 0 else int(rng.integers(0, 2))
        limbs = rng.choice(np.array([top, top, top, -top, 0, 1], dtype=np.int64), size=(3, 6))
        part = ExactSum(base, limbs.copy(), 1 << 52)
        parts.append(ExactSum(base, limbs.copy(), 1 << 52))
        vals = _exact_value(part)
        for c in range(6):
            ref[c] += vals[c] << (32 * (base + 3))  # in units of 2^(-96): every base is >= -3
        if i % 2:
            total += part
        else:
            total.take(part)
        if i % 2:
            np.testing.assert_array_equal(part.limbs, limbs)  # += leaves its argument alone
    t = total.trimmed()
    got = [v << (32 * (t.base + 3)) for v in _exact_value(t)]
    assert got == ref
    assert np.all(t.limbs[:-1] >= 0) and np.all(t.limbs[:-1] < 1 << 32)
    assert np.all(np.abs(t.limbs[-1]) < 1 << 31)
    expected = np.array([float(v) * 2.0**-96 for v in ref])  # Python rounds each integer once, correctly
    np.testing.assert_allclose(total.to_float(), expected, rtol=1e-15, atol=0)
    # and the same bits as when every addition is carried at once (the split-independence argument)
    eager = ExactSum.zeros((6,))
    for part in parts:
        eager += part
        eager.normalise()
    assert eager.to_float().tobytes() == total.to_float().tobytes()
    assert eager.trimmed().base == t.base and eager.trimmed().limbs.tobytes() == t.limbs.tobytes()


def _split(src: str, dst_dir, pieces: int) -> list[str]:
    """Write the entries of every tree in ``src`` into ``pieces`` files (same events, other split)."""
    out = []
    with uproot.open(src) as f:
        trees = {k.split(";")[0]: f[k].arrays() for k in f.keys() if f[k].classname == "TTree"}
    n = len(next(iter(trees.values())))
    edges = np.linspace(0, n, pieces + 1).astype(int)
    for i in range(pieces):
        path = dst_dir / f"piece{i}.root"
        with uproot.recreate(path) as g:
            for name, arr in trees.items():
                part = arr[edges[i] : edges[i + 1]]
                g.mktree(name, {field: part[field].type.content for field in part.fields})
                g[name].extend({field: part[field] for field in part.fields})
        out.append(str(path))
    return out


def test_different_file_splits_give_identical_replica_histograms(small_sample, make_config, tmp_path):
    src_data = str(small_sample / "sample" / "data" / "data_000.root")
    src_mc = str(small_sample / "sample" / "mc" / "pythia" / "JZ5" / "pythia_JZ5_000.root")
    results = []
    for pieces in (1, 3):
        d = tmp_path / f"split{pieces}"
        (d / "data").mkdir(parents=True)
        (d / "mc").mkdir()
        data_files = [src_data] if pieces == 1 else _split(src_data, d / "data", pieces)
        mc_files = [src_mc] if pieces == 1 else _split(src_mc, d / "mc", pieces)

        def mutate(doc, data_files=data_files, mc_files=mc_files):
            doc["bootstrap"] = 10
            doc["samples"]["data"]["files"] = data_files
            doc["samples"]["pythia"]["slices"] = {"JZ5": {"files": mc_files, "xsec_pb": 764.8, "filter_eff": 0.7}}
            doc["samples"]["pythia"]["sum_of_weights"] = {"source": "value", "value": 12345.0}
            doc["variations"] = {}
            doc["plots"] = {"enabled": False}

        _, cfg = make_config(small_sample, mutate=mutate)
        qgcal.run(cfg, "nominal", workers=1)
        fr = cfg.output_path / "nominal" / "final_reweighting"
        results.append({name: load_extra(fr / name) for name in ("merged_data.npz", "merged_pythia.npz")})
    one, three = results
    for name in one:
        assert set(one[name]) == {"replicas.ntrk", "replicas.bdt"}
        for key in one[name]:
            assert one[name][key].tobytes() == three[name][key].tobytes(), (name, key)
            assert one[name][key].sum() > 0


def test_bootstrap_error_agrees_with_analytic(shifted_sample, make_config):
    def mutate(doc):
        doc["bootstrap"] = 100
        doc["plots"] = {"enabled": False}

    _, cfg = make_config(shifted_sample, mutate=mutate)
    records = qgcal.run(cfg, "nominal", workers=2).records
    ratios = np.array([r["stat"] / r["stat_analytic"] for r in records if r["stat"] and r["stat_analytic"]])
    assert len(ratios) >= 0.9 * len(records)
    assert all(r["stat_method"] == "bootstrap" for r in records)
    assert abs(np.mean(ratios) - 1.0) < 0.2, np.mean(ratios)
    assert np.mean(np.abs(ratios - 1.0) < 0.3) > 0.8
    # the quoted stat is the replicas' spread times sqrt(kappa) (calibration.bootstrap_bias_correction, on
    # by default), kappa a second-order correction; the plain spread stays in the record
    kappa = np.array([(r["stat"] / r["stat_bootstrap_plain"]) ** 2 for r in records if r["stat"]])
    assert len(kappa) >= len(ratios) and np.all((kappa >= 0.5) & (kappa <= 1.5)), kappa
    assert np.mean(kappa != 1.0) > 0.9 and 0.8 < np.median(kappa) < 1.0, np.median(kappa)

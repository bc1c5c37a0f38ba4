"""The bootstrap variance's bias correction (``variance_bias_factors``): the double bootstrap with
translated inner replicas. Its closure on generated samples is benchmarks/closure_study.py
(docs/physics.md); here, what must hold on any input: the translation as defined (an oracle
written out point by point), no correction where the estimator is linear over
the fluctuations (much MC and data), and a correction below 1 where the error is a convex
function of noisy fractions (little MC, close fractions)."""

from __future__ import annotations

import numpy as np
import yaml

from qgcal.config import Config, parse_config
from qgcal.configs import demo_config_text
from qgcal.contract import REPLICA_CLASSES, REPLICA_DATA, REPLICA_GLUON, REPLICA_QUARK
from qgcal.extraction import KAPPA_FLOOR, KAPPA_RANGE, replica_scale_factors, replica_sigma, variance_bias_factors

N_REP = 20
CUT = 14


def _config() -> Config:
    doc = yaml.safe_load(demo_config_text())
    doc["taggers"] = {"ntrk": doc["taggers"]["ntrk"]}
    doc["pt_bins_gev"] = [500, 600, 800]
    doc["bootstrap"] = N_REP
    return parse_config(doc)


def _replicas(cfg: Config, n_mc: float, n_data: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Poisson replicas (region, class, pT, score, replica) of one Poisson sample of known shapes."""
    nb = cfg.taggers["ntrk"].bins.n
    x = np.arange(nb)

    def gauss(mu: float, sd: float) -> np.ndarray:
        v = np.exp(-0.5 * ((x - mu) / sd) ** 2)
        return v / v.sum()

    q, g, qd, gd = gauss(12, 4), gauss(20, 5), gauss(12.5, 4.2), gauss(19, 5)
    n_pt = len(cfg.pt_bins_gev) - 1
    exp_mc = np.zeros((2, REPLICA_CLASSES, n_pt, nb))
    exp_d = np.zeros_like(exp_mc)
    for region, f in ((0, 0.55), (1, 0.4)):
        exp_mc[region, REPLICA_QUARK] = n_mc / 2 * f * q
        exp_mc[region, REPLICA_GLUON] = n_mc / 2 * (1 - f) * g
        exp_d[region, REPLICA_DATA] = n_data / 2 * (f * qd + (1 - f) * gd)
    rng = np.random.default_rng(seed)
    out = []
    for expected in (exp_mc, exp_d):
        sample = rng.poisson(expected).astype(np.float64)
        out.append(rng.poisson(np.broadcast_to(sample[..., None], (*sample.shape, N_REP))).astype(np.float64))
    return out[0], out[1]


def _inputs(cfg: Config) -> tuple[dict, dict]:
    nb = cfg.taggers["ntrk"].bins.n
    cuts = {"ntrk": [{f"{wp:g}": {"index": CUT} for wp in cfg.working_points} for _ in range(2)]}
    # the tails merged, as reweighting_min_mc_neff merges them (the shipped configs: 100)
    merged = [(0, 6), *((i, i + 1) for i in range(6, 26)), (26, nb)]
    groups = {"ntrk": [merged for _ in range(2)]}
    return cuts, groups


def _bin_by_bin(cfg: Config) -> dict:
    nb = cfg.taggers["ntrk"].bins.n
    return {"ntrk": [[(i, i + 1) for i in range(nb)] for _ in range(2)]}


def test_translation_matches_a_point_by_point_oracle() -> None:
    cfg = _config()
    mc, data = _replicas(cfg, 3000, 12000, seed=1)
    cuts, groups = _inputs(cfg)
    got = variance_bias_factors(cfg, {"ntrk": mc}, {"ntrk": data}, cuts, "quark", groups)

    def around(arr: np.ndarray, point: np.ndarray) -> np.ndarray:  # point + every replica's deviation, >= 0
        return np.maximum(point[..., None] + (arr - arr.mean(axis=-1, keepdims=True)), 0.0)

    points = [(mc.mean(axis=-1), data.mean(axis=-1))] + [(mc[..., b], data[..., b]) for b in range(N_REP)]
    variances: dict = {}
    for p_mc, p_d in points:
        sfs = replica_scale_factors(cfg, {"ntrk": around(mc, p_mc)}, {"ntrk": around(data, p_d)}, cuts, "quark", groups)
        for key, values in sfs.items():
            v = values[np.isfinite(values)]
            variances.setdefault(key, []).append(replica_sigma(v) ** 2 if len(v) >= N_REP // 2 else np.nan)
    want = {}
    for key, v in variances.items():
        outer = np.array(v[1:])
        k = v[0] / outer[np.isfinite(outer)].mean()
        if KAPPA_RANGE[0] <= k <= KAPPA_RANGE[1]:
            want[key] = max(k, KAPPA_FLOOR)
    assert len(want) >= len(variances) // 2  # the test has cases
    assert sorted(got) == sorted(want)
    for key, k in want.items():
        assert np.isclose(got[key], k, rtol=1e-12, atol=0), (key, got[key], k)


def test_no_correction_where_the_estimator_is_linear() -> None:
    """With 10^8 MC and data jets the fluctuations are far too small for any curvature to matter."""
    cfg = _config()
    mc, data = _replicas(cfg, 1e8, 1e8, seed=2)
    cuts, groups = _inputs(cfg)
    kappa = variance_bias_factors(cfg, {"ntrk": mc}, {"ntrk": data}, cuts, "quark", groups)
    assert len(kappa) == 2 * 2 * len(cfg.working_points)
    for key, k in kappa.items():
        assert abs(k - 1) < 0.01, (key, k)


def test_sparse_bin_by_bin_reweighting_is_not_corrected() -> None:
    """Bin-by-bin reweighting factors of tail bins with a few jets (of 10^8) are far from linear:
    kappa is then ~0.1, not a second-order correction, and is left out (the plain spread is quoted)."""
    cfg = _config()
    mc, data = _replicas(cfg, 1e8, 1e8, seed=2)
    cuts, groups = _inputs(cfg)
    assert variance_bias_factors(cfg, {"ntrk": mc}, {"ntrk": data}, cuts, "quark", _bin_by_bin(cfg)) == {}
    assert len(variance_bias_factors(cfg, {"ntrk": mc}, {"ntrk": data}, cuts, "quark", groups)) == 16


def test_convex_error_is_corrected_downwards() -> None:
    """Little MC, fractions 0.15 apart: the error ~ 1/det is convex in the noisy det, and the
    mean of the replicas' own variances exceeds the centre's (kappa < 1) on average over samples."""
    cfg = _config()
    cuts, groups = _inputs(cfg)
    kappas = []
    for seed in range(6):
        mc, data = _replicas(cfg, 1500, 6000, seed=10 + seed)
        kappas.extend(variance_bias_factors(cfg, {"ntrk": mc}, {"ntrk": data}, cuts, "none", groups).values())
    assert min(kappas) >= KAPPA_FLOOR and float(np.median(kappas)) < 0.97

"""Small synthetic quark/gluon jet tables for inference tests and benchmarks.

Why here and not in ``qgcal.generate``: the inference layer's tests, the Triton fixture and
the benchmark need a jet table in milliseconds, with no ROOT I/O, in which trackWidth and
trackC1 carry information beyond nTracks (so a BDT measurably beats nTracks).  This is a
toy, not the physics generator.
"""

from __future__ import annotations

import numpy as np

__all__ = ["synthetic_jets"]


def synthetic_jets(n: int, *, seed: int = 0, nan_fraction: float = 0.0) -> dict[str, np.ndarray]:
    """``n`` jets (two per event) with pt, eta, nTracks, trackWidth, trackC1, event, weight,
    parton_label; ``nan_fraction`` of trackWidth/trackC1 values set to NaN."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    pt = 450.0 * (1.0 - u * (1.0 - (450.0 / 2200.0) ** 3)) ** (-1.0 / 3.0)  # ~pT^-4, 450..2200
    eta = rng.uniform(-2.1, 2.1, n)
    p_gluon = np.clip(0.65 - 0.25 * (pt - 500.0) / 1500.0, 0.3, 0.7)
    r = rng.random(n)
    is_g = r < p_gluon
    other = r > 0.97
    label = np.where(is_g, 21, rng.choice([1, 2, 3, 4, 5, -1, -2], size=n))
    label = np.where(other, 0, label)
    log_pt = np.log(pt / 100.0)
    # Latent "radiation" variable: shifts all three observables (they are correlated).
    latent = rng.normal(0.0, 1.0, n) + np.where(is_g, 0.6, 0.0)
    n_tracks = rng.poisson(np.clip(3.0 + 2.6 * log_pt + 2.5 * is_g + 1.0 * latent, 1.0, None))
    width = np.abs(0.06 + 0.02 * latent + 0.035 * is_g + rng.normal(0, 0.025, n)) / (1 + 0.1 * log_pt)
    c1 = 0.22 + 0.04 * latent + 0.05 * is_g + 0.4 * width + rng.normal(0, 0.03, n)
    weight = rng.lognormal(0.0, 0.3, n) * np.where(rng.random(n) < 0.03, -1.0, 1.0)
    if nan_fraction > 0:
        width = np.where(rng.random(n) < nan_fraction, np.nan, width)
        c1 = np.where(rng.random(n) < nan_fraction, np.nan, c1)
    return {
        "pt": pt.astype(np.float32),
        "eta": eta.astype(np.float32),
        "nTracks": n_tracks.astype(np.int32),
        "trackWidth": width.astype(np.float32),
        "trackC1": c1.astype(np.float32),
        "event": (np.arange(n, dtype=np.int64) // 2) + 1000,
        "weight": weight,
        "parton_label": label.astype(np.int32),
    }

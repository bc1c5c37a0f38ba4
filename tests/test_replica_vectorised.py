"""The replica scale factors are computed for all replicas at once (``replica_scale_factors``);
this checks them, bit for bit, against the plain definition: one replica at a time through the
same functions the nominal extraction uses (``inputs_from_replica`` -> ``extract_inputs`` ->
``efficiencies``), written out here as the oracle. A change to the extraction that the
vectorised copy does not follow fails here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import yaml

from qgcal.calibration import efficiencies, quark_mask
from qgcal.config import Config, parse_config
from qgcal.configs import demo_config_text
from qgcal.contract import REPLICA_CLASSES, REPLICA_DATA, REPLICA_GLUON, REPLICA_OTHER, REPLICA_QUARK
from qgcal.extraction import extract_inputs, inputs_from_replica, replica_scale_factors


def _wp_key(wp: float) -> str:
    return f"{wp:g}"


def reference(
    cfg: Config, mc: dict[str, np.ndarray], data: dict[str, np.ndarray], cuts: Any, reweight: str, groups: Any
) -> dict[tuple[str, int, str, str], np.ndarray]:
    """One replica at a time, as the definition reads."""
    out = {}
    for name in sorted(cfg.taggers):
        side = cfg.taggers[name].quark_side
        for ipt in range(len(cfg.pt_bins_gev) - 1):
            masks = {}
            samples: dict[tuple[str, str], np.ndarray] = {}
            for wp in cfg.working_points:
                cut = cuts[name][ipt][_wp_key(wp)]
                if cut is not None:
                    masks[_wp_key(wp)] = quark_mask(mc[name].shape[3], cut["index"], side)
                    for parton in ("quark", "gluon"):
                        samples[(_wp_key(wp), parton)] = np.full(cfg.bootstrap, np.nan)
            g = None if groups is None else groups[name][ipt]
            for r in range(cfg.bootstrap):
                x = inputs_from_replica(mc[name], data[name], ipt, r, cfg.pt_bins_gev, cfg.truth)
                ex = extract_inputs(cfg, x, reweight, groups=g)
                if not (math.isfinite(ex.f_fq - ex.f_cq) and ex.f_fq != ex.f_cq):
                    continue
                fr = ex.fractions()
                for wkey, mask in masks.items():
                    e_m = efficiencies(fr, ex.mc_forward, ex.mc_central, mask)
                    e_d = efficiencies(fr, ex.data_forward, ex.data_central, mask)
                    for parton, num, den in (("quark", e_d.eps_q, e_m.eps_q), ("gluon", e_d.rej_g, e_m.rej_g)):
                        if den > 0 and math.isfinite(num) and math.isfinite(den):
                            samples[(wkey, parton)][r] = num / den
            for (wkey, parton), values in samples.items():
                out[(name, ipt, wkey, parton)] = values
    return out


def _config(other: str, n_rep: int) -> Config:
    doc = yaml.safe_load(demo_config_text())
    doc["taggers"] = {k: v for k, v in doc["taggers"].items() if v["kind"] != "model"}
    doc["bootstrap"] = n_rep
    doc.setdefault("truth", {})["other"] = other
    return parse_config(doc)


def _arrays(cfg: Config, rng: np.random.Generator, sparse: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Replica arrays (region, class, pT, score bin, replica) with distinct q/g shapes and fractions."""
    n_pt, n_rep = len(cfg.pt_bins_gev) - 1, cfg.bootstrap
    mc, data = {}, {}
    for name, tagger in sorted(cfg.taggers.items()):
        nb = tagger.bins.n
        x = np.linspace(0, 1, nb)
        shape = np.zeros((2, REPLICA_CLASSES, n_pt, nb))
        for region, gluon_frac in ((0, 0.35), (1, 0.6)):
            shape[region, REPLICA_QUARK] = (1 - gluon_frac) * np.exp(-3 * x)
            shape[region, REPLICA_GLUON] = gluon_frac * np.exp(-1 * x)
            shape[region, REPLICA_OTHER] = 0.05
            shape[region, REPLICA_DATA] = 1.1 * shape[region, REPLICA_QUARK] + 0.9 * shape[region, REPLICA_GLUON]
        expected = 400 * shape[..., None] / shape.max()
        counts = rng.poisson(np.broadcast_to(expected, (*expected.shape[:-1], n_rep))).astype(np.float64)
        weighted = counts * rng.uniform(0.5, 1.5, size=counts.shape)  # MC-like weights, not integers
        if sparse:  # empty bins and negative weights, as low-statistics MC has
            weighted *= rng.choice([0.0, 1.0, -0.3], size=weighted.shape, p=[0.25, 0.65, 0.1])
        m = weighted.copy()
        m[:, REPLICA_DATA] = 0
        d = np.zeros_like(counts)
        d[:, REPLICA_DATA] = counts[:, REPLICA_DATA]
        mc[name], data[name] = m, d
    return mc, data


def _cuts(cfg: Config) -> dict[str, list[dict[str, dict[str, int] | None]]]:
    out = {}
    for name, tagger in sorted(cfg.taggers.items()):
        nb = tagger.bins.n
        per_bin = []
        for ipt in range(len(cfg.pt_bins_gev) - 1):
            row: dict[str, dict[str, int] | None] = {}
            for i, wp in enumerate(cfg.working_points):
                row[_wp_key(wp)] = None if (ipt == 1 and i == 0) else {"index": int(nb * (0.2 + 0.15 * i)) + ipt % 2}
            per_bin.append(row)
        out[name] = per_bin
    return out


def _groups(cfg: Config, kind: str) -> Any:
    if kind == "none":
        return None
    out = {}
    for name, tagger in sorted(cfg.taggers.items()):
        nb = tagger.bins.n
        if kind == "bin_by_bin":
            g = [(i, i + 1) for i in range(nb)]
        else:  # merged tails, as reweighting_min_mc_neff makes them
            g = [(0, 3), *((i, i + 1) for i in range(3, nb - 5)), (nb - 5, nb)]
        out[name] = [g for _ in range(len(cfg.pt_bins_gev) - 1)]
    return out


@pytest.mark.parametrize("other", ["subtract", "gluon", "drop_events"])
@pytest.mark.parametrize("sparse", [False, True])
def test_vectorised_replicas_equal_one_replica_at_a_time(other: str, sparse: bool) -> None:
    cfg = _config(other, n_rep=6)
    rng = np.random.default_rng(7 if sparse else 3)
    mc, data = _arrays(cfg, rng, sparse)
    cuts = _cuts(cfg)
    finite = 0
    for reweight in ("quark", "gluon", "none"):
        for kind in ("given", "bin_by_bin", "none"):
            groups = _groups(cfg, kind)
            want = reference(cfg, mc, data, cuts, reweight, groups)
            got = replica_scale_factors(cfg, mc, data, cuts, reweight, groups)
            assert sorted(got) == sorted(want)
            for key in want:
                assert got[key].tobytes() == want[key].tobytes(), (reweight, kind, key, got[key], want[key])
                finite += int(np.isfinite(want[key]).sum())
    assert finite > 0  # the comparison is not one of NaNs only

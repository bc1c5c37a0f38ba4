"""The calibration maths against hand-solved cases (numbers worked out on paper, not by the code)."""

from __future__ import annotations

import hist
import numpy as np
import pytest

from qgcal.calibration import (
    Binned,
    Fractions,
    apply_weights,
    efficiencies,
    extract,
    quark_mask,
    ratio_with_error,
    reweighting_factors,
    wp_cut_index,
)


def test_matrix_method_hand_solved_2x2():
    # p_q = (0.6, 0.3, 0.1), p_g = (0.1, 0.3, 0.6); forward 70% quark, central 30% quark
    # p_F = 0.7 p_q + 0.3 p_g = (0.45, 0.30, 0.25); p_C = 0.3 p_q + 0.7 p_g = (0.25, 0.30, 0.45)
    fr = Fractions(f_fq=0.7, f_cq=0.3)
    assert fr.det == pytest.approx(0.4)
    p_q, p_g = extract(fr, np.array([0.45, 0.30, 0.25]), np.array([0.25, 0.30, 0.45]))
    assert p_q == pytest.approx([0.6, 0.3, 0.1])
    assert p_g == pytest.approx([0.1, 0.3, 0.6])
    # F^-1 by hand: 1/0.4 * [[0.7, -0.3], [-0.3, 0.7]]
    assert fr.inverse() == pytest.approx(np.array([[1.75, -0.75], [-0.75, 1.75]]))


def test_efficiencies_of_hand_solved_case():
    fr = Fractions(f_fq=0.7, f_cq=0.3)
    fwd = Binned(np.array([450.0, 300.0, 250.0]), np.array([450.0, 300.0, 250.0]))
    cen = Binned(np.array([250.0, 300.0, 450.0]), np.array([250.0, 300.0, 450.0]))
    eff = efficiencies(fr, fwd, cen, quark_mask(3, 1, "low"))  # quark-tag the first bin
    assert eff.eps_q == pytest.approx(0.6)
    assert eff.rej_g == pytest.approx(0.9)
    # variance by hand: e_F = 0.45 (n=1000, unit weights): var = 0.45*0.55/1000; same for e_C with 0.25
    v_f, v_c = 0.45 * 0.55 / 1000, 0.25 * 0.75 / 1000
    assert eff.var_eps_q == pytest.approx(1.75**2 * v_f + 0.75**2 * v_c)


def test_wp_cut_index_both_directions():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    assert wp_cut_index(p, 0.3, "low") == 2  # 0.1 + 0.2 reaches 0.3 at edge 2
    assert wp_cut_index(p, 0.31, "low") == 3
    assert wp_cut_index(p, 0.4, "high") == 3  # last bin alone holds 0.4
    assert wp_cut_index(p, 0.5, "high") == 2
    assert wp_cut_index(np.array([np.nan, 1.0]), 0.5, "low") is None


def test_binwise_reweighting_equals_per_jet_reweighting():
    rng = np.random.default_rng(1)
    edges = np.linspace(0, 10, 11)
    fwd_vals = rng.gamma(3.0, 1.2, 20_000)
    cen_vals = rng.gamma(3.3, 1.2, 30_000)
    w_evt = rng.uniform(0.5, 1.5, 30_000)

    def h(values, weights):
        out = hist.Hist(hist.axis.Variable(edges, flow=False), storage=hist.storage.Weight())
        out.fill(np.clip(values, 0, np.nextafter(10, 0)), weight=weights)
        return Binned(out.values(), out.variances())

    fwd = h(fwd_vals, np.ones_like(fwd_vals))
    cen = h(cen_vals, w_evt)
    w, lost = reweighting_factors(fwd, cen)
    assert not lost
    binwise = apply_weights(cen, w)
    idx = np.clip(np.digitize(np.clip(cen_vals, 0, np.nextafter(10, 0)), edges) - 1, 0, 9)
    refilled = h(cen_vals, w_evt * w[idx])
    np.testing.assert_allclose(binwise.values, refilled.values, rtol=1e-12)
    np.testing.assert_allclose(binwise.variances, refilled.variances, rtol=1e-12)
    # and the reweighted central shape is the forward shape
    np.testing.assert_allclose(binwise.values / binwise.total, fwd.values / fwd.total, rtol=1e-12)


def test_ratio_error_and_undefined_cases():
    r, e = ratio_with_error(0.5, 0.0004, 0.25, 0.0001)
    assert r == pytest.approx(2.0)
    assert e == pytest.approx(2.0 * np.sqrt(0.0004 / 0.25 + 0.0001 / 0.0625))
    assert np.isnan(ratio_with_error(0.5, 0.01, 0.0, 0.01)[0])
    assert np.isnan(ratio_with_error(-0.1, 0.01, 0.5, 0.01)[0])


def test_unphysical_gluon_rejection_flags_only_the_gluon_quantity():
    """Regression: one flag for both quantities of a cell flagged a healthy quark-efficiency SF.

    By hand, with F = [[0.7, 0.3], [0.3, 0.7]] (det 0.4) and quark-side fractions e_F = 0.5,
    e_C = 0.1: eps_q = (0.7 * 0.5 - 0.3 * 0.1) / 0.4 = 0.8 (physical); the gluons on the quark
    side are (-0.3 * 0.5 + 0.7 * 0.1) / 0.4 = -0.2, so rej_g = 1.2, more than 2 sigma above 1
    with 1e5 entries per region.
    """
    fr = Fractions(f_fq=0.7, f_cq=0.3)
    forward = Binned(np.array([50_000.0, 50_000.0]), np.array([50_000.0, 50_000.0]))
    central = Binned(np.array([10_000.0, 90_000.0]), np.array([10_000.0, 90_000.0]))
    eff = efficiencies(fr, forward, central, np.array([True, False]))
    assert eff.eps_q == pytest.approx(0.8) and eff.rej_g == pytest.approx(1.2)
    assert eff.flags_for("quark") == ()
    assert eff.flags_for("gluon") == ("unphysical_efficiency",)
    assert eff.flags == ("unphysical_efficiency",)

"""The calibration maths of PHYSICS.md as small pure functions on binned arrays.

Everything here works on (values, variances) arrays over the tagger bins of one
pT bin. Zero handling is explicit: an undefined number is NaN and comes with a
flag, never a silent 0 or inf.

Overflow (a reweighting factor or F^-1 so large that a product leaves the
float range) is not an exception either: numpy's warnings are silenced here
and the non-finite result is flagged downstream like any other undefined number.

Statistical errors are propagated analytically (first order): the extracted
efficiency is linear in the forward and central fractions below the cut,
eps = a * e_F + b * e_C with (a, b) a row of F^-1, and each e is a ratio of
weighted sums with variance (B^2 V_A + A^2 V_B) / (A + B)^4. The fractions
f_Fq, f_Cq and the reweighting factors are treated as exact (their MC
statistical error is ignored here; the bootstrap, on in the shipped configs, covers it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Binned",
    "Efficiency",
    "Fractions",
    "apply_weights",
    "cut_efficiency",
    "effective_entries",
    "efficiencies",
    "extract",
    "fractions",
    "merged_reweighting_factors",
    "normalised",
    "ratio_with_error",
    "reweighting_factors",
    "reweighting_groups",
    "side_fraction",
    "wp_cut_index",
]

FloatArray = np.ndarray


@dataclass(frozen=True)
class Binned:
    """Weighted bin contents and their variances (sum of weights squared)."""

    values: FloatArray
    variances: FloatArray

    def __add__(self, other: Binned) -> Binned:
        return Binned(self.values + other.values, self.variances + other.variances)

    @property
    def total(self) -> float:
        return float(np.sum(self.values))


def normalised(h: Binned) -> FloatArray:
    """Shape with area 1; all-NaN when the histogram is empty or has non-positive area."""
    total = h.total
    if not total > 0:
        return np.full_like(h.values, np.nan, dtype=np.float64)
    with np.errstate(all="ignore"):
        return h.values / total


def reweighting_factors(forward: Binned, central: Binned, *, tolerance: float = 1e-2) -> tuple[FloatArray, bool]:
    """w = p_F / p_C per tagger bin (pass 1); 1 where the central shape is empty.

    Returns the factors and whether more than ``tolerance`` of the forward shape
    sits in bins where the central shape is empty (the reweighting cannot move
    jets into an empty bin, so the reweighted central shape misses that part:
    flagged). A few forward jets in a far tail are normal and not flagged.
    """
    p_f = normalised(forward)
    p_c = normalised(central)
    w = np.ones_like(forward.values, dtype=np.float64)
    if np.isnan(p_f).any() or np.isnan(p_c).any():
        return w, True
    ok = p_c > 0
    with np.errstate(all="ignore"):
        w[ok] = p_f[ok] / p_c[ok]
    lost = float(np.sum(p_f[~ok])) > tolerance
    return w, lost


def effective_entries(h: Binned) -> float:
    """Kish effective number of entries (sum w)^2 / sum w^2 (0 for an empty or weightless histogram)."""
    var = float(np.sum(h.variances))
    tot = h.total
    return tot * tot / var if var > 0 and tot > 0 else 0.0


def reweighting_groups(forward: Binned, central: Binned, min_neff: float) -> list[tuple[int, int]]:
    """Adjacent tagger bins merged left to right until both shapes have ``min_neff`` effective entries.

    Returns (start, stop) index ranges covering every bin. A last group that does not reach
    ``min_neff`` joins the one before (so both tails are merged, and a bulk bin with enough
    entries stays alone). ``min_neff <= 0``: every bin its own group (bin by bin).
    """
    n = len(forward.values)
    if not min_neff > 0:
        return [(i, i + 1) for i in range(n)]
    groups: list[tuple[int, int]] = []
    start = 0
    for stop in range(1, n + 1):
        f = Binned(forward.values[start:stop], forward.variances[start:stop])
        c = Binned(central.values[start:stop], central.variances[start:stop])
        if effective_entries(f) >= min_neff and effective_entries(c) >= min_neff:
            groups.append((start, stop))
            start = stop
    if start < n:
        groups[-1:] = [(groups[-1][0], n)] if groups else [(0, n)]
    return groups


def merged_reweighting_factors(
    forward: Binned, central: Binned, groups: Sequence[tuple[int, int]], *, tolerance: float = 1e-2
) -> tuple[FloatArray, bool]:
    """Regularised pass 1: w = p_F / p_C over groups of adjacent bins, constant within a group.

    Bin-by-bin factors in a tail with a handful of MC jets are mostly noise (on a sample whose
    true factor is 1 they range 0.2-4 and move SFs by up to a standard deviation). Over the
    groups of :func:`reweighting_groups` the noise is bounded; within a group the central shape
    keeps its own bin-to-bin form. The groups are chosen once, on the histograms with their
    variances, and reused by the bootstrap replicas (whose own variances are not known).
    One-bin groups give exactly :func:`reweighting_factors`. The flag means the same as there.
    """
    w_bins, lost = reweighting_factors(forward, central, tolerance=tolerance)
    if all(b - a == 1 for a, b in groups):
        return w_bins, lost
    p_f = normalised(forward)
    p_c = normalised(central)
    if np.isnan(p_f).any() or np.isnan(p_c).any():
        return w_bins, lost
    w = np.ones_like(forward.values, dtype=np.float64)
    for a, b in groups:
        pf, pc = float(np.sum(p_f[a:b])), float(np.sum(p_c[a:b]))
        if pc > 0:
            with np.errstate(all="ignore"):
                w[a:b] = pf / pc
    return w, lost


def apply_weights(h: Binned, w: FloatArray) -> Binned:
    """Bin-wise reweighting: identical to weighting every jet by w(its bin) and refilling."""
    with np.errstate(all="ignore"):
        return Binned(h.values * w, h.variances * w * w)


@dataclass(frozen=True)
class Fractions:
    """Quark fractions of forward and central jets and the inverted fraction matrix."""

    f_fq: float
    f_cq: float

    @property
    def det(self) -> float:
        return self.f_fq - self.f_cq

    def inverse(self) -> FloatArray:
        """F^-1 for F = [[f_Fq, 1-f_Fq], [f_Cq, 1-f_Cq]]."""
        d = self.det
        with np.errstate(all="ignore"):
            return np.array([[1.0 - self.f_cq, -(1.0 - self.f_fq)], [-self.f_cq, self.f_fq]]) / d


def fractions(fq: Binned, f_total: Binned, cq: Binned, c_total: Binned) -> Fractions:
    """Quark yield over total yield, forward and central (NaN when a region is empty)."""

    def frac(a: Binned, b: Binned) -> float:
        return a.total / b.total if b.total > 0 else float("nan")

    return Fractions(f_fq=frac(fq, f_total), f_cq=frac(cq, c_total))


def extract(fr: Fractions, p_f: FloatArray, p_c: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(p_q, p_g) = F^-1 (p_F, p_C), bin by bin."""
    inv = fr.inverse()
    with np.errstate(all="ignore"):
        p_q = inv[0, 0] * p_f + inv[0, 1] * p_c
        p_g = inv[1, 0] * p_f + inv[1, 1] * p_c
    return p_q, p_g


def _cumulative(p_q: FloatArray, quark_side: str) -> FloatArray:
    """cum[k] = quark efficiency of the cut at edge index k (sum of p_q on the quark side of edge k)."""
    if quark_side == "low":
        return np.concatenate([[0.0], np.cumsum(p_q)])
    return np.concatenate([np.cumsum(p_q[::-1])[::-1], [0.0]])  # cum[k] = sum(p_q[k:])


def wp_cut_index(p_q: FloatArray, wp: float, quark_side: str, rule: str = "at_least") -> int | None:
    """Index of the bin edge that defines working point ``wp`` on the extracted quark shape.

    A cut can only sit on a bin edge, so on a coarse or integer tagger (nTracks) no edge may
    give exactly ``wp``. ``rule="at_least"`` (default): the tightest edge whose efficiency
    reaches ``wp`` -- quark_side 'low': jets below edge[k] are quark-tagged, k is the smallest
    index with sum(p_q[:k]) >= wp; 'high': jets at or above edge[k] are tagged, k the largest
    index with sum(p_q[k:]) >= wp. The achieved efficiency is then >= wp. ``rule="nearest"``:
    the edge whose efficiency is closest to ``wp`` (above or below; a tie goes to the one that
    reaches it), never an edge that tags no jet. None when the working point is not reachable
    (NaN shape, or with ``at_least`` an efficiency that never reaches wp).
    """
    if np.isnan(p_q).any():
        return None
    tol = 1e-12
    cum = _cumulative(p_q, quark_side)
    hits = np.nonzero(cum >= wp - tol)[0]
    reach = (int(hits[0]) if quark_side == "low" else int(hits[-1])) if len(hits) else None
    if rule == "at_least":
        return reach
    if rule != "nearest":
        raise ValueError(f"rule must be 'at_least' or 'nearest', not {rule!r}")
    candidates = [k for k in range(len(cum)) if cum[k] > tol]
    if not candidates:
        return None
    gap = min(abs(float(cum[k]) - wp) for k in candidates)
    closest = [k for k in candidates if abs(float(cum[k]) - wp) <= gap + tol]  # ties within rounding
    best = reach if reach in closest else closest[0]
    return int(best)


def cut_efficiency(p_q: FloatArray, index: int, quark_side: str) -> float:
    """The quark efficiency a cut at edge ``index`` achieves on the shape ``p_q`` (what a WP really is)."""
    return float(_cumulative(p_q, quark_side)[index])


def quark_mask(n_bins: int, cut: int, quark_side: str) -> FloatArray:
    idx = np.arange(n_bins)
    return idx < cut if quark_side == "low" else idx >= cut


def side_fraction(h: Binned, mask: FloatArray) -> tuple[float, float]:
    """Fraction of the histogram in ``mask`` and its variance (ratio of weighted sums)."""
    a = float(np.sum(h.values[mask]))
    b = float(np.sum(h.values[~mask]))
    va = float(np.sum(h.variances[mask]))
    vb = float(np.sum(h.variances[~mask]))
    tot = a + b
    if not tot > 0:
        return float("nan"), float("nan")
    fa, fb = a / tot, b / tot  # (B^2 V_A + A^2 V_B) / (A+B)^4, without (A+B)^4 leaving the float range
    with np.errstate(all="ignore"):
        var = (np.float64(fb) * fb * va + np.float64(fa) * fa * vb) / np.float64(tot) / tot
    return fa, float(var)


@dataclass(frozen=True)
class Efficiency:
    """Quark efficiency and gluon rejection of the extracted shapes, with variances.

    Flags are per quantity: a quark-efficiency record must not be flagged because the
    gluon rejection of the same cell is unphysical (and the other way round).
    """

    eps_q: float
    var_eps_q: float
    rej_g: float
    var_rej_g: float
    flags_q: tuple[str, ...] = field(default=())
    flags_g: tuple[str, ...] = field(default=())

    @property
    def flags(self) -> tuple[str, ...]:
        """The flags of either quantity."""
        return tuple(sorted({*self.flags_q, *self.flags_g}))

    def flags_for(self, parton: str) -> tuple[str, ...]:
        """The flags of the quark efficiency (``"quark"``) or the gluon rejection (``"gluon"``)."""
        return self.flags_q if parton == "quark" else self.flags_g


def efficiencies(fr: Fractions, forward: Binned, central: Binned, mask: FloatArray) -> Efficiency:
    """eps_q = sum of p_q on the quark side; rej_g = sum of p_g on the gluon side."""
    e_f, v_f = side_fraction(forward, mask)
    e_c, v_c = side_fraction(central, mask)
    inv = fr.inverse()
    with np.errstate(all="ignore"):
        eps_q = inv[0, 0] * e_f + inv[0, 1] * e_c
        var_q = inv[0, 0] * inv[0, 0] * v_f + inv[0, 1] * inv[0, 1] * v_c
        g_tag = inv[1, 0] * e_f + inv[1, 1] * e_c  # gluons on the quark side
        rej_g = 1.0 - g_tag
        var_g = inv[1, 0] * inv[1, 0] * v_f + inv[1, 1] * inv[1, 1] * v_c
    flags_q = () if _physical(eps_q, var_q) else ("unphysical_efficiency",)
    flags_g = () if _physical(rej_g, var_g) else ("unphysical_efficiency",)
    return Efficiency(float(eps_q), float(var_q), float(rej_g), float(var_g), flags_q, flags_g)


def _physical(eff: float, var: float) -> bool:
    """Inside [0, 1] within two standard deviations (the extraction is not bounded)."""
    if not (np.isfinite(eff) and np.isfinite(var)):
        return False
    margin = 2.0 * float(np.sqrt(max(var, 0.0)))
    return -margin <= eff <= 1.0 + margin and eff > 0.0


def ratio_with_error(num: float, var_num: float, den: float, var_den: float) -> tuple[float, float]:
    """num/den with the first-order error of uncorrelated num and den; NaN if undefined."""
    if not (np.isfinite(num) and np.isfinite(den)) or den == 0 or num <= 0 or den <= 0:
        return float("nan"), float("nan")
    r = num / den
    rel2 = var_num / num / num + var_den / den / den  # not num**2: it raises OverflowError, or underflows to 0
    err = abs(r) * math.sqrt(rel2) if math.isfinite(rel2) and rel2 >= 0 else float("nan")
    if not (math.isfinite(r) and math.isfinite(err)):
        return float("nan"), float("nan")
    return float(r), float(err)

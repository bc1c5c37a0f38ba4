"""The true pT-hat spectrum, the MC slices and the generator weights.

Everything here is closed-form, so tests can recompute the truth exactly:
the true spectrum is a power law, each MC slice samples a *flatter* power law
(so hard events are over-represented, as in real weighted generation) and
``mcEventWeight`` undoes the difference. With the slice normalisation
``lumi * xsec * filter_eff * w / sum_w(slice)`` the stitched MC then
reproduces ``lumi * dsigma/dpT``, which is exactly what the pseudo-data are
drawn from. A wrong slice weight therefore bends the stitched spectrum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "TRUE_SPECTRUM",
    "PowerLaw",
    "SliceSpec",
    "WeightModel",
    "draw_weights",
]


@dataclass(frozen=True)
class PowerLaw:
    """dsigma/dpT = norm * (pT / pt_ref)^-n on [pt_min, pt_max) (pT in GeV, sigma in pb).

    With ``norm = 1`` it doubles as an (unnormalised) proposal density.
    """

    n: float
    pt_min: float
    pt_max: float
    norm: float = 1.0
    pt_ref: float = 400.0

    def density(self, pt: np.ndarray) -> np.ndarray:
        """Differential value at ``pt`` (pb/GeV for the true spectrum)."""
        return self.norm * (np.asarray(pt, dtype=np.float64) / self.pt_ref) ** (-self.n)

    def integral(self, lo: float, hi: float) -> float:
        """Integral over [lo, hi) in closed form (pb for the true spectrum)."""
        a, b = lo / self.pt_ref, hi / self.pt_ref
        if self.n == 1.0:
            return float(self.norm * self.pt_ref * np.log(b / a))
        m = 1.0 - self.n
        return float(self.norm * self.pt_ref * (b**m - a**m) / m)

    def total(self) -> float:
        """Integral over the whole support."""
        return self.integral(self.pt_min, self.pt_max)

    def sample(self, rng: np.random.Generator, size: int, lo: float, hi: float) -> np.ndarray:
        """Inverse-CDF draws restricted to [lo, hi): unweighted events of this shape."""
        u = rng.random(size)
        if self.n == 1.0:
            return lo * (hi / lo) ** u
        m = 1.0 - self.n
        a, b = lo**m, hi**m
        out: np.ndarray = (a + u * (b - a)) ** (1.0 / m)
        return np.clip(out, lo, np.nextafter(hi, lo))


#: The true spectrum the pseudo-data are drawn from: 100 pb/GeV at 400 GeV,
#: falling as pT^-5 up to 2.5 TeV (about 9.99 nb in total).
TRUE_SPECTRUM = PowerLaw(n=5.0, pt_min=400.0, pt_max=2500.0, norm=100.0)


@dataclass(frozen=True)
class SliceSpec:
    """One pT-hat slice of a weighted MC sample.

    ``xsec_pb * filter_eff`` equals the true cross-section of the slice; the
    two numbers are written separately (as in AMI) so that forgetting the
    filter efficiency is a visible mistake.
    """

    name: str
    jz: int
    dsid: int
    pt_lo: float
    pt_hi: float
    filter_eff: float

    @property
    def sigma_pb(self) -> float:
        """True cross-section of the slice phase space."""
        return TRUE_SPECTRUM.integral(self.pt_lo, self.pt_hi)

    @property
    def xsec_pb(self) -> float:
        """The cross-section as it would be listed for the sample (before the filter)."""
        return self.sigma_pb / self.filter_eff


@dataclass(frozen=True)
class WeightModel:
    """How one generator produces its events and weights inside a slice.

    pT-hat is drawn from pT^-proposal_n; the kinematic weight (true density /
    proposal density, both normalised in the slice, so its mean is 1) is
    multiplied by a random factor (log-normal with mean 1), made negative for
    a fraction of events, and replaced by a huge factor for a tiny fraction
    (these are what a |weight| < 100 cut removes). All random factors are
    independent of the kinematics, so the weighted shape stays the true one.
    """

    proposal_n: float
    lognormal_sigma: float
    negative_fraction: float
    large_fraction: float
    large_factor: float

    def kinematic_weight(self, pt_hat: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """true/proposal density ratio, normalised to mean 1 under the proposal."""
        proposal = PowerLaw(n=self.proposal_n, pt_min=lo, pt_max=hi)
        f = TRUE_SPECTRUM.density(pt_hat) / TRUE_SPECTRUM.integral(lo, hi)
        g = proposal.density(pt_hat) / proposal.integral(lo, hi)
        out: np.ndarray = f / g
        return out

    def sample_pt_hat(self, rng: np.random.Generator, size: int, lo: float, hi: float) -> np.ndarray:
        """pT-hat (GeV) from the flat-ish proposal inside [lo, hi)."""
        return PowerLaw(n=self.proposal_n, pt_min=lo, pt_max=hi).sample(rng, size, lo, hi)


def draw_weights(model: WeightModel, rng: np.random.Generator, pt_hat: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """mcEventWeight for events with the given pT-hat (float32, as written)."""
    n = pt_hat.size
    s = model.lognormal_sigma
    factor = rng.lognormal(mean=-0.5 * s * s, sigma=s, size=n)
    large = rng.random(n) < model.large_fraction
    factor = np.where(large, model.large_factor, factor)
    sign = np.where(rng.random(n) < model.negative_fraction, -1.0, 1.0)
    w = model.kinematic_weight(pt_hat, lo, hi) * factor * sign
    return w.astype(np.float32)

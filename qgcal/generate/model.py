"""The numbers that define the generated physics, in one place.

Everything the closure and unit tests need to know is a constant or a small
frozen dataclass here, and ``truth.py`` serialises all of it. Shapes are
parametrised by *multiplicative factors on the means* per parton type, so a
data/MC difference or an alternative generator is a handful of factors that
a test can read back from truth.json.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qgcal.generate.spectrum import SliceSpec, WeightModel

__all__ = [
    "DATA_RUNS",
    "DATA_SHIFT",
    "HERWIG_SHAPES",
    "HERWIG_SLICES",
    "HERWIG_WEIGHTS",
    "PYTHIA_SHAPES",
    "PYTHIA_SLICES",
    "PYTHIA_WEIGHTS",
    "SLICE_EVENT_FRACTIONS",
    "PartonShape",
    "ShapeModel",
    "c1_mean",
    "gluon_fraction",
    "ntrk_mean_quark",
    "pdf_weights",
    "width_mean",
]

# --- parton composition (identical for data, Pythia and Herwig) -------------
#: f_g = G0 - G_PT * (pT_true - 400 GeV) / 2000 GeV - G_ETA * |eta|, clipped.
#: G_ETA is what makes forward jets more quark-like than central ones (the
#: matrix method needs f_Fq - f_Cq of about 0.1-0.2).
GLUON_FRACTION = {"g0": 0.75, "g_pt": 0.30, "g_eta": 0.20, "min": 0.05, "max": 0.95}
#: Quark flavours among quark jets (label: probability); light 1-3, charm 4, bottom 5.
QUARK_FLAVOURS = {1: 0.30, 2: 0.40, 3: 0.15, 4: 0.10, 5: 0.05}
#: Fraction of jets whose truth label is -1 (unmatched). Their tagger shapes
#: follow the underlying quark/gluon draw, so the un-labelled data jets carry
#: the same q/g mixture as labelled ones and do not bias closure.
UNMATCHED_FRACTION = 0.015


def gluon_fraction(pt_gev: np.ndarray, abseta: np.ndarray) -> np.ndarray:
    """Probability that a jet of true pT (GeV) and |eta| is a gluon."""
    p = GLUON_FRACTION
    f = p["g0"] - p["g_pt"] * (pt_gev - 400.0) / 2000.0 - p["g_eta"] * abseta
    out: np.ndarray = np.clip(f, p["min"], p["max"])
    return out


# --- tagger shapes ------------------------------------------------------------
#: Gluon/quark ratio of the mean number of tracks.
GLUON_NTRK_RATIO = 1.5
#: All tagger means are multiplied by (1 + ETA_SLOPE * |eta|), for quarks and
#: gluons alike: the small forward/central shape difference that pass 1 removes.
ETA_SLOPE = 0.03
#: Per-jet latent "shape" variable z ~ N(0, 1): each mean is multiplied by
#: exp(s * z - s^2 / 2) (mean-preserving), which correlates the taggers.
LATENT_SIGMA = {"nTracks": 0.10, "trackWidth": 0.15, "trackC1": 0.06}
WIDTH_MAX = 0.4  # trackWidth lives in [0, R] for R = 0.4 jets
C1_MAX = 1.0


def ntrk_mean_quark(pt_gev: np.ndarray) -> np.ndarray:
    """mu_q(pT) = 9 + 4 ln(pT / 200 GeV), at least 1 (soft extra jets)."""
    out: np.ndarray = np.maximum(1.0, 9.0 + 4.0 * np.log(pt_gev / 200.0))
    return out


def width_mean(pt_gev: np.ndarray, gluon: np.ndarray | bool) -> np.ndarray:
    """Base mean trackWidth: gluon jets are wider; both narrow with pT."""
    q = 0.055 * (pt_gev / 500.0) ** -0.30
    g = 0.090 * (pt_gev / 500.0) ** -0.25
    out: np.ndarray = np.minimum(np.where(gluon, g, q), 0.3)
    return out


def c1_mean(pt_gev: np.ndarray, gluon: np.ndarray | bool) -> np.ndarray:
    """Base mean trackC1 (beta = 0.2 energy correlation): larger for gluons."""
    q = 0.21 * (pt_gev / 500.0) ** 0.03
    g = 0.29 * (pt_gev / 500.0) ** 0.02
    out: np.ndarray = np.where(gluon, g, q)
    return out


@dataclass(frozen=True)
class PartonShape:
    """Multiplicative factors on the base means of one parton type."""

    nTracks_mean: float = 1.0
    trackWidth_mean: float = 1.0
    trackC1_mean: float = 1.0

    def times(self, other: PartonShape) -> PartonShape:
        """Compose two sets of factors (e.g. a generator and a data shift)."""
        return PartonShape(
            self.nTracks_mean * other.nTracks_mean,
            self.trackWidth_mean * other.trackWidth_mean,
            self.trackC1_mean * other.trackC1_mean,
        )


@dataclass(frozen=True)
class ShapeModel:
    """Complete tagger-shape model of one generator (or of the pseudo-data).

    ``ntrk_k`` is the negative-binomial shape (variance mu + mu^2/k); the
    kappas are beta-distribution concentrations (larger = narrower).
    """

    quark: PartonShape
    gluon: PartonShape
    ntrk_k: float
    width_kappa: float
    c1_kappa: float

    def shifted(self, quark: PartonShape, gluon: PartonShape) -> ShapeModel:
        """The same model with extra factors on the quark and gluon means."""
        return ShapeModel(
            self.quark.times(quark),
            self.gluon.times(gluon),
            self.ntrk_k,
            self.width_kappa,
            self.c1_kappa,
        )


PYTHIA_SHAPES = ShapeModel(PartonShape(), PartonShape(), ntrk_k=30.0, width_kappa=8.0, c1_kappa=30.0)
#: The "Herwig-like" alternative: fewer, narrower gluon tracks, slightly
#: busier quarks, different widths of the distributions.
HERWIG_SHAPES = ShapeModel(
    PartonShape(1.03, 1.02, 1.01),
    PartonShape(0.93, 0.92, 0.95),
    ntrk_k=20.0,
    width_kappa=10.0,
    c1_kappa=36.0,
)
#: Injected pseudo-data / Pythia differences (applied on the Pythia shapes).
DATA_SHIFT = {
    "quark": PartonShape(1.04, 1.03, 1.02),
    "gluon": PartonShape(0.95, 0.96, 0.97),
}

# --- samples ----------------------------------------------------------------
PYTHIA_SLICES = (
    SliceSpec("JZ4", 4, 364704, 400.0, 800.0, 0.95),
    SliceSpec("JZ5", 5, 364705, 800.0, 1300.0, 0.70),
    SliceSpec("JZ6", 6, 364706, 1300.0, 1800.0, 0.50),
    SliceSpec("JZ7", 7, 364707, 1800.0, 2500.0, 0.35),
)
HERWIG_SLICES = (
    SliceSpec("JZ4", 4, 364904, 400.0, 800.0, 0.90),
    SliceSpec("JZ5", 5, 364905, 800.0, 1300.0, 0.65),
    SliceSpec("JZ6", 6, 364906, 1300.0, 1800.0, 0.45),
    SliceSpec("JZ7", 7, 364907, 1800.0, 2500.0, 0.30),
)
#: Share of the MC events per slice (more to low pT, as in production).
SLICE_EVENT_FRACTIONS = (0.40, 0.25, 0.20, 0.15)
PYTHIA_WEIGHTS = WeightModel(
    proposal_n=2.0,
    lognormal_sigma=0.30,
    negative_fraction=0.01,
    large_fraction=1e-5,
    large_factor=400.0,
)
HERWIG_WEIGHTS = WeightModel(
    proposal_n=3.0,
    lognormal_sigma=0.45,
    negative_fraction=0.02,
    large_fraction=1e-5,
    large_factor=400.0,
)
#: Pseudo-data run numbers (2017-like); never equal to an MC DSID.
DATA_RUNS = (325713, 326439, 327342, 328042, 329385, 330470, 331085, 333380, 335016, 336915)

# --- event structure, detector --------------------------------------------------
ONE_JET_FRACTION = 0.01
EXTRA_JET_PROBS = (0.6, 0.3, 0.1)  # 0, 1, 2 extra jets beyond the dijet pair
MAX_JETS = 2 + len(EXTRA_JET_PROBS) - 1
BALANCE = {"core_sigma": 0.10, "tail_fraction": 0.10, "tail_scale": 0.35}
RESPONSE = {"constant": 0.04, "stochastic_sqrt_gev": 1.0}  # sigma_R^2 = c^2 + s^2 / pT
ETA_LEAD = {"sigma": 1.3, "max_abs": 2.8}
ETA_EXTRA = {"sigma": 2.0, "max_abs": 4.5}
TRIGGER_EFFICIENCY = 0.98
CLEANING_EFFICIENCY = 0.995
PU_WEIGHT_SIGMA = 0.10
TRACK_LOSS_PROBABILITY = 0.025
JES_SCALE = {"syst_JET_JES__1up": 1.02, "syst_JET_JES__1down": 0.98}
JER_SMEAR = {"syst_JET_JER__1up": 0.05}
N_PDF = 11
#: Mantissa bits kept for stored floats (relative precision 2^-bits): eta,
#: phi, width, C1, BDT and pu_weight keep 14 (6e-5), pdf_weight 16 (1.5e-5
#: on values near 1); jet_pt and mcEventWeight keep full float32.
FLOAT_BITS = 14
PDF_BITS = 16


def pdf_weights(pt_hat: np.ndarray, n_gluon_lead: np.ndarray) -> np.ndarray:
    """Per-event PDF-replica weights (n, 11): w0 = 1, wk = 1 + a_k L + b_k (g - 1).

    L = ln(pT-hat / 400) / ln(2500 / 400) in [0, 1), g = number of gluons among
    the two leading jets (0, 1, 2); a_k = 0.04 sin(1.3 k), b_k = 0.015 cos(0.7 k).
    Smooth in pT and parton content, a few percent, as PDF replicas are.
    """
    k = np.arange(1, N_PDF)
    a = 0.04 * np.sin(1.3 * k)
    b = 0.015 * np.cos(0.7 * k)
    lever = np.log(pt_hat / 400.0) / np.log(2500.0 / 400.0)
    out = np.ones((pt_hat.size, N_PDF))
    out[:, 1:] += lever[:, None] * a[None, :] + (n_gluon_lead[:, None] - 1.0) * b[None, :]
    return out

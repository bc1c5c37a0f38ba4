"""Jet constituents (tracks) consistent with each jet's nTracks and trackWidth.

Why: a constituent tagger (``taggers.<name>.kind: constituents``) needs per-jet,
variable-length inputs. They are generated *from* the jet-level variables so the
two descriptions never disagree: jet j has exactly ``nTracks[j]`` constituents, and
the pT-weighted mean distance of its tracks to the axis,
``sum_i z_i dR_i / sum_i z_i``, equals ``trackWidth[j]`` (to float32 rounding and
the ``FLOAT_BITS`` quantisation of the stored values).

What a tagger can learn beyond nTracks: gluon jets fragment more democratically
(their track pT fractions are less dominated by a leading track) and are wider;
both come from the jet's truth label and its (data- or MC-) shape model, so a
data/MC shape difference propagates to the constituents as it does to nTracks.

Layout (what ``writer.py`` writes, and what real ntuples do): one flat per-event
collection ``constit_*`` (counter ``nconstit``) holding the constituents of jet 0,
then jet 1, ... in the jets' stored order, and a per-jet count
``jet_nConstituents``: flattened values plus per-jet counts, no padding.

Units: ``ptFrac`` = track pT / jet pT (dimensionless), ``deta``/``dphi`` relative
to the jet axis, ``charge`` in units of e, ``d0``/``dz`` impact parameters in mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qgcal.generate import model as m
from qgcal.generate.jets import JetBlock, quantise

__all__ = ["CONSTITUENT_BRANCHES", "COUNT_BRANCH", "Constituents", "generate_constituents", "reorder"]

#: per-event constituent branch -> Constituents attribute (written with the counter ``nconstit``)
CONSTITUENT_BRANCHES: dict[str, str] = {
    "constit_ptFrac": "ptFrac",
    "constit_deta": "deta",
    "constit_dphi": "dphi",
    "constit_charge": "charge",
    "constit_d0": "d0",
    "constit_dz": "dz",
}
#: per-jet branch: how many constituents each jet has (== jet_nTracks)
COUNT_BRANCH = "jet_nConstituents"

# fragmentation: track pT fractions ~ Gamma(shape) normalised per jet; a larger shape is more democratic
_Z_SHAPE = {"quark": 0.55, "gluon": 0.85}
# charged fraction of the jet pT ~ Beta(a, b)
_CHARGED_BETA = (6.0, 4.0)
# harder tracks sit closer to the axis: raw dR ~ Exp(1) * z^-_DR_Z_POWER, then scaled to the width
_DR_Z_POWER = 0.3
_D0_SIGMA_MM, _DZ_SIGMA_MM, _B_D0_TAIL_MM = 0.02, 0.05, 0.3


@dataclass(frozen=True)
class Constituents:
    """Flat constituent arrays of one block, ordered (event, stored jet, constituent)."""

    counts: np.ndarray  # int32 (n_events, MAX_JETS): constituents per jet slot (0 for padding)
    ptFrac: np.ndarray  # float32 (total,)
    deta: np.ndarray
    dphi: np.ndarray
    charge: np.ndarray  # int32
    d0: np.ndarray  # float32 mm
    dz: np.ndarray  # float32 mm

    def event_offsets(self) -> np.ndarray:
        """Offsets of each event's constituents in the flat arrays (n_events + 1)."""
        out = np.zeros(self.counts.shape[0] + 1, dtype=np.int64)
        np.cumsum(self.counts.sum(axis=1), out=out[1:])
        return out


def generate_constituents(rng: np.random.Generator, block: JetBlock) -> Constituents:
    """Constituents for every real jet of ``block``, consistent with its nTracks and trackWidth."""
    mask = block.mask
    counts_jet = np.where(mask, block.nTracks, 0).astype(np.int32)
    n_per = counts_jet[mask].astype(np.int64)  # per real jet, in (event, slot) order
    k, total = n_per.size, int(n_per.sum())
    jet_of = np.repeat(np.arange(k), n_per)
    gluon = (block.label[mask] == 21)[jet_of]
    shape = np.where(gluon, _Z_SHAPE["gluon"], _Z_SHAPE["quark"])
    g = rng.gamma(shape, 1.0, total) + 1e-6
    z = g / np.bincount(jet_of, weights=g, minlength=k)[jet_of]  # sums to 1 per jet
    raw = rng.exponential(1.0, total) * z ** (-_DR_Z_POWER)
    width = np.maximum(block.trackWidth[mask].astype(np.float64), 0.0)
    scale = width / np.maximum(np.bincount(jet_of, weights=z * raw, minlength=k), 1e-12)
    dr = raw * scale[jet_of]  # now sum_i z_i dR_i == trackWidth per jet
    angle = rng.uniform(-np.pi, np.pi, total)
    charged = rng.beta(*_CHARGED_BETA, k)[jet_of]
    charge = np.where(rng.random(total) < 0.5, -1, 1).astype(np.int32)
    is_b = (np.abs(block.label[mask]) == 5)[jet_of]
    d0 = rng.normal(0.0, _D0_SIGMA_MM, total) + is_b * rng.exponential(_B_D0_TAIL_MM, total) * charge
    dz = rng.normal(0.0, _DZ_SIGMA_MM, total)
    bits = m.FLOAT_BITS
    return Constituents(
        counts=counts_jet,
        ptFrac=quantise((z * charged).astype(np.float32), bits),
        deta=quantise((dr * np.cos(angle)).astype(np.float32), bits),
        dphi=quantise((dr * np.sin(angle)).astype(np.float32), bits),
        charge=charge,
        d0=quantise(d0.astype(np.float32), bits),
        dz=quantise(dz.astype(np.float32), bits),
    )


def reorder(cons: Constituents, slot: np.ndarray, njet: np.ndarray) -> Constituents:
    """The constituents of jets re-sorted so that new position p holds old slot ``slot[e, p]``.

    Used for the JER-smeared tree, whose jets are re-sorted by their smeared pT: each
    jet keeps its own constituents.
    """
    n, J = cons.counts.shape
    starts = np.zeros(n * J + 1, dtype=np.int64)
    np.cumsum(cons.counts.ravel(), out=starts[1:])
    starts = starts[:-1].reshape(n, J)
    real = np.arange(J)[None, :] < njet[:, None]
    src = np.take_along_axis(starts, slot, axis=1)[real]
    lens = np.take_along_axis(cons.counts, slot, axis=1)[real].astype(np.int64)
    out_off = np.zeros(lens.size + 1, dtype=np.int64)
    np.cumsum(lens, out=out_off[1:])
    idx = np.repeat(src - out_off[:-1], lens) + np.arange(int(out_off[-1]))
    new_counts = np.where(real, np.take_along_axis(cons.counts, slot, axis=1), 0).astype(np.int32)
    return Constituents(
        counts=new_counts,
        **{name: getattr(cons, name)[idx] for name in ("ptFrac", "deta", "dphi", "charge", "d0", "dz")},
    )

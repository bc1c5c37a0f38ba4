"""qgcal.generate: realistic ATLAS-style dijet ntuples (real ROOT TTrees) with known truth.

The calibration needs inputs whose answer is known: pseudo-data drawn from
the true spectrum with tagger shapes that differ from MC by recorded
factors, weighted pT-hat sliced MC (nominal and an alternative generator)
with systematic trees, branches and weights, and a truth.json that says
all of it. ``generate_sample`` is deterministic for a seed.
"""

from __future__ import annotations

from qgcal.generate.sample import GeneratedSample, generate_or_reuse, generate_sample

__all__ = ["GeneratedSample", "generate_or_reuse", "generate_sample"]

"""Cut flows per sample: events and sum of weights after each cut, summed over a sample's files.

Why its own module: root2pkl records a cut flow per file (``cutflow`` and
``cutflow_sumw`` in its artifact, carried into every later artifact); ``qgcal
run``, ``qgcal status`` and the "no data after selection" error all show the
same per-sample sums, made here once. Sums are taken in sorted file order with
``math.fsum`` (exact), so the numbers do not depend on the split of the work.

The MC sum of weights is normalised to the luminosity per slice (lumi x xsec x
filter_eff x k / bookkeeping sum of weights of the slice, as in the merge): raw
generator weights differ by orders of magnitude between slices, so their plain
sum would say nothing. Data: the sum of the data weights (1 per event, or the
trigger prescale).

Cuts that define the phase space (kinematics, triggers) remove most events by
design; every other cut (weight cuts, cleaning, jet ID, event flags, truth
labels) should remove few, and one that removes more than
``selection.warn_fraction`` of the events reaching it is reported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgcal.config import Config

__all__ = ["PHASE_SPACE_CUTS", "CutFlow", "cutflow_from_metas", "large_cuts", "read_cutflow"]

# the analysis phase space (PHYSICS.md): the kinematic cuts and the triggers
PHASE_SPACE_CUTS = frozenset(
    {"read", "two_jets", "trigger", "subleading_pt", "leading_pt", "pt_balance", "abs_eta", "selected"}
)


@dataclass
class CutFlow:
    """One sample's cut flow (cuts in the order they were applied)."""

    sample: str
    kind: str
    files: int = 0
    events: dict[str, int] = field(default_factory=dict)
    sumw: dict[str, float] = field(default_factory=dict)  # MC: normalised to the luminosity; data: summed weights
    invalid_scores: dict[str, int] = field(default_factory=dict)  # jets outside a tagger's valid range
    nan_scores: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """A small table: cut, events, fraction of the previous cut kept, sum of weights."""
        what = "sum of weights (normalised to lumi)" if self.kind == "mc" else "sum of weights"
        out = [f"cut flow of {self.sample!r} ({self.kind}, {self.files} file(s)): cut, events, kept, {what}"]
        prev: int | None = None
        for cut, n in self.events.items():
            kept = f"{n / prev:7.2%}" if prev else "      -"
            out.append(f"  {cut:<28} {n:>12d}  {kept}  {self.sumw.get(cut, math.nan):.6g}")
            prev = n
        for tagger in sorted(set(self.invalid_scores) | set(self.nan_scores)):
            bad, nan = self.invalid_scores.get(tagger, 0), self.nan_scores.get(tagger, 0)
            if bad or nan:
                out.append(f"  tagger {tagger}: {bad} jet(s) outside its valid range, {nan} NaN (left out)")
        return out

    def text(self) -> str:
        """One line: ``read 1000 -> two_jets 990 -> ... -> selected 0``."""
        return " -> ".join(f"{cut} {n}" for cut, n in self.events.items())


def cutflow_from_metas(cfg: Config, sample: str, metas: Iterable[Mapping[str, Any]]) -> CutFlow:
    """Sum the per-file cut flows in histogram-artifact metadata (``carry``) of one sample."""
    spec = cfg.samples[sample]
    flow = CutFlow(sample, spec.kind)
    per_slice: dict[str, list[Mapping[str, Any]]] = {}
    for meta in metas:
        carry = meta.get("carry") or {}
        per_slice.setdefault(str(carry.get("slice", "all")), []).append(meta)
        flow.files += 1
        for k, _ in carry.get("cutflow_sumw") or []:  # the cuts in the order they were applied
            flow.events.setdefault(str(k), 0)
        for k, v in (carry.get("cutflow") or {}).items():
            flow.events[k] = flow.events.get(k, 0) + int(v)
        for key, target in (("invalid_scores", flow.invalid_scores), ("nan_scores", flow.nan_scores)):
            for k, v in (meta.get(key) or {}).items():
                target[k] = target.get(k, 0) + int(v)
    slices = spec.slice_map()
    sums: dict[str, list[float]] = {}
    for slice_name in sorted(per_slice):
        metas_s = per_slice[slice_name]
        scale = 1.0
        if spec.kind == "mc" and slice_name in slices:
            configured = spec.configured_sum_of_weights(slice_name)  # as the merge does (qgcal.merging)
            bookkeeping = (
                float(configured)
                if configured is not None
                else math.fsum(float((m.get("carry") or {}).get("sumw") or 0.0) for m in metas_s)
            )
            scale = slices[slice_name].scale(cfg.lumi_pb, bookkeeping)
        for m in metas_s:
            for k, v in (m.get("carry") or {}).get("cutflow_sumw") or []:
                sums.setdefault(str(k), []).append(scale * float(v))
    flow.sumw = {k: math.fsum(sums[k]) if k in sums else math.nan for k in flow.events}
    return flow


def read_cutflow(cfg: Config, sample: str, artifacts: Iterable[tuple[str, Path]]) -> CutFlow:
    """The cut flow of ``sample`` from its histogram artifacts ((sort key, path) pairs)."""
    from qgcal.histset import read_histset_meta  # hist/numpy: not at config-import time

    metas = []
    for _, path in sorted(artifacts):
        meta = read_histset_meta(path)
        if meta is not None:
            metas.append(meta)
    return cutflow_from_metas(cfg, sample, metas)


def large_cuts(flow: CutFlow, fraction: float) -> list[tuple[str, float]]:
    """(cut, fraction of the events reaching it that it removed) for every non-phase-space cut above ``fraction``."""
    out: list[tuple[str, float]] = []
    prev: int | None = None
    for cut, n in flow.events.items():
        if prev and cut not in PHASE_SPACE_CUTS:
            removed = (prev - n) / prev
            if removed > fraction:
                out.append((cut, removed))
        prev = n
    jets = 2 * flow.events.get("selected", 0)
    for tagger in sorted(flow.invalid_scores):
        if jets and flow.invalid_scores[tagger] / jets > fraction:
            out.append((f"taggers.{tagger}.valid", flow.invalid_scores[tagger] / jets))
    return out

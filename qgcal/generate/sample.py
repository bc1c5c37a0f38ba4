"""``generate_sample``: plan the files, generate them block by block, write truth.json.

Random numbers: every (seed, sample, slice, file) has its own
``SeedSequence`` entropy, and every block of BLOCK_SIZE events inside a file
its own child stream (``spawn_key=(block, stream)``), so a file does not
depend on which other files exist, in which order they are written, or how
many events the other files get. Memory is bounded by one block.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qgcal.generate import model as m
from qgcal.generate.constituents import CONSTITUENT_BRANCHES, generate_constituents, reorder
from qgcal.generate.jets import JetBlock, generate_jets, quantise, smear_and_sort
from qgcal.generate.spectrum import TRUE_SPECTRUM, SliceSpec, WeightModel, draw_weights
from qgcal.generate.truth import build_truth
from qgcal.generate.writer import (
    DATA_TREES,
    MC_TREES,
    TreeFile,
    branch_types,
    constituent_arrays,
    file_uuid,
    jagged,
    jet_arrays,
)

__all__ = [
    "BLOCK_SIZE",
    "EVENT_NUMBER_STRIDE",
    "FilePlan",
    "GeneratedSample",
    "generate_sample",
    "plan_files",
]

BLOCK_SIZE = 25_000
#: eventNumber = file_index * EVENT_NUMBER_STRIDE + entry + 1: unique per sample and slice
EVENT_NUMBER_STRIDE = 1_000_000_000
_SAMPLE_CODES = {"data": 0, "pythia": 1, "herwig": 2}
_MC = {
    "pythia": (m.PYTHIA_SLICES, m.PYTHIA_WEIGHTS),
    "herwig": (m.HERWIG_SLICES, m.HERWIG_WEIGHTS),
}


@dataclass(frozen=True)
class GeneratedSample:
    """What ``generate_sample`` wrote: the output directory, every ROOT file, truth.json."""

    out: Path
    files: tuple[Path, ...]
    truth: Path


@dataclass(frozen=True)
class FilePlan:
    """One output file: which sample/slice it belongs to and how many events it holds."""

    sample: str
    relpath: str
    file_index: int
    events: int
    slice: SliceSpec | None = None


def _split(total: int, parts: int) -> list[int]:
    """``total`` events over ``parts`` files, the first ones getting the remainder."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _slice_events(total: int, files: int) -> list[int]:
    """MC events per slice: SLICE_EVENT_FRACTIONS of ``total``, at least ``files`` each."""
    fr = m.SLICE_EVENT_FRACTIONS
    upper = [int(total * f) for f in fr[1:]]
    counts = [total - sum(upper), *upper]
    return [max(files, c) for c in counts]


def plan_files(events: int, files: int) -> list[FilePlan]:
    """Every file to write, in a fixed order (data, then pythia, then herwig)."""
    plans = [FilePlan("data", f"data/data_{i:03d}.root", i, n) for i, n in enumerate(_split(events, files))]
    for sample, total in (("pythia", events), ("herwig", events // 2)):
        slices, _ = _MC[sample]
        for spec, n_slice in zip(slices, _slice_events(total, files), strict=True):
            for i, n in enumerate(_split(n_slice, files)):
                rel = f"mc/{sample}/{spec.name}/{sample}_{spec.name}_{i:03d}.root"
                plans.append(FilePlan(sample, rel, i, n, spec))
    return plans


def _rng(seed: int, plan: FilePlan, block: int, stream: int) -> np.random.Generator:
    """Independent PCG64 stream for (seed, sample, slice, file) and (block, stream)."""
    jz = plan.slice.jz if plan.slice is not None else 0
    entropy = [seed, _SAMPLE_CODES[plan.sample], jz, plan.file_index]
    ss = np.random.SeedSequence(entropy=entropy, spawn_key=(block, stream))
    return np.random.Generator(np.random.PCG64(ss))


def _event_arrays(plan: FilePlan, start: int, n: int, run: np.ndarray, fire: np.ndarray) -> dict[str, Any]:
    """Per-event branches common to data and MC (eventNumber unique per sample and slice)."""
    event = plan.file_index * EVENT_NUMBER_STRIDE + start + 1 + np.arange(n, dtype=np.int64)
    return {"runNumber": run.astype(np.int32), "eventNumber": event, "jet_fire": fire}


_COMMON_JET = [
    "jet_pt",
    "jet_eta",
    "jet_phi",
    "jet_nTracks",
    "jet_trackWidth",
    "jet_trackC1",
    "jet_trackBDT",
    "jet_PartonTruthLabelID",
    "jet_cleaning",
]
_MC_JET = [*_COMMON_JET, "jet_nTracks_sys_eff"]


def _open(
    out: Path, plan: FilePlan, seed: int, trees: tuple[str, ...], is_mc: bool, constituents: bool = False
) -> TreeFile:
    n_blocks = max(1, -(-plan.events // BLOCK_SIZE))
    uid = file_uuid(seed, plan.relpath)
    return TreeFile(out / plan.relpath, trees, branch_types(is_mc, constituents), uid, n_blocks)


#: stream index of the constituents' random numbers: their own stream, so switching them on
#: leaves every other branch of the sample bit-identical
_CONSTITUENT_STREAM = 2


def _with_slots(jets: JetBlock) -> JetBlock:
    """The block with each jet's slot recorded (followed through a JER re-sort)."""
    slot = np.broadcast_to(np.arange(jets.pt.shape[1]), jets.pt.shape).copy()
    return replace(jets, slot=slot)


def _write_data(
    out: Path,
    plan: FilePlan,
    seed: int,
    shapes: m.ShapeModel,
    unmatched: float | None = None,
    unmatched_shapes: m.ShapeModel | None = None,
    constituents: bool = False,
) -> None:
    """Pseudo-data: unweighted pT-hat from the true spectrum, nominal tree only."""
    with _open(out, plan, seed, DATA_TREES, is_mc=False, constituents=constituents) as tf:
        for b, start in enumerate(range(0, plan.events, BLOCK_SIZE)):
            n = min(BLOCK_SIZE, plan.events - start)
            rng = _rng(seed, plan, b, 0)
            pt_hat = TRUE_SPECTRUM.sample(rng, n, TRUE_SPECTRUM.pt_min, TRUE_SPECTRUM.pt_max)
            run = rng.choice(np.array(m.DATA_RUNS), size=n)
            fire = rng.random(n) < m.TRIGGER_EFFICIENCY
            jets = generate_jets(rng, pt_hat, shapes, unmatched, unmatched_shapes)
            arrays = _event_arrays(plan, start, n, run, fire)
            arrays.update(jet_arrays(jets, [*_COMMON_JET, "closure_PartonTruthLabelID"]))
            if constituents:
                cons = generate_constituents(_rng(seed, plan, b, _CONSTITUENT_STREAM), jets)
                arrays.update(constituent_arrays(cons, jets.njet))
            tf.begin_block(n)
            tf.extend("nominal", arrays)


def _scaled(jets: JetBlock, factor: float) -> JetBlock:
    """JES-like variation: every jet pT times ``factor`` (order unchanged)."""
    return replace(jets, pt=(jets.pt.astype(np.float64) * factor).astype(np.float32))


def _write_mc(
    out: Path,
    plan: FilePlan,
    spec: SliceSpec,
    seed: int,
    shapes: m.ShapeModel,
    weights: WeightModel,
    unmatched: float | None = None,
    unmatched_shapes: m.ShapeModel | None = None,
    constituents: bool = False,
) -> None:
    """One MC file of a slice: weighted events, nominal + systematic trees, histoEventCount."""
    sumw = sumw2 = 0.0
    with _open(out, plan, seed, MC_TREES, is_mc=True, constituents=constituents) as tf:
        for b, start in enumerate(range(0, plan.events, BLOCK_SIZE)):
            n = min(BLOCK_SIZE, plan.events - start)
            rng = _rng(seed, plan, b, 0)
            pt_hat = weights.sample_pt_hat(rng, n, spec.pt_lo, spec.pt_hi)
            w = draw_weights(weights, rng, pt_hat, spec.pt_lo, spec.pt_hi)
            sig = m.PU_WEIGHT_SIGMA
            pu = quantise(rng.lognormal(-0.5 * sig * sig, sig, n), m.FLOAT_BITS)
            fire = rng.random(n) < m.TRIGGER_EFFICIENCY
            jets = generate_jets(rng, pt_hat, shapes, unmatched, unmatched_shapes)
            pdf = quantise(m.pdf_weights(pt_hat, jets.n_gluon_lead), m.PDF_BITS)
            event = _event_arrays(plan, start, n, np.full(n, spec.dsid), fire)
            event["mcEventWeight"] = w
            event["pu_weight"] = pu
            pdf_offsets = np.arange(n + 1, dtype=np.int64) * m.N_PDF
            event["pdf_weight"] = jagged(pdf.ravel(), pdf_offsets)
            nominal = jet_arrays(jets, _MC_JET)
            if constituents:
                cons = generate_constituents(_rng(seed, plan, b, _CONSTITUENT_STREAM), jets)
                nominal.update(constituent_arrays(cons, jets.njet))
                jets = _with_slots(jets)
            tf.begin_block(n)
            tf.extend("nominal", {**event, **nominal})
            for tree, factor in m.JES_SCALE.items():
                scaled_pt = jet_arrays(_scaled(jets, factor), ["jet_pt"])
                tf.extend(tree, {**event, **nominal, **scaled_pt})
            for tree, sigma in m.JER_SMEAR.items():
                smeared = smear_and_sort(jets, _rng(seed, plan, b, 1), sigma)
                jer = jet_arrays(smeared, _MC_JET)
                if constituents:
                    assert smeared.slot is not None
                    jer.update(constituent_arrays(reorder(cons, smeared.slot, smeared.njet), smeared.njet))
                tf.extend(tree, {**event, **jer})
            w64 = w.astype(np.float64)
            sumw += float(w64.sum())
            sumw2 += float((w64 * w64).sum())
        tf.event_count(plan.events, sumw, sumw2)


def generate_sample(
    out: Path,
    *,
    events: int = 200_000,
    files: int = 2,
    seed: int = 1,
    data_shift: bool = True,
    progress: Callable[[str], None] | None = None,
    unmatched_fraction: float | None = None,
    unmatched_own_shape: bool = False,
    constituents: bool = False,
) -> GeneratedSample:
    """Write pseudo-data, Pythia-like and Herwig-like MC and truth.json under ``out``.

    ``events`` pseudo-data events over ``files`` data files; Pythia gets
    ``events`` split over its slices (``files`` files per slice), Herwig
    ``events // 2``. The same arguments give the same events. With
    ``data_shift=False`` the pseudo-data tagger shapes equal Pythia's.
    ``unmatched_fraction``: the fraction of jets (data and MC alike) whose truth
    label is -1 (default: the model's, ``model.UNMATCHED_FRACTION``); the events
    are the same for any value, only those labels change (third-class closure tests).
    ``unmatched_own_shape``: unmatched jets get a tagger shape of their own (pile-up-like),
    the same in data and every MC (a well-modelled third class; other events differ then).
    ``constituents``: also write each jet's constituents (``jet_nConstituents`` and the per-event
    ``constit_*`` collection, see qgcal.generate.constituents), from their own random stream: every
    other branch is the same as without them. Off by default (files about 7x larger).
    """
    if unmatched_fraction is not None and not 0.0 <= unmatched_fraction < 1.0:
        raise ValueError(f"unmatched_fraction must be in [0, 1), got {unmatched_fraction}")
    if events < 1 or files < 1:
        raise ValueError(f"events and files must be >= 1, got events={events}, files={files}")
    if events < files:
        raise ValueError(f"events ({events}) must be at least files ({files}): every data file needs an event")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_files(events, files)
    shift = m.DATA_SHIFT if data_shift else {"quark": m.PartonShape(), "gluon": m.PartonShape()}
    data_shapes = m.PYTHIA_SHAPES.shifted(shift["quark"], shift["gluon"])
    mc_shapes = {"pythia": m.PYTHIA_SHAPES, "herwig": m.HERWIG_SHAPES}
    written: list[Path] = []
    own = m.PYTHIA_SHAPES if unmatched_own_shape else None
    for i, plan in enumerate(plans):
        if plan.slice is None:
            _write_data(out, plan, seed, data_shapes, unmatched_fraction, own, constituents)
        else:
            weights = _MC[plan.sample][1]
            _write_mc(
                out, plan, plan.slice, seed, mc_shapes[plan.sample], weights, unmatched_fraction, own, constituents
            )
        written.append(out / plan.relpath)
        if progress is not None:
            progress(f"[{i + 1}/{len(plans)}] wrote {plan.relpath} ({plan.events} events)")
    truth = build_truth(
        seed=seed,
        events=events,
        files=files,
        data_shift=data_shift,
        plans=plans,
        shift=shift,
        block_size=BLOCK_SIZE,
        event_number_stride=EVENT_NUMBER_STRIDE,
        unmatched_fraction=unmatched_fraction,
        unmatched_own_shape=unmatched_own_shape,
    )
    if constituents:
        truth["constituents"] = {"branches": ["jet_nConstituents", *CONSTITUENT_BRANCHES], "counter": "nconstit"}
    truth_path = out / "truth.json"
    tmp = truth_path.with_name("truth.json.tmp")
    tmp.write_text(json.dumps(truth, sort_keys=True, indent=2) + "\n")
    os.replace(tmp, truth_path)
    if progress is not None:
        progress(f"wrote truth.json (luminosity {truth['luminosity_pb']:.4g} pb^-1)")
    return GeneratedSample(out=out, files=tuple(written), truth=truth_path)


def generate_or_reuse(
    out: Path, *, events: int, files: int, seed: int, progress: Callable[[str], None] | None = None
) -> bool:
    """Generate a sample under ``out`` unless one made with the same events, files and seed is there.

    For benchmarks and studies that keep their samples in a ``--workdir`` between runs: a sample
    of another size left there must not be timed as this one (it is refused, naming both).
    Returns whether a sample was generated.
    """
    truth = out / "truth.json"
    want = {"events": events, "files": files, "seed": seed}
    if truth.is_file():
        doc = json.loads(truth.read_text())
        found = {k: doc.get(k) for k in want}
        if found != want:
            raise ValueError(
                f"{out}: holds a sample generated with {found}, not {want}; "
                "use another --workdir (closure_study: --out) or delete it"
            )
        return False
    generate_sample(out, events=events, files=files, seed=seed, progress=progress)
    return True

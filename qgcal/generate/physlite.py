"""A generated sample rewritten in the ATLAS DAOD_PHYSLITE layout (configs/atlas_physlite.yaml).

Why a rewrite of ``generate_sample``'s files rather than a generator of its own: the events,
and so the known truth, stay those of truth.json, while the layout is PHYSLITE's, with the
properties of real PHYSLITE files that flat ntuples hide:

* one ``CollectionTree`` with xAOD auxiliary-store branch names: ``EventInfoAuxDyn.*``
  (``runNumber`` uint32, ``eventNumber`` uint64, ``mcChannelNumber``, ``mcEventWeights``, a
  vector per event whose element 0 is the nominal generator weight, ``PileupWeight_NOSYS``,
  the event-level cleaning flag ``DFCommonJets_eventClean_LooseBad``) and
  ``AnalysisJetsAuxDyn.*`` (``pt`` in MeV, ``eta``, ``phi``, ``PartonTruthLabelID``, the
  QGTagger track variables ``DFCommonJets_QGTagger_NTracks/TracksWidth/TracksC1``, the per-jet
  ``DFCommonJets_jetClean_LooseBad``);
* jets NOT pT-ordered (PHYSLITE stores calibrated jets in the order of the uncalibrated
  collection): the jets of every event are permuted;
* realistic generator weights: ``mcEventWeights[0]`` is the flat-ntuple weight times a
  per-slice factor of 1e5-1e8 (ATLAS dijet JZ slices), the slice's sum of weights scaling with
  it (returned, as AMI / CutBookkeepers would give it);
* every MC slice of one production shares ``runNumber`` (one MC campaign) and the slices'
  ``eventNumber`` ranges overlap (they restart in every file of every slice), so only
  (dataset, run, event) identifies an event.

No trigger branch is written: PHYSLITE keeps trigger decisions in the trigger navigation, not
as flat branches (the flat sample's ``jet_fire`` is dropped).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

__all__ = ["DEFAULT_WEIGHT_SCALE", "MC_RUN_NUMBER", "TREE", "PhysliteSample", "write_physlite"]

TREE = "CollectionTree"
#: one MC campaign (mc20a-like): every slice has this runNumber
MC_RUN_NUMBER = 284500
#: generator weight scale per JZ slice (events of a low slice weigh more: sliced weights)
DEFAULT_WEIGHT_SCALE = {"JZ4": 3.0e7, "JZ5": 4.0e6, "JZ6": 6.0e5, "JZ7": 1.0e5}
_DSID = {"JZ4": 801169, "JZ5": 801170, "JZ6": 801171, "JZ7": 801172}

_JETS = {  # flat-ntuple branch -> (PHYSLITE branch, dtype)
    "jet_pt": ("AnalysisJetsAuxDyn.pt", np.float32),
    "jet_eta": ("AnalysisJetsAuxDyn.eta", np.float32),
    "jet_phi": ("AnalysisJetsAuxDyn.phi", np.float32),
    "jet_nTracks": ("AnalysisJetsAuxDyn.DFCommonJets_QGTagger_NTracks", np.int32),
    "jet_trackWidth": ("AnalysisJetsAuxDyn.DFCommonJets_QGTagger_TracksWidth", np.float32),
    "jet_trackC1": ("AnalysisJetsAuxDyn.DFCommonJets_QGTagger_TracksC1", np.float32),
    "jet_cleaning": ("AnalysisJetsAuxDyn.DFCommonJets_jetClean_LooseBad", np.int8),
}
_LABEL = ("jet_PartonTruthLabelID", "AnalysisJetsAuxDyn.PartonTruthLabelID")


@dataclass(frozen=True)
class PhysliteSample:
    """What :func:`write_physlite` wrote: data files, MC files and sums of weights per slice."""

    out: Path
    data: tuple[Path, ...]
    slices: dict[str, tuple[Path, ...]]
    sum_of_weights: dict[str, float]  # per slice, in the units of mcEventWeights[0]
    weight_scale: dict[str, float]


def _counter(name: str) -> str:
    return "nAnalysisJets" if name.startswith("AnalysisJetsAuxDyn.") else "n" + name.split(".")[-1]


def _event_clean(cleaning: ak.Array, pt: ak.Array) -> np.ndarray:
    """Event-level flag: the two leading jets are clean (the flat config's per-jet cut on them)."""
    order = ak.argsort(pt, axis=1, ascending=False)
    lead = ak.fill_none(ak.pad_none(cleaning[order][:, :2], 2, axis=1), True)
    return np.asarray(ak.to_numpy(ak.all(lead, axis=1))).astype(np.int8)


def _convert(src: Path, dst: Path, *, is_mc: bool, scale: float, dsid: int, rng: np.random.Generator) -> float:
    """One file: nominal tree -> CollectionTree; return its sum of weights x scale (MC)."""
    with uproot.open(src) as f:
        arr = f["nominal"].arrays()
        counts = np.asarray(f["histoEventCount"].values(flow=False), dtype=np.float64) if is_mc else None
    n = len(arr)
    njet = ak.to_numpy(ak.num(arr["jet_pt"], axis=1))
    # a random permutation of the jets of each event: sort random keys within each event
    keys = ak.unflatten(rng.random(int(njet.sum())), njet)
    perm = ak.argsort(keys, axis=1)
    out: dict[str, ak.Array | np.ndarray] = {
        "EventInfoAuxDyn.runNumber": (
            np.full(n, MC_RUN_NUMBER, dtype=np.uint32) if is_mc else ak.to_numpy(arr["runNumber"]).astype(np.uint32)
        ),
        # restarts in every file: slices and files of one production overlap in eventNumber
        "EventInfoAuxDyn.eventNumber": np.arange(1, n + 1, dtype=np.uint64),
        "EventInfoAuxDyn.DFCommonJets_eventClean_LooseBad": _event_clean(arr["jet_cleaning"], arr["jet_pt"]),
    }
    for flat, (name, dtype) in _JETS.items():
        out[name] = ak.values_astype(arr[flat][perm], dtype)
    if is_mc:
        w = ak.to_numpy(arr["mcEventWeight"]).astype(np.float64) * scale
        pdf = arr["pdf_weight"] * w  # the variations, in the same units as the nominal weight
        nominal = ak.unflatten(w, np.ones(n, dtype=np.int64))
        out["EventInfoAuxDyn.mcEventWeights"] = ak.values_astype(ak.concatenate([nominal, pdf], axis=1), np.float32)
        out["EventInfoAuxDyn.mcChannelNumber"] = np.full(n, dsid, dtype=np.uint32)
        out["EventInfoAuxDyn.PileupWeight_NOSYS"] = ak.to_numpy(arr["pu_weight"]).astype(np.float32)
        out[_LABEL[1]] = ak.values_astype(arr[_LABEL[0]][perm], np.int32)
    types = {k: (v.type.content if isinstance(v, ak.Array) else v.dtype) for k, v in out.items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    with uproot.recreate(dst) as g:
        g.mktree(TREE, types, counter_name=_counter)
        g[TREE].extend(out)
    if counts is None:
        return 0.0
    # the bookkeeping of the generated file (bin 2: sum of weights of ALL generated events), scaled
    return float(counts[1]) * scale


def write_physlite(
    sample_dir: Path, out: Path, *, weight_scale: dict[str, float] | None = None, seed: int = 1
) -> PhysliteSample:
    """Rewrite ``sample_dir`` (``generate_sample``'s output) as PHYSLITE-like files under ``out``.

    Writes ``out/data/*.root``, ``out/mc/<JZ>/*.root`` (Pythia) and ``out/physlite.json`` with
    the per-slice sums of weights. Deterministic for a seed.
    """
    sample_dir, out = Path(sample_dir), Path(out)
    scale = dict(DEFAULT_WEIGHT_SCALE if weight_scale is None else weight_scale)
    rng = np.random.default_rng(seed)
    data = []
    for src in sorted((sample_dir / "data").glob("*.root")):
        dst = out / "data" / src.name
        _convert(src, dst, is_mc=False, scale=1.0, dsid=0, rng=rng)
        data.append(dst)
    slices: dict[str, tuple[Path, ...]] = {}
    sums: dict[str, float] = {}
    for name in sorted(scale):
        files = []
        total = 0.0
        for src in sorted((sample_dir / "mc" / "pythia" / name).glob("*.root")):
            dst = out / "mc" / name / src.name
            total += _convert(src, dst, is_mc=True, scale=scale[name], dsid=_DSID.get(name, 0), rng=rng)
            files.append(dst)
        if not files:
            raise ValueError(f"{sample_dir}: no Pythia files for slice {name!r}")
        slices[name], sums[name] = tuple(files), total
    (out / "physlite.json").write_text(
        json.dumps({"sum_of_weights": sums, "weight_scale": scale, "tree": TREE}, indent=2, sort_keys=True)
    )
    return PhysliteSample(out=out, data=tuple(data), slices=slices, sum_of_weights=sums, weight_scale=scale)

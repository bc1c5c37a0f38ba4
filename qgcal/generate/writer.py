"""Writing generated blocks as real ROOT TTrees (uproot ``mktree``/``extend``).

One ``extend`` per block per tree, so every file has many baskets, like a
production ntuple (one basket per file makes chunked readers quadratic).
Per-jet branches share the counter ``njet``; ``pdf_weight`` is a per-event
vector with counter ``npdf_weight``. Files are written under a temporary name
and renamed, so an interrupted run never leaves a truncated file behind.
"""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import awkward as ak
import numpy as np
import uproot

from qgcal.generate.compress import BasketCompressor
from qgcal.generate.jets import JetBlock

if TYPE_CHECKING:
    from qgcal.generate.constituents import Constituents

__all__ = [
    "COMMON_BRANCHES",
    "DATA_BRANCHES",
    "DATA_TREES",
    "JET_COUNTER",
    "MC_BRANCHES",
    "MC_TREES",
    "TreeFile",
    "branch_types",
    "constituent_arrays",
    "jagged",
    "jet_arrays",
]

JET_COUNTER = "njet"
DATA_TREES = ("nominal",)
MC_TREES = ("nominal", "syst_JET_JES__1up", "syst_JET_JES__1down", "syst_JET_JER__1up")
#: branch -> uproot type, in the order written (jagged = per-jet vectors).
COMMON_BRANCHES: dict[str, str] = {
    "runNumber": "int32",
    "eventNumber": "int64",
    "jet_fire": "bool",
    "jet_pt": "var * float32",
    "jet_eta": "var * float32",
    "jet_phi": "var * float32",
    "jet_nTracks": "var * int32",
    "jet_trackWidth": "var * float32",
    "jet_trackC1": "var * float32",
    "jet_trackBDT": "var * float32",
    "jet_PartonTruthLabelID": "var * int32",
    "jet_cleaning": "var * bool",
}
MC_BRANCHES: dict[str, str] = {
    "mcEventWeight": "float32",
    "pu_weight": "float32",
    "jet_nTracks_sys_eff": "var * int32",
    "pdf_weight": "var * float32",
}
DATA_BRANCHES: dict[str, str] = {"closure_PartonTruthLabelID": "var * int32"}

#: branch -> JetBlock attribute for the per-jet branches
_JET_FIELDS = {
    "jet_pt": "pt",
    "jet_eta": "eta",
    "jet_phi": "phi",
    "jet_nTracks": "nTracks",
    "jet_trackWidth": "trackWidth",
    "jet_trackC1": "trackC1",
    "jet_trackBDT": "trackBDT",
    "jet_PartonTruthLabelID": "label",
    "jet_cleaning": "cleaning",
    "jet_nTracks_sys_eff": "nTracks_sys_eff",
    "closure_PartonTruthLabelID": "label",
}


#: Written without compression: full-precision float32 branches, which zlib
#: shrinks by only 10-30 % at a large CPU cost. Everything else is ZLIB(1).
UNCOMPRESSED = frozenset({"jet_pt", "mcEventWeight"})
COMPRESSION_LEVEL = 1


#: opt-in (``generate_sample(constituents=True)``): per-jet counts and per-event constituent collections
CONSTITUENT_TYPES: dict[str, str] = {
    "jet_nConstituents": "var * int32",
    "constit_ptFrac": "var * float32",
    "constit_deta": "var * float32",
    "constit_dphi": "var * float32",
    "constit_charge": "var * int32",
    "constit_d0": "var * float32",
    "constit_dz": "var * float32",
}
CONSTITUENT_COUNTER = "nconstit"


def branch_types(is_mc: bool, constituents: bool = False) -> dict[str, str]:
    """All branches of a tree of this kind (the counters njet/npdf_weight/nconstit come on top)."""
    extra = MC_BRANCHES if is_mc else DATA_BRANCHES
    return {**COMMON_BRANCHES, **extra, **(CONSTITUENT_TYPES if constituents else {})}


@functools.cache
def _uproot_type(spec: str) -> Any:
    """numpy dtype or parsed awkward type for a type string.

    uproot parses string specs with awkward's datashape parser, which builds a
    new parser per call (~10 ms); with ~20 branches x 4 trees x many files
    that was half of the generation time, so parse each spec once.
    """
    if spec.startswith("var"):
        return ak.types.from_datashape(spec, highlevel=False)
    return np.dtype(spec)


_JET_PREFIXES = ("jet_", "closure_")


def _counter_name(counted: str) -> str:
    """Per-jet branches share one counter, like ATLAS vectors of one jet collection (constituents too)."""
    if counted.startswith("constit_"):
        return CONSTITUENT_COUNTER
    return JET_COUNTER if counted.startswith(_JET_PREFIXES) else "n" + counted


def jagged(flat: np.ndarray, offsets: np.ndarray) -> ak.Array:
    """An awkward list array from contents and offsets (cheaper than ak.unflatten)."""
    layout = ak.contents.ListOffsetArray(ak.index.Index64(offsets), ak.contents.NumpyArray(flat))
    return ak.Array(layout)


def jet_arrays(block: JetBlock, names: list[str]) -> dict[str, ak.Array]:
    """Jagged arrays for the requested per-jet branches of a block."""
    mask = block.mask
    offsets = np.zeros(block.njet.size + 1, dtype=np.int64)
    np.cumsum(block.njet, out=offsets[1:])
    return {name: jagged(getattr(block, _JET_FIELDS[name])[mask], offsets) for name in names}


def constituent_arrays(cons: Constituents, njet: np.ndarray) -> dict[str, ak.Array]:
    """Jagged arrays of the constituent branches: per-jet counts, per-event flat collections."""
    from qgcal.generate.constituents import CONSTITUENT_BRANCHES, COUNT_BRANCH

    mask = np.arange(cons.counts.shape[1])[None, :] < njet[:, None]
    jet_off = np.zeros(njet.size + 1, dtype=np.int64)
    np.cumsum(njet, out=jet_off[1:])
    ev_off = cons.event_offsets()
    out = {COUNT_BRANCH: jagged(cons.counts[mask], jet_off)}
    out.update({branch: jagged(getattr(cons, attr), ev_off) for branch, attr in CONSTITUENT_BRANCHES.items()})
    return out


def file_uuid(seed: int, relpath: str) -> uuid.UUID:
    """A UUID derived from (seed, path) so the file header is reproducible."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"qgcal-generate/{seed}/{relpath}")


class TreeFile:
    """One output ROOT file with several TTrees of identical layout.

    Use as a context manager; ``extend`` appends one block to one tree;
    ``event_count`` sets the ``histoEventCount`` TH1D written on close.
    """

    def __init__(
        self,
        path: Path,
        trees: tuple[str, ...],
        types: dict[str, str],
        file_id: uuid.UUID,
        expected_blocks: int,
    ) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._zlib = BasketCompressor(COMPRESSION_LEVEL)
        self._file = uproot.recreate(self._tmp, compression=self._zlib.compression, uuid_function=lambda: file_id)
        try:
            parsed = {name: _uproot_type(spec) for name, spec in types.items()}
            self._trees = {
                name: self._file.mktree(
                    name,
                    parsed,
                    counter_name=_counter_name,
                    initial_basket_capacity=expected_blocks + 2,
                )
                for name in trees
            }
            for tree in self._trees.values():
                for name in UNCOMPRESSED & types.keys():
                    tree[name].compression = None
        except BaseException:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            raise
        self._event_count: tuple[float, float, float] | None = None

    def extend(self, tree: str, arrays: dict[str, Any]) -> None:
        """Append one block (one basket per branch) to ``tree``."""
        self._trees[tree].extend(arrays)

    def begin_block(self, entries: int) -> None:
        """Call before each block's ``extend`` calls (see ``BasketCompressor``)."""
        self._zlib.begin_block(entries)

    def event_count(self, n: int, sumw: float, sumw2: float) -> None:
        """Bin 1: generated events, bin 2: sum of weights, bin 3: sum of squares."""
        self._event_count = (float(n), float(sumw), float(sumw2))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ok = False
        try:
            if exc_type is None and self._event_count is not None:
                counts = np.array(self._event_count, dtype=np.float64)
                self._file["histoEventCount"] = (counts, np.arange(4, dtype=np.float64))
            ok = exc_type is None
        finally:
            self._file.close()
            if ok:
                os.replace(self._tmp, self.path)
            else:
                self._tmp.unlink(missing_ok=True)

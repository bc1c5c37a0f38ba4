"""The data contract between passes: jet-table columns, region and flavour codes, histogram names.

Why one module: the passes are independent modules that meet only through their
artifacts. What one writes and the next reads (column names and types, the codes
stored in them, the names of the histograms) is defined here once, so no pass
imports another and a change of the contract is a change of this file.

Light on purpose (numpy only): the config layer and every pass import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ALL_MC_FLAVOURS",
    "EVENTS_UNKNOWN",
    "FLAVOURS",
    "FLAVOUR_BOTTOM",
    "FLAVOUR_CHARM",
    "FLAVOUR_DATA",
    "FLAVOUR_GLUON",
    "FLAVOUR_LIGHT",
    "FLAVOUR_OTHER",
    "JET_COLUMNS",
    "LEAD_PT_HIST",
    "QUARK_FLAVOURS",
    "REGIONS",
    "REGION_CENTRAL",
    "REGION_FORWARD",
    "REPLICA_CLASSES",
    "REPLICA_DATA",
    "REPLICA_GLUON",
    "REPLICA_OTHER",
    "REPLICA_QUARK",
    "TAGGER_DTYPE",
    "EventsLost",
    "events_lost",
    "flavour_codes",
    "jet_table_schema",
    "replica_class",
    "same_bits",
    "tagger_column",
]

# ----------------------------------------------------------------------------- jet tables
# root2pkl writes two rows per selected event, forward jet first; pkl2predpkl keeps these
# columns and adds one ``tagger_column`` per tagger; predpkl2hist reads both.

REGION_FORWARD = 0  # the jet with the larger |eta| of the two leading jets
REGION_CENTRAL = 1
REGIONS = (REGION_FORWARD, REGION_CENTRAL)

# name -> numpy dtype of every jet-table column (before the per-jet tagger inputs)
JET_COLUMNS: Mapping[str, np.dtype[Any]] = {
    "run": np.dtype(np.int64),
    "event": np.dtype(np.int64),
    "region": np.dtype(np.int8),
    "pt": np.dtype(np.float32),  # GeV
    "eta": np.dtype(np.float32),
    "lead_pt": np.dtype(np.float32),  # GeV, the event's leading jet
    "parton_label": np.dtype(np.int32),  # truth label (|.| if configured); 0 in data
    "weight": np.dtype(np.float64),  # raw event weight; slices are normalised at merge
}
TAGGER_DTYPE = np.dtype(np.float64)


def tagger_column(name: str) -> str:
    """The jet-table column and the histogram holding tagger ``name``'s values."""
    return f"tagger.{name}"


LEAD_PT_HIST = "lead_pt"  # histogram of the leading-jet pT (normalisation check)


def jet_table_schema(
    variables: Mapping[str, np.dtype[Any]] | Sequence[tuple[str, np.dtype[Any]]] = (),
    taggers: Sequence[str] = (),
    lists: Mapping[str, np.dtype[Any]] | None = None,
) -> Any:
    """Arrow schema of a jet table: the fixed columns, tagger inputs, constituent lists, tagger values.

    ``lists``: per-constituent inputs of constituent taggers, one Arrow ``list<dtype>`` column
    each (one list per jet row, the jet's constituents in stored order; its length is the
    jet's constituent count). Flattened values plus offsets, no padding: what the scorers take.
    """
    import pyarrow as pa  # only the passes that write tables need Arrow

    items = list(variables.items()) if isinstance(variables, Mapping) else list(variables)
    fields = [pa.field(k, pa.from_numpy_dtype(t)) for k, t in JET_COLUMNS.items()]
    fields += [pa.field(k, pa.from_numpy_dtype(t)) for k, t in items]
    fields += [pa.field(k, pa.list_(pa.from_numpy_dtype(t))) for k, t in (lists or {}).items()]
    fields += [pa.field(tagger_column(n), pa.from_numpy_dtype(TAGGER_DTYPE)) for n in taggers]
    return pa.schema(fields)


# ----------------------------------------------------------------------------- flavours
# histogram categories of the ``flavour`` axis (PDG-like codes; data is its own category)

FLAVOUR_DATA, FLAVOUR_LIGHT, FLAVOUR_CHARM, FLAVOUR_BOTTOM, FLAVOUR_GLUON, FLAVOUR_OTHER = 0, 1, 4, 5, 21, 99
FLAVOURS = (FLAVOUR_DATA, FLAVOUR_LIGHT, FLAVOUR_CHARM, FLAVOUR_BOTTOM, FLAVOUR_GLUON, FLAVOUR_OTHER)
QUARK_FLAVOURS = (FLAVOUR_LIGHT, FLAVOUR_CHARM, FLAVOUR_BOTTOM)
ALL_MC_FLAVOURS = (*QUARK_FLAVOURS, FLAVOUR_GLUON, FLAVOUR_OTHER)


def flavour_codes(labels: np.ndarray, *, quark: Sequence[int], gluon: Sequence[int], is_data: bool) -> np.ndarray:
    """Parton labels -> flavour categories (labels already |.| where the config says so)."""
    if is_data:
        return np.zeros(len(labels), dtype=np.int64)
    out = np.full(len(labels), FLAVOUR_OTHER, dtype=np.int64)
    is_quark = np.isin(labels, quark)
    out[is_quark] = FLAVOUR_LIGHT
    out[is_quark & (np.abs(labels) == 4)] = FLAVOUR_CHARM
    out[is_quark & (np.abs(labels) == 5)] = FLAVOUR_BOTTOM
    out[np.isin(labels, gluon)] = FLAVOUR_GLUON
    return out


# ----------------------------------------------------------------------------- bootstrap replicas
# replica arrays: (region, class, pT bin, score bin, replica), int64 exact sums

REPLICA_DATA, REPLICA_QUARK, REPLICA_GLUON, REPLICA_OTHER = 0, 1, 2, 3
REPLICA_CLASSES = 4


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays are bit for bit the same (NaN payloads and signed zeros included).

    What the fused passes (:func:`qgcal.plan.fused_jobs`) check before one variation takes what
    was derived from another's columns: equal bits give equal results from any computation.
    """
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def replica_class(flavour: np.ndarray) -> np.ndarray:
    """Flavour categories -> the four replica classes (data, quark of any flavour, gluon, other)."""
    out = np.full(len(flavour), REPLICA_OTHER, dtype=np.int64)
    out[flavour == FLAVOUR_DATA] = REPLICA_DATA
    out[np.isin(flavour, QUARK_FLAVOURS)] = REPLICA_QUARK
    out[flavour == FLAVOUR_GLUON] = REPLICA_GLUON
    return out


# ----------------------------------------------------------------------------- files skipped as bad
# A skip record (workflows/runner.py) carries "file" and "events_lost": the entries of the file's
# tree, or None when the file cannot tell (not a ROOT file, truncated, no such tree). The final
# pass, report.md and the command's summary line all count them here, so they agree.

EVENTS_UNKNOWN = "unknown"


@dataclass(frozen=True)
class EventsLost:
    """Events lost to skipped files: ``total`` is a number only when every file's count is known."""

    known: int  # sum over the files whose count is known (each file once)
    unknown_files: tuple[str, ...]  # files whose count is not known

    @property
    def total(self) -> int | str:
        return EVENTS_UNKNOWN if self.unknown_files else self.known

    def text(self) -> str:
        """``"1234 events lost"`` or ``"unknown events lost (at least 1234; 2 file(s) could not be counted)"``."""
        if not self.unknown_files:
            return f"{self.known} events lost"
        least = f"at least {self.known}; " if self.known else ""
        return f"{EVENTS_UNKNOWN} events lost ({least}{len(self.unknown_files)} file(s) could not be counted)"


def events_lost(skipped: Sequence[Mapping[str, Any]]) -> EventsLost:
    """Each file once (a file skipped for several variations is one loss): its largest known count."""
    per_file: dict[str, int | None] = {}
    for r in skipped:
        n, old = r.get("events_lost"), per_file.get(str(r["file"]))
        n = None if n is None or isinstance(n, bool) or not isinstance(n, int) else n
        per_file[str(r["file"])] = n if old is None else old if n is None else max(old, n)
    known = sum(n for n in per_file.values() if n is not None)
    return EventsLost(known, tuple(sorted(f for f, n in per_file.items() if n is None)))

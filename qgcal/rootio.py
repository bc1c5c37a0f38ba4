"""Opening ROOT files defensively and reading branches (TTree) or fields (RNTuple) in cluster-aligned chunks.

Why not just ``uproot.open``: a truncated file often still opens and even reads
some branches (see shared/notes/test-data.md), so the header's recorded end of
file is compared with the size on disk first. Every failure becomes an
:class:`InputError` naming the file, tree, branch and the config key that asked
for it.

Why per-branch reads: configured names are looked up as branches, never passed
to uproot as expressions, so nothing from a config is ever evaluated.

TTree and RNTuple (the ROOT columnar format of the HL-LHC era) are read through the
same calls: uproot 5 gives an RNTuple's top-level fields the ``array(entry_start,
entry_stop)`` of a TBranch, and its cluster summaries play the part of the common
basket boundaries; only names (``keys``), cluster boundaries and the memory
estimate differ, and those are the places this module tells the two apart.

Why isal: most ROOT files (ATLAS and CMS ntuples, the generated sample) are ZLIB-compressed,
and inflating their baskets is most of a read's CPU. ISA-L inflates the same streams
~1.6x faster than the standard library (and checks the same Adler-32), so every reader in
qgcal uses it when it is installed (a core dependency); ``QGCAL_ZLIB=zlib`` forces the
standard library. The bytes read are the same either way.
"""

from __future__ import annotations

import importlib.util
import os
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import awkward as ak
import numpy as np
import uproot

from qgcal.config import BranchExpr
from qgcal.errors import ConfigError, InputError, did_you_mean

__all__ = [
    "check_root_file",
    "chunk_ranges",
    "is_rntuple",
    "open_other_tree",
    "open_tree",
    "read_chunk",
    "read_th1_bin",
    "resolve_branches",
    "sum_over_entries",
    "use_zlib_library",
]

_HEADER = struct.Struct(">4sii")


def use_zlib_library(requested: str | None = None) -> str:
    """Make uproot inflate ZLIB baskets with ``requested`` (``isal`` or ``zlib``); return the one in use.

    ``None`` means ``$QGCAL_ZLIB``, else isal when it is installed. uproot's ``ZLIB.library`` option
    only reaches the compressor it writes with; its reads go through one module-level
    decompressor object, which is what is switched here (and only that: a file written by
    qgcal is compressed by the standard library whatever is chosen, so its bytes do not change).
    If a future uproot drops that object, its own default stays (tests/test_rootio_zlib.py fails
    first).
    """
    choice = requested or os.environ.get("QGCAL_ZLIB", "").strip().lower() or "auto"
    if choice not in ("auto", "isal", "zlib"):
        raise ConfigError(f"QGCAL_ZLIB={choice!r}: set it to 'isal' or 'zlib', or unset it")
    has_isal = importlib.util.find_spec("isal") is not None  # uproot imports it at its first read
    if choice == "isal" and not has_isal:
        raise ConfigError("QGCAL_ZLIB=isal, but isal is not installed: pip install isal")
    if choice == "auto":
        choice = "isal" if has_isal else "zlib"
    decompressor = getattr(uproot.compression, "_decompress_ZLIB", None)
    if decompressor is None or not hasattr(decompressor, "library"):
        return "zlib"
    decompressor.library = choice
    return choice


# the choice made when this module is imported (later calls of use_zlib_library return theirs)
ZLIB_LIBRARY = use_zlib_library()


def check_root_file(path: Path) -> None:
    """Fail early on a missing, empty, non-ROOT or truncated file."""
    if not path.exists():
        raise InputError(f"{path}: input file not found; check the sample's 'files' in the config")
    try:
        size = path.stat().st_size
        if size == 0:
            raise InputError(f"{path}: empty file (0 bytes); re-copy it or drop it from the sample")
        with path.open("rb") as fh:
            head = fh.read(_HEADER.size + 8)
    except OSError as err:  # unreadable (permissions, a directory, an I/O error)
        raise InputError(f"{path}: cannot read ({err.strerror or type(err).__name__}); check the file") from None
    if len(head) < _HEADER.size or head[:4] != b"root":
        raise InputError(f"{path}: not a ROOT file (no 'root' magic bytes); check the sample's 'files'")
    _, version, _begin = _HEADER.unpack_from(head)
    if version >= 1_000_000:
        if len(head) < 20:
            raise InputError(f"{path}: truncated ROOT header ({size} bytes); re-copy the file")
        (end,) = struct.unpack_from(">q", head, 12)
    else:
        (end,) = struct.unpack_from(">i", head, 12)
    if end > size:
        raise InputError(
            f"{path}: truncated ROOT file: header records {end} bytes, {size} on disk "
            f"({100.0 * size / end:.1f}%); re-copy or regenerate it"
        )


@dataclass
class OpenTree:
    """An open file and one of its trees; closes the file when done."""

    path: Path
    file: Any
    tree: Any
    tree_name: str

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_tree(path: Path, tree_name: str, *, config_key: str) -> OpenTree:
    check_root_file(path)
    try:
        # plain file reads (no fsspec event loop; unlike memmap, read pages do not count as RSS)
        # and no array cache (it would keep up to 100 MB of chunks alive: memory not bounded by the chunk)
        f = uproot.open(path, handler=uproot.source.file.MultithreadedFileSource, array_cache=None)
    except Exception as err:  # uproot raises OSError/ValueError/... for corrupt files
        raise InputError(
            f"{path}: cannot open as ROOT ({type(err).__name__}: {_first_line(err)}); the file is corrupt"
        ) from None
    try:
        obj = f[tree_name]
    except Exception:
        keys = [k.split(";")[0] for k in f.keys(recursive=False)]
        f.close()
        raise InputError(
            f"{path}: no tree {tree_name!r} (asked for by {config_key}){did_you_mean(tree_name, keys)}; "
            f"the file has: {', '.join(sorted(set(keys))) or 'nothing'}"
        ) from None
    if not _is_table(obj):
        f.close()
        raise InputError(
            f"{path}: {tree_name!r} is a {_classname(obj)}, not a TTree or RNTuple (asked for by {config_key})"
        )
    return OpenTree(path=path, file=f, tree=obj, tree_name=tree_name)


def _classname(obj: Any) -> str:
    return str(getattr(obj, "classname", type(obj).__name__))


def _is_table(obj: Any) -> bool:
    return hasattr(obj, "num_entries") and (is_rntuple(obj) or hasattr(obj, "branches"))


def is_rntuple(obj: Any) -> bool:
    """An uproot RNTuple (``ROOT::RNTuple``), as opposed to a TTree."""
    return _classname(obj) == "ROOT::RNTuple"


def _names(tree: Any) -> set[str]:
    """Every name ``tree[name]`` resolves: branches and sub-branches, or RNTuple fields."""
    if is_rntuple(tree):  # the top-level fields: recursive keys() takes seconds on ~2000 fields
        return {str(k) for k in tree.keys(recursive=False)}
    return {str(k) for k in tree.keys()} | {b.name for b in tree.branches}


def resolve_branches(ot: OpenTree, wanted: Mapping[str, tuple[BranchExpr, str]]) -> dict[str, Any]:
    """Map each logical name to its TBranch (RNTuple: its field); ``wanted`` holds (expression, config key)."""
    out: dict[str, Any] = {}
    top = _names(ot.tree) if is_rntuple(ot.tree) else None
    for logical, (expr, key) in wanted.items():
        try:
            # an RNTuple looks a name up through every field (seconds on a NanoAOD) before failing:
            # a plain name that is no top-level field is missing without asking it
            if top is not None and expr.name not in top and not any(c in expr.name for c in "./:"):
                raise KeyError(expr.name)
            out[logical] = ot.tree[expr.name]
        except Exception:
            names = top if top is not None else _names(ot.tree)
            raise InputError(
                f"{ot.path}: tree {ot.tree_name!r} has no branch {expr.name!r} (asked for by {key})"
                f"{did_you_mean(expr.name, names)}"
            ) from None
    return out


def _fits_in_one_step(branches: list[Any], step_size: str) -> bool:
    """Whether the branches' uncompressed bytes (``fTotBytes``, in the TTree's header: no read) are
    within the memory ``step_size``: then the whole file is one chunk, as uproot's estimate says too."""
    try:
        total = sum(int(b.member("fTotBytes")) for b in branches)
        return total <= int(uproot._util.memory_size(step_size))
    except Exception:  # no such member (an unusual branch): let uproot estimate
        return False


def chunk_ranges(ot: OpenTree, branches: list[Any], step_size: str | int) -> list[tuple[int, int]]:
    """Entry ranges of about ``step_size`` that start and stop on common basket boundaries.

    Chunks that split a basket make every chunk decompress it again, which turns
    chunked reading quadratic on files written with few baskets. An RNTuple's
    boundaries are its clusters; a memory ``step_size`` reads it one cluster at a time,
    an entry count merges clusters up to that many entries.
    """
    n = int(ot.tree.num_entries)
    if n == 0:
        return []
    ids = {id(b) for b in branches}
    rntuple = is_rntuple(ot.tree)
    if isinstance(step_size, int):
        target = max(1, step_size)
    elif rntuple:
        # one cluster per chunk: ROOT bounds a cluster's uncompressed size (all fields) when it
        # writes one, so a few fields of it are smaller still; and uproot's estimate walks every
        # field of the RNTuple (seconds for a NanoAOD with ~2000 fields)
        target = 1
    elif _fits_in_one_step(branches, step_size):
        target = n  # a small file: uproot's estimate reads every basket's key (~6 ms a file)
    else:
        try:
            target = int(ot.tree.num_entries_for(step_size, filter_branch=lambda b: id(b) in ids))
        except Exception:  # uproot cannot estimate (e.g. unusual types): one basket at a time
            target = 1
        target = max(1, target)
    try:
        if rntuple:  # an RNTuple's clusters: every field's pages start and stop on them
            summaries = ot.tree.cluster_summaries
            offsets = [0, *(int(c.num_first_entry) + int(c.num_entries) for c in summaries)]
        else:
            offsets = [int(x) for x in ot.tree.common_entry_offsets(filter_branch=lambda b: id(b) in ids)]
    except Exception:
        offsets = [0, n]
    if offsets[0] != 0 or offsets[-1] != n:
        offsets = sorted({0, n, *(o for o in offsets if 0 < o < n)})
    ranges: list[tuple[int, int]] = []
    start = 0
    for off in offsets[1:]:
        if off - start >= target or off == n:
            ranges.append((start, off))
            start = off
    return ranges


def read_chunk(
    ot: OpenTree,
    branches: Mapping[str, Any],
    exprs: Mapping[str, BranchExpr],
    start: int,
    stop: int,
) -> dict[str, ak.Array | np.ndarray]:
    """Read each distinct branch once for [start, stop) and apply ``[i]`` element picks."""
    raw: dict[str, Any] = {}
    out: dict[str, ak.Array | np.ndarray] = {}
    rntuple = is_rntuple(ot.tree)
    for logical, branch in branches.items():
        expr = exprs[logical]
        key = branch.object_path if hasattr(branch, "object_path") else expr.name
        if key not in raw:
            try:
                raw[key] = branch.array(entry_start=start, entry_stop=stop, library="ak")
            except (zlib.error, OSError, ValueError, Exception) as err:
                raise InputError(
                    f"{ot.path}: tree {ot.tree_name!r} branch {expr.name!r} entries {start}-{stop} "
                    f"cannot be read ({type(err).__name__}: {_first_line(err)}); the file is corrupt"
                ) from None
        arr = raw[key]
        if rntuple and isinstance(arr, ak.Array):
            # an RNTuple page can hold more than the entries asked for: offsets that do not start at 0
            # or stop at the content's end; packed, the layout is that of a TTree branch's array
            arr = raw[key] = ak.to_packed(arr)
        if expr.index is not None:
            counts = ak.num(arr, axis=1) if arr.ndim > 1 else None
            if counts is None:
                raise InputError(f"{ot.path}: branch {expr.name!r} is not a per-event vector; '{expr}' needs one")
            if len(arr) and int(ak.min(counts)) <= expr.index:
                raise InputError(
                    f"{ot.path}: branch {expr.name!r} has events with fewer than {expr.index + 1} "
                    f"elements; '{expr}' is out of range"
                )
            arr = arr[:, expr.index]
        out[logical] = arr
    return out


def read_th1_bin(ot: OpenTree, hist_name: str, bin_number: int, *, config_key: str) -> float:
    """Content of 1-based ROOT bin ``bin_number`` of a TH1 (e.g. the sum of weights)."""
    f, path = ot.file, ot.path
    try:
        h = f[hist_name]
    except Exception:
        keys = [k.split(";")[0] for k in f.keys(recursive=False)]
        raise InputError(
            f"{path}: no histogram {hist_name!r} (asked for by {config_key}){did_you_mean(hist_name, keys)}"
        ) from None
    try:
        values = h.values(flow=True)
    except Exception:
        raise InputError(f"{path}: {hist_name!r} is not a histogram (asked for by {config_key})") from None
    if not 1 <= bin_number < len(values) - 1:
        raise InputError(f"{path}: {hist_name!r} has no bin {bin_number} (asked for by {config_key})")
    return float(values[bin_number])


def iter_chunks(
    ot: OpenTree, branches: Mapping[str, Any], exprs: Mapping[str, BranchExpr], step_size: str | int
) -> Iterator[tuple[int, int, dict[str, Any]]]:
    for start, stop in chunk_ranges(ot, list(branches.values()), step_size):
        yield start, stop, read_chunk(ot, branches, exprs, start, stop)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def open_other_tree(ot: OpenTree, tree_name: str | None, *, config_key: str) -> OpenTree:
    """Another tree (or RNTuple) of the file ``ot`` has open, e.g. CMS ``Runs``; None: ``ot`` itself.

    The file stays ``ot``'s: closing ``ot`` closes both.
    """
    if tree_name is None or tree_name == ot.tree_name:
        return ot
    try:
        obj = ot.file[tree_name]
    except Exception:
        keys = [k.split(";")[0] for k in ot.file.keys(recursive=False)]
        raise InputError(
            f"{ot.path}: no tree {tree_name!r} (asked for by {config_key}){did_you_mean(tree_name, keys)}; "
            f"the file has: {', '.join(sorted(set(keys))) or 'nothing'}"
        ) from None
    if not _is_table(obj):
        raise InputError(
            f"{ot.path}: {tree_name!r} is a {_classname(obj)}, not a TTree or RNTuple (asked for by {config_key})"
        )
    return OpenTree(path=ot.path, file=ot.file, tree=obj, tree_name=tree_name)


def sum_over_entries(
    ot: OpenTree, tree_name: str | None, expr: BranchExpr, *, config_key: str, step_size: str | int = "100 MB"
) -> float:
    """Sum of a per-entry value over ALL entries of a tree of the open file (bookkeeping).

    ``tree_name`` None: the tree ``ot`` is open on. The sum is exact before its one
    rounding to float64 (:func:`qgcal.bootstrap.exact_sum`), so it does not depend on the
    chunking. Used for CMS ``Runs/genEventSumw`` (one entry per run of the file).
    """
    from qgcal.bootstrap import ExactSum, exact_sum  # numpy-only; kept out of import time of this module

    other = open_other_tree(ot, tree_name, config_key=config_key)
    branches = resolve_branches(other, {"value": (expr, config_key)})
    total = ExactSum.zeros((1,))
    for start, stop in chunk_ranges(other, list(branches.values()), step_size):
        arr = read_chunk(other, branches, {"value": expr}, start, stop)["value"]
        if isinstance(arr, ak.Array) and arr.ndim > 1:
            raise InputError(
                f"{ot.path}: {other.tree_name!r} branch {expr.name!r} (asked for by {config_key}) holds a vector "
                f"per entry; name one number per entry (e.g. '{expr.name}[0]')"
            )
        values = np.asarray(ak.to_numpy(arr) if isinstance(arr, ak.Array) else arr, dtype=np.float64)
        try:
            total += exact_sum(values)
        except ValueError:
            raise InputError(
                f"{ot.path}: {other.tree_name!r} branch {expr.name!r} (asked for by {config_key}) holds "
                "NaN or infinite values; check the file's bookkeeping"
            ) from None
    return float(total.to_float()[0])

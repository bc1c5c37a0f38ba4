"""Named sets of weighted histograms: serialise to ``.npz`` and merge in a fixed order.

Serialisation: for every histogram, its axes are described in a JSON member
(``__meta__``) and its sum-of-weights and sum-of-squared-weights (flow bins
included) are two float64 arrays. ``np.load(..., allow_pickle=False)`` reads it
back: no code runs on load.

Determinism: floating-point addition is not associative, so :func:`merge`
adds per-file sets in the order of their sorted keys. Whatever order files
finished in, or however they were split across workers or Slurm tasks, the
same additions happen in the same order and the bytes agree.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hist
import numpy as np

from qgcal.artifacts import atomic_path
from qgcal.errors import ArtifactError

__all__ = ["HistSet", "axis_from_json", "axis_to_json", "load_histset", "merge", "save_histset"]

HistSet = dict[str, hist.Hist]


def axis_to_json(ax: Any) -> dict[str, Any]:
    if isinstance(ax, hist.axis.Regular):
        lo, hi = ax.edges[0], ax.edges[-1]
        return {"type": "regular", "name": ax.name, "bins": ax.size, "low": float(lo), "high": float(hi),
                "flow": bool(ax.traits.underflow)}
    if isinstance(ax, hist.axis.Variable):
        return {"type": "variable", "name": ax.name, "edges": [float(e) for e in ax.edges],
                "flow": bool(ax.traits.underflow)}
    if isinstance(ax, hist.axis.IntCategory):
        return {"type": "intcategory", "name": ax.name, "categories": [int(c) for c in ax]}
    if isinstance(ax, hist.axis.StrCategory):
        return {"type": "strcategory", "name": ax.name, "categories": [str(c) for c in ax]}
    raise TypeError(f"cannot serialise axis {ax!r}")


def axis_from_json(d: Mapping[str, Any]) -> Any:
    kind = d["type"]
    if kind == "regular":
        return hist.axis.Regular(d["bins"], d["low"], d["high"], name=d["name"], flow=d["flow"])
    if kind == "variable":
        return hist.axis.Variable(d["edges"], name=d["name"], flow=d["flow"])
    if kind == "intcategory":
        return hist.axis.IntCategory(d["categories"], name=d["name"])
    if kind == "strcategory":
        return hist.axis.StrCategory(d["categories"], name=d["name"])
    raise ArtifactError(f"unknown axis type {kind!r} in histogram file")


def _to_arrays(hs: HistSet, meta: Mapping[str, Any],
               extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {f"extra.{k}": np.ascontiguousarray(v) for k, v in sorted((extra or {}).items())}
    described = {}
    for name in sorted(hs):
        h = hs[name]
        view = h.view(flow=True)
        arrays[f"{name}.values"] = np.ascontiguousarray(view["value"], dtype=np.float64)
        arrays[f"{name}.variances"] = np.ascontiguousarray(view["variance"], dtype=np.float64)
        described[name] = [axis_to_json(ax) for ax in h.axes]
    blob = json.dumps({"hists": described, "meta": meta}, sort_keys=True, allow_nan=False)
    arrays["__meta__"] = np.frombuffer(blob.encode(), dtype=np.uint8)
    return arrays


def save_histset(path: Path, hs: HistSet, meta: Mapping[str, Any],
                 extra: Mapping[str, np.ndarray] | None = None) -> None:
    """Write atomically; the zip members get fixed timestamps so bytes are reproducible.

    ``extra`` holds plain arrays stored beside the histograms (bootstrap replicas).
    """
    arrays = _to_arrays(hs, meta, extra)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # np.savez writes zip entries with a fixed date
    with atomic_path(path, ".npz") as tmp:
        tmp.write_bytes(buf.getvalue())


@contextmanager
def _open_npz(path: Path) -> Iterator[Any]:
    """np.load on a file we own, so a corrupt archive cannot leak the handle; never unpickles."""
    with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
        yield npz


def load_histset(path: Path) -> tuple[HistSet, dict[str, Any]]:
    hs, meta, _ = load_artifact(path)
    return hs, meta


def load_artifact(path: Path) -> tuple[HistSet, dict[str, Any], dict[str, np.ndarray]]:
    """Histograms, metadata and the plain arrays beside them, in one read of the file."""
    try:
        with _open_npz(path) as npz:
            extra = {k[len("extra."):]: npz[k] for k in npz.files if k.startswith("extra.")}
            doc = json.loads(bytes(npz["__meta__"]).decode())
            out: HistSet = {}
            for name, axes in doc["hists"].items():
                h = hist.Hist(*(axis_from_json(a) for a in axes), storage=hist.storage.Weight())
                view = h.view(flow=True)
                view["value"] = npz[f"{name}.values"]
                view["variance"] = npz[f"{name}.variances"]
                out[name] = h
    except ArtifactError:
        raise
    except Exception as err:
        raise ArtifactError(f"{path}: unreadable histogram artifact ({type(err).__name__}); rerun with --force") from None
    return out, doc["meta"], extra


def load_extra(path: Path) -> dict[str, np.ndarray]:
    """The plain arrays saved beside the histograms (empty when there are none)."""
    try:
        with _open_npz(path) as npz:
            return {k[len("extra."):]: npz[k] for k in npz.files if k.startswith("extra.")}
    except Exception as err:
        raise ArtifactError(f"{path}: unreadable histogram artifact ({type(err).__name__}); rerun with --force") from None


def read_histset_meta(path: Path) -> dict[str, Any] | None:
    """Only the metadata member (provenance): cheap validity checks."""
    try:
        with _open_npz(path) as npz:
            return json.loads(bytes(npz["__meta__"]).decode())["meta"]
    except Exception:
        return None


def empty_like(hs: HistSet) -> HistSet:
    out: HistSet = {}
    for name, h in hs.items():
        out[name] = hist.Hist(*h.axes, storage=hist.storage.Weight())
    return out


def add_into(total: HistSet, other: HistSet, scale: float = 1.0) -> None:
    """``total += scale * other`` (variances scale with scale**2), in place."""
    if set(total) != set(other):
        raise ArtifactError("histogram sets to merge hold different histograms; rerun with --force")
    for name in sorted(total):
        tv = total[name].view(flow=True)
        ov = other[name].view(flow=True)
        if tv.shape != ov.shape:
            raise ArtifactError(f"histogram {name!r} has different binning in two artifacts; rerun with --force")
        if scale == 1.0:
            tv["value"] = tv["value"] + ov["value"]
            tv["variance"] = tv["variance"] + ov["variance"]
        else:
            tv["value"] = tv["value"] + scale * ov["value"]
            tv["variance"] = tv["variance"] + (scale * scale) * ov["variance"]


def merge(items: Iterable[tuple[str, HistSet]]) -> HistSet:
    """Sum histogram sets in the order of their sorted keys (order-independent result)."""
    ordered = sorted(items, key=lambda kv: kv[0])
    if not ordered:
        raise ArtifactError("nothing to merge")
    keys = [k for k, _ in ordered]
    if len(set(keys)) != len(keys):  # equal keys would make the order, and so the bytes, arbitrary
        raise ArtifactError(f"histogram sets to merge share a key ({sorted(k for k in keys if keys.count(k) > 1)[0]})")
    total = empty_like(ordered[0][1])
    for _, hs in ordered:
        add_into(total, hs)
    return total

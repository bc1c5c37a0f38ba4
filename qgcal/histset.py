"""Named sets of weighted histograms: serialise to ``.npz`` and merge in a fixed order.

Serialisation: the UHI serialisation of boost-histogram (``to_uhi``/``from_uhi``, the
documented cross-library histogram schema): every histogram's description (axes,
storage type, metadata; without writer info, so the bytes do not depend on the
library version) goes into one JSON member (``__meta__``) and its sum-of-weights and
sum-of-squared-weights arrays (flow bins included) into two float64 members.
``np.load(..., allow_pickle=False)`` reads it back: no code runs on load.

Determinism: floating-point addition is not associative, so :func:`merge`
adds per-file sets (with hist's ``+=``) in the order of their sorted keys. Whatever
order files finished in, or however they were split across workers or Slurm tasks,
the same additions happen in the same order and the bytes agree.
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
from boost_histogram.serialization import from_uhi, remove_writer_info, to_uhi
from uhi.io.json import default as uhi_json_default
from uhi.io.json import object_hook as uhi_json_hook

from qgcal.artifacts import atomic_path
from qgcal.errors import ArtifactError

__all__ = [
    "FORMAT",
    "HistSet",
    "add_into",
    "empty_like",
    "load_artifact",
    "load_histset",
    "merge",
    "read_histset_meta",
    "save_histset",
]

HistSet = dict[str, hist.Hist]
# the layout of our .npz files; an artifact of another layout is not valid (it is redone)
FORMAT = "qgcal-histset/uhi-1"


def _describe(h: hist.Hist) -> dict[str, Any]:
    """The UHI description of ``h`` without its two arrays (they are stored as npz members)."""
    doc = remove_writer_info(to_uhi(h), library=None)
    storage = dict(doc["storage"])
    storage.pop("values")
    storage.pop("variances")
    return {**doc, "storage": storage}


def _rebuild(desc: Mapping[str, Any], values: np.ndarray, variances: np.ndarray) -> hist.Hist:
    """The histogram of ``desc`` holding these (flow-included) arrays.

    The empty histogram of a description is built by ``from_uhi`` once per process and
    copied: ``from_uhi`` fills through boost-histogram's ``h[...] = ...``, whose index
    checks (runtime Protocol isinstance tests) cost ~1-2 ms a histogram, most of a merge of
    small files. Assigning the flow view stores the same float64 bits. The copy is shallow
    (its own storage and axes; a deep copy would also deep-copy the metadata, 2/3 of the time).
    """
    key = json.dumps(desc, sort_keys=True, default=uhi_json_default)
    template = _TEMPLATES.get(key)
    if template is None:
        zeros = np.zeros_like(values, dtype=np.float64)
        doc = {**desc, "storage": {**desc["storage"], "values": zeros, "variances": zeros}}
        template = _TEMPLATES[key] = hist.Hist(from_uhi(doc))
        while len(_TEMPLATES) > 64:
            del _TEMPLATES[next(iter(_TEMPLATES))]
    h = template.copy(deep=False)
    view: Any = h.view(flow=True)
    if view.shape != values.shape or view.shape != variances.shape:
        raise ArtifactError(f"histogram arrays of shape {values.shape} for a histogram of shape {view.shape}")
    view["value"] = values
    view["variance"] = variances
    return h


#: empty histograms by description (:func:`_rebuild`)
_TEMPLATES: dict[str, hist.Hist] = {}


def _to_arrays(
    hs: HistSet, meta: Mapping[str, Any], extra: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {f"extra.{k}": np.ascontiguousarray(v) for k, v in sorted((extra or {}).items())}
    described = {}
    for name in sorted(hs):
        h = hs[name]
        view: Any = h.view(flow=True)  # a structured (value, variance) view of the Weight storage
        arrays[f"{name}.values"] = np.ascontiguousarray(view["value"], dtype=np.float64)
        arrays[f"{name}.variances"] = np.ascontiguousarray(view["variance"], dtype=np.float64)
        described[name] = _describe(h)
    blob = json.dumps(
        {"format": FORMAT, "hists": described, "meta": meta}, sort_keys=True, allow_nan=False, default=uhi_json_default
    )
    arrays["__meta__"] = np.frombuffer(blob.encode(), dtype=np.uint8)
    return arrays


def _read_doc(npz: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(bytes(npz["__meta__"]).decode(), object_hook=uhi_json_hook)
    if doc.get("format") != FORMAT:
        raise ArtifactError(
            f"histogram file of another layout ({doc.get('format', 'unversioned')!r}, expected {FORMAT!r})"
        )
    return doc


def save_histset(
    path: Path,
    hs: HistSet,
    meta: Mapping[str, Any],
    extra: Mapping[str, np.ndarray] | None = None,
    *,
    durable: bool = False,
) -> None:
    """Write atomically; the zip members get fixed timestamps so bytes are reproducible.

    ``extra`` holds plain arrays stored beside the histograms (bootstrap replicas). Not fsynced
    unless ``durable`` (:func:`qgcal.artifacts.atomic_path`): these are per-file and merged
    intermediate artifacts, and one torn by a machine crash fails its metadata read and is redone.
    """
    arrays = _to_arrays(hs, meta, extra)
    buf = io.BytesIO()
    # np.savez writes zip entries with a fixed date; numpy 2's stubs type **kwds as its own
    # keyword options, so the call is typed as Any (no member is named like one of them)
    savez: Any = np.savez
    savez(buf, **arrays)
    with atomic_path(path, ".npz", durable=durable) as tmp:
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
            extra = {k[len("extra.") :]: npz[k] for k in npz.files if k.startswith("extra.")}
            doc = _read_doc(npz)
            out: HistSet = {
                name: _rebuild(desc, npz[f"{name}.values"], npz[f"{name}.variances"])
                for name, desc in doc["hists"].items()
            }
    except Exception as err:
        why = str(err) if isinstance(err, ArtifactError) else type(err).__name__
        raise ArtifactError(f"{path}: unreadable histogram artifact ({why}); rerun with --force") from None
    return out, doc["meta"], extra


def load_extra(path: Path) -> dict[str, np.ndarray]:
    """The plain arrays saved beside the histograms (empty when there are none)."""
    try:
        with _open_npz(path) as npz:
            return {k[len("extra.") :]: npz[k] for k in npz.files if k.startswith("extra.")}
    except Exception as err:
        why = type(err).__name__
        raise ArtifactError(f"{path}: unreadable histogram artifact ({why}); rerun with --force") from None


def read_histset_meta(path: Path) -> dict[str, Any] | None:
    """Only the metadata member (provenance): cheap validity checks."""
    try:
        with _open_npz(path) as npz:
            meta: dict[str, Any] = _read_doc(npz)["meta"]
            return meta
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
        try:
            total[name] += other[name] if scale == 1.0 else other[name] * scale
        except ValueError:
            raise ArtifactError(
                f"histogram {name!r} has different binning in two artifacts; rerun with --force"
            ) from None


def merge(items: Iterable[tuple[str, HistSet]]) -> HistSet:
    """Sum histogram sets in the order of their sorted keys (order-independent result)."""
    ordered = sorted(items, key=lambda kv: kv[0])
    if not ordered:
        raise ArtifactError("nothing to merge")
    keys = [k for k, _ in ordered]
    if len(set(keys)) != len(keys):  # equal keys would make the order, and so the bytes, arbitrary
        raise ArtifactError(f"histogram sets to merge share a key ({min(k for k in keys if keys.count(k) > 1)})")
    total = empty_like(ordered[0][1])
    for _, hs in ordered:
        add_into(total, hs)
    return total

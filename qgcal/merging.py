"""Merging per-file histograms into one set per sample, MC slices normalised to the luminosity.

Why its own module: the merge is where determinism is made (sorted keys, exact
bootstrap sums) and where the slice normalisation lumi * xsec * filter_eff *
kfactor / sum_of_weights(slice, all files) is applied; the final pass and the
tests use it, and it reads nothing but histogram artifacts.

A sweep merges the same data and nominal-MC artifacts for every systematic: the result of
a merge is remembered in the process (:func:`merge_sample`), keyed by everything it is a
function of (the sample's config, the luminosity, the bootstrap, and each artifact's path
and file identity), so each shared sample is read once per process.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qgcal import __version__
from qgcal.bootstrap import ExactSum, from_arrays
from qgcal.config import Config
from qgcal.errors import ArtifactError, QgcalError
from qgcal.histset import HistSet, add_into, empty_like, load_artifact, merge, save_histset

__all__ = ["merge_sample", "save_merged"]


Merged = tuple[HistSet, dict[str, Any], dict[str, np.ndarray]]
_MEMO: OrderedDict[str, Merged] = OrderedDict()
_MEMO_SIZE = 4  # merged samples kept per process: data, nominal MC and the systematic's own MC, with room


def _memo_key(cfg: Config, sample: str, artifacts: Sequence[tuple[str, Path]]) -> str | None:
    """What a merge is a function of: the sample's config, lumi, bootstrap, taggers and each artifact's
    file identity (an artifact rewritten, atomically, gets a new inode and mtime). None if one is missing."""
    files = []
    for key, path in sorted(artifacts):
        try:
            st = os.stat(path)
        except OSError:
            return None
        files.append([key, str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev])
    doc = {
        "sample": sample,
        "config": cfg.samples[sample].model_dump(mode="json"),
        "lumi_pb": cfg.lumi_pb,
        "bootstrap": cfg.bootstrap,
        "taggers": sorted(cfg.taggers),
        "files": files,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _copied(merged: Merged) -> Merged:
    """A copy the caller may change without changing what is remembered."""
    hs, info, reps = merged
    return {k: h.copy() for k, h in hs.items()}, copy.deepcopy(info), {k: v.copy() for k, v in reps.items()}


def merge_sample(cfg: Config, sample: str, artifacts: Sequence[tuple[str, Path]]) -> Merged:
    """Merge per-file histograms of one sample; MC slices normalised to the luminosity.

    Also returns the merged bootstrap replicas (empty without ``bootstrap``): exact sums per
    slice (:class:`qgcal.bootstrap.ExactSum`, so the same for any split of the slice's
    events into files), turned into floats once, then scaled and added in slice order,
    from the same read of each file. A merge of the same inputs earlier in this process is
    returned (as a copy) instead of being redone: the systematics of a sweep share data and
    nominal MC.
    """
    key = _memo_key(cfg, sample, artifacts)
    if key is not None and key in _MEMO:
        _MEMO.move_to_end(key)
        return _copied(_MEMO[key])
    merged = _merge_sample(cfg, sample, artifacts)
    if key is not None:
        _MEMO[key] = _copied(merged)
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    return merged


def _merge_sample(cfg: Config, sample: str, artifacts: Sequence[tuple[str, Path]]) -> Merged:
    """:func:`merge_sample` without the memo."""
    kind = cfg.samples[sample].kind
    by_slice: dict[str, list[tuple[str, HistSet, dict[str, Any]]]] = {}
    replica_sums: dict[str, dict[str, ExactSum]] = {}
    for key, path in sorted(artifacts):
        hs, meta, extra = load_artifact(path)
        slice_name = meta["carry"]["slice"]
        by_slice.setdefault(slice_name, []).append((key, hs, meta))
        if cfg.bootstrap:
            acc = replica_sums.setdefault(slice_name, {})
            try:
                exact = from_arrays(extra)
            except ValueError as err:
                raise ArtifactError(f"{path}: {err}; rerun predpkl2hist with --force") from None
            for tagger, part in exact.items():
                if tagger in acc:
                    acc[tagger] += part
                else:
                    acc[tagger] = part
    if not by_slice:
        raise QgcalError(f"sample {sample!r}: no histogram artifacts to merge")
    info: dict[str, Any] = {"slices": {}}
    total: HistSet | None = None
    slice_defs = cfg.samples[sample].slice_map()
    for slice_name in sorted(by_slice):
        entries = by_slice[slice_name]
        merged = merge((k, hs) for k, hs, _ in entries)
        sumw = math.fsum(float(m["carry"]["sumw"]) for _, _, m in entries)
        configured = cfg.samples[sample].configured_sum_of_weights(slice_name)
        if configured is not None:  # source=value: the number itself, not its per-file shares summed back
            sumw = float(configured)
        jets = sum(int(m["jets"]) for _, _, m in entries)
        if kind == "mc":
            sl = slice_defs[slice_name]
            if not sumw > 0:
                raise QgcalError(
                    f"samples.{sample}.slices.{slice_name}: sum of weights is {sumw} over "
                    f"{len(entries)} files; check sum_of_weights in the config"
                )
            scale = sl.scale(cfg.lumi_pb, sumw)
        else:
            scale = 1.0
        info["slices"][slice_name] = {"files": len(entries), "sumw": sumw, "scale": scale, "jets": jets}
        if total is None:
            total = empty_like(merged)
        add_into(total, merged, scale)
    assert total is not None
    return total, info, _scale_replicas(cfg, replica_sums, info)


def _scale_replicas(
    cfg: Config, per_slice: Mapping[str, Mapping[str, ExactSum]], info: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Exact per-slice replica sums -> weights, each slice scaled, added in slice order.

    The float of each exact slice sum depends only on the slice's events, never on the
    weight scale or the file split; the slice scale (lumi x xsec / sumw) then brings
    every slice to the same units, as for the histograms.
    """
    if not cfg.bootstrap:
        return {}
    out: dict[str, np.ndarray] = {}
    for slice_name in sorted(per_slice):
        scale = float(info["slices"][slice_name]["scale"])
        for name in sorted(per_slice[slice_name]):
            arr = scale * per_slice[slice_name][name].to_float()
            out[name] = out[name] + arr if name in out else arr
    missing = set(cfg.taggers) - set(out)
    if missing:
        raise ArtifactError(f"bootstrap replicas missing for {sorted(missing)}; rerun predpkl2hist with --force")
    return out


def save_merged(
    path: Path, hs: HistSet, info: Mapping[str, Any], replicas: Mapping[str, np.ndarray] | None = None
) -> None:
    save_histset(
        path,
        hs,
        {"merge": dict(info), "qgcal": __version__},
        extra={f"replicas.{k}": v for k, v in (replicas or {}).items()},
    )

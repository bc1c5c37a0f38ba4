"""Pass 1 of 4, root2pkl: read one ROOT file in chunks, select dijet events, write a jet table.

The name is historical (the scripts this replaces wrote pickles); the artifact
is Parquet, one row group per input chunk, two rows per selected event (the
forward and the central jet). MC weights are the RAW event weights here: the
slice normalisation lumi * xsec * filter_eff / sum_of_weights needs the sum over
all files of a slice, so it is applied when histograms are merged, which keeps
every per-file artifact independent of every other file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np

from qgcal.artifacts import (
    ParquetArtifactWriter,
    config_hash,
    file_fingerprint,
    library_versions,
    read_parquet_provenance,
)
from qgcal.config import BranchExpr, Config, parse_branch_expr
from qgcal.contract import REGION_CENTRAL, REGION_FORWARD, jet_table_schema
from qgcal.errors import InputError
from qgcal.passes import PassInput, PassRun
from qgcal.plan import FileTask, jet_variables
from qgcal.rootio import OpenTree, chunk_ranges, open_tree, read_chunk, read_th1_bin, resolve_branches

__all__ = ["PASS", "Root2Pkl", "Root2PklResult", "expected_provenance", "group_by_read", "run_file", "run_files"]

NAME = "root2pkl"


@dataclass(frozen=True)
class Root2PklResult:
    events_read: int
    events_selected: int
    sumw: float


def pass_config(cfg: Config, task: FileTask) -> dict[str, Any]:
    """The config fields this pass's output depends on (hashed into provenance)."""
    sample = cfg.samples[task.sample]
    return {
        "tree": task.tree,
        "branches": sorted(task.branches),
        "weight": [list(task.weight_multiply), list(task.weight_divide)],
        "event_weight": cfg.event_weight if task.kind == "mc" else [],
        "units": cfg.units.model_dump(),
        "selection": cfg.selection.model_dump(),
        "truth": cfg.truth.model_dump() if task.kind == "mc" else None,
        "sum_of_weights": sample.sum_of_weights.model_dump() if sample.sum_of_weights else None,
        "variables": jet_variables(cfg),
    }


def expected_provenance(cfg: Config, task: FileTask) -> dict[str, Any]:
    try:
        fingerprint = file_fingerprint(Path(task.path))
    except OSError as err:  # gone or unreadable: one line naming it, not a traceback
        raise InputError(
            f"{task.path}: cannot read ({err.strerror or type(err).__name__}); check the file "
            f"(listed by samples.{task.sample})"
        ) from None
    return {
        "pass": NAME,
        "config_hash": config_hash(pass_config(cfg, task)),
        "inputs": {task.ident: fingerprint},
    }


def _flat(arr: Any) -> tuple[np.ndarray, np.ndarray]:
    """(content, offsets) of a jagged array as numpy, without copies where possible."""
    layout = arr.layout
    if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(layout.content, ak.contents.NumpyArray):
        offsets = np.asarray(layout.offsets.data).astype(np.int64, copy=False)
        content = np.asarray(layout.content.data)
        if offsets[0] != 0:
            content = content[offsets[0] : offsets[-1]]
            offsets = offsets - offsets[0]
        return content, offsets
    counts = ak.to_numpy(ak.num(arr, axis=1)).astype(np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return ak.to_numpy(ak.flatten(arr, axis=1)), offsets


def _event_values(arr: Any, name: str, path: str) -> np.ndarray:
    if isinstance(arr, ak.Array) and arr.ndim > 1:
        raise InputError(f"{path}: branch for {name!r} is per-jet but a per-event value is needed")
    return np.asarray(ak.to_numpy(arr) if isinstance(arr, ak.Array) else arr)


def _jet_values(arr: Any, name: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(arr, ak.Array) and arr.ndim == 2):
        raise InputError(f"{path}: branch for {name!r} must be a per-jet vector (one entry per jet)")
    return _flat(arr)


def leading_two(pt: np.ndarray, offsets: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the leading and sub-leading jet of each kept event.

    Ntuples are usually pT-ordered: then they are the first two jets, found
    without sorting. Otherwise (JER-smeared trees) the jets are sorted per event.
    """
    starts = offsets[:-1][keep]
    if len(pt) > 1:
        drop = pt[1:] > pt[:-1]
        drop[offsets[1:-1][(offsets[1:-1] > 0) & (offsets[1:-1] < len(pt))] - 1] = False
        ordered = not drop.any()
    else:
        ordered = True
    if ordered:
        return starts, starts + 1
    counts = np.diff(offsets)
    order = ak.argsort(ak.unflatten(pt, counts), axis=1, ascending=False)[keep][:, :2]
    return ak.to_numpy(order[:, 0]) + starts, ak.to_numpy(order[:, 1]) + starts


def select_chunk(
    cfg: Config, task: FileTask, data: dict[str, Any], variables: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Apply the dijet selection to one chunk; return per-jet columns and a cut flow."""
    sel = cfg.selection
    scale = cfg.energy_scale()
    path = task.path
    pt_c, offsets = _jet_values(data["jet_pt"], "jet_pt", path)
    n_ev = len(offsets) - 1
    counts = np.diff(offsets)
    flow: dict[str, int] = {"read": n_ev}
    keep = counts >= 2
    flow["two_jets"] = int(keep.sum())

    pt_gev = pt_c.astype(np.float64) * scale
    i0, i1 = leading_two(pt_gev, offsets, keep)
    ev_idx = np.nonzero(keep)[0]

    def pick(name: str) -> tuple[np.ndarray, np.ndarray]:
        content, offs = _jet_values(data[name], name, path)
        if len(content) != len(pt_c) or (offs is not offsets and not np.array_equal(offs, offsets)):
            raise InputError(f"{path}: branch for {name!r} has a different number of jets than jet_pt")
        return content[i0], content[i1]

    pt0, pt1 = pt_gev[i0], pt_gev[i1]
    eta0, eta1 = pick("jet_eta")
    m = np.ones(len(ev_idx), dtype=bool)

    def cut(name: str, mask: np.ndarray) -> None:
        nonlocal m
        m &= mask
        flow[name] = int(m.sum())

    if sel.require_trigger:
        cut("trigger", _event_values(data["trigger"], "trigger", path)[ev_idx].astype(bool))
    cut("subleading_pt", pt1 > sel.subleading_pt_min_gev)
    cut("leading_pt", pt0 < sel.leading_pt_max_gev)
    with np.errstate(divide="ignore", invalid="ignore"):
        cut("pt_balance", (pt0 / pt1) < sel.pt_balance_max)
    cut("abs_eta", (np.abs(eta0) < sel.abs_eta_max) & (np.abs(eta1) < sel.abs_eta_max))

    # the kinematic cuts remove most events: carry on with the survivors only
    ev_idx, i0, i1, pt0, pt1, eta0, eta1 = (a[m] for a in (ev_idx, i0, i1, pt0, pt1, eta0, eta1))
    m = np.ones(len(ev_idx), dtype=bool)

    weight = np.ones(len(ev_idx), dtype=np.float64)
    if task.kind == "mc":
        for name in cfg.event_weight:
            weight *= _event_values(data[name], name, path)[ev_idx].astype(np.float64)
        for i, _ in enumerate(task.weight_multiply):
            weight *= _event_values(data[f"__mult{i}"], f"weight factor {i}", path)[ev_idx]
        for i, _ in enumerate(task.weight_divide):
            den = _event_values(data[f"__div{i}"], f"weight divisor {i}", path)[ev_idx].astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                weight = np.where(den != 0, weight / den, 0.0)
        if sel.abs_weight_max is not None:
            cut("abs_weight", np.abs(weight) < sel.abs_weight_max)
    if sel.require_cleaning:
        c0, c1 = pick("jet_cleaning")
        cut("cleaning", c0.astype(bool) & c1.astype(bool))
    if sel.min_ntracks is not None:
        n0, n1 = pick(sel.ntracks_variable)
        cut("ntracks", (n0 >= sel.min_ntracks) & (n1 >= sel.min_ntracks))
    if task.kind == "mc":
        l0, l1 = pick(cfg.truth.label)
        label0, label1 = l0.astype(np.int32), l1.astype(np.int32)
        if cfg.truth.use_abs:
            label0, label1 = np.abs(label0), np.abs(label1)
        if cfg.truth.require_positive:
            cut("truth_label", (label0 > 0) & (label1 > 0))

    # forward = the jet with larger |eta|; one flat-index gather per column, rows
    # alternating forward, central
    fwd_is_0 = np.abs(eta0[m]) >= np.abs(eta1[m])
    j0, j1 = i0[m], i1[m]
    sel_ev = ev_idx[m]
    n = len(sel_ev)
    jet_idx = np.empty(2 * n, dtype=np.int64)
    jet_idx[0::2] = np.where(fwd_is_0, j0, j1)
    jet_idx[1::2] = np.where(fwd_is_0, j1, j0)
    out: dict[str, np.ndarray] = {}
    run = _event_values(data["run"], "run", path)[sel_ev].astype(np.int64)
    event = _event_values(data["event"], "event", path)[sel_ev].astype(np.int64)
    out["run"] = np.repeat(run, 2)
    out["event"] = np.repeat(event, 2)
    out["region"] = np.tile(np.array([REGION_FORWARD, REGION_CENTRAL], dtype=np.int8), n)
    out["pt"] = pt_gev[jet_idx].astype(np.float32)
    out["eta"] = _jet_values(data["jet_eta"], "jet_eta", path)[0][jet_idx].astype(np.float32)
    out["lead_pt"] = np.repeat(pt0[m], 2).astype(np.float32)
    if task.kind == "mc":
        labels = _jet_values(data[cfg.truth.label], cfg.truth.label, path)[0][jet_idx].astype(np.int32)
        out["parton_label"] = np.abs(labels) if cfg.truth.use_abs else labels
    else:
        out["parton_label"] = np.zeros(2 * n, dtype=np.int32)
    out["weight"] = np.repeat(weight[m], 2)
    for var in variables:
        content, _ = _jet_values(data[var], var, path)
        out[var] = content[jet_idx]
    flow["selected"] = n
    return out, flow


def sum_of_weights(cfg: Config, task: FileTask, ot: OpenTree) -> float:
    sample = cfg.samples[task.sample]
    sw = sample.sum_of_weights
    if task.kind != "mc" or sw is None:
        return 0.0
    if sw.source == "histogram":
        assert sw.histogram is not None and sw.bin is not None
        return read_th1_bin(ot, sw.histogram, sw.bin, config_key=f"samples.{task.sample}.sum_of_weights.histogram")
    if sw.source == "value":
        n_files = len(cfg.resolve_files(sample.slice_map()[task.slice].files))
        return float(sw.value or 0.0) / n_files  # split evenly: the merge sums it back
    return float("nan")  # summed from the branch while reading


def _wanted(task: FileTask) -> dict[str, tuple[BranchExpr, str]]:
    """Logical name -> (branch expression, config key that asked for it) for one task."""
    wanted = {logical: (parse_branch_expr(expr), key) for logical, expr, key in task.branches}
    for i, expr in enumerate(task.weight_multiply):
        wanted[f"__mult{i}"] = (parse_branch_expr(expr), f"variations.{task.variation}.multiply")
    for i, expr in enumerate(task.weight_divide):
        wanted[f"__div{i}"] = (parse_branch_expr(expr), f"variations.{task.variation}.divide")
    if task.sumw_branch:
        wanted["__sumw"] = (parse_branch_expr(task.sumw_branch), f"samples.{task.sample}.sum_of_weights.branch")
    return wanted


def run_file(cfg: Config, task: FileTask, out_path: Path) -> Root2PklResult:
    """Process one file; the artifact appears only when everything succeeded."""
    return run_files(cfg, [task], [out_path])[0]


def run_files(cfg: Config, tasks: list[FileTask], out_paths: list[Path]) -> list[Root2PklResult]:
    """One read of a (file, tree) feeding every task that shares it (branch/weight variations).

    Each distinct branch is read once per chunk; each task then selects with its
    own branch mapping and weights and writes its own artifact, identical to what
    a separate read would have written.
    """
    path, tree = tasks[0].path, tasks[0].tree
    if any(t.path != path or t.tree != tree for t in tasks):
        raise ValueError("run_files: all tasks must share one file and tree")
    per_task = [_wanted(t) for t in tasks]
    union: dict[str, tuple[BranchExpr, str]] = {}
    for wanted in per_task:
        for expr, key in wanted.values():
            union.setdefault(str(expr), (expr, key))
    variables = jet_variables(cfg)
    provenances = [expected_provenance(cfg, t) for t in tasks]
    with open_tree(Path(path), tree, config_key=_tree_key(cfg, tasks[0])) as ot:
        sumws = [sum_of_weights(cfg, t, ot) for t in tasks]
        branches = resolve_branches(ot, union)
        exprs = {k: v[0] for k, v in union.items()}
        streams = [_Stream(cfg, t, p, prov, sumw) for t, p, prov, sumw in zip(tasks, out_paths, provenances, sumws)]
        try:
            for start, stop in chunk_ranges(ot, list(branches.values()), cfg.reading.step_size):
                raw = read_chunk(ot, branches, exprs, start, stop)
                for stream, wanted in zip(streams, per_task):
                    stream.add({logical: raw[str(expr)] for logical, (expr, _) in wanted.items()}, variables)
            return [s.commit(int(ot.tree.num_entries), variables) for s in streams]
        except BaseException:
            for s in streams:
                s.abort()
            raise


class _Stream:
    """One task's output while the shared chunks go by."""

    def __init__(self, cfg: Config, task: FileTask, out_path: Path, provenance: dict[str, Any], sumw: float):
        self.cfg, self.task, self.out_path, self.provenance, self.sumw = cfg, task, out_path, provenance, sumw
        self.writer: ParquetArtifactWriter | None = None
        self.flow: dict[str, int] = {}
        self.branch_sumw = 0.0

    def add(self, data: dict[str, Any], variables: list[str]) -> None:
        if "__sumw" in data:
            values = _event_values(data["__sumw"], "sum_of_weights", self.task.path)
            self.branch_sumw += float(np.sum(values, dtype=np.float64))
        cols, flow = select_chunk(self.cfg, self.task, data, variables)
        for k, v in flow.items():
            self.flow[k] = self.flow.get(k, 0) + v
        if self.writer is None:
            self.writer = ParquetArtifactWriter(self.out_path, jet_table_schema({v: cols[v].dtype for v in variables}))
        self.writer.write(cols)

    def commit(self, events_read: int, variables: list[str]) -> Root2PklResult:
        if self.writer is None:  # empty tree: still a valid (empty) artifact
            self.writer = ParquetArtifactWriter(
                self.out_path, jet_table_schema({v: np.dtype(np.float64) for v in variables})
            )
        task = self.task
        sumw = self.branch_sumw if task.sumw_branch else self.sumw
        prov = dict(self.provenance)
        prov.update(
            {
                "task": {
                    "sample": task.sample,
                    "slice": task.slice,
                    "kind": task.kind,
                    "tree": task.tree,
                    "variation": task.variation,
                },
                "cutflow": self.flow,
                "sumw": sumw,
                "events_read": events_read,
                "versions": library_versions(),
            }
        )
        self.writer.commit(prov)
        self.writer = None
        return Root2PklResult(events_read, self.flow.get("selected", 0), sumw)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


def _tree_key(cfg: Config, task: FileTask) -> str:
    if task.variation != "nominal":
        var = cfg.variations.get(task.variation)
        if var is not None and getattr(var, "kind", "") == "tree":
            return f"variations.{task.variation}.tree"
    if cfg.samples[task.sample].tree:
        return f"samples.{task.sample}.tree"
    return "tree"


def group_by_read(tasks: Sequence[FileTask]) -> list[list[FileTask]]:
    """Tasks sharing a (file, tree): branch and weight variations read it once together."""
    groups: dict[tuple[str, str], list[FileTask]] = {}
    for t in tasks:
        groups.setdefault((t.path, t.tree), []).append(t)
    return [groups[k] for k in sorted(groups)]


class Root2Pkl:
    """The :class:`qgcal.passes.FilePass` of pass 1: one job per (file, tree) read."""

    name = NAME
    ext = ".parquet"
    unit = "reads"

    def jobs(self, tasks: Sequence[FileTask]) -> list[list[FileTask]]:
        return group_by_read(tasks)

    def expected_provenance(self, cfg: Config, item: PassInput) -> dict[str, Any]:
        return expected_provenance(cfg, item.task)

    def read_provenance(self, path: Path) -> dict[str, Any] | None:
        return read_parquet_provenance(path)

    def run(self, cfg: Config, items: Sequence[PassInput]) -> list[PassRun]:
        results = run_files(cfg, [i.task for i in items], [i.out for i in items])
        # one read: its events count once, for the first task of the group
        return [PassRun(r.events_read if k == 0 else 0) for k, r in enumerate(results)]


PASS = Root2Pkl()

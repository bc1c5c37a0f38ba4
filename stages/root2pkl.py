"""Pass 1 of 4, root2pkl: read one ROOT file in chunks, select dijet events, write a jet table.

The name is historical (the scripts this replaces wrote pickles); the artifact
is Parquet, one row group per input chunk, two rows per selected event (the
forward and the central jet). MC weights are the RAW event weights here: the
slice normalisation lumi * xsec * filter_eff / sum_of_weights needs the sum over
all files of a slice, so it is applied when histograms are merged, which keeps
every per-file artifact independent of every other file.
"""

from __future__ import annotations

import math
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
from qgcal.bootstrap import ExactSum, exact_sum
from qgcal.config import BranchExpr, Config, Requirement, Sample, parse_branch_expr
from qgcal.contract import REGION_CENTRAL, REGION_FORWARD, jet_table_schema
from qgcal.errors import InputError
from qgcal.passes import PassInput, PassRun
from qgcal.plan import FileTask, constituent_variables, group_by_read, jet_variables
from qgcal.rootio import (
    OpenTree,
    chunk_ranges,
    open_tree,
    read_chunk,
    read_th1_bin,
    resolve_branches,
    sum_over_entries,
)

__all__ = ["PASS", "Root2Pkl", "Root2PklResult", "expected_provenance", "run_file", "run_files"]

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
        "selection": cfg.selection.model_dump(exclude={"warn_fraction"}),
        "triggers": None
        if sample.triggers is None
        else [sample.trigger_mode, [t.model_dump() for t in sample.triggers]],
        "weight_ref": sample.slice_map()[task.slice].weight_ref if cfg.selection.rel_weight_max else None,
        # other_scale is the final pass's business; require_positive is folded into 'other'
        "truth": cfg.truth.model_dump(exclude={"other_norm", "other_scale", "require_positive"})
        if task.kind == "mc"
        else None,
        "sum_of_weights": sample.sum_of_weights.model_dump() if sample.sum_of_weights else None,
        "slice_sum_of_weights": sample.configured_sum_of_weights(task.slice) if task.kind == "mc" else None,
        "variables": jet_variables(cfg),
        **({"constituents": constituent_variables(cfg)} if constituent_variables(cfg) else {}),
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


def requirement_mask(values: np.ndarray, req: Requirement) -> np.ndarray:
    """One selection term on one array of values (see :class:`qgcal.config.Requirement`).

    Bit tests work on the integer value (a float or bool branch is truncated to an
    integer first); with no test given, the term is "value != 0" (a flag).
    """
    tests = (req.bits_all, req.bits_any, req.bits_none)
    if all(t is None for t in tests) and req.min is None and req.max is None:
        return values != 0
    ok = np.ones(len(values), dtype=bool)
    if any(t is not None for t in tests):
        ints = values.astype(np.int64, copy=False)
        if req.bits_all is not None:
            ok &= (ints & req.bits_all) == req.bits_all
        if req.bits_any is not None:
            ok &= (ints & req.bits_any) != 0
        if req.bits_none is not None:
            ok &= (ints & req.bits_none) == 0
    if req.min is not None:
        ok &= values >= req.min
    if req.max is not None:
        ok &= values <= req.max
    return ok


def _trigger_pass(
    sample: Sample, data: dict[str, Any], ev_idx: np.ndarray, lead_pt: np.ndarray, path: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """(passes, prescale weight or None) of a sample's own triggers, for the events ``ev_idx``."""
    trigs = sample.triggers or []
    if not trigs:
        return np.ones(len(ev_idx), dtype=bool), None
    fired = [_event_values(data[t.variable], t.variable, path)[ev_idx] != 0 for t in trigs]
    if sample.trigger_mode == "any":
        return np.logical_or.reduce(fired), None
    ok = np.zeros(len(ev_idx), dtype=bool)
    prescale = np.ones(len(ev_idx), dtype=np.float64)
    for t, f in zip(trigs, fired):
        hi = np.inf if t.lead_pt_max_gev is None else t.lead_pt_max_gev
        in_range = (lead_pt >= (t.lead_pt_min_gev or 0.0)) & (lead_pt < hi)  # ranges are disjoint (config)
        ok |= in_range & f
        if t.prescale_variable is not None:
            ps = _event_values(data[t.prescale_variable], t.prescale_variable, path)[ev_idx].astype(np.float64)
            prescale = np.where(in_range, ps, prescale)
        elif t.prescale is not None:
            prescale[in_range] = t.prescale
    return ok, prescale


def select_chunk(
    cfg: Config, task: FileTask, data: dict[str, Any], variables: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, int], dict[str, float]]:
    """Apply the dijet selection to one chunk; return per-jet columns and the cut flow.

    The cut flow is two dicts over the same cut names, in order: events after each
    cut, and their sum of (raw) weights. Every term is a vectorised mask over the
    chunk's events; no Python loop runs per event.
    """
    sel = cfg.selection
    sample = cfg.samples[task.sample]
    scale = cfg.energy_scale()
    path = task.path
    is_mc = task.kind == "mc"
    pt_c, offsets = _jet_values(data["jet_pt"], "jet_pt", path)
    n_ev = len(offsets) - 1
    counts = np.diff(offsets)

    # the event weight of every event (cheap: a few per-event products), for the cut flow's sums
    w_all = np.ones(n_ev if is_mc else 0, dtype=np.float64)
    if is_mc:
        for name in cfg.event_weight:
            w_all *= _event_values(data[name], name, path)  # in place, in float64 (no converted copy)
        for i, _ in enumerate(task.weight_multiply):
            w_all *= _event_values(data[f"__mult{i}"], f"weight factor {i}", path)
        for i, _ in enumerate(task.weight_divide):
            den = _event_values(data[f"__div{i}"], f"weight divisor {i}", path).astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                w_all = np.where(den != 0, w_all / den, 0.0)

    unit = not is_mc  # data: weight 1 until a prescale says otherwise, and the sums are the counts
    keep = counts >= 2
    flow: dict[str, int] = {"read": n_ev, "two_jets": int(np.count_nonzero(keep))}
    flow_w: dict[str, float] = {"read": float(n_ev) if unit else float(w_all.sum())}

    pt_gev = pt_c.astype(np.float64) * scale
    i0, i1 = leading_two(pt_gev, offsets, keep)
    ev_idx = np.nonzero(keep)[0]
    weight = w_all[ev_idx] if is_mc else np.ones(len(ev_idx), dtype=np.float64)
    flow_w["two_jets"] = float(flow["two_jets"]) if unit else float(weight.sum())

    def pick(name: str) -> tuple[np.ndarray, np.ndarray]:
        content, offs = _jet_values(data[name], name, path)
        if len(content) != len(pt_c) or (offs is not offsets and not np.array_equal(offs, offsets)):
            raise InputError(f"{path}: branch for {name!r} has a different number of jets than jet_pt")
        return content[i0], content[i1]

    pt0, pt1 = pt_gev[i0], pt_gev[i1]
    eta0, eta1 = pick("jet_eta")
    m = np.ones(len(ev_idx), dtype=bool)
    # cut-flow bookkeeping without a weighted sum per cut: each event counts the cuts it passed in a
    # row (m is cumulative), and one bincount per phase gives events and sums of weights after each cut
    passed = np.zeros(len(ev_idx), dtype=np.int16)
    stages: list[str] = []

    def cut(name: str, mask: np.ndarray) -> None:
        nonlocal m
        m &= mask
        flow[name] = int(np.count_nonzero(m))
        if not unit:
            np.add(passed, m, out=passed)
        stages.append(name)

    def flush() -> None:
        """Sums of weights of the cuts applied since the last flush (``weight``: the events' weights by then)."""
        if unit:
            flow_w.update((name, float(flow[name])) for name in stages)
        else:
            k = len(stages)
            sums = np.cumsum(np.bincount(passed, weights=weight, minlength=k + 1)[::-1])[::-1]  # [j]: >= j passed
            flow_w.update((name, float(sums[j])) for j, name in enumerate(stages, start=1))
        stages.clear()

    if sample.triggers:  # the sample's own triggers ([]: none at all)
        fired, prescale = _trigger_pass(sample, data, ev_idx, pt0, path)
        if prescale is not None:
            weight = weight * prescale  # data weighted by the prescale of the trigger owning its pT range
            unit = False  # from the trigger (the first staged cut) on, the sums are prescale-weighted
        cut("trigger", fired)
    elif sample.triggers is None and sel.require_trigger:
        cut("trigger", _event_values(data["trigger"], "trigger", path)[ev_idx].astype(bool))
    for req in sel.event_cuts:
        if req.applies(task.kind):
            cut(
                f"event_cut.{req.label}",
                requirement_mask(_event_values(data[req.variable], req.variable, path)[ev_idx], req),
            )
    cut("subleading_pt", pt1 > sel.subleading_pt_min_gev)
    cut("leading_pt", pt0 < sel.leading_pt_max_gev)
    with np.errstate(divide="ignore", invalid="ignore"):
        cut("pt_balance", (pt0 / pt1) < sel.pt_balance_max)
    cut("abs_eta", (np.abs(eta0) < sel.abs_eta_max) & (np.abs(eta1) < sel.abs_eta_max))

    flush()
    # the kinematic cuts remove most events: carry on with the survivors only
    # (one index array taken by all: a boolean mask would be searched again for every array, 2.5x slower)
    kept = np.flatnonzero(m)
    ev_idx, i0, i1, pt0, pt1, eta0, eta1 = (a[kept] for a in (ev_idx, i0, i1, pt0, pt1, eta0, eta1))
    weight = weight[kept]
    m = np.ones(len(ev_idx), dtype=bool)
    passed = np.zeros(len(ev_idx), dtype=np.int16)

    if is_mc:
        if sel.abs_weight_max is not None:
            cut("abs_weight", np.abs(weight) < sel.abs_weight_max)
        if sel.rel_weight_max is not None:
            ref = sample.slice_map()[task.slice].weight_ref
            assert ref is not None  # the config requires it with rel_weight_max
            cut("rel_weight", np.abs(weight) < sel.rel_weight_max * ref)
    if sel.require_cleaning:
        raw = data["jet_cleaning"]
        if isinstance(raw, ak.Array) and raw.ndim == 2:
            c0, c1 = pick("jet_cleaning")
            cut("cleaning", c0.astype(bool) & c1.astype(bool))
        else:  # an event-level cleaning flag
            cut("cleaning", _event_values(raw, "jet_cleaning", path)[ev_idx] != 0)
    for req in sel.jet_cuts:
        if req.applies(task.kind):
            v0, v1 = pick(req.variable)
            cut(f"jet_cut.{req.label}", requirement_mask(v0, req) & requirement_mask(v1, req))
    if sel.min_ntracks is not None:
        n0, n1 = pick(sel.ntracks_variable)
        cut("ntracks", (n0 >= sel.min_ntracks) & (n1 >= sel.min_ntracks))
    if is_mc and cfg.truth.other == "drop_events":
        l0, l1 = pick(cfg.truth.label)
        label0, label1 = l0.astype(np.int32), l1.astype(np.int32)
        if cfg.truth.use_abs:
            label0, label1 = np.abs(label0), np.abs(label1)
        cut("truth_label", (label0 > 0) & (label1 > 0))

    flush()
    # forward = the jet with larger |eta|; one flat-index gather per column, rows
    # alternating forward, central
    kept = np.flatnonzero(m)
    fwd_is_0 = np.abs(eta0[kept]) >= np.abs(eta1[kept])
    j0, j1 = i0[kept], i1[kept]
    sel_ev = ev_idx[kept]
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
    out["lead_pt"] = np.repeat(pt0[kept], 2).astype(np.float32)
    if is_mc:
        labels = _jet_values(data[cfg.truth.label], cfg.truth.label, path)[0][jet_idx].astype(np.int32)
        out["parton_label"] = np.abs(labels) if cfg.truth.use_abs else labels
    else:
        out["parton_label"] = np.zeros(2 * n, dtype=np.int32)
    out["weight"] = np.repeat(weight[kept], 2)
    for var in variables:
        content, _ = _jet_values(data[var], var, path)
        out[var] = content[jet_idx]
    gathers: dict[str, tuple[np.ndarray, np.ndarray, int, np.ndarray]] = {}
    for feat, count_name in constituent_variables(cfg).items():
        if count_name not in gathers:
            gathers[count_name] = _constituent_gather(data, count_name, offsets, jet_idx, path)
        idx, list_off, total, cs_at_events = gathers[count_name]
        values, ev_off = _jet_values(data[feat], feat, path)
        if len(values) != total or not np.array_equal(ev_off, cs_at_events):
            raise InputError(
                f"{path}: branch for {feat!r} holds {len(values)} constituents but {count_name!r} counts {total} "
                "(or they differ event by event); map the count branch of the same constituent collection"
            )
        out[feat] = _list_column(values[idx], list_off)
    flow["selected"] = n
    flow_w["selected"] = float(n) if unit else float(weight[kept].sum())
    return out, flow, flow_w


def _constituent_gather(
    data: dict[str, Any], count_name: str, jet_offsets: np.ndarray, jet_idx: np.ndarray, path: str
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """(flat constituent indices of the jets ``jet_idx``, their list offsets, constituents in the chunk,
    and the offsets of each event's constituents the counts imply).

    The constituents of an event are stored jet after jet (jet 0's, then jet 1's, ...), so
    the first constituent of jet j (a flat jet index of the chunk) is the sum of the counts
    of all jets before it. Checked: the counts of each event add up to its constituents.
    """
    counts, offs = _jet_values(data[count_name], count_name, path)
    if len(counts) != jet_offsets[-1] or not np.array_equal(offs, jet_offsets):
        raise InputError(f"{path}: branch for {count_name!r} has a different number of jets than jet_pt")
    counts = counts.astype(np.int64)
    if counts.size and counts.min() < 0:
        raise InputError(f"{path}: branch for {count_name!r} holds negative constituent counts; check the mapping")
    cs = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=cs[1:])
    lens = counts[jet_idx]
    list_off = np.zeros(lens.size + 1, dtype=np.int64)
    np.cumsum(lens, out=list_off[1:])
    idx = np.repeat(cs[jet_idx] - list_off[:-1], lens) + np.arange(int(list_off[-1]))
    return idx, list_off, int(cs[-1]), cs[jet_offsets]


def _list_column(values: np.ndarray, offsets: np.ndarray) -> Any:
    """An Arrow list column (one list per jet row) from flat values and offsets."""
    import pyarrow as pa

    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))


def _list_dtypes(cols: dict[str, Any], names: Sequence[str]) -> dict[str, np.dtype[Any]]:
    return {n: cols[n].values.to_numpy(zero_copy_only=False).dtype for n in names}


def sum_of_weights(cfg: Config, task: FileTask, ot: OpenTree) -> float:
    """This file's share of its slice's sum of generator weights, from this file alone.

    The merge sums the shares of every file of the slice (a value from the config is
    used as it is there). Reading another tree of the same file (CMS ``Runs``) sums its
    branch over all its entries here; the events tree's own branch is summed while the
    chunks go by (:class:`_Stream`); NaN marks that case.
    """
    sample = cfg.samples[task.sample]
    sw = sample.sum_of_weights
    if task.kind != "mc" or sw is None:
        return 0.0
    key = f"samples.{task.sample}.sum_of_weights"
    if sw.source == "histogram":
        assert sw.histogram is not None and sw.bin is not None
        return read_th1_bin(ot, sw.histogram, sw.bin, config_key=f"{key}.histogram")
    if sw.source == "value":
        n_files = len(cfg.resolve_files(sample.slice_map()[task.slice].files))
        value = sample.configured_sum_of_weights(task.slice) or 0.0
        return float(value) / n_files  # split evenly; the merge uses the configured number itself
    if sw.tree is not None:
        assert sw.branch is not None
        return sum_over_entries(
            ot, sw.tree, parse_branch_expr(sw.branch), config_key=f"{key}.branch", step_size=cfg.reading.step_size
        )
    return float("nan")  # summed from the events tree's branch while reading


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
        self.flow_sumw: dict[str, list[float]] = {}  # per chunk, summed exactly (fsum) at commit
        self.branch_sumw = ExactSum.zeros((1,))  # exact: the same for any chunking

    def add(self, data: dict[str, Any], variables: list[str]) -> None:
        if "__sumw" in data:
            values = _event_values(data["__sumw"], "sum_of_weights", self.task.path).astype(np.float64)
            try:  # the exact sum refuses NaN and infinities
                self.branch_sumw += exact_sum(values)
            except ValueError:
                raise InputError(
                    f"{self.task.path}: the branch summed for samples.{self.task.sample}.sum_of_weights "
                    "holds NaN or infinite values; check the file"
                ) from None
        cols, flow, flow_w = select_chunk(self.cfg, self.task, data, variables)
        for k, v in flow.items():
            self.flow[k] = self.flow.get(k, 0) + v
            self.flow_sumw.setdefault(k, []).append(flow_w[k])
        if self.writer is None:
            lists = _list_dtypes(cols, list(constituent_variables(self.cfg)))
            self.writer = ParquetArtifactWriter(
                self.out_path, jet_table_schema({v: cols[v].dtype for v in variables}, lists=lists)
            )
        self.writer.write(cols)

    def commit(self, events_read: int, variables: list[str]) -> Root2PklResult:
        if self.writer is None:  # empty tree: still a valid (empty) artifact
            lists = {f: np.dtype(np.float32) for f in constituent_variables(self.cfg)}
            self.writer = ParquetArtifactWriter(
                self.out_path, jet_table_schema({v: np.dtype(np.float64) for v in variables}, lists=lists)
            )
        task = self.task
        sumw = float(self.branch_sumw.to_float()[0]) if task.sumw_branch else self.sumw
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
                # [cut, sum of raw weights] in the order the cuts were applied (a list: JSON keys get sorted)
                "cutflow_sumw": [[k, math.fsum(v)] for k, v in self.flow_sumw.items()],
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

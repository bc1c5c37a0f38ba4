"""The per-file work of each pass, as top-level functions a worker process can run.

Each function checks the artifact's provenance first and returns at once when a
valid one exists (unless forced), so a local rerun, a Slurm array task and a
Dask task all share one notion of "done".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qgcal.artifacts import is_valid, read_parquet_provenance
from qgcal.config import Config
from qgcal.histset import read_histset_meta
from qgcal.plan import FileTask, artifact_path
from qgcal.stages import pkl2predpkl, predpkl2hist, root2pkl

__all__ = ["TaskOutcome", "group_by_read", "pass_is_valid", "run_pass", "run_root2pkl_group"]


@dataclass(frozen=True)
class TaskOutcome:
    key: str
    stage: str
    events: int
    reused: bool


def pass_is_valid(cfg: Config, task: FileTask, stage: str) -> bool:
    """Whether the artifact of ``stage`` for ``task`` exists and matches inputs and config."""
    out = artifact_path(cfg.output_path, task, stage)
    if not out.is_file():
        return False
    if stage == "root2pkl":
        return is_valid(out, root2pkl.expected_provenance(cfg, task))
    up_stage = "root2pkl" if stage == "pkl2predpkl" else "pkl2predpkl"
    upstream = artifact_path(cfg.output_path, task, up_stage)
    if not pass_is_valid(cfg, task, up_stage):
        return False
    if stage == "pkl2predpkl":
        return is_valid(out, pkl2predpkl.expected_provenance(cfg, upstream))
    return is_valid(out, predpkl2hist.expected_provenance(cfg, upstream), reader=read_histset_meta)


def run_pass(cfg: Config, task: FileTask, stage: str, force: bool = False,
             overrides: pkl2predpkl.InferenceOverrides | None = None) -> TaskOutcome:
    out = artifact_path(cfg.output_path, task, stage)
    if not force and pass_is_valid(cfg, task, stage):
        return TaskOutcome(task.key, stage, 0, True)
    if stage == "root2pkl":
        res = root2pkl.run_file(cfg, task, out)
        return TaskOutcome(task.key, stage, res.events_read, False)
    if stage == "pkl2predpkl":
        upstream = artifact_path(cfg.output_path, task, "root2pkl")
        n = pkl2predpkl.run_file(cfg, upstream, out, overrides or pkl2predpkl.InferenceOverrides())
        return TaskOutcome(task.key, stage, n // 2, False)
    upstream = artifact_path(cfg.output_path, task, "pkl2predpkl")
    carry = _carry(cfg, task)
    n = predpkl2hist.run_file(cfg, upstream, out, is_data=task.kind == "data", carry=carry)
    return TaskOutcome(task.key, stage, n // 2, False)


def _carry(cfg: Config, task: FileTask) -> dict[str, object]:
    """What the merge needs from root2pkl: the slice, its sum of weights, the cut flow."""
    prov = read_parquet_provenance(artifact_path(cfg.output_path, task, "root2pkl")) or {}
    return {
        "sample": task.sample,
        "slice": task.slice,
        "file": Path(task.path).name,
        "sumw": prov.get("sumw", 0.0),
        "cutflow": prov.get("cutflow", {}),
    }


def group_by_read(tasks: list[FileTask]) -> list[list[FileTask]]:
    """Tasks sharing a (file, tree): branch and weight variations read it once together."""
    groups: dict[tuple[str, str], list[FileTask]] = {}
    for t in tasks:
        groups.setdefault((t.path, t.tree), []).append(t)
    return [groups[k] for k in sorted(groups)]


def run_root2pkl_group(cfg: Config, tasks: list[FileTask], force: bool = False) -> list[TaskOutcome]:
    """root2pkl for every task of one (file, tree) group, with a single read of the file."""
    todo = [t for t in tasks if force or not pass_is_valid(cfg, t, "root2pkl")]
    outcomes = [TaskOutcome(t.key, "root2pkl", 0, True) for t in tasks if t not in todo]
    if todo:
        results = root2pkl.run_files(cfg, todo, [artifact_path(cfg.output_path, t, "root2pkl") for t in todo])
        outcomes += [TaskOutcome(t.key, "root2pkl", r.events_read if i == 0 else 0, False)
                     for i, (t, r) in enumerate(zip(todo, results))]
    return outcomes

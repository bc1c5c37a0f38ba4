"""The per-file work of any pass, as top-level functions a worker process can run.

Generic over the registry (``qgcal.stages.FILE_PASSES``): validity is the pass's
provenance check applied down the chain, and a job is whatever the pass groups
together. Each job checks provenance first and returns at once for valid artifacts
(unless forced), so a local rerun, a Slurm array task and a Dask task all share one
notion of "done".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qgcal.artifacts import is_valid
from qgcal.config import Config
from qgcal.passes import PassInput, artifact_of
from qgcal.plan import FileTask
from qgcal.stages import FILE_PASSES, pass_index

__all__ = ["TaskOutcome", "pass_input", "pass_is_valid", "run_job"]


@dataclass(frozen=True)
class TaskOutcome:
    key: str
    stage: str
    events: int
    reused: bool


def pass_input(cfg: Config, task: FileTask, index: int) -> PassInput:
    """Output path and upstream artifact of pass ``index`` for ``task``."""
    upstream = artifact_of(cfg, task, FILE_PASSES[index - 1]) if index > 0 else None
    return PassInput(task, artifact_of(cfg, task, FILE_PASSES[index]), upstream)


def pass_is_valid(cfg: Config, task: FileTask, stage: str | int) -> bool:
    """Whether the artifact of ``stage`` for ``task`` exists and matches inputs and config, down the chain."""
    index = stage if isinstance(stage, int) else pass_index(stage)
    if not pass_input(cfg, task, index).out.is_file():
        return False  # cheap, before reading any upstream provenance
    if index > 0 and not pass_is_valid(cfg, task, index - 1):
        return False
    return artifact_is_valid(cfg, task, index)


def artifact_is_valid(cfg: Config, task: FileTask, stage: str | int) -> bool:
    """Whether the artifact of ``stage`` exists and its provenance matches, NOT checking the passes before it.

    For callers that walk the chain themselves (``qgcal status`` caches each pass's state):
    ``pass_is_valid`` on every pass would re-read the provenance of every upstream artifact.
    """
    index = stage if isinstance(stage, int) else pass_index(stage)
    item = pass_input(cfg, task, index)
    if not item.out.is_file():
        return False
    p = FILE_PASSES[index]
    return is_valid(item.out, p.expected_provenance(cfg, item), reader=p.read_provenance)


def run_job(cfg: Config, stage: str, tasks: Sequence[FileTask], force: bool = False) -> list[TaskOutcome]:
    """Pass ``stage`` for one job's tasks; valid artifacts are reused unless ``force``."""
    index = pass_index(stage)
    todo = [t for t in tasks if force or not pass_is_valid(cfg, t, index)]
    outcomes = {t: TaskOutcome(t.key, stage, 0, True) for t in tasks if t not in todo}
    if todo:
        runs = FILE_PASSES[index].run(cfg, [pass_input(cfg, t, index) for t in todo])
        outcomes.update({t: TaskOutcome(t.key, stage, r.events, False) for t, r in zip(todo, runs)})
    return [outcomes[t] for t in tasks]


def upstream_exists(cfg: Config, task: FileTask, index: int) -> bool:
    item = pass_input(cfg, task, index)
    return item.upstream is None or Path(item.upstream).is_file()

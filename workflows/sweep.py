"""Several systematics in one go: the union of their file tasks through one pool, then each final pass.

Data and nominal MC artifacts are shared by every variation, so each is made
once. (Reading a (file, tree) once for all branch and weight variations that
share it is the sweep issue's optimisation; here each variation reads its own.)
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor

from qgcal.config import Config
from qgcal.executors import make_executor
from qgcal.stages.pkl2predpkl import InferenceOverrides
from qgcal.workflows.single import RunResult, finalise, output_lock, run_file_passes, tasks_for

__all__ = ["run_many"]


def run_many(cfg: Config, systs: Sequence[str], *, workers: int | None = None,
             executor: str | Executor | None = None, force: bool = False,
             overrides: InferenceOverrides | None = None) -> dict[str, RunResult]:
    for s in systs:
        cfg.variation(s)
    with output_lock(cfg.output_path):
        tasks = {}
        for s in systs:
            for t in tasks_for(cfg, s):
                tasks.setdefault(t.key + "@" + t.variation, t)
        ex = make_executor(executor or cfg.executor.kind, workers if workers is not None else cfg.executor.workers)
        try:
            run_file_passes(cfg, [tasks[k] for k in sorted(tasks)], ex, force=force, overrides=overrides)
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
        return {s: finalise(cfg, s) for s in systs}

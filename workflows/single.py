"""One systematic, end to end: the per-file passes over a pool, then the final pass.

Passes run one after the other over all files (a barrier per pass) with ONE
executor reused for all of them. A variation needs the nominal MC too, since
its working-point cuts are frozen from nominal: those files are planned as
well and reused when their artifacts are already valid.

Everything comes from the config (CLI options are applied to it once, by the CLI);
an ``Executor`` instance may be passed in instead of the configured one.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgcal.config import Config, ModelTagger
from qgcal.errors import ArtifactError, ConfigError
from qgcal.executors import make_executor
from qgcal.locking import output_lock
from qgcal.passes import artifact_of
from qgcal.plan import FileTask, mc_sample_for, plan_tasks
from qgcal.progress import PassProgress
from qgcal.stages import FILE_PASSES
from qgcal.stages import final_reweighting as final
from qgcal.workflows.preflight import preflight
from qgcal.workflows.runner import Job, Runner, read_skip_record
from qgcal.workflows.tasks import pass_is_valid, run_job, upstream_exists

__all__ = ["RunResult", "finalise", "make_runner", "run_file_passes", "run_systematic", "tasks_for"]


@dataclass
class RunResult:
    systematic: str
    results_dir: Path
    records: list[dict[str, Any]]
    files_processed: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def tasks_for(cfg: Config, syst: str) -> list[FileTask]:
    """Data (shared), the variation's MC and, for a variation, nominal MC; deduplicated.

    Every input file must exist before any work starts (a run that stops half way
    over a typo in a path wastes the cluster time before it).
    """
    tasks = {t.key + "@" + t.variation: t for t in plan_tasks(cfg, syst)}
    if syst != "nominal":
        for t in plan_tasks(cfg, "nominal", include_data=False):
            tasks.setdefault(t.key + "@" + t.variation, t)
    for t in tasks.values():
        if not Path(t.path).is_file():
            raise ConfigError(
                f"{t.path}: input file not found (listed by samples.{t.sample}); fix the path or glob in the config"
            )
    return [tasks[k] for k in sorted(tasks)]


def make_runner(cfg: Config, executor: Executor | None = None) -> Runner:
    """A Runner over ``executor``, or over the configured one (rebuilt if a worker crash breaks it)."""
    n = cfg.executor.workers
    if executor is not None:
        width = getattr(executor, "_max_workers", None) or n  # how many jobs run at once (crash retry waves)
        return Runner(cfg, lambda: executor, width=width)
    kind = cfg.executor.kind
    models = any(isinstance(t, ModelTagger) for t in cfg.taggers.values())
    preload = (run_job.__module__, *(("sklearn.ensemble", "skops.io") if models else ()))
    return Runner(
        cfg,
        lambda: make_executor(kind, n, scheduler=cfg.executor.scheduler, preload=preload),
        width=1 if kind == "serial" else n,
    )


def run_file_passes(
    cfg: Config, tasks: list[FileTask], runner: Runner, *, force: bool = False, through: int | None = None
) -> dict[str, int]:
    """The per-file passes of the chain over ``tasks`` (up to index ``through``, default all).

    Returns the file tasks processed per pass.
    """
    done: dict[str, int] = {}
    last = len(FILE_PASSES) - 1 if through is None else through
    for index, p in enumerate(FILE_PASSES[: last + 1]):
        todo = tasks if force else [t for t in tasks if not pass_is_valid(cfg, t, index)]
        # files skipped as bad have nothing to carry on with
        todo = [t for t in todo if upstream_exists(cfg, t, index)]
        done[p.name] = len(todo)
        jobs = [Job(run_job, (cfg, p.name, group, True), group) for group in p.jobs(todo)]
        with PassProgress(p.name, len(jobs), skipped=len(tasks) - len(todo), files=len(todo), unit=p.unit) as progress:
            runner.run(p.name, jobs, progress)
    return done


def final_inputs(cfg: Config, syst: str) -> final.FinalInputs:
    """The last per-file pass's histogram artifacts the final pass of ``syst`` merges.

    A missing artifact is an error unless its file was skipped as bad (its skip
    record is passed on, so the results say what was lost).
    """
    last = FILE_PASSES[-1]
    mc_sample = mc_sample_for(cfg, syst)
    data_tasks = plan_tasks(cfg, syst, include_mc=False)
    mc_tasks = plan_tasks(cfg, syst, include_data=False, mc_sample=mc_sample)
    nominal_mc_tasks = plan_tasks(cfg, "nominal", include_data=False)
    # keyed: a variation's MC and the nominal MC can list the same files
    skipped: dict[tuple[str, str, str], dict[str, Any]] = {}

    def arts(tasks: list[FileTask]) -> list[tuple[str, Path]]:
        found = []
        for t in tasks:
            path = artifact_of(cfg, t, last)
            record = None if path.is_file() else read_skip_record(cfg, t)
            if record is not None:
                skipped[(t.sample, t.path, t.variation)] = record
                continue
            if not path.is_file():
                raise ArtifactError(
                    f"{path}: histogram artifact missing for {t.path} ({t.variation}); "
                    "run the per-file passes first (qgcal run / qgcal sweep)"
                )
            found.append((t.key, path))
        return found

    data, mc = arts(data_tasks), arts(mc_tasks)
    nominal = None if mc_tasks == nominal_mc_tasks else arts(nominal_mc_tasks)
    return final.FinalInputs(
        data=data,
        mc=mc,
        nominal_mc=nominal,
        skipped=list(skipped.values()),
        data_namespace=data_tasks[0].variation if data_tasks else "nominal",
        mc_namespace=mc_tasks[0].variation if mc_tasks else "nominal",
    )


def finalise(cfg: Config, syst: str, *, plot: bool | None = None) -> RunResult:
    """The final pass of ``syst`` from the per-file histogram artifacts (see final_reweighting.run)."""
    res = final.run(cfg, syst, final_inputs(cfg, syst), plot=plot)
    return RunResult(res.systematic, res.results_dir, res.records, skipped=res.skipped)


def run_systematic(cfg: Config, syst: str, *, executor: Executor | None = None, force: bool = False) -> RunResult:
    """``qgcal run --syst``: passes for the files this systematic needs, then final_reweighting."""
    cfg.variation(syst)  # unknown names fail before any work
    preflight(cfg, [syst])  # what 'qgcal validate' checks, before any event is read
    with output_lock(cfg.output_path):
        tasks = tasks_for(cfg, syst)
        runner = make_runner(cfg, executor)
        try:
            processed = run_file_passes(cfg, tasks, runner, force=force)
        finally:
            runner.shutdown()
        result = finalise(cfg, syst, plot=cfg.plots.enabled)
        result.files_processed = processed
        return result

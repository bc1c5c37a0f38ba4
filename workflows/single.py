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

from qgcal.config import Config
from qgcal.cutflow import large_cuts, read_cutflow
from qgcal.errors import ArtifactError, ConfigError
from qgcal.executors import TASKS_MODULE, make_executor, start_early
from qgcal.executors import worker_preload as executor_preload
from qgcal.locking import output_lock
from qgcal.passes import artifact_of
from qgcal.plan import FileTask, mc_sample_for, plan_tasks
from qgcal.progress import PassProgress, log
from qgcal.stages import FILE_PASSES
from qgcal.stages import final_reweighting as final
from qgcal.workflows.preflight import preflight
from qgcal.workflows.runner import Job, Runner, read_skip_record
from qgcal.workflows.tasks import pass_is_valid, run_job, upstream_exists

__all__ = [
    "RunResult",
    "finalise",
    "make_runner",
    "run_file_passes",
    "run_systematic",
    "start_workers_early",
    "tasks_for",
    "worker_preload",
]


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


def worker_preload(cfg: Config) -> tuple[str, ...]:
    """The modules a pool's fork server imports once for all workers (qgcal.executors.worker_preload)."""
    assert run_job.__module__ == TASKS_MODULE  # what the fork server imports must hold the task function
    return executor_preload(cfg)


def start_workers_early(cfg: Config, executor: Executor | None = None) -> None:
    """Let the configured pool's fork server import the workers' modules while the pre-flight checks run."""
    if executor is None:
        start_early(cfg.executor.kind, cfg.executor.workers, preload=worker_preload(cfg))


def make_runner(cfg: Config, executor: Executor | None = None) -> Runner:
    """A Runner over ``executor``, or over the configured one (rebuilt if a worker crash breaks it)."""
    n = cfg.executor.workers
    if executor is not None:
        width = getattr(executor, "_max_workers", None) or n  # how many jobs run at once (crash retry waves)
        return Runner(cfg, lambda: executor, width=width)
    kind = cfg.executor.kind
    preload = worker_preload(cfg)
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


def show_cutflows(
    cfg: Config, inputs: final.FinalInputs, mc_sample: str, shown: set[tuple[str, str]], *, tables: bool = True
) -> None:
    """Log each sample's cut flow (once per sample and artifact namespace in a run; with ``tables``
    False only nominal's) and warn, once per sample and cut, about a non-phase-space cut removing
    more than ``selection.warn_fraction``."""
    for sample, namespace, arts in (
        (cfg.data, inputs.data_namespace, inputs.data),
        (mc_sample, inputs.mc_namespace, inputs.mc),
    ):
        if (sample, namespace) in shown or not arts:
            continue
        shown.add((sample, namespace))
        flow = read_cutflow(cfg, sample, arts)
        if tables or namespace == "nominal":
            for line in flow.lines():
                log.info("%s", line if namespace == "nominal" else f"[{namespace}] {line}")
        for cut, fraction in large_cuts(flow, cfg.selection.warn_fraction):
            if (sample, cut) not in shown:
                shown.add((sample, cut))
                log.warning(
                    "cut %r removes %.1f%% of the events of sample %r reaching it (more than "
                    "selection.warn_fraction = %g); check it is meant",
                    cut,
                    100 * fraction,
                    sample,
                    cfg.selection.warn_fraction,
                )


def finalise(
    cfg: Config, syst: str, *, plot: bool | None = None, shown: set[tuple[str, str]] | None = None
) -> RunResult:
    """The final pass of ``syst`` from the per-file histogram artifacts (see final_reweighting.run).

    ``shown``: what this run already logged (cut flows, warnings), shared by the systematics of a
    sweep, which logs the nominal cut flows only (a 100-replica PDF set would print 100 tables) and
    every warning once.
    """
    inputs = final_inputs(cfg, syst)
    show_cutflows(cfg, inputs, mc_sample_for(cfg, syst), set() if shown is None else shown, tables=shown is None)
    res = final.run(cfg, syst, inputs, plot=plot)
    return RunResult(res.systematic, res.results_dir, res.records, skipped=res.skipped)


def run_systematic(cfg: Config, syst: str, *, executor: Executor | None = None, force: bool = False) -> RunResult:
    """``qgcal run --syst``: passes for the files this systematic needs, then final_reweighting."""
    cfg.variation(syst)  # unknown names fail before any work
    start_workers_early(cfg, executor)
    preflight(cfg, [syst])  # what 'qgcal validate' checks, before any event is read
    with output_lock(cfg.output_path):
        tasks = tasks_for(cfg, syst)
        runner = make_runner(cfg, executor)
        if cfg.plots.enabled:
            from qgcal.plotting import preload_plotting

            preload_plotting()  # matplotlib's imports overlap the per-file passes, not the final pass
        try:
            processed = run_file_passes(cfg, tasks, runner, force=force)
        finally:
            runner.shutdown()
        result = finalise(cfg, syst, plot=cfg.plots.enabled)
        result.files_processed = processed
        return result

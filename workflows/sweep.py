"""Several systematics in one go, locally or split into shards for array jobs.

The union of the systematics' file tasks (data and nominal MC shared, each made
once) goes through one pool; then each systematic's final pass runs. The same
sorted task list cut into fixed-size shards is what a Slurm array task or any
other batch job processes (``run_shard``), so a split run and a local run do
exactly the same per-file work and merge the same artifacts in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor

from qgcal.config import Config
from qgcal.errors import ArtifactError, ConfigError
from qgcal.locking import output_lock
from qgcal.passes import artifact_of
from qgcal.plan import FileTask
from qgcal.stages import FILE_PASSES, file_pass
from qgcal.workflows.preflight import preflight
from qgcal.workflows.runner import read_skip_record
from qgcal.workflows.single import (
    RunResult,
    finalise,
    make_runner,
    run_file_passes,
    start_workers_early,
    tasks_for,
)
from qgcal.workflows.tasks import pass_is_valid

__all__ = [
    "finalise_many",
    "finalise_parallel",
    "missing_artifacts",
    "run_many",
    "run_shard",
    "shards",
    "sweep_tasks",
]


def sweep_tasks(cfg: Config, systs: Sequence[str]) -> list[FileTask]:
    """Every file task the systematics need, deduplicated and sorted (a stable order)."""
    for s in systs:
        cfg.variation(s)
    tasks: dict[str, FileTask] = {}
    for s in systs:
        for t in tasks_for(cfg, s):
            tasks.setdefault(f"{t.variation}@{t.key}", t)
    return [tasks[k] for k in sorted(tasks)]


def shards(tasks: Sequence[FileTask], shard_size: int) -> list[list[FileTask]]:
    if shard_size < 1:
        raise ConfigError(f"shard size must be >= 1, found {shard_size}")
    return [list(tasks[i : i + shard_size]) for i in range(0, len(tasks), shard_size)]


def run_shard(
    cfg: Config,
    systs: Sequence[str],
    index: int,
    shard_size: int,
    *,
    executor: Executor | None = None,
    force: bool = False,
) -> list[FileTask]:
    """The per-file passes of shard ``index`` only; writes only that shard's artifacts.

    No output lock: array tasks run concurrently and each writes different files
    (atomically), and artifacts that are already valid are skipped, so a
    resubmitted task is idempotent.
    """
    parts = shards(sweep_tasks(cfg, systs), shard_size)
    if not 0 <= index < len(parts):
        raise ConfigError(f"--task-index {index} out of range: this sweep has {len(parts)} shards of {shard_size}")
    mine = parts[index]
    runner = make_runner(cfg, executor)
    try:
        run_file_passes(cfg, mine, runner, force=force)
    finally:
        runner.shutdown()
    return mine


def missing_artifacts(cfg: Config, tasks: Sequence[FileTask]) -> list[tuple[FileTask, str]]:
    """(task, pass name) pairs whose artifact is missing or stale (files skipped as bad excepted)."""
    out = []
    for t in tasks:
        if read_skip_record(cfg, t) is not None and not artifact_of(cfg, t, FILE_PASSES[0]).is_file():
            continue
        for index, p in enumerate(FILE_PASSES):
            if not pass_is_valid(cfg, t, index):
                out.append((t, p.name))
                break
    return out


def finalise_many(cfg: Config, systs: Sequence[str]) -> dict[str, RunResult]:
    """The final pass of every systematic; every per-file artifact must be valid."""
    tasks = sweep_tasks(cfg, systs)
    missing = missing_artifacts(cfg, tasks)
    if missing:
        t, stage = missing[0]
        raise ArtifactError(
            f"{len(missing)} file tasks are not done (first: {stage} of {t.path} for {t.variation}, "
            f"expected {artifact_of(cfg, t, file_pass(stage))}); run them first"
        )
    with output_lock(cfg.output_path):
        return finalise_parallel(cfg, systs)


def finalise_parallel(cfg: Config, systs: Sequence[str]) -> dict[str, RunResult]:
    """Every systematic's final pass, ``executor.workers`` at a time in forked processes.

    The final passes are independent (each derives the frozen cuts from nominal MC itself and
    writes its own results/<syst>/; merged sets that several share are written atomically with
    the same bytes), so a sweep's serial tail of final passes shrinks with the workers. The cut
    flows are logged here first, once per run, in order. A worker draws its plots serially,
    except where only nominal draws any (``plots.systematics`` off, the default): it starts
    first and spreads its figures over ``executor.workers`` processes of its own (its two
    12-panel figures are ~40 % of a sweep's final-pass CPU; drawn in one process they were the
    tail the other workers waited for), oversubscribing the cores by at most one process per
    extra worker while they draw.
    """
    from qgcal.executors import fork_map
    from qgcal.plan import mc_sample_for
    from qgcal.workflows.single import final_inputs, show_cutflows

    shown: set[tuple[str, str]] = set()  # cut flows and their warnings: once per run
    if cfg.executor.workers <= 1 or len(systs) <= 1:
        return {s: finalise(cfg, s, shown=shown) for s in systs}
    for s in systs:
        show_cutflows(cfg, final_inputs(cfg, s), mc_sample_for(cfg, s), shown)
    serial_plots = cfg.with_overrides({"executor.workers": 1})
    parallel_nominal = cfg.plots.enabled and not cfg.plots.systematics and "nominal" in systs
    order = sorted(systs, key=lambda s: s != "nominal") if parallel_nominal else list(systs)
    items = [(cfg if parallel_nominal and s == "nominal" else serial_plots, s, frozenset(shown)) for s in order]
    results = dict(zip(order, fork_map(_finalise_one, items, cfg.executor.workers)))
    return {s: results[s] for s in systs}


def _finalise_one(item: tuple[Config, str, frozenset[tuple[str, str]]]) -> RunResult:
    cfg, syst, shown = item
    return finalise(cfg, syst, shown=set(shown))


def run_many(
    cfg: Config, systs: Sequence[str], *, executor: Executor | None = None, force: bool = False
) -> dict[str, RunResult]:
    """Per-file passes for all systematics through one pool, then each final pass."""
    start_workers_early(cfg, executor)
    preflight(cfg, systs)  # what 'qgcal validate' checks, before any event is read
    tasks = sweep_tasks(cfg, systs)
    with output_lock(cfg.output_path):
        runner = make_runner(cfg, executor)
        if cfg.plots.enabled:
            from qgcal.plotting import preload_plotting

            preload_plotting()  # matplotlib's imports overlap the per-file passes, not the final passes
        try:
            run_file_passes(cfg, tasks, runner, force=force)
        finally:
            runner.shutdown()
        return finalise_parallel(cfg, systs)

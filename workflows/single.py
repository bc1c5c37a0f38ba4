"""One systematic, end to end: the three per-file passes over a pool, then final_reweighting.

Passes run one after the other over all files (a barrier per pass) with ONE
executor reused for all of them. A variation needs the nominal MC too, since
its working-point cuts are frozen from nominal: those files are planned as
well and reused when their artifacts are already valid.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgcal import __version__
from qgcal.artifacts import write_json_atomic
from qgcal.config import Config
from qgcal.errors import InputError, RunLockedError
from qgcal.executors import make_executor
from qgcal.plan import STAGES, FileTask, artifact_path, mc_sample_for, plan_tasks, reweighting_for
from qgcal.progress import PassProgress, log
from qgcal.stages import final_reweighting as fr
from qgcal.stages.pkl2predpkl import InferenceOverrides
from qgcal.workflows.tasks import group_by_read, pass_is_valid, run_pass, run_root2pkl_group

__all__ = ["run_systematic", "RunResult", "output_lock", "run_file_passes", "finalise"]


@dataclass
class RunResult:
    systematic: str
    results_dir: Path
    records: list[dict[str, Any]]
    files_processed: dict[str, int] = field(default_factory=dict)


@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """An exclusive flock on the output directory; the kernel drops it if we are killed."""
    output.mkdir(parents=True, exist_ok=True)
    fd = os.open(output / ".qgcal.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{output}: another qgcal run is writing here; wait for it or use another output directory"
            ) from None
        yield
    finally:
        os.close(fd)


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
            raise InputError(f"{t.path}: input file not found (listed by samples.{t.sample}); "
                             "fix the path or glob in the config")
    return [tasks[k] for k in sorted(tasks)]


def run_file_passes(cfg: Config, tasks: list[FileTask], executor: Executor, *, force: bool = False,
                    overrides: InferenceOverrides | None = None) -> dict[str, int]:
    """Run root2pkl, pkl2predpkl and predpkl2hist over ``tasks``; returns files processed per pass."""
    done: dict[str, int] = {}
    for stage in STAGES:
        todo = tasks if force else [t for t in tasks if not pass_is_valid(cfg, t, stage)]
        done[stage] = len(todo)
        with PassProgress(stage, len(todo), skipped=len(tasks) - len(todo)) as progress:
            futures: dict[Future[Any], list[FileTask]] = {}
            if stage == "root2pkl":  # one read per (file, tree) for all variations sharing it
                for group in group_by_read(todo):
                    futures[executor.submit(run_root2pkl_group, cfg, group, True)] = group
            else:
                for t in todo:
                    futures[executor.submit(run_pass, cfg, t, stage, True, overrides)] = [t]
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in finished:
                    err = fut.exception()
                    if err is not None:
                        for p in pending:
                            p.cancel()
                        wait(pending)  # let running files finish and keep their artifacts
                        raise err
                    result = fut.result()
                    for outcome in result if isinstance(result, list) else [result]:
                        progress.advance(outcome.events, Path(futures[fut][0].path).name)
    return done


def finalise(cfg: Config, syst: str) -> RunResult:
    """final_reweighting for one systematic from the per-file histogram artifacts."""
    out = cfg.output_path
    mc_sample = mc_sample_for(cfg, syst)
    reweight = reweighting_for(cfg, syst)
    data_tasks = plan_tasks(cfg, syst, include_mc=False)
    mc_tasks = plan_tasks(cfg, syst, include_data=False, mc_sample=mc_sample)
    nominal_mc_tasks = plan_tasks(cfg, "nominal", include_data=False)

    def arts(tasks: list[FileTask]) -> list[tuple[str, Path]]:
        return [(t.key, artifact_path(out, t, "predpkl2hist")) for t in tasks]

    data_h, data_info = fr.merge_sample(cfg, cfg.data, arts(data_tasks))
    fr.check_data(syst, data_info, cfg.data)
    mc_h, mc_info = fr.merge_sample(cfg, mc_sample, arts(mc_tasks))
    if mc_tasks == nominal_mc_tasks:
        nom_h = mc_h
    else:
        nom_h, _ = fr.merge_sample(cfg, cfg.nominal_mc, arts(nominal_mc_tasks))

    data_reps = fr.merge_replicas(cfg, arts(data_tasks), data_info)
    mc_reps = fr.merge_replicas(cfg, arts(mc_tasks), mc_info)
    stage_dir = out / (data_tasks[0].variation if data_tasks else "nominal") / "final_reweighting"
    fr.save_merged(stage_dir / f"merged_{cfg.data}.npz", data_h, data_info, data_reps)
    mc_dir = out / (mc_tasks[0].variation if mc_tasks else "nominal") / "final_reweighting"
    fr.save_merged(mc_dir / f"merged_{mc_sample}.npz", mc_h, mc_info, mc_reps)

    nominal_ex = fr.extract_all(cfg, nom_h, data_h)
    cuts = fr.frozen_cuts(cfg, nominal_ex)
    ex = nominal_ex if nom_h is mc_h and reweight == "quark" else fr.extract_all(cfg, mc_h, data_h, reweight)
    boot = fr.bootstrap_stat(cfg, mc_reps, data_reps, cuts, reweight) if cfg.bootstrap else None
    records = fr.scale_factor_records(cfg, syst, ex, cuts, boot)

    results = out / "results" / syst
    flagged = sum(1 for r in records if r["flags"])
    metadata = {
        "systematic": syst,
        "qgcal_version": __version__,
        "config_name": cfg.name,
        "lumi_pb": cfg.lumi_pb,
        "mc_sample": mc_sample,
        "data_sample": cfg.data,
        "reweighting": reweight,
        "stat_method": f"bootstrap ({cfg.bootstrap} Poisson replicas)" if cfg.bootstrap else "analytic",
        "cuts_from": "nominal",
        "merge": {"data": data_info, "mc": mc_info},
        "n_records": len(records),
        "n_flagged": flagged,
        "null_means": "undefined (NaN); the record's flags say why",
    }
    write_json_atomic(results / "scale_factors.json", {"metadata": metadata, "records": records})
    write_json_atomic(results / "cuts.json", cuts)
    write_json_atomic(results / "extraction.json", fr.extraction_summary(ex))
    if cfg.plots.enabled:
        from qgcal.plotting import plot_extractions

        plot_extractions(cfg, syst, ex, results / "plots")
    if flagged:
        reasons = sorted({f for r in records for f in r["flags"]})
        log.warning("%s: %d of %d scale factors flagged (%s); see %s", syst, flagged, len(records),
                    ", ".join(reasons), results / "scale_factors.json")
    return RunResult(syst, results, records)


def run_systematic(cfg: Config, syst: str, *, workers: int | None = None, executor: str | Executor | None = None,
                   force: bool = False, overrides: InferenceOverrides | None = None) -> RunResult:
    """``qgcal run --syst``: passes for the files this systematic needs, then final_reweighting."""
    cfg.variation(syst)  # unknown names fail before any work
    with output_lock(cfg.output_path):
        tasks = tasks_for(cfg, syst)
        n_workers = workers if workers is not None else cfg.executor.workers
        ex = make_executor(executor or cfg.executor.kind, n_workers)
        try:
            processed = run_file_passes(cfg, tasks, ex, force=force, overrides=overrides)
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
        result = finalise(cfg, syst)
        result.files_processed = processed
        return result

"""One systematic, end to end: the three per-file passes over a pool, then final_reweighting.

Passes run one after the other over all files (a barrier per pass) with ONE
executor reused for all of them. A variation needs the nominal MC too, since
its working-point cuts are frozen from nominal: those files are planned as
well and reused when their artifacts are already valid.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qgcal import __version__
from qgcal.artifacts import write_json_atomic
from qgcal.config import Config, ModelTagger
from qgcal.errors import ArtifactError, InputError, RunLockedError
from qgcal.executors import make_executor
from qgcal.plan import STAGES, FileTask, artifact_path, mc_sample_for, plan_tasks, reweighting_for
from qgcal.progress import PassProgress, log
from qgcal.stages import final_reweighting as fr
from qgcal.stages.pkl2predpkl import InferenceOverrides
from qgcal.workflows.runner import Job, Runner, read_skip_record
from qgcal.workflows.tasks import group_by_read, pass_is_valid, run_pass, run_root2pkl_group

__all__ = ["run_systematic", "RunResult", "output_lock", "run_file_passes", "finalise"]


@dataclass
class RunResult:
    systematic: str
    results_dir: Path
    records: list[dict[str, Any]]
    files_processed: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)


LOCK_NAME = ".qgcal.lock"


@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """An exclusive flock on ``<output>/.qgcal.lock``; the kernel drops it if we are killed.

    Why flock and not a PID file: a lock file left by a killed run would have to be
    judged stale (was the PID reused? is it another host's?); the kernel releases a
    flock when the process dies, however it dies. The file only records who holds
    the lock, for the message the second run prints. Not re-entrant: take it once.
    Worker processes start from a forkserver, so they never inherit the descriptor.
    """
    output.mkdir(parents=True, exist_ok=True)
    fd = os.open(output / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{output}: another qgcal run is writing here{_lock_holder(fd)}; wait for it to finish "
                "or use another output directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _lock_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return f" ({text[0]})" if text and text[0].isprintable() else ""


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


def make_runner(cfg: Config, executor: str | Executor | None, workers: int | None, *,
                skip_bad_files: bool = False) -> Runner:
    """A Runner whose executor is rebuilt from the config if a worker crash breaks it."""
    n = workers if workers is not None else cfg.executor.workers
    if executor is not None and not isinstance(executor, str):
        given = executor
        width = getattr(given, "_max_workers", None) or n  # how many jobs run at once (crash retry waves)
        return Runner(cfg, lambda: given, skip_bad_files=skip_bad_files, width=width)
    kind = executor or cfg.executor.kind
    models = any(isinstance(t, ModelTagger) for t in cfg.taggers.values())
    preload = ("sklearn.ensemble", "skops.io") if models else ()
    return Runner(cfg, lambda: make_executor(kind, n, scheduler=cfg.executor.scheduler, preload=preload),
                  skip_bad_files=skip_bad_files, width=1 if kind == "serial" else n)


def run_file_passes(cfg: Config, tasks: list[FileTask], runner: Runner, *, force: bool = False,
                    overrides: InferenceOverrides | None = None,
                    stages: tuple[str, ...] = STAGES) -> dict[str, int]:
    """Run root2pkl, pkl2predpkl and predpkl2hist over ``tasks``; returns files processed per pass."""
    done: dict[str, int] = {}
    for stage in stages:
        todo = tasks if force else [t for t in tasks if not pass_is_valid(cfg, t, stage)]
        if stage != "root2pkl":  # files skipped as bad have nothing to carry on with
            todo = [t for t in todo if artifact_path(cfg.output_path, t, "root2pkl").is_file()]
        done[stage] = len(todo)
        if stage == "root2pkl":  # one read per (file, tree) for all variations sharing it
            jobs = [Job(run_root2pkl_group, (cfg, group, True), group) for group in group_by_read(todo)]
        else:
            jobs = [Job(run_pass, (cfg, t, stage, True, overrides), [t]) for t in todo]
        # one progress step per job: a root2pkl job is one read of a (file, tree) for all its variations
        with PassProgress(stage, len(jobs), skipped=len(tasks) - len(todo), files=len(todo),
                          unit="reads" if stage == "root2pkl" else "files") as progress:
            runner.run(stage, jobs, progress)
    return done


def finalise(cfg: Config, syst: str, *, plot: bool | None = None) -> RunResult:
    """final_reweighting for one systematic from the per-file histogram artifacts.

    Extraction plots: always for nominal and for an explicit ``qgcal run``; for the other
    systematics of a sweep only with ``plots.systematics`` (a 100-replica PDF sweep
    should not draw 100 figures).
    """
    if plot is None:
        plot = cfg.plots.enabled and (syst == "nominal" or cfg.plots.systematics)
    out = cfg.output_path
    mc_sample = mc_sample_for(cfg, syst)
    reweight = reweighting_for(cfg, syst)
    data_tasks = plan_tasks(cfg, syst, include_mc=False)
    mc_tasks = plan_tasks(cfg, syst, include_data=False, mc_sample=mc_sample)
    nominal_mc_tasks = plan_tasks(cfg, "nominal", include_data=False)

    # keyed: a variation's MC and the nominal MC can list the same files
    skipped_by_task: dict[tuple[str, str, str], dict[str, Any]] = {}

    def arts(tasks: list[FileTask]) -> list[tuple[str, Path]]:
        """Histogram artifacts; a missing one is an error unless the file was skipped as bad."""
        found = []
        for t in tasks:
            path = artifact_path(out, t, "predpkl2hist")
            record = None if path.is_file() else read_skip_record(cfg, t)
            if record is not None:
                skipped_by_task[(t.sample, t.path, t.variation)] = record
                continue
            if not path.is_file():
                raise ArtifactError(f"{path}: histogram artifact missing for {t.path} ({t.variation}); "
                                    "run the per-file passes first (qgcal run / qgcal sweep)")
            found.append((t.key, path))
        return found

    data_h, data_info, data_reps = fr.merge_sample(cfg, cfg.data, arts(data_tasks))
    fr.check_data(syst, data_info, cfg.data)
    mc_h, mc_info, mc_reps = fr.merge_sample(cfg, mc_sample, arts(mc_tasks))
    if mc_tasks == nominal_mc_tasks:
        nom_h = mc_h
    else:
        nom_h, _, _ = fr.merge_sample(cfg, cfg.nominal_mc, arts(nominal_mc_tasks))

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
    skipped = list(skipped_by_task.values())
    lost: dict[str, int] = {}
    for r in skipped:
        if r.get("events_lost") is not None:
            lost[r["file"]] = max(lost.get(r["file"], 0), int(r["events_lost"]))
    flagged = sum(1 for r in records if r["flags"])
    metadata = {
        "systematic": syst,
        "qgcal_version": __version__,
        "config_hash": fr.config_hash_for(cfg, syst),  # of the config fields this pass depends on
        "config_name": cfg.name,
        "lumi_pb": cfg.lumi_pb,
        "mc_sample": mc_sample,
        "data_sample": cfg.data,
        "reweighting": reweight,
        "stat_method": f"bootstrap ({cfg.bootstrap} Poisson replicas)" if cfg.bootstrap else "analytic",
        "cuts_from": "nominal",
        "merge": {"data": data_info, "mc": mc_info},
        "skipped_files": sorted(skipped, key=lambda r: (r["sample"], r["file"], r["variation"])),
        # entries of each skipped file's tree, each file once (as report.md and the summary line)
        "events_lost": sum(lost.values()),
        "events_lost_unknown_files": sorted(f for f in {r["file"] for r in skipped} if f not in lost),
        "n_records": len(records),
        "n_flagged": flagged,
        "null_means": "undefined (NaN); the record's flags say why",
    }
    write_json_atomic(results / "scale_factors.json", {"metadata": metadata, "records": records})
    write_json_atomic(results / "cuts.json", cuts)
    write_json_atomic(results / "extraction.json", fr.extraction_summary(ex))
    if plot:
        from qgcal.plotting import plot_extractions

        plot_extractions(cfg, syst, ex, results / "plots")
    if skipped:
        log.warning("%s: %d input file(s) skipped as bad, %d events lost (%s); listed in %s", syst,
                    len({r["file"] for r in skipped}), metadata["events_lost"], ", ".join(sorted({Path(r["file"]).name for r in skipped})),
                    results / "scale_factors.json")
    if flagged:
        reasons = sorted({f for r in records for f in r["flags"]})
        log.warning("%s: %d of %d scale factors flagged (%s); see %s", syst, flagged, len(records),
                    ", ".join(reasons), results / "scale_factors.json")
    return RunResult(syst, results, records, skipped=metadata["skipped_files"])


def run_systematic(cfg: Config, syst: str, *, workers: int | None = None, executor: str | Executor | None = None,
                   force: bool = False, overrides: InferenceOverrides | None = None,
                   skip_bad_files: bool | None = None) -> RunResult:
    """``qgcal run --syst``: passes for the files this systematic needs, then final_reweighting."""
    cfg.variation(syst)  # unknown names fail before any work
    skip = cfg.reading.skip_bad_files if skip_bad_files is None else skip_bad_files
    with output_lock(cfg.output_path):
        tasks = tasks_for(cfg, syst)
        runner = make_runner(cfg, executor, workers, skip_bad_files=skip)
        try:
            processed = run_file_passes(cfg, tasks, runner, force=force, overrides=overrides)
        finally:
            runner.shutdown()
        result = finalise(cfg, syst, plot=cfg.plots.enabled)
        result.files_processed = processed
        return result

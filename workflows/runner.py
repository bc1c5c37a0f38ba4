"""Running the per-file passes over an executor: progress, worker crashes, bad files.

Why here and not in the executor: what to do when a worker dies (retry the
file in a fresh pool, then name it) or a file is bad (stop, or skip it and
record the loss) is calibration policy, the same for every executor.

* A worker killed by a signal or the OOM killer breaks a process pool
  (``BrokenProcessPool``; Dask: ``KilledWorker``). The unfinished files are
  retried in a fresh pool, one at a time after the first crash so the culprit is
  identified, up to ``executor.retries`` times; then the run stops naming it.
* A bad input file (``InputError``) stops the run after the files already running
  have finished (their artifacts are kept). With ``reading.skip_bad_files`` /
  ``--skip-bad-files`` the file is skipped instead, and a skip record (file,
  reason, events lost) is written where its artifact would be, so the final pass,
  the report and a Slurm final job all see it. Never silent.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qgcal.artifacts import write_json_atomic
from qgcal.config import Config
from qgcal.errors import InputError, QgcalError
from qgcal.plan import FileTask, artifact_path
from qgcal.progress import PassProgress, log

__all__ = ["Runner", "skip_record_path", "read_skip_record", "WorkerCrashError"]


class WorkerCrashError(QgcalError):
    """A file kept killing its worker process."""


def skip_record_path(cfg: Config, task: FileTask) -> Path:
    return artifact_path(cfg.output_path, task, "root2pkl").with_suffix(".skipped.json")


def read_skip_record(cfg: Config, task: FileTask) -> dict[str, Any] | None:
    import json

    path = skip_record_path(cfg, task)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _events_in(path: str, tree: str) -> int | None:
    """Entries of the file's tree, when the file can still be opened (else unknown)."""
    try:
        import uproot

        with uproot.open(path) as f:
            return int(f[tree].num_entries)
    except Exception:
        return None


def _is_crash(err: BaseException) -> bool:
    return isinstance(err, BrokenProcessPool) or type(err).__name__ == "KilledWorker"


@dataclass
class Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    tasks: list[FileTask]

    @property
    def label(self) -> str:
        return self.tasks[0].path


class Runner:
    """Submits jobs, renews a broken pool, retries crashed files, records skipped ones."""

    def __init__(self, cfg: Config, make_executor: Callable[[], Executor], *, skip_bad_files: bool = False):
        self.cfg = cfg
        self._make = make_executor
        self._executor: Executor | None = None
        self.skip_bad_files = skip_bad_files
        self.skipped: list[FileTask] = []

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = self._make()
        return self._executor

    def _renew(self) -> None:
        if self._executor is not None:
            try:
                self._executor.shutdown(wait=False, cancel_futures=True)
            except Exception:  # noqa: BLE001 - a broken pool may fail to shut down cleanly
                pass
        self._executor = None

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def run(self, stage: str, jobs: list[Job], progress: PassProgress) -> None:
        attempts: dict[int, int] = {}
        queue = list(range(len(jobs)))
        isolate = False
        while queue:
            crashed: list[int] = []
            batches = [[i] for i in queue] if isolate else [queue]
            for batch in batches:
                crashed += self._run_batch(stage, jobs, batch, progress)
            for i in crashed:
                attempts[i] = attempts.get(i, 0) + 1
                if attempts[i] > self.cfg.executor.retries:
                    raise WorkerCrashError(
                        f"{jobs[i].label}: the worker died {attempts[i]} times during {stage} (killed by a "
                        "signal or the out-of-memory killer); lower reading.step_size or --workers, or "
                        "check this file"
                    )
            if crashed:
                log.warning("%s: a worker died; retrying %d file(s) in a fresh pool", stage, len(crashed))
            queue, isolate = crashed, True

    def _run_batch(self, stage: str, jobs: list[Job], batch: list[int], progress: PassProgress) -> list[int]:
        futures: dict[Future[Any], int] = {}
        crashed: list[int] = []
        try:
            for i in batch:
                futures[self.executor.submit(jobs[i].fn, *jobs[i].args)] = i
        except BrokenProcessPool:
            self._renew()
            return [i for i in batch if i not in futures.values()] + list(futures.values())
        pending = set(futures)
        error: BaseException | None = None
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                i = futures[fut]
                if fut.cancelled():
                    continue
                err = fut.exception()
                if err is None:
                    result = fut.result()
                    for outcome in result if isinstance(result, list) else [result]:
                        progress.advance(outcome.events, Path(jobs[i].label).name)
                    self._clear_skip(jobs[i])
                elif _is_crash(err):
                    crashed.append(i)
                elif isinstance(err, InputError) and self.skip_bad_files:
                    self._record_skip(stage, jobs[i], err)
                    progress.advance(0, Path(jobs[i].label).name + " (skipped)")
                elif error is None:
                    error = err
                    for p in pending:  # stop submitting; running files finish and keep their artifacts
                        p.cancel()
        if crashed:
            self._renew()
        if error is not None:
            raise error
        return crashed

    def _record_skip(self, stage: str, job: Job, err: InputError) -> None:
        events = _events_in(job.tasks[0].path, job.tasks[0].tree)
        for task in job.tasks:
            write_json_atomic(skip_record_path(self.cfg, task), {
                "file": task.path, "sample": task.sample, "slice": task.slice, "variation": task.variation,
                "tree": task.tree, "stage": stage, "reason": str(err), "events_lost": events,
            })
            self.skipped.append(task)
        log.warning("skipped %s: %s", job.label, err)

    def _clear_skip(self, job: Job) -> None:
        for task in job.tasks:
            path = skip_record_path(self.cfg, task)
            if path.exists():
                path.unlink()

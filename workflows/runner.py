"""Running the per-file passes over an executor: progress, worker crashes, bad files.

Why here and not in the executor: what to do when a worker dies (retry the
file in a fresh pool, then name it) or a file is bad (stop, or skip it and
record the loss) is calibration policy, the same for every executor.

* A worker killed by a signal or the OOM killer breaks a process pool
  (``BrokenProcessPool``; Dask: ``KilledWorker``). The unfinished files are
  retried in a fresh pool, in waves of the pool's width, and the files of a wave
  that crashes again one at a time, so the culprit is identified; a file that
  used up ``executor.retries`` retries and then killed its worker while running
  alone stops the run with an error naming it.
* A bad input file (``InputError``) stops the run after the files already running
  have finished (their artifacts are kept). With ``reading.skip_bad_files`` (the CLI's
  ``--skip-bad-files`` sets it) the file is skipped instead, and a skip record (file,
  reason, events lost) is written where its artifact would be, so the final pass,
  the report and a Slurm final job all see it. Never silent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qgcal.artifacts import write_json_atomic
from qgcal.config import Config
from qgcal.errors import InputError, QgcalError
from qgcal.passes import artifact_of
from qgcal.plan import FileTask
from qgcal.progress import PassProgress, log
from qgcal.stages import FILE_PASSES

__all__ = ["Runner", "WorkerCrashError", "read_skip_record", "skip_record_path"]


class WorkerCrashError(QgcalError):
    """A file kept killing its worker process."""


def skip_record_path(cfg: Config, task: FileTask) -> Path:
    """Where a file skipped as bad is recorded: beside the first pass's artifact, which it replaces."""
    return artifact_of(cfg, task, FILE_PASSES[0]).with_suffix(".skipped.json")


def read_skip_record(cfg: Config, task: FileTask) -> dict[str, Any] | None:
    import json

    path = skip_record_path(cfg, task)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _events_in(path: str, tree: str) -> int | None:
    """Entries of the file's tree when the file is whole and can still be opened; else unknown (None).

    A truncated file is never counted: uproot may still open it and find an early cycle of the
    tree (written before its events), whose entry count (often 0) is not the file's.
    """
    from qgcal.rootio import check_root_file

    try:
        check_root_file(Path(path))
    except InputError:
        return None
    try:
        import uproot

        with uproot.open(path) as f:
            return int(f[tree].num_entries)
    except Exception:  # noqa: BLE001 - a file skipped as bad may fail to open in any way: unknown
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

    @property
    def description(self) -> str:
        """What a progress line names: the file, its tree and the variations it serves.

        One file is read once per tree and serves several variations, so the file
        name alone repeats; ``pythia_JZ4_000.root [tree nominal: nominal, PDF_1]``.
        """
        first = self.tasks[0]
        variations = ", ".join(sorted({t.variation for t in self.tasks}))
        return f"{Path(first.path).name} [tree {first.tree}: {variations}]"


class Runner:
    """Submits jobs, renews a broken pool, retries crashed files, records skipped ones.

    ``width`` is how many jobs the executor runs at once (the pool size). After a
    crash the unfinished files are rerun in waves of ``width`` in a fresh pool, and
    only the files of a wave that crashes again run one at a time: one bad file among
    thousands costs one serial wave, not a serial pass.
    """

    def __init__(self, cfg: Config, make_executor: Callable[[], Executor], *, width: int = 1):
        self.cfg = cfg
        self._make = make_executor
        self._executor: Executor | None = None
        self.skip_bad_files = cfg.reading.skip_bad_files
        self.width = max(1, int(width))
        self.skipped: list[FileTask] = []
        self.last_crash = ""

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = self._make()
        return self._executor

    def _renew(self, err: BaseException | None = None) -> None:
        """Drop a broken process pool so the next job gets a fresh one.

        A Dask ``KilledWorker`` does not break the cluster (the nanny restarts the
        worker): that executor is kept, since closing it would close the client and
        the LocalCluster it owns.
        """
        if err is not None and not isinstance(err, BrokenProcessPool):
            return
        if self._executor is not None:
            try:
                self._executor.shutdown(wait=False, cancel_futures=True)
            except Exception as problem:  # noqa: BLE001 - a broken pool may fail to shut down cleanly
                log.debug("shutting down the broken pool: %s", problem)
        self._executor = None

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def run(self, stage: str, jobs: list[Job], progress: PassProgress) -> None:
        """Every job once; after a crash, waves of ``width``, then one at a time.

        Every crash counts as an attempt for each file that was unfinished in the lost
        pool; the run stops once a file has used more than ``executor.retries``
        attempts and its last crash happened while it ran alone, so the file named is
        the one that killed its worker, never a bystander.
        """
        retries = self.cfg.executor.retries
        attempts: dict[int, int] = {}
        crashed = self._run_batch(stage, jobs, list(range(len(jobs))), progress)
        if not crashed:
            return
        for i in crashed:
            attempts[i] = 1
        wave = self.width if len(crashed) > 1 else 1
        while crashed:
            log.warning(
                "%s: a worker died (killed by a signal or the out-of-memory killer); retrying %d "
                "unfinished file(s) in a fresh pool, %d at a time",
                stage,
                len(crashed),
                wave,
            )
            again: list[int] = []
            for k in range(0, len(crashed), wave):
                batch = crashed[k : k + wave]
                lost = self._run_batch(stage, jobs, batch, progress)
                for i in lost:
                    attempts[i] = attempts.get(i, 0) + 1
                    if len(batch) == 1 and attempts[i] > retries:
                        start = f"; last: {self.last_crash}" if self.last_crash.startswith("could not") else ""
                        raise WorkerCrashError(
                            f"{jobs[i].label}: the worker died {attempts[i]} times during {stage}, the last "
                            f"time while this file ran alone (killed by a signal or the out-of-memory "
                            f"killer{start}); lower reading.step_size or --workers, or check this file"
                        )
                again += lost
            crashed = sorted(again)
            wave = 1  # whatever crashed twice now runs alone

    def _run_batch(self, stage: str, jobs: list[Job], batch: list[int], progress: PassProgress) -> list[int]:
        """Run ``batch``; returns the jobs lost to a dead worker (the pool is renewed then)."""
        futures: dict[Future[Any], int] = {}
        crashed: list[int] = []
        error: BaseException | None = None
        crash: BaseException | None = None
        try:
            for i in batch:
                fut = self.executor.submit(jobs[i].fn, *jobs[i].args)
                futures[fut] = i
                # an in-process executor has already run the job: stop submitting at the first
                # error that ends the run, as a pool does (see below)
                if fut.done() and not fut.cancelled() and self._is_fatal(fut.exception()):
                    break
        except (BrokenProcessPool, OSError, EOFError) as lost:
            # submit() starts workers on demand. A worker that dies meanwhile breaks the pool under
            # it (the pool's clean-up closes the new worker's fds: OSError EBADF, EOFError), and the
            # forkserver can die of the half-sent request (ConnectionRefusedError for the next
            # pool): the pool is lost like in a crash, and the next one restarts the forkserver
            if not isinstance(lost, BrokenProcessPool) and not isinstance(self._executor, ProcessPoolExecutor):
                raise
            submitted = set(futures.values())
            crashed = [i for i in batch if i not in submitted]
            crash = lost
            if not isinstance(lost, BrokenProcessPool):
                crash = BrokenProcessPool(f"could not start a worker process ({type(lost).__name__}: {lost})")
                time.sleep(0.5)  # let a dying forkserver exit, so that the next pool starts a new one
        pending = set(futures)
        # as_completed waits on all futures with one waiter; wait(FIRST_COMPLETED) in a loop locks every
        # pending future on every call: quadratic, seconds of this process's time for 1000 files
        for fut in as_completed(futures):
            pending.discard(fut)
            i = futures[fut]
            if fut.cancelled():
                continue
            err = fut.exception()
            if err is None:
                result = fut.result()
                outcomes = result if isinstance(result, list) else [result]
                progress.advance(sum(o.events for o in outcomes), jobs[i].description)
                self._clear_skip(jobs[i])
            elif _is_crash(err):
                crashed.append(i)
                crash = crash or err
            elif isinstance(err, InputError) and self.skip_bad_files:
                self._record_skip(stage, jobs[i], err)
                progress.advance(0, jobs[i].description + " (skipped)")
            elif error is None:
                error = err
                for p in pending:  # stop submitting; running files finish and keep their artifacts
                    p.cancel()
        if crash is not None:
            self.last_crash = str(crash)
            self._renew(crash)
        if error is not None:
            raise error
        return sorted(crashed)

    def _is_fatal(self, err: BaseException | None) -> bool:
        if err is None or _is_crash(err):
            return False
        return not (isinstance(err, InputError) and self.skip_bad_files)

    def _record_skip(self, stage: str, job: Job, err: InputError) -> None:
        events = _events_in(job.tasks[0].path, job.tasks[0].tree)
        for task in job.tasks:
            # artifacts of an earlier version of the file (valid before it changed and broke) must
            # not be merged as if it had been read: the skip record replaces them
            for p in FILE_PASSES:
                artifact_of(self.cfg, task, p).unlink(missing_ok=True)
            write_json_atomic(
                skip_record_path(self.cfg, task),
                {
                    "file": task.path,
                    "sample": task.sample,
                    "slice": task.slice,
                    "variation": task.variation,
                    "tree": task.tree,
                    "stage": stage,
                    "reason": str(err),
                    "events_lost": events,
                },
            )
            self.skipped.append(task)
        log.warning("skipped %s: %s", job.label, err)

    def _clear_skip(self, job: Job) -> None:
        for task in job.tasks:
            path = skip_record_path(self.cfg, task)
            if path.exists():
                path.unlink()

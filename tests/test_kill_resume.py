"""Kill and resume, worker crashes, and the output lock, with real processes and real signals.

* A ``qgcal sweep`` (a subprocess in its own session) is SIGKILLed with its whole
  process group (workers and forkserver included) at seeded random points, rerun,
  possibly killed again, and rerun to completion: every file of the output tree
  (artifacts, merged histograms, every results/<syst>/*.json) is byte-identical to
  an uninterrupted run; leftover ``.tmp-`` files are never read (they are filled with
  garbage before the rerun) and the rerun redoes exactly what ``qgcal status`` said
  was missing or stale; the lock never stays held.
* A pool worker SIGKILLed while it works does not end the run (the results equal a
  clean run); when every worker is killed as soon as it starts, the run stops with
  WorkerCrashError naming a file after ``executor.retries`` retries.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import psutil
import pytest

import qgcal
from conftest import write_config
from qgcal.config import Config
from qgcal.locking import LOCK_NAME, output_lock
from qgcal.stages import PASS_NAMES as STAGES
from qgcal.workflows.runner import WorkerCrashError
from qgcal.workflows.status import collect_status

KILL_SEED = 20240611
N_KILL_TRIALS = 3


def _mutate(doc: dict[str, Any]) -> None:
    """A few variations of every kind that reads files, no plots (they are not part of the contract)."""
    doc["plots"] = {"enabled": False}
    doc["reading"]["step_size"] = 1000
    doc["variations"] = {
        "JES_up": {"kind": "tree", "tree": "syst_JET_JES__1up", "group": "JES"},
        "trk_eff": {"kind": "branch", "replace": {"nTracks": "jet_nTracks_sys_eff"}, "group": "tracking"},
        "pdf": {"kind": "weight", "multiply": ["pdf_weight[1..2]"], "group": "PDF"},
        "gluon_rw": {"kind": "reweighting", "use": "gluon", "group": "reweighting"},
    }


def _config(base: Path, out: Path, name: str) -> tuple[Path, Config]:
    return write_config(base, out, name=name, mutate=_mutate)


def _tree(out: Path) -> dict[str, bytes]:
    """Every file of the output tree except the lock (it records the holder's pid) and temporaries."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME and ".tmp-" not in p.name
    }


def _sweep(cfg_path: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "qgcal", "sweep", "--config", str(cfg_path), "--workers", "2"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> bool:
    """SIGKILL the whole process group; True when the sweep was still running."""
    alive = proc.poll() is None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10  # workers are reaped by init: wait until the group is gone
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    return alive


def _wait_for_pool(proc: subprocess.Popen[bytes]) -> None:
    """Until the sweep's process pool is up (fork server, resource tracker, workers) or it ended."""
    main = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if len(main.children(recursive=True)) >= 3:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.01)


def _finish(cfg_path: Path, log: Path) -> str:
    proc = _sweep(cfg_path, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    return log.read_text()


def _pending(cfg: Config) -> dict[str, int]:
    """Per pass, the file tasks a rerun must redo (missing or stale), as qgcal status counts them."""
    total = collect_status(cfg).total
    return {stage: total.passes[stage].missing + total.passes[stage].stale for stage in STAGES}


def _planned(log_text: str) -> dict[str, int]:
    """What the last run in the log says it processed per pass."""
    found: dict[str, int] = {}
    for stage in STAGES:
        todo = re.findall(rf"{stage}: (\d+) files to process|{stage}: (nothing) to do", log_text)
        assert todo, (stage, log_text[-2000:])
        n, nothing = todo[-1]
        found[stage] = 0 if nothing else int(n)
    return found


@pytest.fixture(scope="module")
def clean(small_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted sweep: its output tree and how long it took."""
    base = tmp_path_factory.mktemp("clean")
    cfg_path, cfg = _config(small_sample, base / "out", "kill-clean")
    log = base / "sweep.log"
    t0 = time.monotonic()
    proc = _sweep(cfg_path, log)
    _wait_for_pool(proc)
    t_pool = time.monotonic()
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    t1 = time.monotonic()
    tree = _tree(cfg.output_path)
    assert any(k.startswith("results/pdf_2/") for k in tree)
    # with_pool: how long a sweep works once its pool is up (start-up, mostly imports, is
    # the rest, and on a loaded 2-core machine it can be most of the run)
    return {"tree": tree, "seconds": t1 - t0, "with_pool": t1 - t_pool, "cfg": cfg}


def test_sweep_killed_at_random_points_resumes_to_identical_bytes(clean, small_sample, tmp_path):
    rng = random.Random(KILL_SEED)
    duration = clean["seconds"]
    landed = 0
    for trial in range(N_KILL_TRIALS):
        cfg_path, cfg = _config(small_sample, tmp_path / f"out{trial}", f"kill-{trial}")
        log = tmp_path / f"sweep{trial}.log"
        # trial 1 kills twice (the rerun of a killed run is killed too), the others once
        for _ in range(2 if trial == 1 else 1):
            proc = _sweep(cfg_path, log)
            time.sleep(rng.uniform(0.15, 0.9) * duration)
            landed += _kill_group(proc)
            with output_lock(cfg.output_path):  # the kernel released the killed run's lock
                pass
            for p in cfg.output_path.rglob("*"):  # a rerun that read a half-written file would fail or differ
                if ".tmp-" in p.name:
                    p.write_bytes(b"garbage left by a killed run\n" * 10)
        expected = _pending(cfg)
        log.write_text("")
        text = _finish(cfg_path, log)
        assert _planned(text) == expected, (expected, text[-2000:])  # exactly what was missing or stale
        assert "Traceback" not in text
        got = _tree(cfg.output_path)
        assert set(got) == set(clean["tree"])
        diff = sorted(k for k in got if got[k] != clean["tree"][k])
        assert not diff, diff
    assert landed >= 2, "the kills all came after the sweep had finished: the test did not test anything"


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_main_process_killed_alone_leaves_nothing_running_and_resumes(clean, small_sample, tmp_path):
    """SIGKILL of the main process only (not its group): fork server and workers exit within seconds.

    Nothing else can stop them: the killed process cannot shut its pool down, and an
    idle worker waits on a queue whose write end its siblings hold too. The rerun
    still gives the clean run's bytes.
    """
    rng = random.Random(KILL_SEED + 1)
    killed_busy = 0
    trial = 0
    # a kill that comes after the sweep ended tests nothing: try again (at most twice more)
    while trial < N_KILL_TRIALS or (killed_busy < 2 and trial < N_KILL_TRIALS + 2):
        cfg_path, cfg = _config(small_sample, tmp_path / f"out{trial}", f"kill-main-{trial}")
        log = tmp_path / f"sweep{trial}.log"
        trial += 1
        proc = _sweep(cfg_path, log)
        main = psutil.Process(proc.pid)
        _wait_for_pool(proc)
        # a random point of the time it works with its pool (the clean run's, measured the same way)
        time.sleep(rng.uniform(0.0, 0.6) * clean["with_pool"])
        workers: list[psutil.Process] = []
        if proc.poll() is None:
            workers = [p for p in main.children(recursive=True) if _alive(p)]
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it finished meanwhile
                workers = []
        proc.wait(timeout=30)
        killed_busy += bool(workers)
        gone_by = time.monotonic() + 5
        while any(_alive(p) for p in workers) and time.monotonic() < gone_by:
            time.sleep(0.05)
        left = [(p.pid, p.name()) for p in workers if _alive(p)]
        for p in workers:  # do not leak them into the rest of the suite if the assertion fails
            if _alive(p):
                p.kill()
        assert not left, f"still running 5 s after the main process was killed: {left}"
        log.write_text("")
        text = _finish(cfg_path, log)
        assert "Traceback" not in text
        got = _tree(cfg.output_path)
        assert set(got) == set(clean["tree"])
        assert not sorted(k for k in got if got[k] != clean["tree"][k])
    assert killed_busy >= 2, "the sweeps all ended before the kill: the test did not test anything"


def test_second_run_stops_at_once_while_one_runs_and_lock_is_free_after_a_kill(small_sample, tmp_path):
    from qgcal.cli import main

    cfg_path, cfg = _config(small_sample, tmp_path / "out", "lock")
    lock = cfg.output_path / LOCK_NAME
    proc = _sweep(cfg_path, tmp_path / "sweep.log")
    try:
        deadline = time.monotonic() + 60
        while not (lock.is_file() and lock.read_text().startswith("pid")):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "sweep.log").read_text()
            time.sleep(0.01)
        t0 = time.monotonic()
        err_lines = _run_cli_capture(main, ["-q", "sweep", "--config", str(cfg_path), "--workers", "1"])
        assert time.monotonic() - t0 < 5  # at once, not after the other run
        still_running = proc.poll() is None
    finally:
        _kill_group(proc)
    assert still_running, "the first sweep finished before the second started: nothing was tested"
    code, lines = err_lines
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("qgcal: error: ") and str(cfg.output_path) in lines[0]
    assert "another qgcal run is writing here" in lines[0] and f"pid {proc.pid}" in lines[0]
    with output_lock(cfg.output_path):  # killed with SIGKILL: the kernel released the lock
        pass
    assert lock.is_file()  # the lock file stays; only the flock on it matters


def _run_cli_capture(main: Any, argv: list[str]) -> tuple[int, list[str]]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, [ln for ln in err.getvalue().splitlines() if ln.strip()]


# ----------------------------------------------------------------------------- worker crashes


class WorkerKiller:
    """Watches this process's children and SIGKILLs the executor's worker processes.

    Process pool workers are forked by the forkserver (a child of this process); Dask
    LocalCluster workers are spawned children (``dask=True``). ``once``: kill one worker
    while it works (it has an input ROOT file or an artifact open), then stop; otherwise
    kill every worker as soon as it appears.
    """

    def __init__(self, *, once: bool, dask: bool = False) -> None:
        self.once = once
        self.dask = dask
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _workers(self) -> Iterator[psutil.Process]:
        for child in psutil.Process().children():
            try:
                cmdline = " ".join(child.cmdline())
                if self.dask and "spawn_main" in cmdline:
                    yield child
                elif not self.dask and "forkserver" in cmdline:
                    yield from child.children()
            except psutil.Error:
                continue

    def _watch(self) -> None:
        while not self._stop.is_set():
            for w in self._workers():
                try:
                    if self.once and not any(f.path.endswith((".root", ".parquet", ".npz")) for f in w.open_files()):
                        continue  # not working on a file right now
                    w.send_signal(signal.SIGKILL)
                    self.killed.append(w.pid)
                except psutil.Error:
                    continue
                if self.once:
                    return
            time.sleep(0.003)


def _crash_config(small_sample: Path, out: Path, name: str, retries: int) -> Config:
    def mutate(doc: dict[str, Any]) -> None:
        _mutate(doc)
        doc["executor"] = {"kind": "process", "workers": 2, "retries": retries}

    return write_config(small_sample, out, name=name, mutate=mutate)[1]


def test_a_worker_killed_mid_run_is_retried_and_results_equal_a_clean_run(clean, small_sample, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="qgcal")
    for attempt in range(5):  # until a kill lands while there is work left
        caplog.clear()
        cfg = _crash_config(small_sample, tmp_path / f"out{attempt}", f"crash-{attempt}", retries=2)
        with WorkerKiller(once=True) as killer:
            qgcal.sweep(cfg, cfg.variation_names(), executor="process", workers=2)
        died = [r for r in caplog.records if "a worker died" in r.getMessage()]
        if killer.killed and died:
            break
    else:
        pytest.fail("no kill landed while the sweep was running in 5 tries")
    got = _tree(cfg.output_path)
    diff = sorted(k for k in got if got[k] != clean["tree"].get(k))
    assert set(got) == set(clean["tree"]) and not diff, diff


def test_a_file_that_kills_every_worker_stops_the_run_naming_it(small_sample, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="qgcal")
    retries = 1
    cfg = _crash_config(small_sample, tmp_path / "out", "crash-always", retries=retries)
    inputs = {t for t in (str(p) for p in small_sample.rglob("*.root"))}
    with WorkerKiller(once=False) as killer, pytest.raises(WorkerCrashError) as info:
        qgcal.sweep(cfg, ["nominal"], executor="process", workers=2)
    msg = str(info.value)
    named = msg.split(":")[0]
    assert named in inputs, msg
    assert f"died {retries + 2} times during root2pkl, the last time while this file ran alone" in msg
    assert "\n" not in msg and "lower reading.step_size or --workers" in msg
    assert len(killer.killed) >= retries + 2
    retried = [r.getMessage() for r in caplog.records if "a worker died" in r.getMessage()]
    assert retried and "1 at a time" in retried[-1]
    with output_lock(cfg.output_path):  # the failed run released the lock
        pass


def test_a_killed_dask_worker_is_retried_on_the_same_cluster(clean, small_sample, tmp_path, caplog):
    """KilledWorker does not break the cluster: the files are retried on it (an earlier version
    closed the client and the LocalCluster it owned, and every later submit failed)."""
    import dask
    import distributed  # noqa: F401 - loads distributed's config defaults before one is overridden

    from qgcal.executors import dask_executor

    caplog.set_level(logging.WARNING, logger="qgcal")
    for attempt in range(3):  # until a kill lands while a task runs
        caplog.clear()
        cfg = _crash_config(small_sample, tmp_path / f"out{attempt}", f"crash-dask-{attempt}", retries=2)
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # the first death: KilledWorker
            executor = dask_executor("dask-local", scheduler=None, workers=2)
        with WorkerKiller(once=True, dask=True) as killer:
            qgcal.sweep(cfg, cfg.variation_names(), executor=executor)
        assert executor.client.status == "closed"  # closed once, at the end
        if killer.killed and any("a worker died" in r.getMessage() for r in caplog.records):
            break
    else:
        pytest.fail("no kill of a Dask worker landed while it worked in 3 tries")
    got = _tree(cfg.output_path)
    assert set(got) == set(clean["tree"]) and not [k for k in got if got[k] != clean["tree"][k]]

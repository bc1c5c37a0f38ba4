"""Executors: anything with ``submit`` that returns ``concurrent.futures.Future``s.

A serial executor for debugging and ``--workers 1``, a process pool by default
(one pool reused for every pass of a run: starting workers costs ~1 s), a Dask
``distributed`` client's executor (an existing scheduler, or a LocalCluster
started for the run), and any object with ``submit`` passed in as is.
Workers start with the ``forkserver`` method, preloading the modules the caller
names (the task functions' module, heavy imports) once, so starting a pool is cheap
and no thread state of the parent is forked.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

from qgcal.errors import ConfigError, QgcalError

__all__ = [
    "EXECUTORS",
    "DaskExecutor",
    "SerialExecutor",
    "can_fork",
    "dask_executor",
    "fork_map",
    "fork_pool",
    "make_executor",
    "start_early",
    "worker_preload",
]

EXECUTORS = ("process", "serial", "dask", "dask-local")
DASK_KINDS = ("dask", "dask-local")
# How long to wait for a Dask scheduler (or a LocalCluster's workers) before giving up.
DASK_CONNECT_TIMEOUT_S = 30.0
_log = logging.getLogger("qgcal")
# How often a pool worker checks that the process that made its pool is still alive.
PARENT_POLL_S = 0.5


class SerialExecutor(Executor):
    """Runs each task at submit time in this process (deterministic, debuggable)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - delivered through the future
            fut.set_exception(err)
        return fut


def make_executor(
    kind: str | Executor, workers: int, *, scheduler: str | None = None, preload: Sequence[str] = ()
) -> Executor:
    """Name-or-instance normaliser: 'process', 'serial', 'dask', 'dask-local' or an Executor-like object."""
    if not isinstance(kind, str):
        if not hasattr(kind, "submit"):
            raise ConfigError(f"executor {kind!r} has no submit(); pass 'process', 'serial' or an Executor")
        return kind
    if kind in DASK_KINDS:
        return dask_executor(kind, scheduler=scheduler, workers=workers)
    if kind == "serial" or (kind == "process" and workers <= 1):
        return SerialExecutor()
    if kind == "process":
        ctx = mp.get_context("forkserver")
        modules = list(preload)
        # the modules the tasks need (the task functions' module; scikit-learn and skops for
        # model taggers: seconds to import) are imported once by the fork server, not by every worker
        ctx.set_forkserver_preload(modules)
        _start_forkserver()
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=_watch_parent,
            initargs=(os.getpid(), _create_time(os.getpid())),
        )
        _check_worker_imports(pool, modules)
        return pool
    raise ConfigError(f"executor {kind!r} is not known; valid: {', '.join(EXECUTORS)}")


def can_fork() -> bool:
    """Forking this process is safe: the platform has it, no other thread runs (a forked thread's
    locks stay held in the child) and this process may have children (it is not a daemon)."""
    if mp.current_process().daemon:
        return False
    return "fork" in mp.get_all_start_methods() and threading.active_count() == 1


def fork_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> list[Any]:
    """``[fn(x) for x in items]`` over up to ``workers`` processes forked from this one, in order.

    For work that needs this process's state and imports (the final passes of a sweep): a fork
    starts in milliseconds. Serial with one worker or item, or where forking is not safe. The
    first exception is raised once the running items have finished; the others are cancelled.
    """
    if workers <= 1 or len(items) <= 1 or not can_fork():
        return [fn(x) for x in items]
    with fork_pool(min(workers, len(items))) as pool:
        futures = [pool.submit(fn, x) for x in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def fork_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes forked from this one (check :func:`can_fork` first), each of
    which exits soon after this process is gone (killed: it cannot shut the pool down)."""
    me = os.getpid()
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("fork"),
        initializer=_watch_parent,
        initargs=(me, _create_time(me)),
    )


# the module of the task functions the pool runs (qgcal.workflows.tasks.run_job): imported by the fork server
TASKS_MODULE = "qgcal.workflows.tasks"


def worker_preload(cfg: Any) -> tuple[str, ...]:
    """The modules a pool's fork server imports once for all workers: the task functions' module,
    and scikit-learn and skops for model taggers (seconds to import)."""
    from qgcal.config import ModelTagger

    models = any(isinstance(t, ModelTagger) for t in cfg.taggers.values())
    return (TASKS_MODULE, *(("sklearn.ensemble", "skops.io") if models else ()))


def start_early(kind: str | Executor, workers: int, *, preload: Sequence[str] = ()) -> None:
    """Start the process pool's fork server now, so that it imports ``preload`` while this
    process does other work (the pre-flight checks), instead of when the first task is submitted.

    Only for the 'process' executor with more than one worker (what :func:`make_executor` then
    starts anyway); a fork server already running is kept.
    """
    if kind == "process" and workers > 1:
        mp.get_context("forkserver").set_forkserver_preload(list(preload))
        _start_forkserver()


@contextmanager
def _safe_path() -> Iterator[None]:
    """``PYTHONSAFEPATH=1`` for the processes started inside (restored afterwards).

    Python 3.11's fork server runs as ``python -c ...`` and ignores the parent's
    ``sys.path`` (it is passed but not applied), so ``-c`` puts the current directory
    first: started from a source checkout, the workers import the checkout's
    ``qgcal/`` (which lacks ``workflows``/``stages``, mapped at install time) instead of
    the installed package. Safe-path mode drops that entry; the workers then import
    what the parent imported.
    """
    before = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = before


def _start_forkserver() -> None:
    """Start (or restart, if it died) the fork server now, in safe-path mode."""
    from multiprocessing import forkserver

    with _safe_path():
        forkserver.ensure_running()


def _check_worker_imports(pool: ProcessPoolExecutor, modules: Sequence[str]) -> None:
    """Fail with the import error itself when a worker cannot import what the tasks need.

    The probe is the builtin ``exec`` of an import statement: a builtin unpickles in any
    interpreter (a qgcal function would not, where qgcal is what fails to import) and
    returns ``None``, so an import failure comes back as an exception instead of killing
    the worker (which the pool reports as a worker killed by a signal: a wrong diagnosis).
    """
    for name in modules:
        try:
            pool.submit(exec, f"import {name}").result()
        except ImportError as err:
            pool.shutdown(wait=True, cancel_futures=True)
            raise QgcalError(
                f"worker processes cannot import {name} ({type(err).__name__}: {err}); qgcal is not "
                "installed consistently for the workers: reinstall it (pip install .) in the "
                "environment that runs qgcal"
            ) from None
        except (BrokenProcessPool, OSError, EOFError) as err:
            # a worker killed while the pool starts (a signal, the OOM killer): a lost pool, to
            # which the runner's crash policy applies
            try:
                pool.shutdown(wait=False, cancel_futures=True)
            except (OSError, EOFError):
                pass
            if isinstance(err, BrokenProcessPool):
                raise
            raise BrokenProcessPool(f"could not start a worker process ({type(err).__name__}: {err})") from err


def _create_time(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).create_time())


def _watch_parent(pid: int, created: float) -> None:
    """Pool initializer: exit this worker soon after the process that made the pool is gone.

    A SIGKILLed parent cannot shut its pool down, and an idle worker blocks forever
    on a queue whose write end its siblings also hold; a busy one would finish its
    file and write an artifact nobody waits for. The worker's parent is the fork
    server, so ``getppid`` says nothing: the pool's owner is watched by PID and
    start time (a reused PID is not mistaken for it).
    """
    import psutil

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            try:
                alive = psutil.Process(pid).create_time() == created
            except psutil.Error:
                alive = False
            if not alive:
                os._exit(1)

    threading.Thread(target=watch, name="qgcal-parent-watch", daemon=True).start()


class DaskExecutor(Executor):
    """A Dask ``distributed`` client's ``concurrent.futures`` executor that owns its client.

    ``submit`` returns plain ``concurrent.futures.Future``s (``Client.get_executor()``),
    so the workflows treat it like the process pool. ``shutdown`` (called by
    ``run_many`` with ``cancel_futures=True``, or by ``with``) cancels what has
    not run when asked, waits, then closes the client and, for ``dask-local``,
    the LocalCluster it started: no scheduler or worker process outlives the run.
    """

    def __init__(self, client: Any, cluster: Any | None = None) -> None:
        self.client = client
        self.cluster = cluster
        # pure=False: every submit is a new task (no key sharing between identical calls)
        self._executor = client.get_executor(pure=False)
        self._futures: weakref.WeakSet[Future[Any]] = weakref.WeakSet()
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = self._executor.submit(fn, *args, **kwargs)
        self._futures.add(fut)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if cancel_futures:
                for fut in list(self._futures):
                    fut.cancel()  # also cancels the task on the cluster
            self._executor.shutdown(wait=wait)
        finally:
            try:
                self.client.close()
            finally:
                if self.cluster is not None:
                    self.cluster.close()


def dask_executor(kind: str, *, scheduler: str | None, workers: int) -> DaskExecutor:
    """A :class:`DaskExecutor`: ``dask`` connects to ``scheduler``; ``dask-local`` starts a LocalCluster.

    The LocalCluster has ``workers`` single-threaded worker processes (the per-file
    work holds the GIL) and no dashboard. Workers of a remote scheduler must have
    the same qgcal installed and see the input and output paths.
    """
    try:
        import distributed
    except ImportError:
        raise ConfigError(
            f"executor {kind!r} needs Dask distributed; install it with pip install 'qgcal[dask]'"
        ) from None
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # the scheduler's and workers' INFO chatter (start, connect, close) is not the user's business
        logging.getLogger("distributed").setLevel(logging.WARNING)
    if kind == "dask":
        if not scheduler:
            raise ConfigError(
                "executor 'dask' needs a scheduler address: pass --scheduler tcp://HOST:8786 or set "
                "executor.scheduler (or use --executor dask-local for a LocalCluster on this machine)"
            )
        try:
            client = distributed.Client(scheduler, timeout=DASK_CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise QgcalError(
                f"could not reach the Dask scheduler at {scheduler!r} ({reason}); start one "
                "(dask scheduler) or fix --scheduler / executor.scheduler"
            ) from None
        _log.info("dask: using the scheduler at %s", scheduler)
        return DaskExecutor(client)
    if kind == "dask-local":
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1 for dask-local, found {workers}")
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        )
        try:
            client = distributed.Client(cluster, timeout=DASK_CONNECT_TIMEOUT_S, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
        _log.info("dask-local: a LocalCluster of %d workers at %s", workers, cluster.scheduler_address)
        return DaskExecutor(client, cluster)
    raise ConfigError(f"executor {kind!r} is not a Dask executor; valid: {', '.join(DASK_KINDS)}")

"""Executors: anything with ``submit`` that returns ``concurrent.futures.Future``s.

A serial executor for debugging and ``--workers 1``, a process pool by default
(one pool reused for every pass of a run: starting workers costs ~1 s), and any
object with ``submit`` (a Dask client's executor) passed in as is.
Workers start with the ``forkserver`` method, preloading qgcal's heavy imports
once, so starting a pool is cheap and no thread state of the parent is forked.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

from qgcal.errors import ConfigError

__all__ = ["SerialExecutor", "make_executor", "EXECUTORS"]

EXECUTORS = ("process", "serial")
_PRELOAD = ["qgcal.workflows.tasks"]


class SerialExecutor(Executor):
    """Runs each task at submit time in this process (deterministic, debuggable)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - delivered through the future
            fut.set_exception(err)
        return fut


def make_executor(kind: str | Executor, workers: int) -> Executor:
    """Name-or-instance normaliser: 'process', 'serial', or an Executor-like object."""
    if not isinstance(kind, str):
        if not hasattr(kind, "submit"):
            raise ConfigError(f"executor {kind!r} has no submit(); pass 'process', 'serial' or an Executor")
        return kind
    if kind == "serial" or (kind == "process" and workers <= 1):
        return SerialExecutor()
    if kind == "process":
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    raise ConfigError(f"executor {kind!r} is not known; valid: {', '.join(EXECUTORS)}")

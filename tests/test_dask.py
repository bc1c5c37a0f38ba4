"""Dask executors: a LocalCluster (``--executor dask-local``) and a scheduler address
(``--executor dask --scheduler``) give the local run's bytes; the cluster is closed after."""

from __future__ import annotations

import socket
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import distributed  # the dask extra is part of the test set-up: missing, this fails (never skips)
import pytest

import qgcal
import qgcal.executors
from qgcal.cli import main
from qgcal.config import Config
from qgcal.errors import ConfigError
from qgcal.executors import DaskExecutor, dask_executor

SYSTS = ["nominal", "JER_up"]


def small_sweep(doc: dict[str, Any]) -> None:
    doc["variations"] = {"JER_up": doc["variations"]["JER_up"]}
    doc["plots"] = {"enabled": False}


def result_bytes(cfg: Config) -> dict[str, bytes]:
    out = cfg.output_path
    paths = [out / "results" / s / f for s in SYSTS for f in ("scale_factors.json", "cuts.json", "extraction.json")]
    paths += sorted(out.glob("*/final_reweighting/merged_*.npz"))
    return {str(p.relative_to(out)): p.read_bytes() for p in paths}


@pytest.fixture
def local_bytes(small_sample: Path, make_config) -> dict[str, bytes]:
    _, cfg = make_config(small_sample, mutate=small_sweep)
    qgcal.sweep(cfg, SYSTS, workers=2)
    return result_bytes(cfg)


def test_dask_local_cluster_gives_the_local_bytes(small_sample: Path, make_config, local_bytes) -> None:
    path, cfg = make_config(small_sample, mutate=small_sweep)
    assert main(["sweep", "--config", str(path), "--executor", "dask-local", "--workers", "2"]) == 0
    got = result_bytes(cfg)
    assert len(got) == 3 * len(SYSTS) + 3 and got == local_bytes


def test_dask_scheduler_address_gives_the_local_bytes(small_sample: Path, make_config, local_bytes) -> None:
    path, cfg = make_config(small_sample, mutate=small_sweep)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        rc = main(["sweep", "--config", str(path), "--executor", "dask", "--scheduler", cluster.scheduler_address])
        assert rc == 0
    assert result_bytes(cfg) == local_bytes


def test_executor_futures_and_shutdown_close_the_cluster() -> None:
    ex = dask_executor("dask-local", scheduler=None, workers=1)
    assert isinstance(ex, DaskExecutor)
    fut = ex.submit(pow, 2, 10)
    assert isinstance(fut, Future) and fut.result(timeout=30) == 1024
    ex.shutdown(wait=True, cancel_futures=True)  # what run_many calls
    ex.shutdown(wait=True, cancel_futures=True)  # idempotent
    assert ex.client.status == "closed"
    assert ex.cluster is not None and ex.cluster.status.name == "closed"
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 3)


def test_dask_needs_a_scheduler_address() -> None:
    with pytest.raises(ConfigError, match="--scheduler tcp://HOST:8786"):
        dask_executor("dask", scheduler=None, workers=2)


def test_unreachable_scheduler_is_one_line(small_sample: Path, make_config, monkeypatch, capsys) -> None:
    monkeypatch.setattr(qgcal.executors, "DASK_CONNECT_TIMEOUT_S", 1.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path, _ = make_config(small_sample, mutate=small_sweep)
    address = f"tcp://127.0.0.1:{port}"
    assert main(["sweep", "--config", str(path), "--executor", "dask", "--scheduler", address]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("qgcal: error: could not reach the Dask scheduler at") and address in err[-1]

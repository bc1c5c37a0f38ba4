"""``qgcal slurm`` on a real single-node Slurm started by the test session (no mocks).

The cluster (tests/slurm_cluster.py) is installed if missing and started once per
session; if it cannot be started these tests FAIL with the reason, they never skip.
Jobs run ``<this python> -m qgcal``, i.e. the install under test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from slurm_cluster import SlurmCluster, SlurmStartError, start

import qgcal
import qgcal.cli
from conftest import write_config
from qgcal.config import Config
from qgcal.errors import ConfigError
from qgcal.workflows import slurm

VARIATIONS = ("JES_up", "JES_down", "trk_eff")
SYSTS = ["nominal", *VARIATIONS]
COMBINE = "combine" in qgcal.cli.COMMANDS  # qgcal combine lands separately; the final job runs it when it exists
JOB_TIMEOUT_S = 180


def sweep_config(doc: dict[str, Any]) -> None:
    doc["variations"] = {k: v for k, v in doc["variations"].items() if k in VARIATIONS}
    doc["plots"] = {"enabled": False}
    doc["slurm"] = {
        "cpus_per_task": 1,
        "mem": "200M",
        "shard_size": 7,
        "time": "00:10:00",
        "final_time": "00:10:00",
        "setup": ["echo qgcal-test-setup-ran"],
    }


def result_bytes(cfg: Config) -> dict[str, bytes]:
    """Every result file a sweep (and combine) writes that must be byte-identical, by relative path."""
    out = cfg.output_path
    paths = [out / "results" / s / f for s in SYSTS for f in ("scale_factors.json", "cuts.json", "extraction.json")]
    paths += sorted(out.glob("*/final_reweighting/merged_*.npz"))
    paths += [
        p for p in (out / "results" / "combined" / f for f in ("scale_factors.json", "corrections.json")) if p.is_file()
    ]
    return {str(p.relative_to(out)): p.read_bytes() for p in paths}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    root = tmp_path_factory.mktemp("slurm")
    try:
        cluster = start(root)
    except SlurmStartError as err:
        pytest.fail(f"cannot start the test Slurm: {err}", pytrace=False)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", str(cluster.conf))  # for qgcal's squeue/sbatch/scontrol calls
            yield cluster
    finally:
        cluster.stop()  # raises if a daemon survives


@pytest.fixture(scope="module")
def reference(small_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A local sweep of the same config (and combine, when it exists)."""
    out = tmp_path_factory.mktemp("slurm-reference")
    path, cfg = write_config(small_sample, out / "out", name="slurm-reference", mutate=sweep_config)
    qgcal.sweep(cfg, SYSTS, workers=2)
    if COMBINE:
        assert qgcal.cli.main(["combine", "--config", str(path)]) == 0
    return result_bytes(cfg)


@pytest.fixture
def qgcal_cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., int]:
    """``qgcal ...`` in this process (``slurm`` registered here until qgcal/cli/__init__.py does)."""
    if "slurm" not in qgcal.cli.COMMANDS:
        from qgcal.cli import slurm as slurm_cli

        original = qgcal.cli.build_parser

        def build() -> argparse.ArgumentParser:
            parser = original()
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            slurm_cli.register(sub)
            return parser

        monkeypatch.setattr(qgcal.cli, "build_parser", build)
    return lambda *argv: qgcal.cli.main([str(a) for a in argv])


def submit_args(path: Path, *more: str) -> list[str]:
    return ["slurm", "submit", "--config", str(path), *more, *([] if COMBINE else ["--no-combine"])]


def wait_for_jobs(cfg: Config, timeout: float = JOB_TIMEOUT_S) -> slurm.Submission:
    """Poll squeue until no job of the submission is queued or running."""
    sub = slurm.load_submission(cfg.output_path / "slurm" / "submission.json")
    ids = ",".join(j for r in sub.rounds for j in (r.array_job, r.final_job) if j)
    end = time.monotonic() + timeout
    while True:
        proc = subprocess.run(["squeue", "-h", "-j", ids, "-o", "%i %T"], capture_output=True, text=True, check=False)
        gone = proc.returncode != 0 and "Invalid job id" in proc.stderr  # all purged already
        if gone or (proc.returncode == 0 and not proc.stdout.strip()):
            return sub
        if time.monotonic() > end:
            pytest.fail(f"jobs {ids} still queued after {timeout:.0f} s:\n{proc.stdout}\n{job_logs(sub)}")
        time.sleep(0.5)


def job_logs(sub: slurm.Submission, lines: int = 8) -> str:
    out = []
    for r in sub.rounds:
        for p in sorted(Path(r.logs).glob("*.err")):
            tail = p.read_text(errors="replace").strip().splitlines()[-lines:]
            if tail:
                out.append(f"--- {p}\n" + "\n".join(tail))
    return "\n".join(out)


# ----------------------------------------------------------------------------- on the real Slurm


def test_array_and_final_job_give_the_local_bytes(
    slurm_cluster: SlurmCluster, small_sample: Path, make_config, reference: dict[str, bytes], qgcal_cli, capsys
) -> None:
    path, cfg = make_config(small_sample, mutate=sweep_config)
    assert qgcal_cli(*submit_args(path)) == 0
    assert "submitted array job" in capsys.readouterr().out
    sub = wait_for_jobs(cfg)
    assert len(sub.shards) == 5 and sub.systs == SYSTS
    assert sub.command[0] == sys.executable
    report = slurm.status(cfg, sub)
    assert report["done"], f"{json.dumps(report, indent=1)}\n{job_logs(sub)}"
    assert report["rounds"][0]["array_states"] == {"COMPLETED": 5}
    assert report["rounds"][0]["final_state"] == "COMPLETED"
    assert all(r["missing"] == 0 and r["state"] == "COMPLETED" for r in report["shards"])
    logs = Path(sub.rounds[0].logs)
    assert logs.is_absolute() and "qgcal-test-setup-ran" in next(logs.glob("*_0.out")).read_text()
    assert result_bytes(cfg) == reference


def test_failed_task_cancels_final_job_and_resubmit_completes(
    slurm_cluster: SlurmCluster,
    small_sample: Path,
    make_config,
    tmp_path: Path,
    reference: dict[str, bytes],
    qgcal_cli,
    capsys,
) -> None:
    shutil.copytree(small_sample / "sample", tmp_path / "sample")  # a private copy to break
    path, cfg = make_config(tmp_path, mutate=sweep_config)
    victim = min((tmp_path / "sample" / "data").glob("*.root"))
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])  # truncated: root2pkl of this file fails

    assert qgcal_cli(*submit_args(path)) == 0
    sub = wait_for_jobs(cfg)
    # task keys name inputs relative to the config's directory (tmp_path here)
    victim_ref = victim.relative_to(tmp_path).as_posix()
    bad = next(i for i, keys in enumerate(sub.shards) if any(k.endswith("/" + victim_ref) for k in keys))

    capsys.readouterr()
    assert qgcal_cli("slurm", "status", "--config", path, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    first = report["rounds"][0]
    assert first["final_state"] == "CANCELLED", f"{json.dumps(report, indent=1)}\n{job_logs(sub)}"
    assert first["array_states"] == {"COMPLETED": 4, "FAILED": 1}
    assert report["missing_shards"] == [bad]
    row = report["shards"][bad]
    assert row["state"] == "FAILED" and row["missing"] > 0 and Path(row["log"]).is_file()
    assert str(victim) in Path(row["log"]).read_text()  # the task's one-line error names the file
    assert not report["done"]

    assert qgcal_cli("slurm", "status", "--config", path) == 0
    text = capsys.readouterr().out
    assert "FAILED" in text and "CANCELLED" in text and f"missing or stale: {bad}" in text
    assert "qgcal slurm resubmit" in text

    victim.write_bytes(good)  # repair, then resubmit only what is missing (with a process pool this time)
    cpus = min(2, len(os.sched_getaffinity(0)))
    assert qgcal_cli("slurm", "resubmit", "--config", path, "--failed", "--cpus-per-task", cpus) == 0
    assert f"shards {bad})" in capsys.readouterr().out
    sub = wait_for_jobs(cfg)
    assert len(sub.rounds) == 2 and sub.rounds[1].shards == [bad] and sub.rounds[1].kind == "resubmit"
    script = Path(sub.rounds[1].array_script or "").read_text()
    assert f"#SBATCH --array={bad}\n" in script and f"#SBATCH --cpus-per-task={cpus}\n" in script
    report = slurm.status(cfg, sub)
    assert report["done"], f"{json.dumps(report, indent=1)}\n{job_logs(sub)}"
    assert report["rounds"][1]["array_states"] == {"COMPLETED": 1}
    assert result_bytes(cfg) == reference

    assert qgcal_cli("slurm", "resubmit", "--config", path, "--failed") == 0
    assert "nothing to resubmit" in capsys.readouterr().out


def test_more_shards_than_max_array_size_names_the_shard_size(
    slurm_cluster: SlurmCluster, small_sample: Path, make_config, qgcal_cli, capsys
) -> None:
    path, cfg = make_config(small_sample, mutate=sweep_config)  # 34 file tasks; MaxArraySize=32 here
    assert qgcal_cli(*submit_args(path, "--shard-size", "1")) == 2
    err = capsys.readouterr().err
    assert "34 shards of 1 exceed this cluster's MaxArraySize 32" in err and "at least 2" in err
    assert not (cfg.output_path / "slurm" / "submission.json").exists()


# ----------------------------------------------------------------------------- without a cluster


def site_config(doc: dict[str, Any]) -> None:
    doc["slurm"] = {
        "partition": "cpu_long",
        "account": "atlas",
        "qos": "regular",
        "time": "04:00:00",
        "final_time": "00:45:00",
        "cpus_per_task": 4,
        "mem": "8G",
        "constraint": "cpu",
        "gres": "gpu:1",
        "array_throttle": 3,
        "shard_size": 4,
        "extra_sbatch": ["--mail-type=END", "#SBATCH --exclusive"],
        "setup": ["module load python/3.11", "source /opt/qgcal/venv/bin/activate"],
    }


def test_dry_run_prints_the_site_options_and_submits_nothing(
    small_sample: Path, make_config, qgcal_cli, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no sbatch: --dry-run must not need one
    path, cfg = make_config(small_sample, mutate=site_config)
    assert (
        qgcal_cli(
            *submit_args(path, "--dry-run", "--syst", "JES_up", "--time", "00:30:00", "--triton-url", "gpu-node-7:8001")
        )
        == 0
    )
    out = capsys.readouterr().out
    array, _, rest = out.partition("# ---- " + str(cfg.output_path / "slurm" / "final.sh"))
    final, _, commands = rest.partition("# ---- sbatch")
    n_tasks = 2 + 8 + 8  # data, nominal MC, JES_up MC
    for line in (
        "#SBATCH --partition=cpu_long",
        "#SBATCH --account=atlas",
        "#SBATCH --qos=regular",
        "#SBATCH --constraint=cpu",
        "#SBATCH --mem=8G",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mail-type=END",
        "#SBATCH --exclusive",
        "module load python/3.11",
        "source /opt/qgcal/venv/bin/activate",
    ):
        assert line in array and line in final, line
    assert f"#SBATCH --array=0-{-(-n_tasks // 4) - 1}%3" in array
    assert "#SBATCH --gres=gpu:1" in array and "--gres" not in final
    assert "#SBATCH --time=00:30:00" in array and "#SBATCH --time=00:45:00" in final
    logs = cfg.output_path / "slurm" / "logs"
    assert f"#SBATCH --output={logs}/%x-%A_%a.out" in array and f"#SBATCH --error={logs}/%x-%A_%a.err" in array
    assert f"#SBATCH --output={logs}/%x-%j.out" in final
    assert (
        f"{sys.executable} -m qgcal sweep --config {path.resolve()} --syst nominal JES_up "
        '--task-index "$SLURM_ARRAY_TASK_ID" --shard-size 4 --executor process '
        '--workers "${SLURM_CPUS_PER_TASK:-4}" '
        "--triton-url gpu-node-7:8001"
    ) in array
    assert "--finalise-only" in final and "--task-index" not in final
    assert ("qgcal combine --config" in final) == COMBINE
    assert f"ARRAY_JOB_ID=$(sbatch --parsable {cfg.output_path / 'slurm' / 'array.sh'})" in commands
    assert (
        "sbatch --parsable --dependency=afterok:$ARRAY_JOB_ID --kill-on-invalid-dep=yes "
        f"{cfg.output_path / 'slurm' / 'final.sh'}"
    ) in commands
    assert not (cfg.output_path / "slurm").exists()


def test_slurm_options_are_single_lines_and_validated(small_sample: Path, make_config) -> None:
    _, cfg = make_config(small_sample)
    with pytest.raises(ConfigError, match=r"slurm.partition: must be a single line"):
        slurm.slurm_options(cfg, partition="cpu\n#SBATCH --account=other")
    with pytest.raises(ConfigError, match=r"slurm.cpus_per_task: .*greater than or equal to 1 \(found 0\)"):
        slurm.slurm_options(cfg, cpus_per_task=0)
    opts = slurm.slurm_options(cfg, setup=["module load x"], array_throttle=2)
    assert opts.setup == [*cfg.slurm.setup, "module load x"] and opts.array_throttle == 2


def test_array_spec_compresses_indices() -> None:
    assert slurm.array_spec([0, 1, 2, 3], None) == "0-3"
    assert slurm.array_spec([7, 0, 2, 3, 4, 9, 10], 5) == "0,2-4,7,9-10%5"


def test_status_without_a_submission_is_one_line(small_sample: Path, make_config, qgcal_cli, capsys) -> None:
    path, cfg = make_config(small_sample)
    assert qgcal_cli("slurm", "status", "--config", path) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "qgcal slurm submit" in err and str(cfg.output_path) in err


def test_status_refuses_when_the_config_changed_since_submission(
    small_sample: Path, make_config, qgcal_cli, capsys
) -> None:
    path, cfg = make_config(small_sample, mutate=sweep_config)
    sub, _, _ = slurm.submit(cfg, path, slurm.slurm_options(cfg), dry_run=True)
    sub.save()  # as if submitted

    def fewer_files(doc: dict[str, Any]) -> None:
        sweep_config(doc)
        doc["samples"]["data"]["files"] = ["sample/data/data_001.root"]

    changed, _ = make_config(small_sample, mutate=fewer_files, output=cfg.output_path)
    assert qgcal_cli("slurm", "status", "--config", changed) == 2
    err = capsys.readouterr().err.strip()
    assert "the file tasks changed since the submission" in err and "qgcal slurm submit" in err

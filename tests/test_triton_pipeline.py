"""The predict pass routed to a real Triton server gives the same scale factors as local inference."""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
from triton_fixture import MODEL_NAME, serve_process

import qgcal
from qgcal.artifacts import read_parquet_provenance
from qgcal.cli import main
from qgcal.plan import plan_tasks
from qgcal.stages import artifact
from qgcal.stages.pkl2predpkl import model_path


def _fast_model(doc):
    doc["taggers"] = {k: v for k, v in doc["taggers"].items() if k in {"ntrk", "gbdt"}}
    doc["taggers"]["gbdt"]["train_max_iter"] = 40
    doc["variations"] = {}
    doc["plots"] = {"enabled": False}


def test_train_then_run_through_triton_equals_local(small_sample, make_config, tmp_path, capsys):
    path, cfg = make_config(small_sample, mutate=_fast_model, model_taggers=True)
    [model] = qgcal.train(cfg, workers=1)
    assert model == model_path(cfg, cfg.taggers["gbdt"]) and model.is_file()
    metrics = (model.parent / "gbdt-training" / "metrics.json").read_text()
    assert '"auc_model"' in metrics
    local = qgcal.run(cfg, "nominal", workers=1)
    sf = cfg.output_path / "results" / "nominal" / "scale_factors.json"
    local_bytes = sf.read_bytes()
    assert {r["tagger"] for r in local.records} == {"ntrk", "gbdt"}
    assert all(r["sf"] is not None for r in local.records if r["tagger"] == "gbdt")
    # the inference route is part of the predict pass's validity: switching backends rescores
    # (a server may serve another model than the local file), everything before it is reused
    switched = qgcal.status(cfg.with_overrides({"inference.backend": "triton"})).total.passes
    n = switched["root2pkl"].done
    assert n > 0 and switched["pkl2predpkl"].stale == n and switched["pkl2predpkl"].done == 0
    assert qgcal.status(cfg).total.passes["pkl2predpkl"].done == n

    workspace = Path(tempfile.mkdtemp(prefix="qgt", dir="/tmp"))
    server = serve_process(model, tmp_path, workspace)
    try:
        server.start([MODEL_NAME])
        code = main(
            [
                "-q",
                "run",
                "--config",
                str(path),
                "--workers",
                "1",
                "--force",
                "--backend",
                "triton",
                "--triton-url",
                server.grpc_url,
            ]
        )
        assert code == 0, capsys.readouterr().err
    finally:
        # leftover checks of the server itself are test_inference_triton's job; here other
        # processes of the suite may create /dev/shm semaphores while the server runs
        server.stop(signal.SIGINT, check=False)
        leftovers = list(workspace.iterdir())
        shutil.rmtree(workspace, ignore_errors=True)
    assert server.proc is not None and server.proc.returncode is not None
    assert not leftovers, leftovers
    # every jet's score came back from the server bit-identical, so the bytes agree
    assert sf.read_bytes() == local_bytes
    task = plan_tasks(cfg, "nominal")[0]
    prov = read_parquet_provenance(artifact(cfg, task, "pkl2predpkl"))
    assert prov["inference"]["gbdt"]["backend"] == "triton"


def test_trained_model_beats_ntracks_on_the_generated_sample(small_sample, make_config):
    import json

    _, cfg = make_config(small_sample, mutate=_fast_model, model_taggers=True)
    [model] = qgcal.train(cfg, workers=1)
    metrics = json.loads((model.parent / "gbdt-training" / "metrics.json").read_text())
    bins = metrics["pt_bins"] if "pt_bins" in metrics else metrics["bins"]
    auc_model = np.array([b["auc_model"] for b in bins])
    auc_ntrk = np.array([b["auc_reference"] for b in bins])
    assert np.all(auc_model > auc_ntrk), (auc_model, auc_ntrk)

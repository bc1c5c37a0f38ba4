"""The constituent tagger through a real Triton server (`python -m qgcal.inference.serve`, pytriton).

What is checked against what: the local route (ConstituentScorer on the CPU, its own code
path) is the reference; the Triton route must give the same bytes when each request holds
the same jets as the local batch (one jet-table row group), and agree within the documented
tolerance (TOLERANCE, docs/triton.md) when requests are cut differently. The TorchScript
export is checked against the training-time torch module.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
from triton_fixture import ServerProcess, free_port

import qgcal
from conftest import write_config
from qgcal.artifacts import read_parquet_provenance
from qgcal.cli import main
from qgcal.generate import generate_sample
from qgcal.inference import InferenceError, TritonSettings
from qgcal.inference.constituent_model import ConstituentScorer, load_constituent_model
from qgcal.inference.triton_client import TritonConstituentScorer, TritonScorer, jet_requests
from qgcal.plan import plan_tasks
from qgcal.stages import artifact

torch = pytest.importorskip("torch")
pytest.importorskip("pytriton")

FEATURES = ["constit_ptFrac", "constit_deta", "constit_dphi", "constit_charge", "constit_d0", "constit_dz"]
SERVED = "qgcal_tagger_cons"  # <triton.model_name>_<tagger>
#: float32 log-odds of one jet scored in differently composed batches (docs/triton.md)
TOLERANCE = 2e-4


def _mutate(doc: dict[str, Any]) -> None:
    doc["branches"]["nConstituents"] = "jet_nConstituents"
    doc["branches"].update({f: f for f in FEATURES})
    doc["taggers"] = {
        "cons": {
            "kind": "constituents",
            "model": "cons.safetensors",
            "features": FEATURES,
            "counts": "nConstituents",
            "bins": {"n": 40, "low": -6, "high": 6},
            "quark_side": "low",
            "train_epochs": 2,
            "hidden": 8,
        },
    }
    doc["variations"] = {}
    doc["plots"] = {"enabled": False}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    base = tmp_path_factory.mktemp("constriton")
    generate_sample(base / "sample", events=12_000, files=1, seed=7, constituents=True)
    path, cfg = write_config(base, base / "out", name="ct", mutate=_mutate)
    qgcal.train(cfg, workers=1)
    return path, cfg


def _model(cfg: Any) -> Path:
    return Path(cfg.output_path) / "models" / "cons.safetensors"


def _stop(srv: ServerProcess) -> None:
    """Stop without the leftover assertions (other processes of the suite may create /dev/shm
    semaphores meanwhile), but wait until the server's children (Python-backend stubs and their
    resource trackers, which release pytriton's semaphores) are gone, so that the next module's
    server does not count them."""
    if srv.proc is not None and srv.proc.poll() is None:
        srv.stop(signal.SIGINT, check=False)
    psutil.wait_procs([p for p in srv.children if p.is_running()], timeout=15)


def _server(
    model: Path, log: Path, workspace: Path, ports: tuple[int, int] | None = None, extra: tuple[str, ...] = ()
) -> ServerProcess:
    grpc_port, http_port = ports or (free_port(), free_port())
    argv = [
        *[sys.executable, "-m", "qgcal.inference.serve", str(model)],
        *["--grpc-port", str(grpc_port), "--http-port", str(http_port), "--model-name", SERVED],
        *["--workspace", str(workspace), *extra],
    ]
    return ServerProcess(argv=argv, log_path=log, grpc_port=grpc_port, http_port=http_port)


@pytest.fixture(scope="module")
def server(trained: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workspace = Path(tempfile.mkdtemp(prefix="qgc", dir="/tmp"))
    srv = _server(_model(trained[1]), tmp_path_factory.mktemp("srv") / "server.log", workspace)
    try:
        srv.start([SERVED])
        yield srv
    finally:
        _stop(srv)
        shutil.rmtree(workspace, ignore_errors=True)


@pytest.fixture(scope="module")
def jets(trained: tuple[Path, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Flattened constituents and counts of every selected jet of the sample (pass 1's tables)."""
    cfg = trained[1]
    qgcal.run(cfg, "nominal", workers=1)  # also the local reference run
    tables = [
        pq.read_table(p)
        for p in sorted(glob.glob(str(cfg.output_path / "nominal" / "root2pkl" / "**" / "*.parquet"), recursive=True))
    ]
    from qgcal.stages.pkl2predpkl import constituent_request

    parts = [constituent_request(t, FEATURES, "test") for t in tables]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _settings(srv: ServerProcess, protocol: str = "grpc", **kw: Any) -> TritonSettings:
    url = srv.grpc_url if protocol == "grpc" else srv.http_url
    return TritonSettings(url=url, protocol=protocol, model_name=SERVED, **kw)


def test_requests_hold_whole_jets_only() -> None:
    counts = np.array([3, 0, 5, 1, 0, 0, 7], dtype=np.int64)
    spans = jet_requests(counts, 3)
    assert spans == [(0, 3, 0, 8), (3, 6, 8, 9), (6, 7, 9, 16)]
    assert jet_requests(counts[:0], 3) == []
    # a request of empty jets only joins its neighbour (before, or after for leading ones)
    assert jet_requests(np.array([0, 2, 0, 0, 0, 1]), 2) == [(0, 4, 0, 2), (4, 6, 2, 3)]
    assert jet_requests(np.array([0, 0, 1, 0]), 1) == [(0, 4, 0, 1)]
    assert jet_requests(np.array([0, 0]), 1) == [(0, 2, 0, 0)]  # nothing to join: the sentinel request


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_same_batch_bit_identical_other_batches_within_tolerance(server, trained, jets, protocol) -> None:
    values, counts = jets
    local = ConstituentScorer(_model(trained[1]))
    n = min(len(counts), 5000)
    x, c = values[: int(counts[:n].sum())], counts[:n]
    reference = local.predict_constituents(x, c)
    # one request holding exactly the local batch: the server runs the same code on the same rows
    with TritonConstituentScorer(_settings(server, protocol, batch_size=n), model_path=_model(trained[1])) as one:
        assert one.predict_constituents(x, c).tobytes() == reference.tobytes()
        prov = one.provenance()
    assert prov["backend"] == "triton" and prov["device"] == "remote:cpu"
    assert prov["triton"]["server_merges_requests"] is False
    assert prov["triton"]["served_model_sha256"] == prov["model"]["sha256"] == local.meta.weights_sha256
    assert prov["triton"]["requests"] == 1
    # 997 whole jets per request, 3 in flight: other batch composition, float32 effects only
    settings = _settings(server, protocol, batch_size=997, max_in_flight=3)
    with TritonConstituentScorer(settings, model_path=_model(trained[1])) as many:
        cut = many.predict_constituents(x, c)
        assert many.provenance()["triton"]["requests"] == -(-n // 997)
        assert many.predict_constituents(x[:0], c[:0]).shape == (0,)
    np.testing.assert_allclose(cut, reference, rtol=0, atol=TOLERANCE)
    # each request scored on its own (no server-side batching): equal to the local route per request
    for j0, j1, v0, v1 in jet_requests(c, 997):
        assert cut[j0:j1].tobytes() == local.predict_constituents(x[v0:v1], c[j0:j1]).tobytes()


def test_one_jet_per_request_and_empty_jets(server, trained) -> None:
    x = np.random.default_rng(2).normal(size=(9, 6)).astype(np.float32)
    c = np.array([0, 4, 0, 5, 0], dtype=np.int64)
    local = ConstituentScorer(_model(trained[1]))
    with TritonConstituentScorer(_settings(server, batch_size=1, max_in_flight=2), model_path=_model(trained[1])) as s:
        scores = s.predict_constituents(x, c)
        empty = s.predict_constituents(x[:0], np.zeros(3, np.int64))  # jets without any constituent
        requests = s.provenance()["triton"]["requests"]
    assert requests == 2 + 1
    for j0, j1, v0, v1 in jet_requests(c, 1):
        assert scores[j0:j1].tobytes() == local.predict_constituents(x[v0:v1], c[j0:j1]).tobytes()
    assert empty.tobytes() == local.predict_constituents(x[:0], np.zeros(3, np.int64)).tobytes()


def test_served_model_has_no_server_side_batching(server, trained) -> None:
    """The design choice of docs/triton.md: the ragged pair is never batched across requests."""
    from tritonclient import grpc

    from qgcal.workflows.serve import served_model, served_model_name

    client = grpc.InferenceServerClient(server.grpc_url)
    try:
        cfg = client.get_model_config(SERVED, as_json=True)["config"]
    finally:
        client.close()
    assert int(cfg.get("max_batch_size", 0)) == 0 and "dynamic_batching" not in cfg
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg["input"]] == [
        ("CONSTITUENTS", "TYPE_FP32", ["-1", "6"]),
        ("COUNTS", "TYPE_INT64", ["-1"]),
    ]
    assert cfg["parameters"]["qgcal_device"]["string_value"] == "cpu"
    assert served_model_name(trained[1], "cons") == SERVED
    assert served_model(trained[1]) == ("cons", _model(trained[1]))


def test_served_layout_is_checked(server, trained) -> None:
    with pytest.raises(InferenceError, match="no input 'FEATURES'"):
        TritonScorer(_settings(server))
    with pytest.raises(InferenceError, match=r"expects constituents \[sum\(counts\), 6\]"):
        TritonConstituentScorer(_settings(server), model_path=_model(trained[1])).predict_constituents(
            np.zeros((3, 6), np.float32), np.array([2], np.int64)
        )


def test_calibration_through_triton_equals_local_byte_for_byte(server, trained, jets, capsys) -> None:
    path, cfg = trained
    sf = cfg.output_path / "results" / "nominal" / "scale_factors.json"
    local_bytes = sf.read_bytes()  # written by the jets fixture's local run
    task = plan_tasks(cfg, "nominal")[0]
    local_scores = pq.read_table(artifact(cfg, task, "pkl2predpkl")).column("tagger.cons").to_numpy()
    argv = ["-q", "run", "--config", str(path), "--workers", "1", "--force", "--backend", "triton"]
    assert main([*argv, "--triton-url", server.grpc_url]) == 0, capsys.readouterr().err
    assert sf.read_bytes() == local_bytes
    remote_scores = pq.read_table(artifact(cfg, task, "pkl2predpkl")).column("tagger.cons").to_numpy()
    assert remote_scores.tobytes() == local_scores.tobytes()
    prov = read_parquet_provenance(artifact(cfg, task, "pkl2predpkl"))["inference"]["cons"]
    assert prov["backend"] == "triton" and prov["engine"] == "triton:torch-deepsets"
    assert prov["triton"]["model_name"] == SERVED and prov["fallback"]["happened"] is False
    assert (
        prov["triton"]["served_model_sha256"]
        == json.loads((_model(cfg).parent / "cons.safetensors.json").read_text())["weights_sha256"]
    )


@pytest.mark.slow  # two server start-ups (~25 s)
def test_server_restarted_mid_run_gives_identical_scores(trained, jets, tmp_path) -> None:
    values, counts = jets
    model = _model(trained[1])
    reference = ConstituentScorer(model)
    workspace = Path(tempfile.mkdtemp(prefix="qgc", dir="/tmp"))
    first = _server(model, tmp_path / "a.log", workspace).start([SERVED])
    ports = (first.grpc_port, first.http_port)
    second: list[ServerProcess] = []
    problems: list[Exception] = []
    try:
        settings = _settings(first, batch_size=500, max_in_flight=2, retry_budget_s=40.0)
        with TritonConstituentScorer(settings, model_path=model) as scorer:
            x, c = values[: int(counts[:2000].sum())], counts[:2000]
            before = scorer.predict_constituents(x, c)
            first.stop(signal.SIGTERM, check=False)

            def restart() -> None:
                time.sleep(0.5)
                try:
                    second.append(_server(model, tmp_path / "b.log", workspace, ports).start([SERVED]))
                except Exception as exc:  # noqa: BLE001 - any start-up failure is reported below
                    problems.append(exc)

            thread = threading.Thread(target=restart)
            thread.start()
            try:
                after = scorer.predict_constituents(x, c)  # retried until the new server answers
            finally:
                thread.join()
                assert not problems, problems
            assert scorer.provenance()["fallback"]["happened"] is False
    finally:
        for srv in [first, *second]:
            _stop(srv)
        shutil.rmtree(workspace, ignore_errors=True)
    assert before.tobytes() == after.tobytes()
    expected = np.concatenate(
        [reference.predict_constituents(x[v0:v1], c[j0:j1]) for j0, j1, v0, v1 in jet_requests(c, 500)]
    )
    assert after.tobytes() == expected.tobytes()


def test_torchscript_export_scores_like_the_training_model(trained, jets, tmp_path) -> None:
    _, cfg = trained
    from qgcal.workflows.serve import export_model_repo  # the workflow `qgcal serve --export-repo` calls

    model_dir = export_model_repo(cfg, tmp_path / "repo", gpus=[0, 1])
    config = (model_dir / "config.pbtxt").read_text()
    for fragment in (
        'name: "qgcal_tagger_cons"',
        'platform: "pytorch_libtorch"',
        "max_batch_size: 0",
        'name: "CONSTITUENTS" data_type: TYPE_FP32 dims: [ -1, 6 ]',
        'name: "COUNTS" data_type: TYPE_INT64 dims: [ -1 ]',
        'name: "SCORE" data_type: TYPE_FP32 dims: [ -1 ]',
        "instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] }, { count: 1 kind: KIND_GPU gpus: [ 1 ] } ]",
        'key: "qgcal_model_sha256"',
    ):
        assert fragment in config, fragment
    cpu_dir = export_model_repo(cfg, tmp_path / "cpu", instances=2)
    assert "instance_group [ { count: 2 kind: KIND_CPU } ]" in (cpu_dir / "config.pbtxt").read_text()
    with pytest.raises(InferenceError, match="already exists"):
        export_model_repo(cfg, tmp_path / "cpu")

    values, counts = jets
    n = min(len(counts), 3000)
    x = torch.from_numpy(values[: int(counts[:n].sum())].copy())
    c = torch.from_numpy(counts[:n].copy())
    net, _ = load_constituent_model(_model(cfg))  # the training-time module, rebuilt from the weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.x calls TorchScript deprecated; Triton loads it
        loaded = torch.jit.load(str(model_dir / "1" / "model.pt"))
    with torch.no_grad():
        expected, got = net(x, c).numpy(), loaded(x, c).numpy()
    assert got.shape == (n,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_onnx_export_through_the_cli_scores_like_the_training_model(trained, jets, tmp_path, capsys) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path, cfg = trained
    argv = ["serve", "--config", str(path), "--export-repo", str(tmp_path / "repo"), "--export-format", "onnx"]
    assert main([*argv, "--instances", "2"]) == 0, capsys.readouterr().err
    model_dir = tmp_path / "repo" / SERVED
    config = (model_dir / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in config and "instance_group [ { count: 2 kind: KIND_CPU } ]" in config
    values, counts = jets
    n = min(len(counts), 3000)
    x, c = values[: int(counts[:n].sum())], counts[:n]
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"CONSTITUENTS": x, "COUNTS": c})[0]
    net, _ = load_constituent_model(_model(cfg))
    with torch.no_grad():
        expected = net(torch.from_numpy(x.copy()), torch.from_numpy(c.copy())).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_dynamic_batching_merges_ragged_requests_across_instances(trained, jets, tmp_path) -> None:
    """--dynamic-batching on --instances 2: requests of several clients are merged, scores stay within tolerance."""
    from tritonclient import grpc

    values, counts = jets
    model = _model(trained[1])
    n = min(len(counts), 4000)
    x, c = values[: int(counts[:n].sum())], counts[:n]
    reference = ConstituentScorer(model).predict_constituents(x, c)
    workspace = Path(tempfile.mkdtemp(prefix="qgc", dir="/tmp"))
    srv = _server(model, tmp_path / "b.log", workspace, extra=("--dynamic-batching", "on", "--instances", "2"))
    results: dict[int, tuple[np.ndarray, int, int]] = {}
    try:
        srv.start([SERVED])
        client = grpc.InferenceServerClient(srv.grpc_url)
        try:
            cfg = client.get_model_config(SERVED, as_json=True)["config"]
            assert int(cfg["max_batch_size"]) > 0 and "dynamic_batching" in cfg
            assert [i.get("allow_ragged_batch", False) for i in cfg["input"]] == [True, True]
            assert sum(int(g["count"]) for g in cfg["instance_group"]) == 2

            def one_client(i: int) -> None:
                settings = _settings(srv, batch_size=101 + 7 * i, max_in_flight=4)
                with TritonConstituentScorer(settings, model_path=model) as scorer:
                    got = scorer.predict_constituents(x, c)
                    prov = scorer.provenance()["triton"]
                    assert prov["server_merges_requests"] is True
                    results[i] = (got, prov["requests"], scorer.retries)

            threads = [threading.Thread(target=one_client, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            client.close()
    finally:
        _stop(srv)
        shutil.rmtree(workspace, ignore_errors=True)
    assert sorted(results) == [0, 1, 2, 3]
    for i, (got, requests, retries) in results.items():
        assert requests == -(-n // (101 + 7 * i)) and retries == 0
        np.testing.assert_allclose(got, reference, rtol=0, atol=TOLERANCE)
    # the server's own count at exit (the scorers' start-up checks send no inference request)
    found = re.findall(r"scored (\d+) requests in (\d+) forward passes", srv.log_path.read_text())
    assert found, srv.log_tail()
    requests, forwards = map(int, found[-1])
    assert requests == sum(r[1] for r in results.values())
    assert forwards < requests  # merged: fewer forward passes than requests

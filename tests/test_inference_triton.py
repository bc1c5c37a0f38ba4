"""The Triton backend against real servers: pytriton (`qgcal serve`) and an exported repo.

Needs the `triton` extra (tritonclient, nvidia-pytriton; numpy<2 environment).
"""

from __future__ import annotations

import logging
import signal
import time

import numpy as np
import pytest

# Fixtures (tagger, jets_120k, triton_server) come from the triton_fixture plugin, which
# tests/conftest.py loads with `pytest_plugins = ["triton_fixture"]`.
from triton_fixture import MODEL_NAME, ServerProcess, closed_port, free_port, serve_process

from qgcal.inference import InferenceError, TritonScorer, TritonSettings, export_repo, make_scorer
from qgcal.inference.export import bundled_server_command
from qgcal.inference.triton_client import _Backoff

PROTOCOLS = ["grpc", "http"]


def _cfg(server: ServerProcess, protocol: str, **triton: object) -> dict[str, object]:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    return {"backend": "triton", "triton": {"url": url, "protocol": protocol, **triton}}


@pytest.fixture(scope="module")
def local_scores(tagger, jets_120k) -> np.ndarray:
    with make_scorer({}, tagger.path) as scorer:
        return scorer.predict(jets_120k)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_triton_scores_equal_local(triton_server, tagger, jets_120k, local_scores, protocol):
    with make_scorer(_cfg(triton_server, protocol, batch_size=32768), tagger.path) as scorer:
        scores = scorer.predict(jets_120k)
        prov = scorer.provenance()
    assert scores.dtype == np.float32 and scores.shape == (len(jets_120k),)
    np.testing.assert_allclose(scores, local_scores, rtol=0, atol=1e-5)
    assert prov["backend"] == "triton" and prov["fallback"] == {"happened": False, "reason": None}
    assert prov["triton"]["protocol"] == protocol and prov["triton"]["requests"] == 4
    # the served model advertises its fingerprint and it is the one we trained
    assert prov["triton"]["served_model_sha256"] == prov["model"]["sha256"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_batches_not_dividing_n_and_empty_input(triton_server, tagger, jets_120k, local_scores, protocol):
    n = 50_001
    with make_scorer(_cfg(triton_server, protocol, batch_size=7_777, max_in_flight=3), tagger.path) as scorer:
        scores = scorer.predict(jets_120k[:n])
        empty = scorer.predict(jets_120k[:0])
        one = scorer.predict(jets_120k[:1])
        requests = scorer.provenance()["triton"]["requests"]
    np.testing.assert_allclose(scores, local_scores[:n], rtol=0, atol=1e-5)
    assert empty.shape == (0,) and empty.dtype == np.float32
    np.testing.assert_allclose(one, local_scores[:1], rtol=0, atol=1e-5)
    assert requests == -(-n // 7_777) + 1  # the empty call sent nothing


class _FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_backoff_doubles_to_one_second_and_never_sleeps_past_the_budget():
    clock = _FakeClock()
    backoff = _Backoff(3.0, clock=clock, sleep=clock.sleep)
    assert backoff.remaining() == 3.0
    while backoff.wait():
        pass
    assert clock.slept == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]  # 2.55 s; one more 1 s would pass 3 s
    assert backoff.remaining() == pytest.approx(0.45)
    clock.now += 10.0
    assert backoff.remaining() == 0.05  # past the deadline a last attempt still gets a timeout

    # an outage that began earlier counts from its start: 1.5 s of a 2 s budget are gone
    since = clock.now - 1.5
    later = _Backoff(2.0, since=since, clock=clock, sleep=clock.sleep)
    clock.slept.clear()
    while later.wait():
        pass
    assert clock.slept == [0.05, 0.1, 0.2]
    assert _Backoff(0.0, clock=clock, sleep=clock.sleep).wait() is False


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_down_fails_within_budget(tagger, protocol):
    budget = 1.5
    url = f"127.0.0.1:{closed_port()}"
    cfg = {
        "backend": "triton",
        "triton": {"url": url, "protocol": protocol, "retry_budget_s": budget},
    }
    t0 = time.monotonic()
    with pytest.raises(InferenceError) as err:
        make_scorer(cfg, tagger.path)
    elapsed = time.monotonic() - t0
    assert elapsed < budget + 0.75, f"took {elapsed:.2f} s for a {budget} s budget"
    message = str(err.value)
    assert url in message and "--backend local" in message and "\n" not in message


def test_wrong_model_name_is_a_clear_error(triton_server, tagger):
    t0 = time.monotonic()
    with pytest.raises(InferenceError, match=r"model 'no_such_tagger' not found on Triton server at 127\.0\.0\.1:"):
        make_scorer(_cfg(triton_server, "grpc", model_name="no_such_tagger"), tagger.path)
    assert time.monotonic() - t0 < 2.0  # not retried: it is a config error, not an outage


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"output_name": "PROB"}, "no output 'PROB' (outputs: SCORE)"),
        ({"input_dtype": "FP64"}, "input FEATURES is TYPE_FP32, config says FP64"),
        ({"batch_size": 200_000}, "exceeds the model's max_batch_size 131072"),
    ],
)
def test_layout_mismatch_is_reported(triton_server, tagger, override, fragment):
    with pytest.raises(InferenceError, match="does not match the config") as err:
        make_scorer(_cfg(triton_server, "http", **override), tagger.path)
    assert fragment in str(err.value)


def test_fallback_local_scores_locally_and_says_so(tagger, jets_120k, local_scores, caplog):
    url = f"127.0.0.1:{closed_port()}"
    cfg = {"backend": "triton", "triton": {"url": url, "retry_budget_s": 0.5, "fallback": "local"}}
    with (
        caplog.at_level(logging.WARNING, logger="qgcal.inference.triton_client"),
        make_scorer(cfg, tagger.path) as scorer,
    ):
        scores = scorer.predict(jets_120k[:20_000])
        prov = scorer.provenance()
    np.testing.assert_array_equal(scores, local_scores[:20_000])
    assert prov["backend"] == "local" and prov["engine"] == "sklearn"
    assert prov["fallback"]["happened"] is True and url in prov["fallback"]["reason"]
    assert any("falling back to local" in r.getMessage() for r in caplog.records)


def test_fallback_needs_a_local_model():
    settings = TritonSettings(url=f"127.0.0.1:{closed_port()}", fallback="local")
    with pytest.raises(InferenceError, match="no local model path"):
        TritonScorer(settings, model_path=None)


def test_serve_stops_cleanly_on_sigterm_and_clients_notice(tagger, jets_120k, local_scores, tmp_path, short_workspace):
    server = serve_process(tagger.path, tmp_path, short_workspace).start([MODEL_NAME])
    assert server.children, "tritonserver should run as a child of `qgcal serve`"
    x = jets_120k[:10_000]
    falls_back = make_scorer(_cfg(server, "grpc", retry_budget_s=0.5, fallback="local"), tagger.path)
    fails = make_scorer(_cfg(server, "http", retry_budget_s=0.5), tagger.path)
    np.testing.assert_allclose(falls_back.predict(x), local_scores[:10_000], rtol=0, atol=1e-5)

    # SIGTERM; asserts that no process, shm segment or workspace file is left.  (It takes
    # ~5 s more than needed: tritonserver waits exit_timeout_secs for the idle HTTP client.)
    server.stop(signal.SIGTERM)
    assert server.proc is not None and server.proc.returncode == 0, server.log_tail()

    # the server went away mid-run: one scorer falls back and says so, the other fails in time
    with falls_back:
        np.testing.assert_array_equal(falls_back.predict(x), local_scores[:10_000])
        prov = falls_back.provenance()
    assert prov["fallback"]["happened"] and server.grpc_url in prov["fallback"]["reason"]
    assert prov["triton"]["requests"] == 1
    t0 = time.monotonic()
    with (
        fails,
        pytest.raises(InferenceError, match=f"Triton server at {server.http_url} unreachable"),
    ):
        fails.predict(x)
    assert time.monotonic() - t0 < 0.5 + 0.75


def test_serve_refuses_a_busy_port(tagger):
    import socket

    from qgcal.inference.serve import serve

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InferenceError, match=f"port {port} on 127.0.0.1 is already in use"):
            serve(tagger.path, http_port=free_port(), grpc_port=port)


TRACKING_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "FEATURES").as_numpy()
            labels = (x.sum(axis=1) > 0).astype(np.int64) + 2 * (x[:, 0] > 1)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("LABELS", labels)]))
        return out
"""

TRACKING_CONFIG = """
name: "tracking"
backend: "python"
max_batch_size: 4096
input [ { name: "FEATURES" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "LABELS" data_type: TYPE_INT64 dims: [ -1 ] } ]
"""


@pytest.fixture(scope="module")
def exported_server(tagger, tmp_path_factory) -> ServerProcess:
    """pytriton's bundled tritonserver on an exported qgcal repo plus a generic model."""
    work = tmp_path_factory.mktemp("exported")
    repo = work / "repo"
    export_repo(tagger.path, repo, model_name="exported_tagger", max_batch_size=65536, instance_count=1)
    (repo / "tracking" / "1").mkdir(parents=True)
    (repo / "tracking" / "config.pbtxt").write_text(TRACKING_CONFIG)
    (repo / "tracking" / "1" / "model.py").write_text(TRACKING_MODEL)
    http_port, grpc_port = free_port(), free_port()
    argv, env = bundled_server_command(repo, work / "server", http_port=http_port, grpc_port=grpc_port)
    server = ServerProcess(argv=argv, env=env, log_path=work / "server.log", grpc_port=grpc_port, http_port=http_port)
    server.start(["exported_tagger", "tracking"])
    yield server
    server.stop(signal.SIGINT)


def test_export_repo_layout(tagger, tmp_path):
    model_dir = export_repo(tagger.path, tmp_path, model_name="t", max_batch_size=1024, instance_count=2)
    config = (model_dir / "config.pbtxt").read_text()
    for fragment in (
        'backend: "python"',
        "max_batch_size: 1024",
        "dynamic_batching",
        "instance_group [ { count: 2 kind: KIND_CPU } ]",
        "dims: [ 4 ]",
        'key: "qgcal_model_sha256"',
    ):
        assert fragment in config
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == [
        "model.meta.json",
        "model.py",
        "model.skops",
    ]
    with pytest.raises(InferenceError, match="already exists"):
        export_repo(tagger.path, tmp_path, model_name="t")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_exported_repo_serves_identical_scores(exported_server, tagger, jets_120k, local_scores, protocol):
    cfg = _cfg(exported_server, protocol, model_name="exported_tagger", batch_size=30_000)
    with make_scorer(cfg, tagger.path) as scorer:
        scores = scorer.predict(jets_120k)
        prov = scorer.provenance()
    np.testing.assert_allclose(scores, local_scores, rtol=0, atol=1e-5)
    assert prov["triton"]["served_model_sha256"] == prov["model"]["sha256"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_generic_client_calls_a_labels_model(exported_server, protocol):
    """Config-driven layout: FEATURES [-1, 3] FP32 in, LABELS INT64 [-1] out."""
    url = exported_server.grpc_url if protocol == "grpc" else exported_server.http_url
    settings = TritonSettings(
        url=url,
        protocol=protocol,
        model_name="tracking",
        output_name="LABELS",
        output_dtype="INT64",
        batch_size=1000,
        max_in_flight=2,
    )
    x = np.random.default_rng(5).normal(size=(2_500, 3)).astype(np.float32)
    with TritonScorer(settings) as scorer:
        labels = scorer.predict(x)
    expected = (x.sum(axis=1) > 0).astype(np.int64) + 2 * (x[:, 0] > 1)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, expected)


def test_stale_server_model_is_detected(exported_server, tagger, tmp_path):
    """A server whose advertised fingerprint differs from the configured model is refused."""
    from qgcal.inference.synthetic import synthetic_jets
    from qgcal.training import train_tagger

    other = tmp_path / "other.skops"
    train_tagger(synthetic_jets(4_000, seed=1), seed=1, max_iter=3).save(other)
    with pytest.raises(InferenceError, match="serves model sha256 .* but the configured model"):
        make_scorer(_cfg(exported_server, "grpc", model_name="exported_tagger"), other)


def test_serve_refuses_a_too_deep_workspace(tagger, tmp_path):
    from qgcal.inference.serve import serve

    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    with pytest.raises(InferenceError, match="too deep for Triton's IPC sockets"):
        serve(tagger.path, http_port=free_port(), grpc_port=free_port(), workspace=deep)
    assert list(deep.iterdir()) == []

"""Local backends (scikit-learn, torch trees), model files and the inference config.

The torch tests need torch (the `gpu` extra; a CPU build is enough: the same code runs on a
CPU tensor device). The `test` extra does not pull it in (a plain `pip install torch` on Linux
fetches the CUDA build and several GB of nvidia-* wheels): `.ci/run` installs it first, and
without it these tests are skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import json
import zipfile

import numpy as np
import pytest
from pydantic import ValidationError

# Fixtures (tagger, jets_120k) come from the triton_fixture plugin (tests/conftest.py).
from triton_fixture import FEATURES, feature_matrix

from qgcal.inference import (
    InferenceConfig,
    InferenceError,
    TritonSettings,
    available_backends,
    load_model,
    make_scorer,
    meta_path,
    save_model,
)
from qgcal.inference.model_io import columns_fingerprint, file_sha256
from qgcal.inference.synthetic import synthetic_jets
from qgcal.inference.torch_trees import TorchTreeScorer
from qgcal.training import train_tagger

HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(
    not HAVE_TORCH,
    reason="torch is not installed (the gpu extra; README: 'Tests' says how to get the CPU build)",
)


@pytest.fixture(scope="module")
def nan_tagger(tmp_path_factory):
    """A model trained with missing values, so both missing-goes-left/right splits occur."""
    columns = synthetic_jets(30_000, seed=21, nan_fraction=0.1)
    path = tmp_path_factory.mktemp("nan_model") / "nan.skops"
    train_tagger(columns, features=FEATURES, seed=0, max_iter=30, max_leaf_nodes=31).save(path)
    return path


def test_model_round_trip_scores_identically(tagger, jets_120k, tmp_path):
    loaded = load_model(tagger.path)
    x = jets_120k[:30_000]
    np.testing.assert_array_equal(loaded.estimator.decision_function(x), tagger.result.model.decision_function(x))
    assert loaded.fingerprint == file_sha256(tagger.path)
    # saving the model again writes a new file (its bytes need not match the first one's):
    # it verifies against its own sidecar and scores bit-identically
    again = tmp_path / "again.skops"
    meta = tagger.result.save(again)
    reloaded = load_model(again)
    assert reloaded.fingerprint == meta.model_sha256 == file_sha256(again)
    np.testing.assert_array_equal(reloaded.estimator.decision_function(x), loaded.estimator.decision_function(x))


def test_model_metadata_describes_the_model(tagger):
    meta = json.loads(meta_path(tagger.path).read_text())
    assert meta["features"] == list(FEATURES)
    assert meta["classes"] == [0, 1] and meta["positive_class"] == 1
    assert meta["class_names"] == {"0": "quark", "1": "gluon"}
    assert "decision_function" in meta["score"] and "gluon" in meta["score"]
    assert meta["model_sha256"] == file_sha256(tagger.path)
    assert meta["training_sample_sha256"] == tagger.result.training_sample_sha256
    assert {"qgcal", "numpy", "scikit-learn", "skops"} <= set(meta["versions"])
    assert meta["hyperparameters"]["early_stopping"] is False
    assert meta["hyperparameters"]["random_state"] == 3


def test_skops_archive_holds_no_pickle(tagger):
    with zipfile.ZipFile(tagger.path) as archive:
        names = archive.namelist()
    assert "schema.json" in names and all(n == "schema.json" or n.endswith(".npy") for n in names)


def test_load_model_errors_are_clear(tagger, tmp_path):
    with pytest.raises(InferenceError, match="model file .*missing.skops not found"):
        load_model(tmp_path / "missing.skops")

    no_meta = tmp_path / "no_meta.skops"
    no_meta.write_bytes(tagger.path.read_bytes())
    with pytest.raises(InferenceError, match="model metadata .*no_meta.meta.json not found"):
        load_model(no_meta)

    tampered = tmp_path / "tampered.skops"
    data = bytearray(tagger.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    meta_path(tampered).write_bytes(meta_path(tagger.path).read_bytes())
    with pytest.raises(InferenceError, match="was modified or truncated") as err:
        load_model(tampered)
    assert "\n" not in str(err.value)

    # a truncated file whose sidecar was (wrongly) updated still fails cleanly
    truncated = tmp_path / "truncated.skops"
    truncated.write_bytes(tagger.path.read_bytes()[:1000])
    meta = json.loads(meta_path(tagger.path).read_text())
    meta["model_sha256"] = file_sha256(truncated)
    meta_path(truncated).write_text(json.dumps(meta))
    with pytest.raises(InferenceError, match="could not be loaded"):
        load_model(truncated)


class Sneaky:
    """A type no model file should contain."""

    def __init__(self) -> None:
        self.payload = 1


def test_untrusted_types_are_refused(tagger, tmp_path):
    import skops.io as sio

    path = tmp_path / "sneaky.skops"
    sio.dump({"model": tagger.result.model, "extra": Sneaky()}, path)
    meta = json.loads(meta_path(tagger.path).read_text())
    meta["model_sha256"] = file_sha256(path)
    meta_path(path).write_text(json.dumps(meta))
    with pytest.raises(InferenceError, match="types qgcal does not trust .*Sneaky"):
        load_model(path)


def test_sklearn_scorer_contract(tagger, jets_120k):
    with make_scorer(None, tagger.path) as scorer:
        scores = scorer.predict(jets_120k[:1000])
        empty = scorer.predict(jets_120k[:0])
        prov = scorer.provenance()
    assert scores.dtype == np.float32 and scores.shape == (1000,)
    assert empty.shape == (0,) and empty.dtype == np.float32
    assert prov["backend"] == "local" and prov["engine"] == "sklearn" and prov["device"] == "cpu"
    assert prov["model"]["sha256"] == file_sha256(tagger.path)
    assert prov["fallback"] == {"happened": False, "reason": None}
    json.dumps(prov)  # JSON-able
    with pytest.raises(InferenceError, match=r"expects features of shape \[n, 4\] but got \[10, 3\]"):
        scorer.predict(jets_120k[:10, :3])


@needs_torch
@pytest.mark.parametrize("which", ["tagger", "nan_tagger"])
def test_torch_cpu_equals_sklearn(which, tagger, nan_tagger, jets_120k):
    path = tagger.path if which == "tagger" else nan_tagger
    x = jets_120k.copy()
    x[:50, 2] = np.inf
    x[50:100, 3] = -np.inf
    x[100:150, 0] = np.nan
    reference = make_scorer({}, path).predict(x)
    scorer = TorchTreeScorer(load_model(path), device="cpu")
    scores = scorer.predict(x)
    assert scores.dtype == np.float32 and scores.shape == reference.shape
    np.testing.assert_allclose(scores, reference, rtol=0, atol=1e-5)
    assert np.isnan(x).any()
    assert scorer.predict(x[:0]).shape == (0,)
    prov = scorer.provenance()
    assert prov["engine"] == "torch" and prov["device"] == "cpu"


@needs_torch
def test_torch_chunking_does_not_change_scores(tagger, jets_120k):
    model = load_model(tagger.path)
    x = jets_120k[:5_000]
    big = TorchTreeScorer(model, device="cpu").predict(x)
    small = TorchTreeScorer(model, device="cpu", chunk_elements=1_000).predict(x)  # 256-row chunks
    np.testing.assert_array_equal(big, small)


@needs_torch
def test_device_cuda_without_cuda_is_one_clear_line(tagger):
    import torch

    if torch.cuda.is_available():  # on a GPU machine the same request must work
        with make_scorer({"device": "cuda"}, tagger.path) as scorer:
            assert scorer.provenance()["device"].startswith("cuda")
        return
    with pytest.raises(InferenceError) as err:
        make_scorer({"device": "cuda"}, tagger.path)
    message = str(err.value)
    assert "device cuda" in message and str(tagger.path) in message and "--device cpu" in message
    assert "\n" not in message


def test_device_auto_records_what_ran(tagger):
    with make_scorer({"device": "auto"}, tagger.path) as scorer:
        prov = scorer.provenance()
    assert prov["requested"]["device"] == "auto"
    cuda = False
    if HAVE_TORCH:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        assert prov["engine"] == "torch" and prov["device"].startswith("cuda")
    else:
        assert prov["engine"] == "sklearn" and prov["device"] == "cpu"
        assert "cuda not used" in prov["device_note"]


def test_config_defaults_and_precise_errors():
    cfg = InferenceConfig()
    assert (cfg.backend, cfg.device, cfg.triton.url, cfg.triton.protocol) == (
        "local",
        "cpu",
        "127.0.0.1:8001",
        "grpc",
    )
    assert (cfg.triton.input_name, cfg.triton.output_name, cfg.triton.batch_size) == (
        "FEATURES",
        "SCORE",
        65536,
    )
    assert (cfg.triton.max_in_flight, cfg.triton.retry_budget_s, cfg.triton.fallback) == (
        4,
        10.0,
        "none",
    )
    schema = InferenceConfig.model_json_schema()
    assert all("description" in p for p in schema["properties"].values())
    assert all("description" in p for p in TritonSettings.model_json_schema()["properties"].values())
    with pytest.raises(ValidationError, match="triton.batchsize"):
        InferenceConfig.model_validate({"triton": {"batchsize": 10}})
    with pytest.raises(ValidationError, match="is not HOST:PORT"):
        TritonSettings(url="grpc://localhost:8001")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        TritonSettings(max_in_flight=0)
    assert TritonSettings(url="[::1]:8001").url == "[::1]:8001"


def test_make_scorer_settings_are_validated(tagger):
    assert available_backends() == ["local", "triton"]
    with pytest.raises(InferenceError, match=r"inference.backend: Input should be 'local' or 'triton'"):
        make_scorer({"backend": "gpu"}, tagger.path)
    with pytest.raises(InferenceError, match=r"inference.device: Input should be 'cpu', 'cuda' or 'auto'"):
        make_scorer({"device": "tpu"}, tagger.path)
    with pytest.raises(InferenceError, match="inference.triton.url"):
        make_scorer({"triton": {"url": "localhost"}}, tagger.path)
    with pytest.raises(InferenceError, match="backend local needs a model file path"):
        make_scorer({}, None)


def test_save_model_fingerprints_the_training_columns(tmp_path):
    columns = synthetic_jets(6_000, seed=4)
    result = train_tagger(columns, seed=0, max_iter=5)
    used = sorted({*FEATURES, "pt", "event", "parton_label", "nTracks", "weight"})
    assert result.training_sample_sha256 == columns_fingerprint(columns, used)
    meta = save_model(
        result.model,
        tmp_path / "m.skops",
        features=FEATURES,
        training_sample_sha256=result.training_sample_sha256,
    )
    assert load_model(tmp_path / "m.skops").meta == meta
    x = feature_matrix(columns)
    np.testing.assert_array_equal(
        make_scorer({}, tmp_path / "m.skops").predict(x),
        result.model.decision_function(x).astype(np.float32),
    )

"""ONNX export of the constituent tagger for Triton's onnxruntime backend.

What is checked against what: the exported ``model.onnx``, run by onnxruntime (its own
kernels, not torch), against the training-time torch module rebuilt from the weights file
(``load_constituent_model``), on jets with empty, single-constituent and large jets and on
request sizes other than the export's example; the ``config.pbtxt`` is parsed by Triton's
own protobuf schema (``tritonclient``'s ``model_config_pb2``), not by string search alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qgcal.inference import InferenceError
from qgcal.inference.constituent_model import build_network, load_constituent_model, save_constituent_model
from qgcal.inference.export import export_constituent_repo

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

K = 6
FEATURES = [f"f{i}" for i in range(K)]
#: float32 log-odds, onnxruntime kernels against torch's (the issue's bound)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small DeepSets model with seeded weights and a non-trivial input standardisation."""
    torch.manual_seed(3)
    net = build_network(K, 16)
    with torch.no_grad():
        net.mean.copy_(torch.linspace(-0.5, 0.5, K))
        net.scale.copy_(torch.linspace(0.5, 2.0, K))
    path = tmp_path_factory.mktemp("onnx") / "cons.safetensors"
    save_constituent_model(net, path, features=FEATURES, hidden=16, training_sample_sha256="test", training={})
    return path


def _jets(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(18, size=n).astype(np.int64)
    counts[:3] = [0, 1, 60]  # an empty jet, a lone constituent, a large jet
    counts[-2:] = 0  # trailing empty jets: their jet-end marks fall past the last constituent
    values = rng.normal(size=(int(counts.sum()), K)).astype(np.float32)
    return values, counts


def _training_scores(model: Path, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    net, _ = load_constituent_model(model)  # the training-time module
    with torch.no_grad():
        return np.asarray(net(torch.from_numpy(values), torch.from_numpy(counts)).numpy())


def _parse_config(model_dir: Path) -> Any:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_onnx_scores_equal_training_scores(model: Path, tmp_path: Path) -> None:
    model_dir = export_constituent_repo(model, tmp_path / "repo", model_name="cons", export_format="onnx")
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["CONSTITUENTS", "COUNTS"]
    assert [i.type for i in session.get_inputs()] == ["tensor(float)", "tensor(int64)"]
    # dynamic first dimensions (named, not numbers); the feature dimension is fixed
    shapes = [i.shape for i in session.get_inputs()]
    assert isinstance(shapes[0][0], str) and shapes[0][1] == K and isinstance(shapes[1][0], str)
    assert [o.name for o in session.get_outputs()] == ["SCORE"]
    one_jet = (np.ones((2, K), np.float32), np.array([2], np.int64))
    for values, counts in (_jets(1, 3000), _jets(2, 7), one_jet):  # request sizes unlike the export's example
        got = session.run(None, {"CONSTITUENTS": values, "COUNTS": counts})[0]
        expected = _training_scores(model, values, counts)
        assert got.shape == (len(counts),) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    # the per-jet sums really are per jet: moving a constituent to another jet changes both scores
    values, counts = _jets(4, 50)
    moved = counts.copy()
    moved[3] += 1
    moved[4] -= 1
    a = session.run(None, {"CONSTITUENTS": values, "COUNTS": counts})[0]
    b = session.run(None, {"CONSTITUENTS": values, "COUNTS": moved})[0]
    assert a[3] != b[3] and a[4] != b[4]
    np.testing.assert_array_equal(np.delete(a, [3, 4]), np.delete(b, [3, 4]))


def test_onnx_config_is_a_valid_onnxruntime_model_config(model: Path, tmp_path: Path) -> None:
    cpu = _parse_config(export_constituent_repo(model, tmp_path / "cpu", model_name="cons", export_format="onnx",
                                                instance_count=2))  # fmt: skip
    assert cpu.backend == "onnxruntime" and cpu.platform == ""
    assert cpu.default_model_filename == "model.onnx"
    # ragged pair, one request = one forward: no Triton batch dimension, no dynamic batcher (docs/triton.md)
    assert cpu.max_batch_size == 0 and not cpu.HasField("dynamic_batching")
    inputs = [(i.name, model_config_type(i.data_type), list(i.dims)) for i in cpu.input]
    assert inputs == [("CONSTITUENTS", "TYPE_FP32", [-1, K]), ("COUNTS", "TYPE_INT64", [-1])]
    outputs = [(o.name, model_config_type(o.data_type), list(o.dims)) for o in cpu.output]
    assert outputs == [("SCORE", "TYPE_FP32", [-1])]
    groups = [(g.count, g.kind, list(g.gpus)) for g in cpu.instance_group]
    assert groups == [(2, 2, [])]  # KIND_CPU = 2
    params = cpu.parameters
    sha = load_constituent_model(model)[1].weights_sha256
    assert params["qgcal_model_sha256"].string_value == sha and params["qgcal_device"].string_value == "cpu"
    assert "INFERENCE_MODE" not in params  # a pytorch-backend setting

    gpu = _parse_config(export_constituent_repo(model, tmp_path / "gpu", model_name="cons", export_format="onnx",
                                                gpus=[0, 1]))  # fmt: skip
    groups = [(g.count, g.kind, list(g.gpus)) for g in gpu.instance_group]
    assert groups == [(1, 1, [0]), (1, 1, [1])]  # one KIND_GPU (= 1) instance per explicit device id
    assert gpu.parameters["qgcal_device"].string_value == "cuda:0,cuda:1"

    ts = _parse_config(export_constituent_repo(model, tmp_path / "ts", model_name="cons"))
    assert ts.platform == "pytorch_libtorch" and ts.default_model_filename == "model.pt"
    assert (tmp_path / "ts" / "cons" / "1" / "model.pt").is_file()


def model_config_type(value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return str(model_config_pb2.DataType.Name(value))


def test_export_refuses_what_it_cannot_write(model: Path, tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match="choose one of torchscript, onnx"):
        export_constituent_repo(model, tmp_path / "x", model_name="cons", export_format="tflite")
    first = export_constituent_repo(model, tmp_path / "y", model_name="cons", export_format="onnx")
    with pytest.raises(InferenceError, match="already exists"):
        export_constituent_repo(model, tmp_path / "y", model_name="cons", export_format="onnx")
    again = export_constituent_repo(model, tmp_path / "z", model_name="cons", export_format="onnx")
    assert (again / "1" / "model.onnx").read_bytes() == (first / "1" / "model.onnx").read_bytes()  # reproducible
    from qgcal.inference.export import _onnx_served

    with pytest.raises(InferenceError, match="DeepSets architecture only"):
        _onnx_served(torch.nn.Linear(2, 1))

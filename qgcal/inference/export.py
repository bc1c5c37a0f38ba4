"""Write a Triton model repository for a facility's stock tritonserver.

BDT taggers: a Python-backend repository (below).  Constituent taggers: TorchScript for the
pytorch backend or ONNX for the onnxruntime backend (:func:`export_constituent_repo`), two
inputs and no dynamic batching.

Why a Python-backend repository: the tagger is a scikit-learn model; the Python backend
runs it unchanged (no conversion, identical scores).  The repository is self-describing:
config.pbtxt carries the model fingerprint and the trusted-type list, and ``model.py``
(``triton_python_model.py``) verifies the fingerprint before loading, so a stale or
tampered model file fails at load time instead of scoring silently.

:func:`bundled_server_command` starts the tritonserver binary shipped inside
nvidia-pytriton on such a repository; it is how the tests prove that the export loads in a
real server, and a way to try an export before shipping it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InferenceError, import_optional
from .model_io import TRUSTED_TYPES, load_model, meta_path
from .triton_client import CONSTITUENTS_INPUT, COUNTS_INPUT, DEVICE_PARAMETER, SHA_PARAMETER

__all__ = [
    "EXPORT_FORMATS",
    "bundled_server_command",
    "export_constituent_repo",
    "export_repo",
    "onnx_model_bytes",
    "torchscript_module",
]

_TEMPLATE = Path(__file__).with_name("triton_python_model.py")
#: what ``qgcal serve --export-repo --export-format`` writes for a constituent tagger
EXPORT_FORMATS = ("torchscript", "onnx")
#: ONNX opset of the export: >= 16 for ScatterElements(reduction="add"), the per-jet segment sum
ONNX_OPSET = 17


def _pbtxt_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid protobuf text string


def export_repo(
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model_name: str = "qgcal_tagger",
    max_batch_size: int = 131072,
    instance_count: int = 1,
    input_name: str = "FEATURES",
    output_name: str = "SCORE",
    version: int = 1,
    execution_env: str | None = None,
) -> Path:
    """Write ``out_dir/<model_name>/{config.pbtxt, <version>/model.py, model files}``.

    ``execution_env`` (optional) is written as the Python backend's EXECUTION_ENV_PATH: a
    conda-pack tarball with numpy, scikit-learn and skops for servers whose stub Python
    lacks them.  Returns the model directory.
    """
    model = load_model(model_path)  # verifies the fingerprint before anything is copied
    if max_batch_size < 1 or instance_count < 1:
        raise InferenceError("export: max_batch_size and instance_count must be >= 1")
    model_dir = Path(out_dir) / model_name
    version_dir = model_dir / str(version)
    if version_dir.exists():
        raise InferenceError(f"export: {version_dir} already exists; choose an empty directory")
    version_dir.mkdir(parents=True)
    shutil.copyfile(model.path, version_dir / "model.skops")
    shutil.copyfile(meta_path(model.path), version_dir / "model.meta.json")
    shutil.copyfile(_TEMPLATE, version_dir / "model.py")

    params = {
        SHA_PARAMETER: model.meta.model_sha256,
        "qgcal_model_file": "model.skops",
        "qgcal_features": ",".join(model.meta.features),
        "qgcal_score": model.meta.score,
        "qgcal_trusted_types": json.dumps(list(TRUSTED_TYPES)),
    }
    if execution_env:
        params["EXECUTION_ENV_PATH"] = execution_env
    lines = [
        f"name: {_pbtxt_string(model_name)}",
        'backend: "python"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        f"  {{ name: {_pbtxt_string(input_name)} data_type: TYPE_FP32 dims: [ {len(model.meta.features)} ] }}",
        "]",
        "output [",
        f"  {{ name: {_pbtxt_string(output_name)} data_type: TYPE_FP32 dims: [ 1 ] }}",
        "]",
        "dynamic_batching { max_queue_delay_microseconds: 100 }",
        f"instance_group [ {{ count: {instance_count} kind: KIND_CPU }} ]",
        f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}",
    ]
    for key, value in params.items():
        lines.append(f"parameters {{ key: {_pbtxt_string(key)} value: {{ string_value: {_pbtxt_string(value)} }} }}")
    (model_dir / "config.pbtxt").write_text("\n".join(lines) + "\n")
    return model_dir


def bundled_server_command(
    repo_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    *,
    http_port: int,
    grpc_port: int,
) -> tuple[list[str], dict[str, str]]:
    """argv and environment to run pytriton's bundled tritonserver on ``repo_dir``.

    ``work_dir`` receives a backend directory with the Python-backend stub matching this
    interpreter (as pytriton arranges for itself).  The environment puts this
    interpreter's libpython first (the stub links it) and its ``bin`` first on PATH (the
    stub's embedded Python locates its prefix, hence this environment's packages, there).
    """
    pytriton = import_optional("pytriton", "triton", "running the bundled tritonserver")
    from pytriton.utils.distribution import get_libs_path

    from .serve import stub_library_path

    dist = Path(str(pytriton.__file__)).parent / "tritonserver"
    backends = Path(work_dir) / "backends"
    shutil.copytree(dist / "backends", backends, dirs_exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy(dist / "python_backend_stubs" / version / "triton_python_backend_stub", backends / "python")
    env = dict(os.environ)
    libs = [p for p in (stub_library_path(), str(get_libs_path()), env.get("LD_LIBRARY_PATH")) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    argv = [
        str(dist / "bin" / "tritonserver"),
        f"--model-repository={repo_dir}",
        f"--backend-directory={backends}",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        "--exit-timeout-secs=5",
    ]
    return argv, env


def torchscript_module(model_path: str | os.PathLike[str]) -> Any:
    """The constituent model as a scripted module ``forward(CONSTITUENTS, COUNTS) -> SCORE``.

    Why script, not trace: the per-jet pooling has data-dependent sizes (``counts``) and its
    index tensors follow the inputs' device, so one file serves CPU and GPU instances. The
    argument names are the tensor names, which is one of the naming conventions Triton's
    pytorch backend maps inputs by; the single output is mapped by position.
    """
    import torch

    from .constituent_model import load_constituent_model

    net, _ = load_constituent_model(model_path)

    class Served(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, CONSTITUENTS: torch.Tensor, COUNTS: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.net(CONSTITUENTS, COUNTS)
            return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.x: TorchScript is "deprecated", still served
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(Served().eval())


def _onnx_served(net: Any) -> Any:
    """The DeepSets forward with its per-jet pooling written in ops that export to ONNX correctly.

    Why not the training module as it is: the legacy exporter turns its ``repeat_interleave``
    + ``index_add_`` pooling into ScatterND *without* reduction, which keeps one of the
    duplicate jet indices instead of summing them (wrong scores; torch only warns).  Here the
    jet index of each constituent is a cumulative sum of jet-end marks and the per-jet sum is
    a scatter-add (ONNX ScatterElements, reduction "add", opset >= 16).  Same weights, same
    per-jet order of additions; only the export wrapper differs, and the test compares it with
    the training module.
    """
    import torch

    if not all(hasattr(net, a) for a in ("phi", "rho", "mean", "scale", "sum_scale")):
        raise InferenceError(
            f"ONNX export knows the DeepSets architecture only, not {type(net).__name__}; "
            "use --export-format torchscript"
        )

    class OnnxServed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, constituents: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
            m = self.net
            h = m.phi((constituents - m.mean) * m.scale)
            n_constituents, hidden = h.shape[0], h.shape[1]
            ends = torch.cumsum(counts, 0)
            marks = torch.zeros(n_constituents + 1, dtype=counts.dtype, device=counts.device)
            jet = torch.cumsum(marks.scatter_add(0, ends, torch.ones_like(ends)), 0)[:n_constituents]
            pooled = torch.zeros((counts.shape[0], hidden), dtype=h.dtype, device=h.device)
            pooled = pooled.scatter_add(0, jet.unsqueeze(1).expand(-1, hidden), h)
            c = counts.to(h.dtype).unsqueeze(1)
            feats = torch.cat([pooled / m.sum_scale, pooled / c.clamp(min=1.0), torch.log1p(c)], dim=1)
            out: torch.Tensor = m.rho(feats).squeeze(1)
            return out

    return OnnxServed().eval()


def onnx_model_bytes(model_path: str | os.PathLike[str], *, output_name: str = "SCORE") -> bytes:
    """The constituent model as one self-contained ONNX file (opset ``ONNX_OPSET``).

    Inputs ``CONSTITUENTS`` float32 ``[N, k]`` and ``COUNTS`` int64 ``[n]`` with dynamic first
    dimensions, output ``<output_name>`` float32 ``[n]``.  The legacy (TorchScript-based)
    exporter, ``dynamo=False``: it needs only the ``onnx`` package (the torch.export-based one
    also needs onnxscript) and writes the weights inside the file, not as external data.
    """
    import io

    import torch

    from .constituent_model import load_constituent_model

    try:
        import onnx  # noqa: F401 - the legacy exporter imports it; fail here with a clear message
    except ImportError as exc:
        raise InferenceError(
            f"ONNX export needs the Python package 'onnx' ({exc}); "
            "`pip install onnx` or use --export-format torchscript"
        ) from exc
    net, meta = load_constituent_model(model_path)  # verifies the weights' SHA-256
    module = _onnx_served(net)
    k = len(meta.features)
    example = (torch.zeros((5, k), dtype=torch.float32), torch.tensor([2, 0, 3], dtype=torch.int64))
    buf = io.BytesIO()
    target: Any = buf  # the legacy exporter writes to a file object too (typed as a path only)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.9+: the legacy exporter is "deprecated"
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)  # tracer notes about shapes read as tensors
        torch.onnx.export(
            module,
            example,
            target,
            dynamo=False,
            input_names=[CONSTITUENTS_INPUT, COUNTS_INPUT],
            output_names=[output_name],
            dynamic_axes={CONSTITUENTS_INPUT: {0: "constituents"}, COUNTS_INPUT: {0: "jets"}, output_name: {0: "jets"}},
            opset_version=ONNX_OPSET,
        )
    return buf.getvalue()


def export_constituent_repo(
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model_name: str,
    output_name: str = "SCORE",
    gpus: Sequence[int] | None = None,
    instance_count: int = 1,
    version: int = 1,
    export_format: str = "torchscript",
) -> Path:
    """Write ``out_dir/<model_name>/{config.pbtxt, <version>/model.pt | model.onnx}``.

    ``export_format``: ``torchscript`` (``model.pt``, platform ``pytorch_libtorch``) or
    ``onnx`` (``model.onnx``, backend ``onnxruntime``).  ``gpus``: one instance per listed
    device id (``KIND_GPU``, explicit ``gpus: [i]``); otherwise ``instance_count`` CPU
    instances.  No dynamic batching (``max_batch_size: 0``): every request already holds many
    whole jets, and Triton's batcher would concatenate CONSTITUENTS [N_i, k] and COUNTS [n_i]
    but split the SCORE output by N_i, not n_i (see docs/triton.md; Triton's ragged batching
    fits only one-jet-per-request clients).
    """
    from .constituent_model import read_constituent_meta

    if export_format not in EXPORT_FORMATS:
        raise InferenceError(f"export: --export-format {export_format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if instance_count < 1 or (gpus is not None and (not gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus))):
        raise InferenceError("export: instance_count must be >= 1 and --gpu ids distinct and >= 0")
    # both verify the weights' SHA-256 before anything is written
    if export_format == "onnx":
        payload, filename = onnx_model_bytes(model_path, output_name=output_name), "model.onnx"
    else:
        module, filename = torchscript_module(model_path), "model.pt"
    meta = read_constituent_meta(Path(model_path))
    model_dir = Path(out_dir) / model_name
    version_dir = model_dir / str(version)
    if version_dir.exists():
        raise InferenceError(f"export: {version_dir} already exists; choose an empty directory")
    version_dir.mkdir(parents=True)
    if export_format == "onnx":
        (version_dir / filename).write_bytes(payload)
    else:
        module.save(str(version_dir / filename))
    if gpus:
        groups = ", ".join(f"{{ count: 1 kind: KIND_GPU gpus: [ {g} ] }}" for g in gpus)
        device = ",".join(f"cuda:{g}" for g in gpus)
    else:
        groups, device = f"{{ count: {instance_count} kind: KIND_CPU }}", "cpu"
    k = len(meta.features)
    runtime = 'backend: "onnxruntime"' if export_format == "onnx" else 'platform: "pytorch_libtorch"'
    lines = [
        f"name: {_pbtxt_string(model_name)}",
        runtime,
        f"default_model_filename: {_pbtxt_string(filename)}",
        "max_batch_size: 0",
        "input [",
        f"  {{ name: {_pbtxt_string(CONSTITUENTS_INPUT)} data_type: TYPE_FP32 dims: [ -1, {k} ] }},",
        f"  {{ name: {_pbtxt_string(COUNTS_INPUT)} data_type: TYPE_INT64 dims: [ -1 ] }}",
        "]",
        "output [",
        f"  {{ name: {_pbtxt_string(output_name)} data_type: TYPE_FP32 dims: [ -1 ] }}",
        "]",
        f"instance_group [ {groups} ]",
        f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}",
    ]
    params = {
        SHA_PARAMETER: meta.weights_sha256,
        DEVICE_PARAMETER: device,
        "qgcal_features": ",".join(meta.features),
        "qgcal_score": "gluon log-odds",
    }
    if export_format == "torchscript":  # pytorch-backend settings (the onnxruntime backend has none needed)
        params.update({"INFERENCE_MODE": "true", "DISABLE_OPTIMIZED_EXECUTION": "true"})
    for key, value in params.items():
        lines.append(f"parameters {{ key: {_pbtxt_string(key)} value: {{ string_value: {_pbtxt_string(value)} }} }}")
    (model_dir / "config.pbtxt").write_text("\n".join(lines) + "\n")
    return model_dir

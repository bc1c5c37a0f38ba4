"""``qgcal serve``: the config's trained tagger behind a real Triton server (pytriton).

Model taggers (the BDT) and constituent taggers (the torch DeepSets) are both served; a
constituent tagger is served as ``<triton.model_name>_<tagger>`` (:func:`served_model_name`),
so one server can hold a BDT and a constituent model side by side without a name clash.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qgcal.config import Config, ConstituentTagger, ModelTagger
from qgcal.errors import ConfigError
from qgcal.plan import model_path

__all__ = ["export_model_repo", "serve_tagger", "served_model", "served_model_name"]


def served_model_name(cfg: Config, tagger: str) -> str:
    """The Triton model name the tagger is served under (and that pass 2 calls)."""
    from qgcal.inference.triton_client import constituent_model_name

    base = cfg.inference.triton.model_name
    return constituent_model_name(base, tagger) if isinstance(cfg.taggers[tagger], ConstituentTagger) else base


def served_model(cfg: Config, tagger: str | None = None) -> tuple[str, Path]:
    """The tagger to serve (the only trained one, or ``tagger``) and its trained model file."""
    models = {n: t for n, t in cfg.taggers.items() if isinstance(t, ModelTagger | ConstituentTagger)}
    if not models:
        raise ConfigError("taggers: no tagger of kind 'model' or 'constituents' to serve")
    name = tagger or (next(iter(models)) if len(models) == 1 else None)
    if name is None or name not in models:
        raise ConfigError(f"--tagger: choose one of {', '.join(sorted(models))}")
    path = model_path(cfg, models[name])
    if not path.is_file():
        raise ConfigError(f"{path}: model of tagger {name!r} not found; run 'qgcal train --config <config>' first")
    return name, path


def export_model_repo(
    cfg: Config,
    out: Path,
    *,
    tagger: str | None = None,
    gpus: list[int] | None = None,
    instances: int = 1,
    export_format: str = "torchscript",
) -> Path:
    """A Triton model repository for a stock ``tritonserver`` (``--model-repository out``).

    BDT: a Python-backend model; constituent tagger: TorchScript for the pytorch backend or
    (``export_format="onnx"``) ONNX for the onnxruntime backend, one instance per GPU in
    ``gpus`` (explicit device ids) or ``instances`` CPU instances.
    """
    name, path = served_model(cfg, tagger)
    t = cfg.inference.triton
    if export_format != "torchscript" and not isinstance(cfg.taggers[name], ConstituentTagger):
        raise ConfigError(
            f"--export-format {export_format}: only constituent taggers export to ONNX; {name!r} is a BDT"
        )
    if isinstance(cfg.taggers[name], ConstituentTagger):
        from qgcal.inference.export import export_constituent_repo

        return Path(
            export_constituent_repo(
                path,
                out,
                model_name=served_model_name(cfg, name),
                output_name=t.output_name,
                gpus=gpus,
                instance_count=instances,
                export_format=export_format,
            )
        )
    from qgcal.inference import export_repo

    return Path(
        export_repo(
            path,
            out,
            model_name=t.model_name,
            max_batch_size=max(t.batch_size, 1),
            instance_count=instances,
            input_name=t.input_name,
            output_name=t.output_name,
        )
    )


def serve_tagger(
    cfg: Config,
    *,
    tagger: str | None = None,
    http_port: int = 8000,
    grpc_port: int = 8001,
    ready: Callable[[str, dict[str, Any]], None] | None = None,
    dynamic_batching: bool | None = None,
    instances: int = 1,
) -> None:
    """Serve the tagger until SIGINT/SIGTERM; ``ready(name, info)`` once it serves.

    BDT: dynamic batching across requests; constituent model: each request scored on its own
    (ragged inputs, see docs/triton.md) unless ``dynamic_batching`` is True; ``instances``
    model instances.
    """
    from qgcal.inference.serve import serve

    name, path = served_model(cfg, tagger)
    t = cfg.inference.triton

    def on_ready(info: dict[str, Any]) -> None:
        if ready is not None:
            ready(name, info)

    serve(
        path,
        http_port=http_port,
        grpc_port=grpc_port,
        model_name=served_model_name(cfg, name),
        max_batch_size=max(t.batch_size, 1),
        input_name=t.input_name,
        output_name=t.output_name,
        ready_callback=on_ready,
        dynamic_batching=dynamic_batching,
        instances=instances,
    )

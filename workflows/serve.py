"""``qgcal serve``: the config's trained model tagger behind a real Triton server (pytriton)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qgcal.config import Config, ModelTagger
from qgcal.errors import ConfigError
from qgcal.plan import model_path

__all__ = ["export_model_repo", "serve_tagger", "served_model"]


def served_model(cfg: Config, tagger: str | None = None) -> tuple[str, Path]:
    """The model tagger to serve (the only one, or ``tagger``) and its trained model file."""
    models = {n: t for n, t in cfg.taggers.items() if isinstance(t, ModelTagger)}
    if not models:
        raise ConfigError("taggers: no tagger of kind 'model' to serve")
    name = tagger or (next(iter(models)) if len(models) == 1 else None)
    if name is None or name not in models:
        raise ConfigError(f"--tagger: choose one of {', '.join(sorted(models))}")
    path = model_path(cfg, models[name])
    if not path.is_file():
        raise ConfigError(f"{path}: model of tagger {name!r} not found; run 'qgcal train --config <config>' first")
    return name, path


def export_model_repo(cfg: Config, out: Path, *, tagger: str | None = None) -> Path:
    """A Triton model repository for a stock ``tritonserver`` (``--model-repository out``)."""
    from qgcal.inference import export_repo

    _, path = served_model(cfg, tagger)
    t = cfg.inference.triton
    return Path(
        export_repo(
            path,
            out,
            model_name=t.model_name,
            max_batch_size=max(t.batch_size, 1),
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
) -> None:
    """Serve the tagger with dynamic batching until SIGINT/SIGTERM; ``ready(name, info)`` once it serves."""
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
        model_name=t.model_name,
        max_batch_size=max(t.batch_size, 1),
        input_name=t.input_name,
        output_name=t.output_name,
        ready_callback=on_ready,
    )

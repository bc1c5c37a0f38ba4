"""``qgcal serve``: the config's trained model tagger behind a real Triton server (pytriton)."""

from __future__ import annotations

import argparse

from qgcal.config import ModelTagger, load_config
from qgcal.errors import ConfigError
from qgcal.stages.pkl2predpkl import model_path

__all__ = ["serve_from_config"]


def serve_from_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    models = {n: t for n, t in cfg.taggers.items() if isinstance(t, ModelTagger)}
    if not models:
        raise ConfigError("taggers: no tagger of kind 'model' to serve")
    name = args.tagger or (next(iter(models)) if len(models) == 1 else None)
    if name is None or name not in models:
        raise ConfigError(f"--tagger: choose one of {', '.join(sorted(models))}")
    path = model_path(cfg, models[name])
    if not path.is_file():
        raise ConfigError(f"{path}: model of tagger {name!r} not found; run 'qgcal train --config {args.config}' first")
    t = cfg.inference.triton
    if args.export_repo is not None:
        from qgcal.inference import export_repo

        out = export_repo(path, args.export_repo, model_name=t.model_name, max_batch_size=max(t.batch_size, 1),
                          input_name=t.input_name, output_name=t.output_name)
        print(f"Triton model repository written: {out} (tritonserver --model-repository {args.export_repo})")
        return 0
    from qgcal.inference import serve

    def ready(info: dict) -> None:
        print(f"serving {name} as {t.model_name!r}: {info}; Ctrl-C or SIGTERM stops", flush=True)

    serve(path, http_port=args.http_port, grpc_port=args.grpc_port, model_name=t.model_name,
          max_batch_size=max(t.batch_size, 1), input_name=t.input_name, output_name=t.output_name,
          ready_callback=ready)
    return 0

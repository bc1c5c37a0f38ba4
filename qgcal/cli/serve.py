"""``qgcal serve``: a real Triton server for the config's model tagger (pytriton)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the trained tagger with Triton (or export a model repository)",
        description="Starts a Triton Inference Server on 127.0.0.1 serving the config's model "
        "tagger with dynamic batching until Ctrl-C/SIGTERM; with --export-repo, writes a "
        "model repository for a stock tritonserver instead. Needs the 'triton' extra.",
    )
    p.add_argument("--config", "-c", required=True, type=Path, help="YAML config")
    p.add_argument("--tagger", help="which model tagger (default: the only one)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--export-repo", type=Path, metavar="DIR", help="write a Triton model repository and exit")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qgcal.config import load_config
    from qgcal.workflows.serve import export_model_repo, serve_tagger

    cfg = load_config(args.config)
    if args.export_repo is not None:
        out = export_model_repo(cfg, args.export_repo, tagger=args.tagger)
        print(f"Triton model repository written: {out} (tritonserver --model-repository {args.export_repo})")
        return 0

    def ready(name: str, info: dict[str, Any]) -> None:
        model = cfg.inference.triton.model_name
        print(f"serving {name} as {model!r}: {info}; Ctrl-C or SIGTERM stops", flush=True)

    serve_tagger(cfg, tagger=args.tagger, http_port=args.http_port, grpc_port=args.grpc_port, ready=ready)
    return 0

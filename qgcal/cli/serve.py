"""``qgcal serve``: a real Triton server for the config's model tagger (pytriton)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the trained tagger with Triton (or export a model repository)",
        description="Starts a Triton Inference Server on 127.0.0.1 serving the config's model tagger "
        "(dynamic batching) or constituent tagger (flattened constituents + counts, each request "
        "scored on its own) until Ctrl-C/SIGTERM; with --export-repo, writes a model repository for a "
        "stock tritonserver instead (Python backend for the BDT, TorchScript for the pytorch backend "
        "for a constituent tagger). Needs the 'triton' extra.",
    )
    p.add_argument("--config", "-c", required=True, type=Path, help="YAML config")
    p.add_argument("--tagger", help="which model or constituent tagger (default: the only one)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--export-repo", type=Path, metavar="DIR", help="write a Triton model repository and exit")
    p.add_argument(
        "--gpu",
        type=int,
        action="append",
        metavar="ID",
        help="with --export-repo, constituent tagger: one model instance on this GPU id (repeat per GPU)",
    )
    p.add_argument("--instances", type=int, default=1, help="with --export-repo: CPU model instances (default 1)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qgcal.config import load_config
    from qgcal.workflows.serve import export_model_repo, serve_tagger

    cfg = load_config(args.config)
    if args.export_repo is not None:
        out = export_model_repo(cfg, args.export_repo, tagger=args.tagger, gpus=args.gpu, instances=args.instances)
        print(f"Triton model repository written: {out} (tritonserver --model-repository {args.export_repo})")
        return 0

    def ready(name: str, info: dict[str, Any]) -> None:
        print(f"serving {name} as {info.get('model_name')!r}: {info}; Ctrl-C or SIGTERM stops", flush=True)

    serve_tagger(cfg, tagger=args.tagger, http_port=args.http_port, grpc_port=args.grpc_port, ready=ready)
    return 0

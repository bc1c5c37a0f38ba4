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
        "scored on its own unless --dynamic-batching on) until Ctrl-C/SIGTERM; with --export-repo, writes "
        "a model repository for a stock tritonserver instead (Python backend for the BDT; for a constituent "
        "tagger TorchScript for the pytorch backend or, with --export-format onnx, ONNX for the onnxruntime "
        "backend). Needs the 'triton' extra.",
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
    p.add_argument(
        "--export-format",
        choices=("torchscript", "onnx"),
        default="torchscript",
        help="with --export-repo, constituent tagger: model.pt for the pytorch backend (default) or "
        "model.onnx for the onnxruntime backend (needs the 'onnx' package)",
    )
    p.add_argument(
        "--dynamic-batching",
        choices=("on", "off"),
        help="server-side batching across requests (default: on for a BDT; off for a constituent tagger, "
        "whose requests are then scored one by one, bit-identical to local scoring)",
    )
    p.add_argument(
        "--instances", type=int, default=1, help="model instances (served, or CPU instances with --export-repo)"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qgcal.config import load_config
    from qgcal.workflows.serve import export_model_repo, serve_tagger

    cfg = load_config(args.config)
    if args.export_repo is not None:
        out = export_model_repo(
            cfg,
            args.export_repo,
            tagger=args.tagger,
            gpus=args.gpu,
            instances=args.instances,
            export_format=args.export_format,
        )
        print(f"Triton model repository written: {out} (tritonserver --model-repository {args.export_repo})")
        return 0

    def ready(name: str, info: dict[str, Any]) -> None:
        print(f"serving {name} as {info.get('model_name')!r}: {info}; Ctrl-C or SIGTERM stops", flush=True)

    serve_tagger(
        cfg,
        tagger=args.tagger,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        ready=ready,
        dynamic_batching=None if args.dynamic_batching is None else args.dynamic_batching == "on",
        instances=args.instances,
    )
    return 0

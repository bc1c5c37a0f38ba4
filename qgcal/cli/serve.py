"""``qgcal serve``: a real Triton server for the config's model tagger (pytriton)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve the trained tagger with Triton (or export a model repository)",
                       description="Starts a Triton Inference Server on 127.0.0.1 serving the config's model "
                       "tagger with dynamic batching until Ctrl-C/SIGTERM; with --export-repo, writes a "
                       "model repository for a stock tritonserver instead. Needs the 'triton' extra.")
    p.add_argument("--config", "-c", required=True, type=Path, help="YAML config")
    p.add_argument("--tagger", help="which model tagger (default: the only one)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--export-repo", type=Path, metavar="DIR", help="write a Triton model repository and exit")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qgcal.workflows.serve import serve_from_config

    return serve_from_config(args)

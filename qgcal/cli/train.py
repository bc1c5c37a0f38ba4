"""``qgcal train``: train the model tagger(s) of a config on nominal MC."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train the config's model taggers (HistGradientBoosting) and constituent taggers (torch) on nominal MC",
        description="Runs root2pkl for nominal MC where needed, trains each tagger of kind "
        "'model' (a HistGradientBoosting BDT, saved with skops plus a metadata record) and of kind "
        "'constituents' (a torch DeepSets or kNN graph network, saved as safetensors plus a JSON "
        "sidecar); even events train, odd events evaluate; writes ROC curves and the AUC per pT bin.",
    )
    p.add_argument("--config", "-c", required=True, type=Path, help="YAML config")
    p.add_argument("--workers", "-j", type=int, help="worker processes for root2pkl (executor.workers)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qgcal.cli.options import load_config_from_args
    from qgcal.workflows.train import train_from_config

    cfg = load_config_from_args(args)
    for path in train_from_config(cfg):
        print(f"model: {path}")
    return 0

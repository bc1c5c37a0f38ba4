"""``qgcal report``: redraw the plots and report.md from an existing combination."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="plots and report.md from the existing combined results",
        description="Reads <output>/results/combined/scale_factors.json (written by 'qgcal combine') and "
        "<output>/results/nominal/extraction.json, and rewrites results/combined/plots/*.png (a figure drawn "
        "from the same inputs before is kept) and report.md. Nothing is recomputed.",
    )
    p.add_argument("--config", "-c", required=True, type=Path, help="YAML config")
    p.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw the plots (default: plots.enabled of the config)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qgcal.config import load_config
    from qgcal.locking import output_lock
    from qgcal.outputs import rebuild_report

    cfg = load_config(args.config)
    with output_lock(cfg.output_path):
        out = rebuild_report(cfg, plots=args.plots, config_path=str(args.config))
    print(f"report: {out.report} ({len(out.plots)} plots)")
    return 0

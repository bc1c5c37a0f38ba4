"""``qgcal run``: one systematic through the four passes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qgcal.cli.options import add_execution_options, add_inference_options


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run one systematic (nominal or a configured variation) to scale factors",
        description="root2pkl -> pkl2predpkl -> predpkl2hist over every input file (in parallel), then "
        "final_reweighting. Writes <output>/results/<syst>/scale_factors.json and plots. Valid artifacts "
        "from earlier runs are reused (a change of inference backend or device rescores).",
    )
    p.add_argument("--config", "-c", required=True, type=Path, help="YAML config")
    p.add_argument("--syst", default="nominal", help="'nominal' or a name under 'variations' (default nominal)")
    p.add_argument("--force", action="store_true", help="redo every pass even where artifacts are valid")
    add_execution_options(p)
    add_inference_options(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qgcal.cli.options import load_config_from_args, skipped_line
    from qgcal.executors import start_early, worker_preload
    from qgcal.report import print_sf_table

    cfg = load_config_from_args(args)
    # the pool's fork server imports the workers' modules (~0.5-1 s) while this process imports its own
    start_early(cfg.executor.kind, cfg.executor.workers, preload=worker_preload(cfg))
    from qgcal.workflows.single import run_systematic

    result = run_systematic(cfg, args.syst, force=args.force)
    print_sf_table(result.records, title=f"{cfg.name}: {args.syst}")
    print(f"results: {result.results_dir / 'scale_factors.json'}")
    if result.skipped:
        print(skipped_line(result.skipped))
    return 0

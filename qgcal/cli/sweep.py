"""``qgcal sweep``: nominal and every variation (or a shard of them, for array jobs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qgcal.cli.options import add_execution_options, add_inference_options


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sweep",
        help="run nominal and every (or the named) variation, sharing data and nominal MC",
        description="All file tasks of the chosen systematics go through one pool (data and nominal MC are "
        "processed once), then each systematic's final pass runs. With --task-index, only that shard of "
        "the sorted file tasks is processed (what a Slurm array task does); --finalise-only runs only the "
        "final passes and fails, naming the first one, if a file task is not done.",
    )
    p.add_argument("--config", "-c", required=True, type=Path, help="YAML config")
    p.add_argument("--syst", nargs="+", metavar="NAME", help="systematics (default: nominal and all variations)")
    p.add_argument("--force", action="store_true", help="redo every pass even where artifacts are valid")
    add_execution_options(p, executors=("process", "serial", "dask", "dask-local"))
    g = p.add_argument_group("batch")
    g.add_argument("--task-index", type=int, help="process only this shard of the file tasks (0-based)")
    g.add_argument("--shard-size", type=int, help="file tasks per shard (default: slurm.shard_size)")
    g.add_argument("--finalise-only", action="store_true", help="only the final passes")
    add_inference_options(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qgcal.cli.options import load_config_from_args, skipped_line
    from qgcal.executors import start_early, worker_preload
    from qgcal.report import print_sf_table

    cfg = load_config_from_args(args)
    # the pool's fork server imports the workers' modules (~0.5-1 s) while this process imports its own
    start_early(cfg.executor.kind, cfg.executor.workers, preload=worker_preload(cfg))
    from qgcal.workflows.sweep import finalise_many, run_many, run_shard

    systs = args.syst or cfg.variation_names()
    if "nominal" not in systs:
        systs = ["nominal", *systs]
    if args.finalise_only:
        results = finalise_many(cfg, systs)
        print_sf_table(results["nominal"].records, title=f"{cfg.name}: nominal", wp=cfg.working_points[0])
        print(f"results: {cfg.output_path / 'results'} ({len(results)} systematics)")
        return 0
    if args.task_index is not None:
        done = run_shard(cfg, systs, args.task_index, args.shard_size or cfg.slurm.shard_size, force=args.force)
        print(f"shard {args.task_index}: {len(done)} file tasks done")
        return 0
    results = run_many(cfg, systs, force=args.force)
    print_sf_table(results["nominal"].records, title=f"{cfg.name}: nominal", wp=cfg.working_points[0])
    print(f"results: {cfg.output_path / 'results'} ({len(results)} systematics)")
    skipped = [r for res in results.values() for r in res.skipped]
    if skipped:
        print(skipped_line(skipped))
    return 0

"""``qgcal run``: one systematic through the four passes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_inference_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference (model taggers)")
    g.add_argument("--backend", choices=["local", "triton"], help="override inference.backend")
    g.add_argument("--device", choices=["cpu", "cuda", "auto"], help="override inference.device (local backend)")
    g.add_argument("--triton-url", metavar="HOST:PORT", help="override inference.triton.url")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="run one systematic (nominal or a configured variation) to scale factors",
        description="root2pkl -> pkl2predpkl -> predpkl2hist over every input file (in parallel), then "
        "final_reweighting. Writes <output>/results/<syst>/scale_factors.json and plots. Valid artifacts "
        "from earlier runs are reused.",
    )
    p.add_argument("--config", "-c", required=True, type=Path, help="YAML config")
    p.add_argument("--syst", default="nominal", help="'nominal' or a name under 'variations' (default nominal)")
    p.add_argument("--workers", "-j", type=int, help="worker processes (default: executor.workers)")
    p.add_argument("--executor", choices=["process", "serial"], help="override executor.kind")
    p.add_argument("--force", action="store_true", help="redo every pass even where artifacts are valid")
    p.add_argument("--skip-bad-files", action="store_true", default=None,
                   help="skip unreadable input files (recorded, with the events lost, in the results) "
                        "instead of stopping (config: reading.skip_bad_files)")
    add_inference_options(p)
    p.set_defaults(func=_run)


def overrides_from(args: argparse.Namespace) -> Any:
    from qgcal.stages.pkl2predpkl import InferenceOverrides

    return InferenceOverrides(backend=args.backend, device=args.device, triton_url=args.triton_url)


def _run(args: argparse.Namespace) -> int:
    from qgcal.config import load_config
    from qgcal.report import print_sf_table, skipped_summary
    from qgcal.workflows.single import run_systematic

    cfg = load_config(args.config)
    result = run_systematic(cfg, args.syst, workers=args.workers, executor=args.executor,
                            force=args.force, overrides=overrides_from(args),
                            skip_bad_files=args.skip_bad_files)
    print_sf_table(result.records, title=f"{cfg.name}: {args.syst}")
    print(f"results: {result.results_dir / 'scale_factors.json'}")
    if result.skipped:
        print(skipped_summary(result.skipped))
    return 0

"""``qgcal demo``: everything on a generated sample."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="generate a sample, calibrate nominal and all variations, print the scale factors",
        description="Generates an ATLAS-style sample under DIR/sample, writes the config it uses to "
        "DIR/config.yaml, runs nominal and every configured variation, and prints the scale factors. "
        "Rerun any step with 'qgcal run --config DIR/config.yaml --syst NAME'.",
    )
    p.add_argument("--out", type=Path, default=Path("qgcal-demo"), help="demo directory (default ./qgcal-demo)")
    p.add_argument("--events", type=int, default=200_000, help="pseudo-data events (default 200000)")
    p.add_argument("--files", type=int, default=2, help="files per sample slice (default 2)")
    p.add_argument("--seed", type=int, default=1, help="generator seed")
    p.add_argument("--workers", "-j", type=int, help="worker processes (default: the config's, 2)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qgcal.report import print_sf_table
    from qgcal.workflows.demo import run_demo

    res = run_demo(args.out, events=args.events, files=args.files, seed=args.seed, workers=args.workers)
    nominal = res.results["nominal"].records
    print_sf_table(nominal, title=f"{res.config.name}: nominal scale factors")
    shifts = []
    for syst, r in res.results.items():
        if syst == "nominal":
            continue
        print_sf_table(r.records, title=f"{syst} (cuts frozen from nominal), WP 0.6", wp=0.6)
        shifts.append(syst)
    print(f"\nconfig: {res.config_path}   results: {res.config.output_path / 'results'}")
    print(f"report: {res.config.output_path / 'results' / 'combined' / 'report.md'}")
    print(f"rerun a step: qgcal run --config {res.config_path} --syst {shifts[0] if shifts else 'nominal'}")
    return 0

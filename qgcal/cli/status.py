"""``qgcal status``: per systematic and pass, how many files are done, missing or stale."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="what is done, missing or stale, per systematic and pass (runs nothing)",
        description="For nominal and every variation: the file tasks 'qgcal run --syst' needs and, per pass, "
        "how many artifacts are done (valid provenance), missing (no file) or stale (would be redone); "
        "whether results/<syst>/scale_factors.json is up to date; the state of results/combined; and the "
        "cut flow of the nominal data and MC (events and sum of weights after each cut).",
    )
    p.add_argument("--config", "-c", required=True, type=Path, help="YAML config")
    p.add_argument("--syst", nargs="+", metavar="NAME", help="only these systematics (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--check", action="store_true", help="exit 1 unless everything is done")
    p.add_argument(
        "--orphans",
        action="store_true",
        help="list superseded artifacts (of renamed or removed inputs and variations) instead; "
        "'qgcal clean' removes them",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qgcal.config import load_config
    from qgcal.workflows.status import collect_status, find_orphans, print_orphans, print_status

    cfg = load_config(args.config)
    if args.orphans:
        orphans = find_orphans(cfg)
        if args.json:
            rows = [{"path": str(o.path), "size": o.size, "why": o.why} for o in orphans]
            print(json.dumps({"output": str(cfg.output_path), "orphans": rows}, indent=2, sort_keys=True))
        else:
            print_orphans(cfg, orphans)
        return 1 if args.check and orphans else 0
    status = collect_status(cfg, args.syst)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2, sort_keys=True))
    else:
        print_status(status)
    return 1 if args.check and not status.complete else 0

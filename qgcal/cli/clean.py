"""``qgcal clean``: remove superseded artifacts (those ``qgcal status --orphans`` lists); a dry run by default."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "clean",
        help="remove superseded artifacts ('qgcal status --orphans'); dry run unless --delete",
        description="Lists the files under the output that no current file task, systematic or combination "
        "reads or writes (artifacts of renamed or removed input files and variations, temporary files of "
        "killed writers) and, with --delete, removes them. Models, Slurm logs and results/combined are kept.",
    )
    p.add_argument("--config", "-c", required=True, type=Path, help="YAML config")
    p.add_argument("--delete", action="store_true", help="remove them (default: only list what would go)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qgcal.config import load_config
    from qgcal.locking import output_lock
    from qgcal.workflows.status import find_orphans, print_orphans, remove_orphans

    cfg = load_config(args.config)
    if not args.delete:
        print_orphans(cfg, find_orphans(cfg), removed=False)
        return 0
    with output_lock(cfg.output_path):  # no run may be writing (its temporary files are not orphans)
        orphans = find_orphans(cfg)
        remove_orphans(orphans)
    print_orphans(cfg, orphans, removed=True)
    return 0

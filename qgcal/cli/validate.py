"""``qgcal validate``: check a config (and its input files) without running anything."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "validate",
        help="validate a config; --schema prints its JSON Schema",
        description="Validate the YAML config and check that every input file exists. "
        "With --schema, print the config's JSON Schema (for editors) instead.",
    )
    p.add_argument("config", nargs="?", type=Path, help="YAML config")
    p.add_argument("--schema", action="store_true", help="print the JSON Schema of the config")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qgcal.config import Config, load_config
    from qgcal.errors import ConfigError
    from qgcal.plan import plan_tasks

    if args.schema:
        print(json.dumps(Config.model_json_schema(), indent=2, sort_keys=True))
        return 0
    if args.config is None:
        raise ConfigError("give a config file to validate, or --schema")
    cfg = load_config(args.config)
    n = 0
    for syst in cfg.variation_names():
        for task in plan_tasks(cfg, syst):
            if not Path(task.path).is_file():
                raise ConfigError(f"samples.{task.sample}: input file {task.path} not found")
            n += 1
    print(
        f"{args.config}: valid ({len(cfg.samples)} samples, {len(cfg.taggers)} taggers, "
        f"{len(cfg.variations)} variations, {n} file tasks)"
    )
    return 0

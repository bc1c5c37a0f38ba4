"""``qgcal validate``: every check that needs no event, without running anything."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "validate",
        help="validate a config and its inputs; --schema prints its JSON Schema",
        description="Validate the YAML config (strict types, no duplicate keys) and what it names: every input "
        "file exists and belongs to one sample slice, model files exist and match their taggers, every file has "
        "the trees, branches and sum-of-weights histogram asked for (no event is read). 'qgcal run' makes the "
        "same checks first. Exit 0: valid; 2: the config or what it names is wrong; 1: an input file is "
        "unreadable (empty, truncated, corrupt). With --schema, print the config's JSON Schema instead.",
    )
    p.add_argument("config", nargs="?", type=Path, help="YAML config")
    p.add_argument("--schema", action="store_true", help="print the JSON Schema of the config")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qgcal.config import Config, load_config
    from qgcal.errors import ConfigError
    from qgcal.workflows.preflight import preflight

    if args.schema:
        print(json.dumps(Config.model_json_schema(), indent=2, sort_keys=True))
        return 0
    if args.config is None:
        raise ConfigError("give a config file to validate, or --schema")
    cfg = load_config(args.config)
    skip = cfg.reading.skip_bad_files  # the run would skip bad files: name them, and the config is valid
    report = preflight(cfg, unreadable="report" if skip else "raise")
    for line in report.unreadable:
        print(f"WARNING: bad input file (reading.skip_bad_files: the run will skip it): {line}", file=sys.stderr)
    print(
        f"{args.config}: valid ({len(cfg.samples)} samples, {len(cfg.taggers)} taggers, "
        f"{len(cfg.variations)} variations, {report.tasks} file tasks, {report.files} files)"
    )
    return 0

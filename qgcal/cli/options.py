"""Options shared by several commands, and the one place they are applied to the config.

Every option that mirrors a config setting (``--workers`` is ``executor.workers``,
``--backend`` is ``inference.backend``, ...) is declared here with that setting's
dotted name; :func:`load_config_from_args` loads the config and applies the
options given, once, with :meth:`qgcal.config.Config.with_overrides`. Nothing
after it sees the command line.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_execution_options", "add_inference_options", "config_overrides", "load_config_from_args"]


def add_execution_options(
    p: argparse.ArgumentParser, *, executors: tuple[str, ...] = ("process", "serial"), skip: bool = True
) -> None:
    p.add_argument("--workers", "-j", type=int, help="worker processes (executor.workers)")
    p.add_argument("--executor", choices=list(executors), help="executor kind (executor.kind)")
    if "dask" in executors:
        p.add_argument("--scheduler", help="Dask scheduler address, with --executor dask (executor.scheduler)")
    if skip:
        p.add_argument(
            "--skip-bad-files",
            action="store_true",
            default=None,
            help="skip unreadable input files (recorded, with the events lost, in the results) "
            "instead of stopping (reading.skip_bad_files)",
        )


def add_inference_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference (model taggers)")
    g.add_argument("--backend", choices=["local", "triton"], help="inference.backend")
    g.add_argument("--device", choices=["cpu", "cuda", "auto"], help="inference.device (local backend)")
    g.add_argument("--triton-url", metavar="HOST:PORT", help="inference.triton.url")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config settings the given options set (options not given are left out)."""
    # imported here: the schema (pydantic) is a third of `qgcal --help`'s start-up, which needs none of it
    from qgcal.config import OPTION_SETTINGS  # argparse dest -> config setting

    return {
        setting: getattr(args, dest)
        for dest, setting in OPTION_SETTINGS.items()
        if getattr(args, dest, None) is not None
    }


def load_config_from_args(args: argparse.Namespace) -> Any:
    """``--config`` loaded, with the command line's settings applied."""
    from qgcal.config import load_config

    return load_config(args.config).with_overrides(config_overrides(args))


def skipped_line(skipped: Any) -> str:
    """The closing line about files skipped as bad: ``WARNING: N input file(s) skipped as bad, <events lost>: ...``.

    Events lost are a number, or "unknown" when a file could not be counted (as in scale_factors.json
    and report.md: :func:`qgcal.contract.events_lost`).
    """
    from qgcal.contract import events_lost

    files = sorted({str(r["file"]) for r in skipped})
    return f"WARNING: {len(files)} input file(s) skipped as bad, {events_lost(skipped).text()}: " + ", ".join(files)

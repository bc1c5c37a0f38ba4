"""The library API: what the ``qgcal`` commands do, as functions of a config.

The CLI is a thin layer over these (it parses options, applies them to the config
once and prints). Keyword options that mirror config settings (``workers``,
``executor``, ``skip_bad_files``, ``backend``, ``device``, ``triton_url``) are
applied the same way, with :meth:`qgcal.config.Config.with_overrides`; None keeps
the config's value. An ``Executor`` instance (anything with ``submit``) is used as is.

Example::

    import qgcal

    cfg = qgcal.load_config("qgcal-demo/config.yaml")
    nominal = qgcal.run(cfg, "nominal", workers=2)
    print(nominal.records[0]["sf"], nominal.records[0]["stat"])
    results = qgcal.sweep(cfg)                 # nominal and every variation
    published = qgcal.combine(cfg)             # uncertainties, correctionlib, ROOT, report
    print(published.corrections)
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from qgcal.config import OPTION_SETTINGS as SETTINGS
from qgcal.config import Config, load_config

__all__ = ["combine", "generate", "load_config", "run", "status", "sweep", "train"]


def _configured(cfg: Config, executor: str | Executor | None, options: dict[str, Any]) -> Config:
    settings = {SETTINGS[k]: v for k, v in options.items()}
    if isinstance(executor, str):
        settings[SETTINGS["executor"]] = executor
    return cfg.with_overrides(settings)


def _instance(executor: str | Executor | None) -> Executor | None:
    return None if executor is None or isinstance(executor, str) else executor


def run(
    cfg: Config,
    syst: str = "nominal",
    *,
    executor: str | Executor | None = None,
    force: bool = False,
    workers: int | None = None,
    skip_bad_files: bool | None = None,
    backend: str | None = None,
    device: str | None = None,
    triton_url: str | None = None,
) -> Any:
    """``qgcal run --syst SYST``: the per-file passes, then the final pass; returns a ``RunResult``."""
    from qgcal.workflows.single import run_systematic

    cfg = _configured(
        cfg,
        executor,
        {
            "workers": workers,
            "skip_bad_files": skip_bad_files,
            "backend": backend,
            "device": device,
            "triton_url": triton_url,
        },
    )
    return run_systematic(cfg, syst, executor=_instance(executor), force=force)


def sweep(
    cfg: Config,
    systs: Sequence[str] | None = None,
    *,
    executor: str | Executor | None = None,
    force: bool = False,
    workers: int | None = None,
    skip_bad_files: bool | None = None,
    backend: str | None = None,
    device: str | None = None,
    triton_url: str | None = None,
) -> dict[str, Any]:
    """``qgcal sweep``: nominal and every (or the named) variation through one pool; ``{syst: RunResult}``."""
    from qgcal.workflows.sweep import run_many

    names = list(systs) if systs else cfg.variation_names()
    if "nominal" not in names:
        names = ["nominal", *names]
    cfg = _configured(
        cfg,
        executor,
        {
            "workers": workers,
            "skip_bad_files": skip_bad_files,
            "backend": backend,
            "device": device,
            "triton_url": triton_url,
        },
    )
    return run_many(cfg, names, executor=_instance(executor), force=force)


def combine(cfg: Config, *, plots: bool | None = None) -> Any:
    """``qgcal combine``: uncertainties per group and total, correctionlib, ROOT, plots and report.md."""
    from qgcal.locking import output_lock
    from qgcal.outputs import publish

    with output_lock(cfg.output_path):
        return publish(cfg, plots=plots)


def status(cfg: Config, systs: Sequence[str] | None = None) -> Any:
    """``qgcal status``: done / missing / stale per systematic and pass, without running anything."""
    from qgcal.workflows.status import collect_status

    return collect_status(cfg, systs)


def train(cfg: Config, *, workers: int | None = None) -> list[Path]:
    """``qgcal train``: the config's model taggers on nominal MC; returns the model files written."""
    from qgcal.workflows.train import train_from_config

    return train_from_config(_configured(cfg, None, {"workers": workers}))


def generate(out: str | Path, **options: Any) -> Any:
    """``qgcal generate``: an ATLAS-style sample with known truth (see ``qgcal.generate.generate_sample``)."""
    from qgcal.generate import generate_sample

    return generate_sample(Path(out), **options)

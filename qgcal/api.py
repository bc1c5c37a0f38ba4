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
from typing import TYPE_CHECKING, Any

from qgcal.config import OPTION_SETTINGS as SETTINGS
from qgcal.config import Config, load_config

if TYPE_CHECKING:  # correction pulls in correctionlib: only for the annotations
    from qgcal.outputs.correction import Flow, Undefined

__all__ = ["combine", "generate", "load_config", "run", "status", "sweep", "train"]


def _configured(cfg: Config, executor: str | Executor | None, settings: dict[str, Any]) -> Config:
    """``cfg`` with the keyword settings applied (None keeps the config's value)."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(SETTINGS))}")
    dotted = {SETTINGS[k]: v for k, v in settings.items()}
    if isinstance(executor, str):
        dotted[SETTINGS["executor"]] = executor
    return cfg.with_overrides(dotted)


def _instance(executor: str | Executor | None) -> Executor | None:
    return None if executor is None or isinstance(executor, str) else executor


def run(
    cfg: Config,
    syst: str = "nominal",
    *,
    executor: str | Executor | None = None,
    force: bool = False,
    **settings: Any,
) -> Any:
    """``qgcal run --syst SYST``: the per-file passes, then the final pass; returns a ``RunResult``.

    ``settings``: ``workers``, ``skip_bad_files``, ``scheduler``, ``backend``, ``device``,
    ``triton_url`` (the command's options of the same names).
    """
    from qgcal.workflows.single import run_systematic

    cfg = _configured(cfg, executor, settings)
    return run_systematic(cfg, syst, executor=_instance(executor), force=force)


def sweep(
    cfg: Config,
    systs: Sequence[str] | None = None,
    *,
    executor: str | Executor | None = None,
    force: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """``qgcal sweep``: nominal and every (or the named) variation through one pool; ``{syst: RunResult}``.

    ``settings`` as for :func:`run`.
    """
    from qgcal.workflows.sweep import run_many

    names = list(systs) if systs else cfg.variation_names()
    if "nominal" not in names:
        names = ["nominal", *names]
    return run_many(_configured(cfg, executor, settings), names, executor=_instance(executor), force=force)


def combine(
    cfg: Config,
    *,
    plots: bool | None = None,
    allow_stale: bool = False,
    config_path: str = "C",
    flow: Flow = "error",
    undefined: Undefined = "error",
) -> Any:
    """``qgcal combine``: uncertainties per group and total, correctionlib, ROOT, plots and report.md.

    Refuses stale per-systematic results (ArtifactError) unless ``allow_stale`` (then warned and
    recorded in ``results/combined/stale_inputs.json``). ``flow`` / ``undefined``: how
    corrections.json treats inputs outside the calibrated range and undefined SFs (docs/outputs.md).
    """
    from qgcal.locking import output_lock
    from qgcal.outputs import publish
    from qgcal.workflows.status import check_combinable, record_stale_inputs

    with output_lock(cfg.output_path):
        stale = check_combinable(cfg, allow_stale=allow_stale)
        published = publish(cfg, plots=plots, config_path=config_path, flow=flow, undefined=undefined)
        record_stale_inputs(cfg, stale)
        return published


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

"""Publication outputs of the combined results, in ``<output>/results/combined/``.

``scale_factors.json`` (written by :func:`qgcal.combine.combine`), then
``corrections.json`` (correctionlib), ``scale_factors.root`` (TH1D),
``plots/*.png`` and ``report.md``. :func:`publish` does all of it;
:func:`rebuild_report` redraws the plots and the report from an existing combination.
The numbers every format writes come from :func:`qgcal.outputs.correction.published_values`
and :func:`~qgcal.outputs.correction.efficiency_values`. ``flow`` (``"error"``, or ``"clamp"``
outside the calibrated pT / |eta| range) and ``undefined`` (``"error"``: not evaluable, or
``"fallback"``: SF 1.0, uncertainty 100 %) choose the documented options. See docs/outputs.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qgcal.combine import Combined, combine, load_combined
from qgcal.config import Config
from qgcal.outputs.correction import Flow, Undefined, group_keys

__all__ = ["Published", "combined_dir", "publish", "rebuild_report", "write_outputs"]


@dataclass
class Published:
    """Paths of what was written (``None``: not written by this call)."""

    combined: Combined
    scale_factors: Path
    corrections: Path | None = None
    root: Path | None = None
    report: Path | None = None
    plots: list[Path] = field(default_factory=list)


def combined_dir(cfg: Config) -> Path:
    return cfg.output_path / "results" / "combined"


def _plots_and_report(cfg: Config, combined: Combined, out: Published, plots: bool) -> Published:
    from qgcal.outputs.report import write_report

    d = combined_dir(cfg)
    if plots:
        from qgcal.outputs.plots import write_plots

        out.plots = write_plots(cfg, combined.records, combined.groups, d / "plots")
    out.report = write_report(d / "report.md", cfg.name, combined.metadata, combined.records, out.plots)
    return out


def write_outputs(
    cfg: Config,
    combined: Combined,
    *,
    plots: bool | None = None,
    flow: Flow = "error",
    undefined: Undefined = "error",
) -> Published:
    """corrections.json, scale_factors.root, plots and report.md from a combination."""
    from qgcal.outputs.correction import write_corrections
    from qgcal.outputs.rootfile import write_root

    group_keys(combined.groups)  # fail on clashing group names before writing anything
    d = combined_dir(cfg)
    out = Published(combined, d / "scale_factors.json")
    out.corrections = write_corrections(
        d / "corrections.json",
        combined.records,
        combined.groups,
        abs_eta_max=cfg.selection.abs_eta_max,
        description=f"{cfg.name}: quark/gluon tagging scale factors (qgcal)",
        flow=flow,
        undefined=undefined,
    )
    out.root = write_root(
        d / "scale_factors.root",
        combined.records,
        combined.groups,
        abs_eta_max=cfg.selection.abs_eta_max,
        undefined=undefined,
    )
    return _plots_and_report(cfg, combined, out, cfg.plots.enabled if plots is None else plots)


def publish(
    cfg: Config,
    *,
    plots: bool | None = None,
    config_path: str = "C",
    flow: Flow = "error",
    undefined: Undefined = "error",
) -> Published:
    """``qgcal combine``: combine every systematic, then write every output.

    Takes no lock: call it after a sweep has finished (the CLI holds the output lock).
    """
    group_keys({v.group for v in cfg.variations.values()})  # clashing names fail before any write
    combined = combine(cfg, config_path=config_path)
    return write_outputs(cfg, combined, plots=plots, flow=flow, undefined=undefined)


def rebuild_report(cfg: Config, *, plots: bool | None = None, config_path: str = "C") -> Published:
    """``qgcal report``: plots and report.md from an existing ``combined/scale_factors.json``."""
    combined = load_combined(cfg, config_path=config_path)
    d = combined_dir(cfg)
    out = Published(combined, d / "scale_factors.json")
    return _plots_and_report(cfg, combined, out, cfg.plots.enabled if plots is None else plots)
